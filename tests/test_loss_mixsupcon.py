"""MixSupConLoss against a slow reference, and mixup_batch by reconstruction of its coefficients."""

from __future__ import annotations

import math

import pytest
import torch

from _loss_references import random_batch
from supremix_med.losses.mixsupcon import MixSupConLoss, mixup_batch


def mixsupcon_reference(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.5,
                        sigma: float = 1.0) -> torch.Tensor:
    """Mean over anchors of -sum_j q_ij log softmax_{a != i}(s_ia)_j, q_ij proportional to exp(-|dy| / sigma)."""
    if features.dim() == 2:
        features = features[:, None]
    batch, views = features.shape[:2]
    rows = [features[b, v] / torch.linalg.vector_norm(features[b, v]) for v in range(views) for b in range(batch)]
    ys = [float(y) for y in labels.reshape(-1)] * views
    n = len(rows)
    anchor_losses = []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        kernel = [math.exp(-abs(ys[i] - ys[a]) / sigma) for a in others]
        logits = torch.stack([torch.dot(rows[i], rows[a]) / temperature for a in others])
        log_probs = logits - torch.logsumexp(logits, dim=0)
        anchor_losses.append(-sum(k / sum(kernel) * lp for k, lp in zip(kernel, log_probs)))
    return torch.stack(anchor_losses).mean()


def make_batch(batch: int, views: int, labels: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_batch(batch, views, labels, dim=5, classes=3, scale=3.0,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("labels", ["integer", "continuous"])
def test_matches_reference_value_and_gradient(views: int, labels: str) -> None:
    features, y = make_batch(7, views, labels)
    loss = MixSupConLoss(temperature=0.3, sigma=0.7)(features, y[:, None])
    expected = mixsupcon_reference(features, y, temperature=0.3, sigma=0.7)
    (grad,) = torch.autograd.grad(loss, features)
    (expected_grad,) = torch.autograd.grad(expected, features)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-8, rtol=0)


def test_gradcheck() -> None:
    features, y = make_batch(4, 2, "continuous", seed=1)
    assert torch.autograd.gradcheck(lambda f: MixSupConLoss()(f, y), (features,))


def test_single_label_batch_weights_all_others_equally() -> None:
    features, _ = make_batch(5, 2, "integer", seed=2)
    y = torch.full((5,), 4.0, dtype=torch.float64)
    torch.testing.assert_close(MixSupConLoss()(features, y), mixsupcon_reference(features, y), atol=1e-8, rtol=0)


def test_tiny_sigma_puts_all_weight_on_the_nearest_label() -> None:
    """exp(-|dy| / sigma) underflows for every pair; the targets are a softmax of log-weights instead."""
    features, _ = make_batch(3, 1, "continuous", seed=3)
    y = torch.tensor([0.0, 10.0, 25.0], dtype=torch.float64)
    loss = MixSupConLoss(sigma=1e-3)(features, y)
    s = (torch.nn.functional.normalize(features, dim=1) @ torch.nn.functional.normalize(features, dim=1).T) / 0.5
    nearest = [1, 0, 1]
    expected = sum(torch.logsumexp(s[i, [a for a in range(3) if a != i]], 0) - s[i, nearest[i]] for i in range(3)) / 3
    torch.testing.assert_close(loss, expected, atol=1e-10, rtol=0)


def test_one_sample_two_views() -> None:
    """Each row's only contrast is its other view, with target weight 1: loss exactly 0."""
    features = torch.randn(1, 2, 4, requires_grad=True)
    loss = MixSupConLoss()(features, torch.tensor([1.0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_identical_features_give_log_of_the_contrast_count() -> None:
    features = torch.ones(3, 2, 4, dtype=torch.float64, requires_grad=True)
    loss = MixSupConLoss()(features, torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64))
    loss.backward()
    assert math.isclose(loss.item(), math.log(5), rel_tol=1e-12)
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32(dtype: torch.dtype) -> None:
    features, y = make_batch(6, 2, "continuous", seed=4)
    features = features.detach().to(dtype)
    loss = MixSupConLoss()(features, y)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), mixsupcon_reference(features.double(), y).item(), rel_tol=1e-5)


@pytest.mark.parametrize("name", ["temperature", "sigma", "mixup_alpha"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_constructor_arguments_raise(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        MixSupConLoss(**{name: value})


def test_loss_exposes_mixup_alpha() -> None:
    assert MixSupConLoss(mixup_alpha=0.4).mixup_alpha == 0.4


def test_mixup_batch_mixes_inputs_and_labels_with_the_same_coefficients() -> None:
    """One-hot inputs (x_b = e_b in every view) reveal each sample's coefficient and partner."""
    batch = 6
    inputs = torch.eye(batch, dtype=torch.float64)[:, None, :].expand(batch, 3, batch).contiguous()
    labels = torch.tensor([1.0, 4.0, 9.0, 16.0, 25.0, 36.0], dtype=torch.float64)
    mixed, mixed_labels = mixup_batch(inputs, labels[:, None], alpha=0.7, generator=torch.Generator().manual_seed(1))
    assert mixed.shape == inputs.shape and mixed_labels.shape == (batch,)
    assert torch.equal(mixed, mixed[:, :1].expand_as(mixed))  # every view mixed alike
    partners = []
    for b in range(batch):
        row = mixed[b, 0]
        lam = row[b].item()
        others = [k for k in range(batch) if k != b and row[k] > 0]
        partner = others[0] if others else b
        partners.append(partner)
        assert 0.0 <= lam <= 1.0 and len(others) <= 1 and math.isclose(row.sum().item(), 1.0)
        expected = lam * labels[b] + (1 - lam) * labels[partner] if others else labels[b]
        assert math.isclose(mixed_labels[b].item(), float(expected), rel_tol=1e-12)
    assert sorted(partners) == list(range(batch)) != partners  # a permutation, not the identity


def test_mixup_batch_is_reproducible_with_a_generator_and_keeps_the_global_rng() -> None:
    inputs, labels = torch.randn(8, 2, 5), torch.rand(8)
    state = torch.get_rng_state()
    first = mixup_batch(inputs, labels, generator=torch.Generator().manual_seed(7))
    second = mixup_batch(inputs, labels, generator=torch.Generator().manual_seed(7))
    other = mixup_batch(inputs, labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_mixup_batch_single_sample_and_integer_labels() -> None:
    mixed, mixed_labels = mixup_batch(torch.ones(1, 3), torch.tensor([5]))
    torch.testing.assert_close(mixed, torch.ones(1, 3))  # its only partner is itself: lam*x + (1-lam)*x
    assert mixed_labels.dtype == torch.float32
    assert mixed_labels.item() == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("inputs", "labels", "alpha", "match"),
    [
        (torch.ones(4, 3), torch.zeros(4), 0.0, "alpha"),
        (torch.ones(4, 3), torch.zeros(4), float("inf"), "alpha"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4), 1.0, "floating-point"),
        (torch.ones(0, 3), torch.zeros(0), 1.0, "non-empty"),
        (torch.ones(4, 3), torch.zeros(3), 1.0, r"labels of shape \[4\]"),
        (torch.ones(4, 3), torch.zeros(4, 2), 1.0, r"labels of shape \[4\]"),
        (torch.ones(4, 3), torch.tensor([0.0, float("nan"), 0.0, 0.0]), 1.0, "NaN"),
    ],
)
def test_mixup_batch_bad_inputs_raise(inputs: torch.Tensor, labels: torch.Tensor, alpha: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mixup_batch(inputs, labels, alpha=alpha)
