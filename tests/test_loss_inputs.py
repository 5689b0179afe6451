"""What every contrastive loss shares: input checks with clear errors, float32 maths under autocast and an
attached zero for a single row."""

from __future__ import annotations

import pytest
import torch

from supremix_med.losses import ConRLoss, MixSupConLoss, RnCLoss, SupConLoss, SupReMixLoss


def _conr(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    predictions = labels.reshape(-1)[: features.shape[0]].float() + 0.1
    return ConRLoss(window=0.5, prediction_window=0.8)(features, labels, predictions)


LOSS_CALLS = {
    "supremix": lambda f, y: SupReMixLoss()(f, y),
    "supcon": lambda f, y: SupConLoss()(f, y),
    "rnc": lambda f, y: RnCLoss()(f, y),
    "conr": _conr,
    "mixsupcon": lambda f, y: MixSupConLoss()(f, y),
}


@pytest.mark.parametrize("name", LOSS_CALLS)
@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.randn(4), torch.zeros(4), r"features must have shape \[B, D\] or \[B, V, D\]"),
        (torch.randn(4, 2, 3, 1), torch.zeros(4), r"features must have shape"),
        (torch.randn(4, 3), torch.zeros(4, 2), r"labels must have shape \[B\] or \[B, 1\]"),
        (torch.randn(4, 2, 3), torch.zeros(3), "expected 4 labels"),
        (torch.full((4, 3), float("nan")), torch.zeros(4), "features contain NaN or Inf"),
        (torch.randn(4, 3), torch.tensor([0.0, float("inf"), 1.0, 2.0]), "labels contain NaN or Inf"),
        (torch.randn(0, 3), torch.zeros(0), "non-empty"),
    ],
)
def test_bad_inputs_raise_value_errors_saying_what_was_expected(name, features, labels, match):
    with pytest.raises(ValueError, match=match):
        LOSS_CALLS[name](features, labels)


@pytest.mark.parametrize("name", LOSS_CALLS)
def test_autocast_and_half_inputs_compute_in_float32(name):
    torch.manual_seed(0)
    features = torch.randn(8, 2, 16)
    labels = torch.tensor([0.0, 0.0, 1.0, 1.5, 2.0, 2.0, 3.0, 3.5])
    expected = _seeded(LOSS_CALLS[name], features, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = _seeded(LOSS_CALLS[name], features, labels)
    half = _seeded(LOSS_CALLS[name], features.half(), labels)
    for value in (autocast, half):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    torch.testing.assert_close(autocast, expected)
    torch.testing.assert_close(half, expected, rtol=1e-2, atol=1e-2)


def _seeded(call, features, labels):
    torch.manual_seed(1)
    return call(features, labels)


@pytest.mark.parametrize("name", LOSS_CALLS)
def test_single_row_gives_attached_zero(name):
    features = torch.randn(1, 4, requires_grad=True)
    loss = LOSS_CALLS[name](features, torch.tensor([1.0]))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))
