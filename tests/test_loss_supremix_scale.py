"""SupReMix at scale: agreement with the pre-rewrite implementation at N >= 2048, the Mix-pos plan and its
memory budget, and the sampled Mix-pos pairs (``max_mix_pos``)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _loss_references import make_batch
from _supremix_oracle import SupReMixLoss as OracleSupReMixLoss
from supremix_med.losses import SupReMixLoss, _mix_pos


def value_and_grad(loss: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, features)
    return loss.detach(), grad


def test_matches_oracle_at_n_2048(monkeypatch):
    """N = 1024 samples x 2 views, float64: the same value and gradient as the implementation before the rewrite,
    with the default blocks and with about ten blocks recomputed in the backward pass.

    Kept cheap: D = 4, labels 0..199 with window 2 (about 20 rows on each side of an anchor, 0.8 M Mix-pos
    terms), and no Mix-neg (its N x M arithmetic is unchanged and checked at small N)."""
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1024, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 200, (1024,), generator=gen).double()
    options = dict(temperature=0.3, window=2.0, label_range=(0.0, 200.0), mix_neg=False)
    expected = value_and_grad(OracleSupReMixLoss(**options)(features, labels), features)
    loss = SupReMixLoss(**options)
    torch.testing.assert_close(value_and_grad(loss(features, labels), features), expected, rtol=1e-10, atol=1e-12)
    monkeypatch.setattr(_mix_pos, "MIX_POS_BLOCK_PAIRS", 100_000)
    monkeypatch.setattr(_mix_pos, "MIX_POS_RECOMPUTE_PAIRS", 0)
    torch.testing.assert_close(value_and_grad(loss(features, labels), features), expected, rtol=1e-10, atol=1e-12)


def test_continuous_labels_with_tolerance_match_oracle():
    features, labels, lam = make_batch("continuous", 2, seed=4, batch=40, dim=3)
    options = dict(window=1.0, label_tolerance=0.05, detach_mixtures=True, label_range=(0.0, 4.0))
    expected = value_and_grad(OracleSupReMixLoss(**options)(features, labels, lam), features)
    torch.testing.assert_close(value_and_grad(SupReMixLoss(**options)(features, labels, lam), features), expected,
                               rtol=1e-10, atol=1e-12)


def random_windows(seed: int, num: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label-sorted anchors in groups of 1..12 with window lengths 0..30 (shared within a group)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, size=num)
    new_label = np.zeros(sizes.sum(), dtype=bool)
    new_label[np.cumsum(sizes) - sizes] = True
    below, above = (np.repeat(rng.integers(0, 31, size=num), sizes) for _ in range(2))
    return new_label, below, above


@pytest.mark.parametrize("block_terms", [1, 3000, 10**9])
@pytest.mark.parametrize("max_pairs", [None, 200])
def test_plan_covers_every_anchor_once(block_terms, max_pairs):
    new_label, below, above = random_windows(seed=block_terms % 7)
    plan = _mix_pos.plan_mix_pos(new_label, below, above, block_terms, 2000, max_pairs)
    pairs = below * above
    exact = (pairs > 0) & (pairs <= (max_pairs or pairs.max()))
    slot_values, sampled_values = plan.slots.size, plan.sampled.size
    # every anchor with exact pairs sits in exactly one slot whose value is its own; sampled ones likewise
    assert sorted(plan.sampled) == list(np.flatnonzero(pairs > (max_pairs or pairs.max())))
    assert np.array_equal(plan.slots[plan.source[exact]], np.flatnonzero(exact))
    assert np.array_equal(plan.sampled[plan.source[pairs > (max_pairs or pairs.max())] - slot_values],
                          np.flatnonzero(pairs > (max_pairs or pairs.max())))
    assert (plan.source[pairs == 0] == slot_values + sampled_values).all()
    # a chunk holds anchors of one label; blocks tile the chunks in order and hold their groups' windows
    g = plan.chunk_size
    slot_group = np.repeat(plan.chunk_group, g)
    assert np.array_equal(plan.group_first[slot_group], np.maximum.accumulate(np.where(new_label, np.arange(
        new_label.size), 0))[plan.slots])
    assert [b.chunks[0] for b in plan.blocks] == [0] + [b.chunks[1] for b in plan.blocks[:-1]]
    assert plan.blocks[-1].chunks[1] == plan.chunk_group.size
    for block in plan.blocks:
        groups = plan.chunk_group[block.chunks[0]:block.chunks[1]]
        assert (groups.min(), groups.max() + 1) == block.groups
        first = plan.group_first[groups]
        assert block.below == below[first].max() and block.above == above[first].max()
        chunks = block.chunks[1] - block.chunks[0]
        assert chunks == 1 or chunks * g * block.below * block.above <= block_terms


def test_memory_budget_from_free_cuda_memory(monkeypatch):
    """CUDA blocks: half the free + cached-unused memory, capped at 8 GiB, over 4 term-sized tensors."""
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 * gib, 80 * gib))
    block, keep = _mix_pos._memory_budget(torch.device("cuda", 0), 4)
    assert (block, keep) == (2 * gib // (4 * 4), 2 * gib // 4)  # 0.5 x (2 + 2) GiB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (120 * gib, 139 * gib))
    assert _mix_pos._memory_budget(torch.device("cuda", 0), 4) == (8 * gib // 16, 8 * gib // 4)
    assert _mix_pos._memory_budget(torch.device("cpu"), 4) == (_mix_pos.MIX_POS_BLOCK_PAIRS,
                                                             _mix_pos.MIX_POS_RECOMPUTE_PAIRS)


@pytest.mark.parametrize("views", [1, 2])
def test_max_mix_pos_at_least_every_pair_is_exact(views):
    features, labels, lam = make_batch("integer", views, batch=12)
    options = dict(window=2.0, label_range=(0.0, 4.0))
    full = SupReMixLoss(**options)(features, labels, lam)
    bounded = SupReMixLoss(max_mix_pos=(12 * views) ** 2, **options)(features, labels, lam)
    assert torch.equal(full, bounded)


@pytest.mark.parametrize("max_mix_pos", [1, 3])
@pytest.mark.parametrize("detach,reduction", [(False, "anchor_mean"), (True, "anchor_mean"),
                                              (False, "label_balanced")])
def test_max_mix_pos_below_pairs_is_finite(max_mix_pos, detach, reduction):
    features, labels, lam = make_batch("integer", 2, batch=12, seed=2)
    torch.manual_seed(0)
    options = dict(window=2.0, detach_mixtures=detach, reduction=reduction)
    value, grad = value_and_grad(SupReMixLoss(max_mix_pos=max_mix_pos, **options)(features, labels, lam), features)
    assert torch.isfinite(value) and grad.shape == features.shape and torch.isfinite(grad).all()
    assert value != SupReMixLoss(**options)(features, labels, lam)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_max_mix_pos_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_mix_pos"):
        SupReMixLoss(max_mix_pos=bad)


def test_drawn_pairs_are_uniform():
    """60,000 draws over a 3 x 4 window: Pearson's chi-square with 11 degrees of freedom stays below 38.6, its
    0.9999 quantile (fixed generator, so deterministic; an off-by-one row or column gives thousands)."""
    draws = 60000
    low, high = _mix_pos.draw_mix_pos_pairs(torch.tensor([3]), torch.tensor([4]), draws,
                                           generator=torch.Generator().manual_seed(11))
    assert low.shape == high.shape == (1, draws)
    counts = torch.bincount((low * 4 + high).flatten(), minlength=12).double()
    assert counts.numel() == 12
    expected = draws / 12
    assert ((counts - expected) ** 2 / expected).sum() < 38.6


def test_sampled_terms_are_unbiased():
    """2000 anchors with one label and one embedding each estimate the same Mix-pos sum and sum of exponentials
    from K = 3 of their 12 pairs; the means of the independent estimates match the exact values to within
    5 standard errors (fixed seed: deterministic)."""
    gen = torch.Generator().manual_seed(3)
    window_rows = torch.nn.functional.normalize(torch.randn(7, 6, generator=gen, dtype=torch.float64), dim=1)
    anchor = torch.nn.functional.normalize(torch.randn(1, 6, generator=gen, dtype=torch.float64), dim=1)
    z = torch.cat([window_rows, anchor.expand(2000, 6)])
    labels = torch.tensor([4.0] * 3 + [6.0] * 4 + [5.0] * 2000, dtype=torch.float64)
    sim = z @ z.T
    options = dict(window=1.0, label_tolerance=0.0, temperature=0.5, normalize=True)
    exact_lse, exact_total, count = _mix_pos.mix_pos_terms(sim, z, sim, labels, labels, **options)
    torch.manual_seed(21)
    lse, total, sampled_count = _mix_pos.mix_pos_terms(sim, z, sim, labels, labels, max_pairs=3, **options)
    assert torch.equal(count, sampled_count) and (count[7:] == 12).all() and (count[:7] == 0).all()
    for estimate, exact in ((total[7:], exact_total[7]), (lse[7:].exp(), exact_lse[7].exp())):
        assert estimate.std() > 0  # really sampled
        assert (estimate.mean() - exact).abs() < 5 * estimate.std() / math.sqrt(2000)
    torch.manual_seed(21)  # the same draws when the Gram matrix is left for the sampler to build (distributed)
    rebuilt = _mix_pos.mix_pos_terms(sim, z, None, labels, labels, max_pairs=3, **options)
    torch.testing.assert_close(rebuilt, (lse, total, count), rtol=1e-12, atol=1e-12)


def load_loss_benchmark():
    """benchmarks/loss_speed.py as a module (its launch and sync counters are what this test relies on)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_speed.py"
    spec = importlib.util.spec_from_file_location("loss_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_syncs_do_not_grow_with_the_number_of_blocks(monkeypatch):
    """One device-to-host read for the Mix-pos plan (plus the input check's), however many blocks; the
    implementation before the rewrite read once per block (the counter sees that)."""
    counters = load_loss_benchmark()
    features, labels, lam = make_batch("integer", 2, batch=12, seed=1)

    def syncs(loss_class) -> dict[str, int]:
        loss = loss_class(window=2.0, label_range=(0.0, 4.0))
        return counters.count_launches_and_syncs(lambda: loss(features, labels, lam), "cpu")

    new, old = syncs(SupReMixLoss), syncs(OracleSupReMixLoss)
    monkeypatch.setattr(_mix_pos, "MIX_POS_BLOCK_PAIRS", 50)
    monkeypatch.setattr("_supremix_oracle.MIX_POS_BLOCK_PAIRS", 50)
    new_blocked, old_blocked = syncs(SupReMixLoss), syncs(OracleSupReMixLoss)
    # the given mix_neg_lambda is checked on the host (1), the features and labels (1), the Mix-pos plan (1)
    assert new["host_reads"] == new_blocked["host_reads"] == 3
    assert new["dynamic_shape_ops"] == new_blocked["dynamic_shape_ops"] == 0
    assert old_blocked["syncs"] > old["syncs"] + 10
    assert new_blocked["aten_ops"] > new["aten_ops"] > 0
