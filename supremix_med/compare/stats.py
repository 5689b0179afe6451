"""The arithmetic of a paired comparison: a t-interval over seeds and a paired bootstrap over test samples.

Both intervals are about a difference ``method - reference`` measured on the same seed (the same split, data
order and initial weights; see :mod:`supremix_med.compare`):

- :func:`t_interval`: the differences of one metric over S seeds, mean ± ``t_{(1+c)/2, S-1} * sd / sqrt(S)``
  (``scipy.stats.t``; sd with S - 1 degrees of freedom). It answers "how much would this change with another
  seed" and needs S >= 2.
- :func:`paired_bootstrap`: within one seed, the test samples are resampled with replacement (the same
  resample for both methods, paired by sample id) and the metric's difference is recomputed on each
  resample; the interval is the percentile interval of those differences. It answers "how much of this
  seed's difference could the finite test set explain", and holds the model fixed.

Resample ``b`` of a bootstrap draws its ``n`` indices as
``numpy.random.default_rng([*entropy, b]).integers(0, n, size=n)``: reproducible, independent of how the
resamples are batched, and the same for every method and metric that passes the same ``entropy`` and ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from supremix_med.metrics import REGRESSION_METRICS
from supremix_med.metrics.regression import GM_FLOOR, as_vector

__all__ = ["Interval", "t_interval", "bootstrap_indices", "resampled_metric", "paired_bootstrap",
           "BOOTSTRAP_RESAMPLES", "CONFIDENCE"]

#: Default number of bootstrap resamples.
BOOTSTRAP_RESAMPLES = 2000
#: Default confidence level of both intervals.
CONFIDENCE = 0.95
#: Most index values held at once while resampling (resamples are evaluated in row blocks of this size).
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval.

    Attributes:
        estimate: the mean difference over seeds (:func:`t_interval`) or the difference on the whole test set
            (:func:`paired_bootstrap`); nan when there is nothing to estimate from.
        low, high: the interval's bounds (nan when undefined: fewer than 2 seeds, or no finite resample).
        n: seeds (t-interval) or paired test samples (bootstrap) it rests on.
        confidence: the interval's confidence level, e.g. 0.95.
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: nan becomes None."""
        def clean(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {"estimate": clean(self.estimate), "low": clean(self.low), "high": clean(self.high), "n": self.n,
                "confidence": self.confidence}


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")


def t_interval(differences: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean of paired per-seed differences ``[S] -> Interval``.

    Non-finite entries (a seed where either run failed) are dropped first; ``n`` counts the rest. With one
    difference the estimate is that difference and the interval is undefined (nan); with none, all is nan.
    """
    _check_confidence(confidence)
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    n = int(values.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(values.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def bootstrap_indices(n: int, entropy: Sequence[int], start: int, stop: int) -> np.ndarray:
    """Indices of resamples ``start .. stop-1`` of ``n`` samples: ``[stop - start, n]`` int64 (module docstring)."""
    return np.stack([np.random.default_rng([*entropy, b]).integers(0, n, size=n) for b in range(start, stop)])


def _log_abs_error(errors: np.ndarray) -> np.ndarray:
    """log of the floored absolute errors, as in :func:`supremix_med.metrics.gm`."""
    return np.log(np.maximum(np.abs(errors), GM_FLOOR))


def _identity(values: np.ndarray) -> np.ndarray:
    return values


def _rows(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return values[indices]


def _row_ranks(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return stats.rankdata(values[indices], axis=1)  # ties (repeated samples) get their mean rank


#: Metrics that are a function of the mean over samples of a function of the error:
#: ``finish(mean(per_sample(pred - target)))``.
_ERROR_MEANS = {"mae": (np.abs, _identity), "mse": (np.square, _identity), "gm": (_log_abs_error, np.exp)}
#: Correlations: Pearson's r of ``transform(pred, indices)`` and ``transform(target, indices)`` row by row.
_CORRELATIONS = {"pearson_r": _rows, "spearman_rho": _row_ranks}


def _resampled(metric: str, preds: Sequence[np.ndarray], target: np.ndarray,
               indices: np.ndarray) -> list[np.ndarray]:
    """``metric`` on every resample (row of ``indices`` [R, n]) for each prediction vector: a list of [R].

    The vectorised twin of :data:`supremix_med.metrics.REGRESSION_METRICS` (the tests check the two agree);
    the target's share of a correlation is computed once for all of ``preds``. A correlation is nan on a
    resample where either side is constant.
    """
    if metric in _ERROR_MEANS:
        per_sample, finish = _ERROR_MEANS[metric]
        return [finish(per_sample(pred - target)[indices].mean(axis=1)) for pred in preds]
    transform = _CORRELATIONS[metric]
    y = transform(target, indices)
    y_constant = np.ptp(y, axis=1) == 0
    y = y - y.mean(axis=1, keepdims=True)
    y_norm = np.sqrt(np.einsum("ij,ij->i", y, y))
    out = []
    for pred in preds:
        x = transform(pred, indices)
        constant = y_constant | (np.ptp(x, axis=1) == 0)
        x = x - x.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.einsum("ij,ij->i", x, y) / (np.sqrt(np.einsum("ij,ij->i", x, x)) * y_norm)
        out.append(np.where(constant, np.nan, np.clip(r, -1.0, 1.0)))
    return out


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in _ERROR_MEANS and m not in _CORRELATIONS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(REGRESSION_METRICS)}.")


def resampled_metric(metric: str, pred: Any, target: Any, indices: np.ndarray) -> np.ndarray:
    """``metric`` (a :data:`~supremix_med.metrics.REGRESSION_METRICS` name) on each resample: ``[R]`` float64.

    Args:
        pred, target: [n] (or [n, 1]) predictions and targets.
        indices: [R, n] sample indices, one resample per row.
    """
    _check_metrics([metric])
    return _resampled(metric, [as_vector(pred, "pred")], as_vector(target, "target"), np.asarray(indices))[0]


def paired_bootstrap(pred_reference: Any, pred_method: Any, target: Any, metrics: Sequence[str],
                     resamples: int = BOOTSTRAP_RESAMPLES, entropy: Sequence[int] = (0,),
                     confidence: float = CONFIDENCE) -> dict[str, Interval]:
    """Paired bootstrap of ``metric(method) - metric(reference)`` over the same test samples.

    Args:
        pred_reference, pred_method: [n] predictions of the two runs, row k of each for the same sample.
        target: [n] true labels.
        metrics: names from :data:`~supremix_med.metrics.REGRESSION_METRICS`.
        resamples: number B of resamples.
        entropy: seeds the resamples (see the module docstring); pass the same for every method of one seed.
        confidence: the interval's level; its bounds are the ``(1 - c) / 2`` and ``(1 + c) / 2`` percentiles
            (``numpy.percentile``, linear interpolation) of the finite resampled differences.

    Returns:
        ``{metric: Interval}``: ``estimate`` is the difference on all n samples (nan where the metric is),
        ``n`` is n. A metric undefined on every resample (e.g. a correlation of 2 samples) gets nan bounds.
    """
    _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}.")
    ref, new, truth = (as_vector(v, name) for v, name in
                       ((pred_reference, "pred_reference"), (pred_method, "pred_method"), (target, "target")))
    if not ref.shape == new.shape == truth.shape or truth.size == 0:
        raise ValueError(f"paired_bootstrap needs predictions and targets of one non-zero length, got "
                         f"{ref.size}, {new.size} and {truth.size}.")
    _check_metrics(metrics)
    n = truth.size
    differences = {m: np.empty(resamples) for m in metrics}
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        indices = bootstrap_indices(n, entropy, start, stop)
        for m in metrics:
            with_method, with_reference = _resampled(m, [new, ref], truth, indices)
            differences[m][start:stop] = with_method - with_reference
    tail = 50.0 * (1.0 - confidence)
    result = {}
    for m in metrics:
        estimate = REGRESSION_METRICS[m](new, truth) - REGRESSION_METRICS[m](ref, truth)
        finite = differences[m][np.isfinite(differences[m])]
        low, high = np.percentile(finite, [tail, 100.0 - tail]) if finite.size else (math.nan, math.nan)
        result[m] = Interval(float(estimate), float(low), float(high), n, confidence)
    return result
