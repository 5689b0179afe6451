"""Brain-age-gap bias correction: remove the age dependence that regression to the mean puts in predictions.

A brain-age model over-predicts the young and under-predicts the old, so the raw gap (predicted - true age)
correlates with age. Both corrections fit a line on held-out (validation) data and apply it to new data:

- ``"cole"`` (Cole et al. 2018, Mol. Psychiatry 23:1385): fit ``pred = a * age + b``, then
  ``corrected_pred = (pred - b) / a`` and ``corrected_gap = corrected_pred - age``.
- ``"beheshti"`` (Beheshti et al. 2019, NeuroImage: Clinical 24:102063): fit ``pred - age = a * age + b``, then
  ``corrected_gap = (pred - age) - (a * age + b)`` and ``corrected_pred = age + corrected_gap``.

Ages and predictions are in the same unit (years). Both corrections need the true age of the subject.

When a fit is unusable. Both corrections move each prediction towards the true age by as much as the fitted
line says the model regresses to the mean. Fitted on too few subjects, or on a model whose predictions barely
follow age, the line is noise or near-flat, and the "corrected" prediction is then mostly the true age itself:
the corrected gap looks excellent and means nothing (6 subjects, Beheshti slope -0.98, gave a corrected MAE of
1.18 years next to a raw MAE of 8.0). A fit is therefore checked against three documented limits
(:attr:`BiasCorrection.problems`):

- at least :data:`MIN_SUBJECTS` (30) subjects. The standard error of the fitted slope is about
  ``(residual SD / age SD) / sqrt(n - 2)``; with a typical validation set (residual SD of the gap ~5 years, age SD
  ~10 years) 30 subjects give 0.09, so the slope is known to about +-0.2; fewer give a line that is mostly noise.
- the *age slope* of the predictions, ``b = d pred / d age`` (Cole's slope, Beheshti's slope + 1), within
  :data:`AGE_SLOPE_RANGE` [0.3, 1.5]. Below 0.3 more than 70 % of the corrected prediction's dependence on age
  is the true age put back in by the correction (at 0 Cole divides by zero); above 1.5 the predictions spread
  far more than the ages do, which no regression to the mean explains (e.g. a unit mix-up).
- a Pearson correlation ``r`` of predictions with age of at least :data:`MIN_R` (0.5): below it the model
  explains under a quarter of the age variance and the fitted line is dominated by noise.

An unusable fit is **refused, not applied**: the fit succeeds and is saved with its ``n_fit``, ``slope``,
``r``, ``problems`` and ``usable: false`` (so the report shows it), a warning names the problems, and
:meth:`BiasCorrection.corrected_prediction` / :meth:`BiasCorrection.corrected_gap` return NaN, so no corrected
number is ever reported for it (the raw gap still is). It is not an error: the fit runs at the end of training,
and an exception would lose the run's report. Pass other limits to :class:`BiasCorrection` to accept a fit
knowingly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from supremix_med.io import atomic_write_json

from .regression import as_vector, pearson_r

__all__ = ["AGE_SLOPE_RANGE", "BiasCorrection", "MIN_R", "MIN_SUBJECTS"]

logger = logging.getLogger(__name__)

_METHODS = ("cole", "beheshti")
#: Fewest subjects a usable correction is fitted on (see the module docstring).
MIN_SUBJECTS = 30
#: ``(low, high)`` of a usable fit's age slope of the predictions, ``d pred / d age``.
AGE_SLOPE_RANGE = (0.3, 1.5)
#: Lowest Pearson correlation of predictions with age of a usable fit.
MIN_R = 0.5


class BiasCorrection:
    """Linear brain-age bias correction, fitted on validation data and saved next to the model.

    Args:
        method: ``"beheshti"`` (regress the gap on age) or ``"cole"`` (regress the prediction on age).
        min_subjects, age_slope_range, min_r: the limits of a usable fit (see the module docstring); saved with
            the correction.

    Attributes:
        slope, intercept: the fitted line (None until :meth:`fit`); ``n_fit``: samples it was fitted on;
        ``r``: Pearson correlation of the fitting predictions with age (None when unknown: a file saved before
        it was recorded, whose r is then not checked).

    Example::

        correction = BiasCorrection("beheshti").fit(val_pred, val_age)
        correction.save(output_dir / "bias_correction.json")
        gap = BiasCorrection.load(path).corrected_gap(test_pred, test_age)  # NaN if not correction.usable
    """

    def __init__(self, method: str = "beheshti", min_subjects: int = MIN_SUBJECTS,
                 age_slope_range: Sequence[float] = AGE_SLOPE_RANGE, min_r: float = MIN_R) -> None:
        if method not in _METHODS:
            raise ValueError(f"BiasCorrection: method must be one of {list(_METHODS)}, got {method!r}.")
        low, high = (float(v) for v in age_slope_range)
        if not (int(min_subjects) == min_subjects >= 2 and low < high and -1.0 <= min_r <= 1.0):
            raise ValueError(f"BiasCorrection: need min_subjects >= 2 (an integer), age_slope_range (low, high) with "
                             f"low < high and -1 <= min_r <= 1; got {min_subjects!r}, {age_slope_range!r}, {min_r!r}.")
        self.method = method
        self.min_subjects, self.age_slope_range, self.min_r = int(min_subjects), (low, high), float(min_r)
        self.slope: float | None = None
        self.intercept: float | None = None
        self.n_fit = 0
        self.r: float | None = None

    def fit(self, pred: Any, age: Any) -> BiasCorrection:
        """Fit the line on predictions [N] and true ages [N] (N >= 2, ages not all equal); return ``self``.

        A fit that breaks a limit of the module docstring is kept but not usable (:attr:`usable`), with a
        logged warning naming the problems.
        """
        p, a = self._inputs(pred, age)
        if not (np.isfinite(p).all() and np.isfinite(a).all()):
            raise ValueError("BiasCorrection.fit: pred and age must be finite; found NaN or inf.")
        if p.size < 2 or np.all(a == a[0]):
            raise ValueError(f"BiasCorrection.fit needs >= 2 samples with different ages, got {p.size} sample(s) "
                             f"with age range {np.ptp(a) if a.size else 0:g}.")
        response = p if self.method == "cole" else p - a
        line = stats.linregress(a, response)
        if self.method == "cole" and line.slope == 0:
            raise ValueError("BiasCorrection.fit: predictions do not change with age (slope 0); the Cole "
                             "correction divides by the slope and is undefined.")
        self.slope, self.intercept, self.n_fit = float(line.slope), float(line.intercept), int(p.size)
        self.r = pearson_r(p, a)
        if self.problems:
            logger.warning("the %s bias correction fitted on %d subjects is unusable and will not be applied: %s",
                           self.method, self.n_fit, "; ".join(self.problems))
        return self

    @property
    def age_slope(self) -> float | None:
        """The age slope of the predictions on the fitting data, ``d pred / d age`` (1: no bias, 0: flat)."""
        if self.slope is None:
            return None
        return self.slope if self.method == "cole" else self.slope + 1.0

    @property
    def problems(self) -> list[str]:
        """Why the fitted correction is unusable (see the module docstring); empty when it is usable."""
        self._check_fitted()
        problems = []
        if self.n_fit < self.min_subjects:
            problems.append(f"fitted on {self.n_fit} subjects, fewer than {self.min_subjects}")
        low, high = self.age_slope_range
        if not low <= self.age_slope <= high:
            problems.append(f"predictions rise {self.age_slope:.3g} years per year of age ({self.method} slope "
                            f"{self.slope:.3g}), outside [{low:g}, {high:g}]")
        if self.r is not None and not self.r >= self.min_r:  # NaN (constant predictions) fails too
            problems.append(f"predictions correlate with age at r = {self.r:.3g}, below {self.min_r:g}")
        return problems

    @property
    def usable(self) -> bool:
        """Whether the correction is fitted and breaks no limit; an unusable one corrects to NaN."""
        return self.slope is not None and not self.problems

    def corrected_prediction(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected predicted ages [N] (years); all NaN when the correction is not :attr:`usable`."""
        p, a = self._fitted_inputs(pred, age)
        if not self.usable:
            return np.full(p.shape, np.nan)
        if self.method == "cole":
            return (p - self.intercept) / self.slope
        return p - (self.slope * a + self.intercept)

    def corrected_gap(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected brain-age gap [N] (corrected prediction - age, years); NaN when not :attr:`usable`."""
        return self.corrected_prediction(pred, age) - as_vector(age, "age")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of a fitted correction: ``method, slope, intercept`` (the line), ``n_fit, r,
        age_slope`` (the fit's diagnostics), ``usable, problems`` and the ``limits`` they were judged by. NaN
        (an undefined r) is written as None."""
        self._check_fitted()
        r = None if self.r is None or np.isnan(self.r) else self.r
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept, "n_fit": self.n_fit,
                "r": r, "age_slope": self.age_slope, "usable": self.usable, "problems": self.problems,
                "limits": {"min_subjects": self.min_subjects, "age_slope_range": list(self.age_slope_range),
                           "min_r": self.min_r}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BiasCorrection:
        """Inverse of :meth:`to_dict`; ``usable`` and ``problems`` are recomputed, never trusted. A record without
        ``limits`` is judged by the defaults, one without ``r`` (saved before r was recorded) is not checked for r,
        one without ``n_fit`` counts as fitted on 0 subjects (unusable)."""
        missing = [k for k in ("method", "slope", "intercept") if k not in d]
        if missing:
            raise ValueError(f"BiasCorrection.from_dict: missing key(s) {missing}; got {sorted(d)}.")
        line = (d["slope"], d["intercept"])
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in line):
            raise ValueError(f"BiasCorrection.from_dict: slope and intercept must be finite numbers, got {line}.")
        limits = d.get("limits", {})
        if not isinstance(limits, dict) or not set(limits) <= {"min_subjects", "age_slope_range", "min_r"}:
            raise ValueError(f"BiasCorrection.from_dict: limits must be a dict of min_subjects, age_slope_range and "
                             f"min_r, got {limits!r}.")
        correction = cls(d["method"], **limits)
        correction.slope, correction.intercept = float(d["slope"]), float(d["intercept"])
        correction.n_fit = int(d.get("n_fit", 0))
        if "r" in d:
            correction.r = float("nan") if d["r"] is None else float(d["r"])
        return correction

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON atomically (:func:`supremix_med.io.atomic_write_json`), readable by all."""
        atomic_write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BiasCorrection:
        """Read a file written by :meth:`save`."""
        path = os.fspath(path)
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"BiasCorrection.load: {path!r} is not valid JSON: {err}") from err
        if not isinstance(d, dict):
            raise ValueError(f"BiasCorrection.load: {path!r} holds a {type(d).__name__}, expected a JSON object.")
        try:
            return cls.from_dict(d)
        except ValueError as err:
            raise ValueError(f"BiasCorrection.load: {path!r}: {err}") from err

    @staticmethod
    def _inputs(pred: Any, age: Any) -> tuple[np.ndarray, np.ndarray]:
        p, a = as_vector(pred, "pred"), as_vector(age, "age")
        if p.shape != a.shape:
            raise ValueError(f"BiasCorrection: pred and age must hold the same number of values, "
                             f"got {p.shape[0]} and {a.shape[0]}.")
        return p, a

    def _check_fitted(self) -> None:
        if self.slope is None:
            raise RuntimeError("BiasCorrection is not fitted; call fit(pred, age) on validation data first.")

    def _fitted_inputs(self, pred: Any, age: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        return self._inputs(pred, age)
