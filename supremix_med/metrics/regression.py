"""Regression metrics on predictions and targets in label units (e.g. years of age).

Every function takes ``pred`` and ``target`` as numpy arrays, torch tensors or sequences of shape [N] or [N, 1]
(the two may differ in which of these they use), computes in float64 and returns a Python float. A NaN in the
inputs gives NaN (as numpy does); empty inputs or different lengths raise ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import stats

__all__ = ["mae", "mse", "gm", "pearson_r", "spearman_rho", "regression_metrics", "REGRESSION_METRICS", "as_vector"]

#: Floor on |error| in :func:`gm`, in label units.
GM_FLOOR = 1e-8


def as_vector(values: Any, name: str = "values") -> np.ndarray:
    """Return ``values`` ([N] or [N, 1], numpy / torch / sequence) as a float64 array [N]."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64)  # also covers bfloat16, which numpy cannot read
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape [N] or [N, 1], got {array.shape}.")
    return array


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = as_vector(pred, "pred"), as_vector(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target must hold the same number of values, got {p.shape[0]} and {t.shape[0]}.")
    if p.size == 0:
        raise ValueError("pred and target are empty; a metric needs at least one sample.")
    return p, t


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error ``mean(|pred - target|)``, in label units."""
    p, t = _pair(pred, target)
    return float(np.mean(np.abs(p - t)))


def mse(pred: Any, target: Any) -> float:
    """Mean squared error ``mean((pred - target)^2)``, in squared label units."""
    p, t = _pair(pred, target)
    return float(np.mean(np.square(p - t)))


def gm(pred: Any, target: Any, floor: float = GM_FLOOR) -> float:
    """Geometric mean of the absolute errors, ``exp(mean(log(max(|pred - target|, floor))))``, in label units.

    The mean runs in log space (``scipy.stats.gmean``). Errors are floored at ``floor`` (default 1e-8) so that
    one exactly correct prediction does not make the whole metric 0 (log 0 = -inf); the floor only changes
    samples whose error is below it.
    """
    p, t = _pair(pred, target)
    return float(stats.gmean(np.maximum(np.abs(p - t), floor)))


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def _correlation(pred: Any, target: Any, statistic: Callable) -> float:
    """``statistic(p, t).statistic`` on the flattened pair, or nan when either input is constant (N = 1 too)."""
    p, t = _pair(pred, target)
    if _is_constant(p) or _is_constant(t):
        return float("nan")
    return float(statistic(p, t).statistic)


def pearson_r(pred: Any, target: Any) -> float:
    """Pearson correlation of ``pred`` and ``target`` (``scipy.stats.pearsonr``).

    Returns nan only when either input is constant (including N = 1), where the correlation is undefined.
    """
    return _correlation(pred, target, stats.pearsonr)


def spearman_rho(pred: Any, target: Any) -> float:
    """Spearman rank correlation of ``pred`` and ``target`` (``scipy.stats.spearmanr``, ties get mean ranks).

    Returns nan only when either input is constant (including N = 1), where the correlation is undefined.
    """
    return _correlation(pred, target, stats.spearmanr)


#: Metric functions by the names used in results files and configs.
REGRESSION_METRICS: dict[str, Callable[[Any, Any], float]] = {
    "mae": mae,
    "mse": mse,
    "gm": gm,
    "pearson_r": pearson_r,
    "spearman_rho": spearman_rho,
}


def regression_metrics(pred: Any, target: Any) -> dict[str, float | int]:
    """All of :data:`REGRESSION_METRICS` by name, plus ``"n"``: the number of samples (int)."""
    p, t = _pair(pred, target)
    return {**{name: fn(p, t) for name, fn in REGRESSION_METRICS.items()}, "n": int(p.size)}
