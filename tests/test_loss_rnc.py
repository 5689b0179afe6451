"""RnCLoss against a slow reference written from the paper's formula with explicit negative sets."""

from __future__ import annotations

import math

import pytest
import torch

from _loss_references import random_batch
from supremix_med.losses.rnc import RnCLoss


def flatten_views(features: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[float]]:
    """Rows view-major (row v * B + b is view v of sample b) and their labels, as python lists."""
    if features.dim() == 2:
        features = features[:, None]
    batch, views = features.shape[:2]
    rows = [features[b, v] for v in range(views) for b in range(batch)]
    return rows, [float(labels.reshape(-1)[b]) for _ in range(views) for b in range(batch)]


def rnc_reference(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """l_ij = -log(exp(s_ij) / sum_{a != i, |y_i - y_a| >= |y_i - y_j|} exp(s_ia)), mean over pairs i != j."""
    rows, ys = flatten_views(features, labels)
    n = len(rows)

    def logit(i: int, j: int) -> torch.Tensor:
        return -torch.linalg.vector_norm(rows[i] - rows[j]) / temperature

    pair_losses = []
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            negatives = [a for a in range(n) if a != i and abs(ys[i] - ys[a]) >= abs(ys[i] - ys[j])]
            denominator = torch.logsumexp(torch.stack([logit(i, a) for a in negatives]), dim=0)
            pair_losses.append(denominator - logit(i, j))
    return torch.stack(pair_losses).mean()


def make_batch(batch: int, views: int, labels: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer labels in 0..2: few values, many ties on both sides of an anchor; continuous in [0, 10)."""
    return random_batch(batch, views, labels, dim=5, classes=3, scale=10.0,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("labels", ["integer", "continuous"])
def test_matches_reference_value_and_gradient(views: int, labels: str) -> None:
    features, y = make_batch(6, views, labels)
    loss = RnCLoss(temperature=1.5)(features, y)
    (grad,) = torch.autograd.grad(loss, features)
    expected = rnc_reference(features, y, 1.5)
    (expected_grad,) = torch.autograd.grad(expected, features)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-8, rtol=0)


def test_tied_distances_share_the_whole_tie_group() -> None:
    """Labels 0, 1, -1: for anchor 0 both others are at distance 1, so both denominators hold both."""
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    s = -torch.cdist(features, features) / 2.0
    pairs = {
        (0, 1): [1, 2], (0, 2): [1, 2],
        (1, 0): [0, 2], (1, 2): [2],  # from label 1: label 0 is 1 away, label -1 is 2 away
        (2, 0): [0, 1], (2, 1): [1],
    }
    expected = sum(torch.logsumexp(s[i, negs], 0) - s[i, j] for (i, j), negs in pairs.items()) / 6
    loss = RnCLoss(temperature=2.0)(features, torch.tensor([0.0, 1.0, -1.0]))
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=0)


def test_gradcheck() -> None:
    features, y = make_batch(4, 2, "integer", seed=1)
    assert torch.autograd.gradcheck(lambda f: RnCLoss(temperature=2.0)(f, y), (features,))


def test_single_label_batch_matches_reference() -> None:
    features, _ = make_batch(5, 2, "continuous", seed=2)
    y = torch.full((5,), 7.0, dtype=torch.float64)
    torch.testing.assert_close(RnCLoss()(features, y), rnc_reference(features, y, 2.0), atol=1e-8, rtol=0)


def test_one_sample_two_views() -> None:
    """Each of the two rows has one pair whose denominator is itself: loss exactly 0, finite gradient."""
    features = torch.randn(1, 2, 4, requires_grad=True)
    loss = RnCLoss()(features, torch.tensor([[3.0]]))
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert torch.isfinite(features.grad).all()


def test_identical_features_are_finite_with_zero_gradient() -> None:
    features = torch.ones(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    loss = RnCLoss()(features, y)
    loss.backward()
    # all logits 0: each pair loss is log(size of its negative set)
    torch.testing.assert_close(loss, rnc_reference(features.detach(), y, 2.0), atol=1e-8, rtol=0)
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_duplicate_features_and_labels_match_reference() -> None:
    features, y = make_batch(5, 2, "integer", seed=3)
    features = features.detach().clone()
    features[1] = features[0]
    features[3, 1] = features[3, 0]
    y[1] = y[0]
    features.requires_grad_()
    loss = RnCLoss()(features, y)
    (grad,) = torch.autograd.grad(loss, features)
    expected = rnc_reference(features, y, 2.0)
    (expected_grad,) = torch.autograd.grad(expected, features)
    # a zero distance becomes sqrt(eps * scale) in the Gram form: agreement to that level
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32(dtype: torch.dtype) -> None:
    features, y = make_batch(6, 2, "integer", seed=4)
    loss = RnCLoss()(features.detach().to(dtype), y)
    assert loss.dtype == torch.float32
    expected = rnc_reference(features.detach().to(dtype).double(), y, 2.0)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(temperature: object) -> None:
    with pytest.raises(ValueError, match="temperature"):
        RnCLoss(temperature=temperature)
