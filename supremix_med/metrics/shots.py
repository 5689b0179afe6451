"""Shot-wise metrics for imbalanced regression (many / medium / few-shot label regions).

Following the deep imbalanced regression benchmarks (Yang et al. 2021, "Delving into Deep Imbalanced
Regression"), the label axis is cut into bins of ``bin_width`` on one grid shared by training and test labels,
``bin = floor((y - origin) / bin_width)``, and a test sample's shot is set by how many TRAINING samples fall in
its bin: ``many`` if more than ``many`` (100), ``few`` if fewer than ``few`` (20), ``medium`` otherwise.
Test labels outside the training range land in bins with no training samples, i.e. ``few``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .regression import REGRESSION_METRICS, as_vector

__all__ = ["SHOT_GROUPS", "shot_groups", "shot_metrics"]

SHOT_GROUPS = ("many", "medium", "few")
# Labels within this fraction of a bin below an edge count as on the edge: guards 0.3 / 0.1 = 2.9999... and labels
# that went through float32 (caches, batches: 2.8 becomes 2.7999999523, 6e-8 relative) for up to ~100 bins.
_EDGE_TOLERANCE = 1e-5


def _bins(values: np.ndarray, origin: float, bin_width: float) -> np.ndarray:
    return np.floor((values - origin) / bin_width + _EDGE_TOLERANCE).astype(np.int64)


def shot_groups(
    target: Any,
    train_targets: Any,
    bin_width: float = 1.0,
    many: int = 100,
    few: int = 20,
    origin: float | None = None,
) -> np.ndarray:
    """Shot group (``"many"``, ``"medium"`` or ``"few"``) of every test label: [N] -> [N] strings.

    Args:
        target: test labels [N] or [N, 1].
        train_targets: training labels [M] or [M, 1]; their bin counts decide the groups.
        bin_width: bin width in label units.
        many: a bin with more than this many training samples is many-shot.
        few: a bin with fewer than this many training samples is few-shot.
        origin: left edge of bin 0; defaults to the smallest training label.
    """
    if bin_width <= 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}.")
    if few > many:
        raise ValueError(f"few ({few}) must not exceed many ({many}).")
    test = as_vector(target, "target")
    train = as_vector(train_targets, "train_targets")
    if train.size == 0:
        raise ValueError("train_targets is empty; shot groups are defined by training label counts.")
    start = float(train.min()) if origin is None else origin
    bins, counts = np.unique(_bins(train, start, bin_width), return_counts=True)
    test_bins = _bins(test, start, bin_width)
    pos = np.clip(np.searchsorted(bins, test_bins), 0, bins.size - 1)
    n_train = np.where(bins[pos] == test_bins, counts[pos], 0)
    return np.where(n_train > many, "many", np.where(n_train < few, "few", "medium"))


def shot_metrics(
    pred: Any,
    target: Any,
    train_targets: Any,
    bin_width: float = 1.0,
    many: int = 100,
    few: int = 20,
    metrics: Sequence[str] = ("mae", "mse", "gm"),
    origin: float | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics on all test samples and on each shot group.

    Args:
        pred: predictions [N] or [N, 1].
        target: test labels [N] or [N, 1].
        train_targets, bin_width, many, few, origin: define the groups, see :func:`shot_groups`.
        metrics: names from :data:`~supremix_med.metrics.regression.REGRESSION_METRICS`.

    Returns:
        ``{"all" | "many" | "medium" | "few": {metric: value, ..., "n": sample count}}``. A group with no test
        sample has ``n = 0`` and every metric nan.
    """
    unknown = [m for m in metrics if m not in REGRESSION_METRICS]
    if unknown:
        raise ValueError(f"Unknown metric(s) {unknown}; choose from {sorted(REGRESSION_METRICS)}.")
    p, t = as_vector(pred, "pred"), as_vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must hold the same number of values, got {p.shape[0]} and {t.shape[0]}.")
    groups = shot_groups(t, train_targets, bin_width=bin_width, many=many, few=few, origin=origin)
    masks = {"all": np.ones(t.shape, dtype=bool), **{g: groups == g for g in SHOT_GROUPS}}
    results: dict[str, dict[str, float]] = {}
    for group, mask in masks.items():
        n = int(mask.sum())
        values = {m: REGRESSION_METRICS[m](p[mask], t[mask]) if n else float("nan") for m in metrics}
        results[group] = {**values, "n": n}
    return results
