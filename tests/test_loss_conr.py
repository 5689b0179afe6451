"""ConRLoss against a slow reference written from the formula in the module docstring."""

from __future__ import annotations

import math

import pytest
import torch

from _loss_references import random_batch
from supremix_med.losses.conr import ConRLoss


def per_row(values: torch.Tensor, views: int) -> list[float]:
    """Per-sample values repeated per view, view-major, as a python list."""
    flat = [float(v) for v in values.reshape(-1)]
    return flat * views


def conr_reference(features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                   anchor_weights: torch.Tensor | None = None, temperature: float = 0.2, window: float = 1.0,
                   prediction_window: float = 1.0, pushing_weight: float = 0.01,
                   label_scale: float = 1.0) -> torch.Tensor:
    """Sum over selected anchors of -1/|P| sum_p log(exp(s_ip) / (sum_P exp + sum_N S exp)), divided by N."""
    if features.dim() == 2:
        features = features[:, None]
    batch, views = features.shape[:2]
    rows = [features[b, v] / torch.linalg.vector_norm(features[b, v]) for v in range(views) for b in range(batch)]
    ys, ps = per_row(labels, views), per_row(predictions, views)
    etas = per_row(torch.ones(batch) if anchor_weights is None else anchor_weights, views)
    n = len(rows)
    total = features.sum() * 0.0
    for i in range(n):
        sim = [torch.dot(rows[i], rows[a]) / temperature for a in range(n)]
        positives = [a for a in range(n) if a != i and abs(ys[i] - ys[a]) <= window]
        negatives = [a for a in range(n) if abs(ys[i] - ys[a]) > window and abs(ps[i] - ps[a]) <= prediction_window]
        if not positives or not negatives:
            continue
        denominator = sum(torch.exp(sim[p]) for p in positives) + sum(
            etas[i] * math.exp(pushing_weight * abs(ys[i] - ys[k]) / label_scale) * torch.exp(sim[k])
            for k in negatives)
        total = total - sum(torch.log(torch.exp(sim[p]) / denominator) for p in positives) / len(positives)
    return total / n


def make_batch(batch: int, views: int, labels: str, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, labels and predictions with plenty of positives and confused (negative) pairs."""
    gen = torch.Generator().manual_seed(seed)
    features, y = random_batch(batch, views, labels, dim=4, classes=4, scale=4.0, generator=gen)
    predictions = torch.rand(batch, generator=gen, dtype=torch.float64) * 2
    return features, y, predictions


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("labels", ["integer", "continuous"])
def test_matches_reference_value_and_gradient(views: int, labels: str) -> None:
    features, y, predictions = make_batch(8, views, labels)
    weights = torch.rand(8, dtype=torch.float64) + 0.5
    options = dict(temperature=0.3, window=1.0, prediction_window=0.8, pushing_weight=0.7)
    loss = ConRLoss(**options, label_range=(0.0, 4.0))(features, y, predictions[:, None], anchor_weights=weights)
    expected = conr_reference(features, y, predictions, weights, label_scale=4.0, **options)
    assert expected.item() > 0  # the batch does select anchors
    (grad,) = torch.autograd.grad(loss, features)
    (expected_grad,) = torch.autograd.grad(expected, features)
    assert loss.dtype == torch.float64 and loss.dim() == 0
    torch.testing.assert_close(loss, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(grad, expected_grad, atol=1e-8, rtol=0)


def three_samples() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors 0 and 1 are each other's positive and both have sample 2 (label 5) as confused negative."""
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64)
    return features, torch.tensor([0.0, 0.5, 5.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_temperature_is_the_one_given(temperature: float) -> None:
    """Closed form L_i = log(1 + S exp((s_in - s_ip) / tau)); no exp(0) = 1 terms from non-positives."""
    features, y, predictions = three_samples()
    loss = ConRLoss(temperature=temperature, pushing_weight=0.1)(features, y, predictions)
    cosine = features @ features.T
    push = math.exp(0.1 * 5.0), math.exp(0.1 * 4.5)
    expected = (math.log1p(push[0] * math.exp((cosine[0, 2] - cosine[0, 1]) / temperature))
                + math.log1p(push[1] * math.exp((cosine[1, 2] - cosine[1, 0]) / temperature))) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)


def test_unrelated_sample_does_not_enter_any_term() -> None:
    """A sample that is nobody's positive or negative leaves every anchor's loss unchanged."""
    features, y, predictions = three_samples()
    neutral = torch.tensor([[0.3, -0.9]], dtype=torch.float64, requires_grad=True)
    loss = ConRLoss()(features, y, predictions)
    with_neutral = ConRLoss()(torch.cat([features, neutral]), torch.cat([y, y.new_tensor([50.0])]),
                              torch.cat([predictions, predictions.new_tensor([40.0])]))
    (grad,) = torch.autograd.grad(with_neutral, neutral)
    torch.testing.assert_close(with_neutral * 4, loss * 3, atol=1e-12, rtol=0)  # mean over 4 rows, not 3
    assert torch.equal(grad, torch.zeros_like(grad))


def test_gradcheck() -> None:
    features, y, predictions = make_batch(5, 2, "integer", seed=1)
    assert torch.autograd.gradcheck(lambda f: ConRLoss(prediction_window=0.8)(f, y, predictions), (features,))


@pytest.mark.parametrize(
    ("labels", "predictions", "views"),
    [
        ([2.0, 2.0, 2.0, 2.0], [0.0, 5.0, 1.0, 9.0], 2),  # one label: no negatives
        ([0.0, 10.0, 20.0, 30.0], [1.0, 1.0, 1.0, 1.0], 1),  # no positives
        ([0.0, 10.0, 20.0, 30.0], [0.0, 10.0, 20.0, 30.0], 2),  # perfect predictions: nothing confused
        ([3.0], [3.0], 1),
        ([3.0], [3.0], 2),
    ],
)
@pytest.mark.parametrize("zero_weights", [False, True])  # eta = 0: rows of nothing but -inf
def test_nothing_selected_gives_attached_zero(labels: list[float], predictions: list[float], views: int,
                                              zero_weights: bool) -> None:
    shape = (len(labels), 3) if views == 1 else (len(labels), views, 3)
    features = torch.randn(shape, requires_grad=True)
    weights = torch.zeros(len(labels)) if zero_weights else None
    loss = ConRLoss()(features, torch.tensor(labels), torch.tensor(predictions), anchor_weights=weights)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_identical_features_and_duplicate_labels_match_reference() -> None:
    features = torch.ones(4, 2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 0.0, 3.0, 3.0], dtype=torch.float64)
    predictions = torch.ones(4, dtype=torch.float64)
    loss = ConRLoss()(features, y, predictions)
    loss.backward()
    torch.testing.assert_close(loss, conr_reference(features.detach(), y, predictions), atol=1e-8, rtol=0)
    assert torch.isfinite(features.grad).all()


def test_zero_anchor_weights_remove_the_negatives() -> None:
    features, y, predictions = make_batch(6, 2, "integer", seed=2)
    loss = ConRLoss()(features, y, predictions, anchor_weights=torch.zeros(6))
    loss.backward()
    torch.testing.assert_close(loss, conr_reference(features, y, predictions, torch.zeros(6)), atol=1e-8, rtol=0)
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_float32(dtype: torch.dtype) -> None:
    features, y, predictions = make_batch(8, 2, "integer", seed=3)
    features = features.detach().to(dtype)
    loss = ConRLoss()(features, y.to(dtype), predictions.to(dtype))
    assert loss.dtype == torch.float32
    expected = conr_reference(features.double(), y, predictions.to(dtype).double())
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


@pytest.mark.parametrize(
    ("predictions", "anchor_weights", "match"),
    [
        (torch.zeros(3), None, r"predictions of shape \[4\]"),
        (torch.zeros(4, 2), None, r"predictions of shape \[4\]"),
        (torch.tensor([0.0, float("nan"), 0.0, 0.0]), None, "predictions contain NaN"),
        ([0.0, 0.0, 0.0, 0.0], None, "predictions must be a torch tensor"),
        (torch.zeros(4), torch.ones(5), r"anchor_weights of shape \[4\]"),
        (torch.zeros(4), -torch.ones(4), "non-negative"),
    ],
)
def test_bad_predictions_or_weights_raise(predictions: object, anchor_weights: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConRLoss()(torch.randn(4, 2, 3), torch.zeros(4), predictions, anchor_weights=anchor_weights)


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (torch.randn(4), torch.zeros(4), "shape"),
        (torch.randn(4, 3), torch.zeros(5), "expected 4 labels"),
        (torch.full((4, 3), float("inf")), torch.zeros(4), "NaN or Inf"),
    ],
)
def test_bad_features_or_labels_raise(features: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConRLoss()(features, labels, torch.zeros(4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(window=-1.0), "window"),
        (dict(prediction_window=float("inf")), "prediction_window"),
        (dict(pushing_weight=-0.1), "pushing_weight"),
        (dict(label_range=(1.0, 1.0)), "lo < hi"),
        (dict(label_range=(0.0, float("inf"))), "lo < hi"),
        (dict(label_range=(0.0, 1.0, 2.0)), "pair"),
        (dict(label_range="ab"), "pair"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConRLoss(**kwargs)
