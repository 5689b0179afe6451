"""SupConLoss: agreement with the per-anchor reference, gradients, tolerance, edge cases, errors."""

from __future__ import annotations

import pytest
import torch

from _loss_references import make_batch, reference_supcon
from supremix_med.losses import SupConLoss


@pytest.mark.parametrize("kind", ["integer", "continuous"])
@pytest.mark.parametrize("views", [1, 2])
def test_matches_reference(views, kind):
    features, labels, _ = make_batch(kind, views)
    value = SupConLoss(temperature=0.2)(features, labels)
    reference = reference_supcon(features, labels, temperature=0.2)
    assert value != 0  # some anchor has a positive
    torch.testing.assert_close(value, reference, rtol=1e-8, atol=1e-8)
    (grad,) = torch.autograd.grad(value, features)
    (ref_grad,) = torch.autograd.grad(reference, features)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


def test_gradcheck():
    features, labels, _ = make_batch("integer", 2, batch=4)
    assert torch.autograd.gradcheck(lambda f: SupConLoss()(f, labels), (features,))


def test_label_tolerance_groups_close_labels():
    features, _, _ = make_batch("integer", 2, batch=4)
    near = torch.tensor([0.0, 0.05, 1.0, 1.02], dtype=torch.float64)
    grouped = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(SupConLoss(label_tolerance=0.1)(features, near), SupConLoss()(features, grouped))


def test_invariant_to_feature_scale():
    """Features are L2-normalised inside the loss."""
    features, labels, _ = make_batch("integer", 2)
    torch.testing.assert_close(SupConLoss()(3.5 * features, labels), SupConLoss()(features, labels))


@pytest.mark.parametrize("batch", [4, 1])
def test_no_positive_gives_attached_zero(batch):
    features = torch.randn(batch, 3, requires_grad=True)
    value = SupConLoss()(features, torch.arange(batch, dtype=torch.float32))
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_single_sample_two_views():
    features, labels, _ = make_batch("integer", 2, batch=1)
    torch.testing.assert_close(SupConLoss()(features, labels), reference_supcon(features, labels))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_computed_in_float32(dtype, tol):
    features, labels, _ = make_batch("integer", 2, dtype=torch.float32)
    value = SupConLoss()(features.detach().to(dtype), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, SupConLoss()(features, labels), rtol=tol, atol=tol)


def test_autocast_bfloat16():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 6)
    inputs, labels = torch.randn(6, 2, 8), torch.randint(0, 3, (6,)).float()
    expected = SupConLoss()(head(inputs), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = SupConLoss()(head(inputs), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=-1.0), dict(label_tolerance=-1.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SupConLoss(**kwargs)


@pytest.mark.parametrize("features,labels,match", [
    (torch.randn(4), torch.zeros(4), r"\[B, D\] or \[B, V, D\]"),
    (torch.randn(4, 3), torch.zeros(3), "expected 4 labels"),
    (torch.tensor([[0.0, float("inf")]]), torch.zeros(1), "NaN or Inf"),
    ([[1.0, 2.0]], torch.zeros(1), "must be torch tensors"),
])
def test_bad_inputs(features, labels, match):
    with pytest.raises(ValueError, match=match):
        SupConLoss()(features, labels)
