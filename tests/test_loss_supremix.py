"""SupReMixLoss: agreement with the materialising reference, gradients, Theorem 1, edge cases, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from _loss_references import make_batch, reference_supremix
from supremix_med.losses import SupConLoss, SupReMixLoss, get_loss
from supremix_med.losses import _mix_pos

FLAG_NAMES = ("mix_neg", "mix_pos", "distance_weight", "normalize_mixtures", "detach_mixtures")
ALL_FLAGS = [dict(zip(FLAG_NAMES, values)) for values in itertools.product((False, True), repeat=5)]


def flag_id(flags: dict[str, bool]) -> str:
    return "-".join(name for name, on in flags.items() if on) or "none"


def value_and_grad(loss: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


@pytest.mark.parametrize("label_range", [None, (-1.0, 6.0)])
@pytest.mark.parametrize("flags", ALL_FLAGS, ids=flag_id)
@pytest.mark.parametrize("kind,views", [("integer", 1), ("integer", 2), ("continuous", 1), ("continuous", 2)])
def test_matches_materialising_reference(kind, views, flags, label_range):
    features, labels, lam = make_batch(kind, views, seed=views)
    options = dict(temperature=0.3, window=1.5, label_range=label_range, **flags)
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam, **options), features)
    assert value != 0  # some anchor has a positive
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("flags", ALL_FLAGS[::3], ids=flag_id)
@pytest.mark.parametrize("kind,views", [("integer", 1), ("integer", 2), ("continuous", 1), ("continuous", 2)])
def test_label_balanced_matches_materialising_reference(kind, views, flags):
    """The paper's Eq. 6 (label-wise sums of per-positive terms, normalised by sum |P_i| / k_m)."""
    features, labels, lam = make_batch(kind, views, seed=views + 2)
    options = dict(temperature=0.3, window=1.5, label_range=(-1.0, 6.0), reduction="label_balanced", **flags)
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam, **options), features)
    assert value != 0
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


def test_label_balanced_with_tolerance_matches_reference():
    """Continuous labels: k_m counts the rows within the tolerance of the anchor's label."""
    features, labels, lam = make_batch("continuous", 2, seed=3)
    options = dict(window=1.5, label_tolerance=0.4, label_range=(0.0, 4.0), reduction="label_balanced")
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam, **options), features)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


def test_label_balanced_single_group_is_anchor_mean():
    """One label: every anchor has k_m - 1 positives and weight (k_m - 1) / k_m, so Eq. 6 normalised is the mean."""
    features, _, lam = make_batch("integer", 2, batch=5)
    labels = torch.full((5,), 3.0, dtype=torch.float64)
    balanced = SupReMixLoss(reduction="label_balanced")(features, labels, lam)
    torch.testing.assert_close(balanced, SupReMixLoss()(features, labels, lam), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("labels,any_positive", [([0.0, 1.5, 3.0, 7.0], False), ([0.0, 0.0, 20.0, 40.0], True),
                                                 ([5.0, 5.0, 5.0, 5.0], True)],
                         ids=["no-positive", "one-group-with-positives", "one-group"])
def test_label_balanced_edge_cases_are_finite(labels, any_positive):
    """Groups without positives weigh 0; a batch without any positive gives an attached 0."""
    features = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(labels, dtype=torch.float64)
    options = dict(window=1.0, mix_neg=False, reduction="label_balanced")
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels), features)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    if not any_positive:  # Mix-pos needs y_j < y_i < y_k within the window: none here
        assert value == 0 and grad.abs().max() == 0
    torch.testing.assert_close(value, reference_supremix(features, labels, None, **options).detach(),
                               rtol=1e-10, atol=1e-12)


def test_reduction_and_max_mix_pos_reach_get_loss():
    loss = get_loss("supremix", window=2.0, reduction="label_balanced", max_mix_pos=64)
    assert isinstance(loss, SupReMixLoss) and loss.reduction == "label_balanced" and loss.max_mix_pos == 64


def test_label_tolerance_matches_reference():
    features, labels, lam = make_batch("continuous", 2, seed=3)
    options = dict(window=1.5, label_tolerance=0.4, label_range=(0.0, 4.0))
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam, **options), features)
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


def test_float32_matches_reference():
    features, labels, lam = make_batch("integer", 2, dtype=torch.float32)
    value = SupReMixLoss(window=2.0)(features, labels, lam)
    assert value.dtype == torch.float32
    reference = reference_supremix(features.double(), labels.double(), lam.double(), window=2.0)
    torch.testing.assert_close(value.double(), reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extensions_off_equals_supcon(views, dtype):
    features, labels, _ = make_batch("integer", views, dtype=dtype)
    plain = SupReMixLoss(temperature=0.2, mix_neg=False, mix_pos=False, distance_weight=False)
    value, grad = value_and_grad(plain(features, labels), features)
    supcon_value, supcon_grad = value_and_grad(SupConLoss(temperature=0.2)(features, labels), features)
    torch.testing.assert_close(value, supcon_value, rtol=0, atol=0)
    torch.testing.assert_close(grad, supcon_grad)


@pytest.mark.parametrize("reduction", ["anchor_mean", "label_balanced"])
@pytest.mark.parametrize("flags", [ALL_FLAGS[-2], dict(ALL_FLAGS[-2], normalize_mixtures=False),
                                   dict(ALL_FLAGS[-2], mix_neg=False, distance_weight=False)], ids=flag_id)
def test_gradcheck(flags, reduction):
    """Finite differences (detached mixtures are a stop-gradient, checked against the reference instead)."""
    features, labels, lam = make_batch("continuous", 2, batch=4, dim=3)
    loss = SupReMixLoss(window=2.0, label_range=(0.0, 4.0), reduction=reduction, **flags)
    assert torch.autograd.gradcheck(lambda f: loss(f, labels, lam), (features,))


def test_recomputed_mix_pos_blocks_match_one_block(monkeypatch):
    """Mix-pos terms split into many blocks, recomputed in the backward pass, give the same value and gradient."""
    features, labels, lam = make_batch("continuous", 2, batch=10)
    loss = SupReMixLoss(window=3.0)
    expected = value_and_grad(loss(features, labels, lam), features)
    monkeypatch.setattr(_mix_pos, "MIX_POS_BLOCK_PAIRS", 20)
    monkeypatch.setattr(_mix_pos, "MIX_POS_RECOMPUTE_PAIRS", 0)
    blocked = value_and_grad(loss(features, labels, lam), features)
    torch.testing.assert_close(blocked, expected, rtol=1e-12, atol=1e-12)


def test_theorem1_distance_weights_magnify_far_negatives():
    """Theorem 1 (distance magnifying) of the SupReMix paper.

    For an anchor i with a near negative n and a far negative f (|y_i - y_n| < |y_i - y_f|), the gradient
    of L_i w.r.t. a negative's similarity is dL_i/ds_ik = w_ik exp(s_ik / tau) / (tau Z_i). So the ratio
    |dL/ds_if| / |dL/ds_in| with the weights w = (1 + |y_i - y_k|) / R is the unweighted ratio times
    w_if / w_in = (1 + |y_i - y_f|) / (1 + |y_i - y_n|) > 1: far negatives are pushed away harder.

    Anchor i and its positive p share the embedding e1 and label 0; n (label 1) and f (label 4) are unit
    vectors at angles theta_n, theta_f from e1 and have no positive themselves. The loss then depends on
    x_k only through s_ik = s_pk = cos(theta_k), and |dL/dx_k| = |dL/ds_ik + dL/ds_pk| sin(theta_k).
    """
    theta = {"near": 1.0, "far": 0.6}
    rows = [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [math.cos(theta["near"]), math.sin(theta["near"]), 0.0],
            [math.cos(theta["far"]), 0.0, math.sin(theta["far"])]]
    labels = torch.tensor([0.0, 0.0, 1.0, 4.0], dtype=torch.float64)

    def similarity_grad_ratio(distance_weight: bool) -> float:
        features = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
        loss = SupReMixLoss(temperature=0.5, window=0.5, label_range=(0.0, 10.0), mix_neg=False,
                            mix_pos=False, distance_weight=distance_weight)
        (grad,) = torch.autograd.grad(loss(features, labels), features)
        near, far = grad[2].norm() / math.sin(theta["near"]), grad[3].norm() / math.sin(theta["far"])
        return float(far / near)

    weighted, unweighted = similarity_grad_ratio(True), similarity_grad_ratio(False)
    assert weighted > unweighted
    assert weighted / unweighted == pytest.approx((1 + 4.0) / (1 + 1.0), rel=1e-10)


def test_mix_pos_only_anchor_counted():
    """Labels 0, 1, 2 (one view): only the middle anchor has a positive, the (0, 2) mixture at a = 1/2."""
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    value = SupReMixLoss(temperature=0.5, window=1.0, mix_neg=False, distance_weight=False)(features, labels)
    z = features.detach()
    mixture = (z[0] + z[2]) / (z[0] + z[2]).norm()
    logits = torch.stack([z[1] @ z[0], z[1] @ z[2], z[1] @ mixture]) / 0.5
    expected = torch.logsumexp(logits, 0) - logits[2]
    torch.testing.assert_close(value.detach(), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, reference_supremix(features, labels, None, temperature=0.5, window=1.0,
                                                         mix_neg=False, distance_weight=False))


@pytest.mark.parametrize("flags", ALL_FLAGS[::7], ids=flag_id)
@pytest.mark.parametrize("labels", [[2.0, 2.0, 2.0, 2.0], [0.0, 1.5, 3.0, 7.0]], ids=["one-label", "distinct"])
def test_one_label_or_distinct_labels(flags, labels):
    """One label for the batch, and distinct labels with no positive (unless Mix-pos finds one)."""
    features, _, lam = make_batch("integer", 1, batch=4)
    labels = torch.tensor(labels, dtype=torch.float64)
    options = dict(window=2.0, **flags)
    value, grad = value_and_grad(SupReMixLoss(**options)(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam, **options), features)
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("flags", ALL_FLAGS[::5], ids=flag_id)
@pytest.mark.parametrize("batch", [5, 1])
def test_no_positive_gives_attached_zero(flags, batch):
    features = torch.randn(batch, 4, requires_grad=True)
    labels = torch.arange(batch, dtype=torch.float32) * 10  # distinct, farther apart than the window
    value = SupReMixLoss(window=2.0, **flags)(features, labels)
    assert value.item() == 0.0 and value.grad_fn is not None
    value.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_single_sample_two_views():
    features, labels, lam = make_batch("integer", 2, batch=1)
    value, grad = value_and_grad(SupReMixLoss()(features, labels, lam), features)
    ref_value, ref_grad = value_and_grad(reference_supremix(features, labels, lam), features)
    torch.testing.assert_close(value, ref_value, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("flags", ALL_FLAGS, ids=flag_id)
def test_degenerate_geometry_stays_finite(flags):
    """Identical and opposite embeddings, with lam = 1/2 (a zero mixture): no NaN in value or gradient."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([1.0, 1.0, 2.0, 0.0, 2.0])  # Mix-pos (row 3, row 2) of anchor 0 is zero too
    value = SupReMixLoss(window=1.0, label_range=(0.0, 2.0), **flags)(features, labels, torch.full((5, 5), 0.5))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(features.grad).all()


def test_random_lambda_reproducible_with_seed():
    features, labels, _ = make_batch("integer", 2)
    loss = SupReMixLoss(window=2.0)
    torch.manual_seed(7)
    first = loss(features, labels)
    torch.manual_seed(7)
    second = loss(features, labels)
    third = loss(features, labels)
    assert torch.isfinite(first) and torch.equal(first, second)
    assert not torch.equal(second, third)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_computed_in_float32(dtype, tol):
    features, labels, lam = make_batch("integer", 2, dtype=torch.float32)
    expected = SupReMixLoss(window=2.0)(features, labels, lam)
    value = SupReMixLoss(window=2.0)(features.detach().to(dtype).requires_grad_(True), labels, lam)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=tol, atol=tol)


def test_autocast_bfloat16():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 6)
    inputs, labels = torch.randn(6, 2, 8), torch.randint(0, 4, (6,)).float()
    lam = torch.rand(12, 12)
    loss = SupReMixLoss(window=2.0)
    expected = loss(head(inputs), labels, lam)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = head(inputs)
        value = loss(features, labels, lam)
    assert features.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.backward()
    torch.testing.assert_close(value, expected, rtol=3e-2, atol=3e-2)
    assert torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(window=-1.0), "window"), (dict(beta=(0.0, 8.0)), "beta"), (dict(beta=(2.0,)), "beta"),
    (dict(beta=2.0), "beta"), (dict(label_range=(5.0, 5.0)), "label_range"),
    (dict(label_range=(0.0, 1.0, 2.0)), "label_range"), (dict(label_range=(0.0, float("inf"))), "label_range"),
    (dict(label_tolerance=-0.1), "label_tolerance"), (dict(reduction="mean"), "reduction"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SupReMixLoss(**kwargs)


@pytest.mark.parametrize("features,labels,lam,match", [
    (torch.randn(4), torch.zeros(4), None, r"\[B, D\] or \[B, V, D\]"),
    (torch.randn(4, 2, 3, 5), torch.zeros(4), None, r"\[B, D\] or \[B, V, D\]"),
    (torch.randn(4, 3), torch.zeros(5), None, "expected 4 labels"),
    (torch.randn(4, 3), torch.zeros(4, 2), None, r"\[B\] or \[B, 1\]"),
    (torch.full((4, 3), float("nan")), torch.zeros(4), None, "NaN"),
    (torch.randn(4, 3), torch.tensor([0.0, 1.0, float("nan"), 2.0]), None, "NaN"),
    (torch.randn(4, 2, 3), torch.zeros(4), torch.rand(4, 4), r"mix_neg_lambda must be a tensor of shape"),
    (torch.randn(4, 3), torch.zeros(4), torch.full((4, 4), 1.5), r"mix_neg_lambda values must lie in \[0, 1\]"),
])
def test_bad_inputs(features, labels, lam, match):
    with pytest.raises(ValueError, match=match):
        SupReMixLoss()(features, labels, lam)
