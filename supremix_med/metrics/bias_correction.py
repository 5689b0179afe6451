"""Brain-age-gap bias correction: remove the age dependence that regression to the mean puts in predictions.

A brain-age model over-predicts the young and under-predicts the old, so the raw gap (predicted - true age)
correlates with age. Both corrections fit a line on held-out (validation) data and apply it to new data:

- ``"cole"`` (Cole et al. 2018, Mol. Psychiatry 23:1385): fit ``pred = a * age + b``, then
  ``corrected_pred = (pred - b) / a`` and ``corrected_gap = corrected_pred - age``.
- ``"beheshti"`` (Beheshti et al. 2019, NeuroImage: Clinical 24:102063): fit ``pred - age = a * age + b``, then
  ``corrected_gap = (pred - age) - (a * age + b)`` and ``corrected_pred = age + corrected_gap``.

Ages and predictions are in the same unit (years). Both corrections need the true age of the subject.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from scipy import stats

from supremix_med.io import atomic_write_json

from .regression import as_vector

__all__ = ["BiasCorrection"]

_METHODS = ("cole", "beheshti")


class BiasCorrection:
    """Linear brain-age bias correction, fitted on validation data and saved next to the model.

    Args:
        method: ``"beheshti"`` (regress the gap on age) or ``"cole"`` (regress the prediction on age).

    Attributes:
        slope, intercept: the fitted line (None until :meth:`fit`), ``n_fit``: samples it was fitted on.

    Example::

        correction = BiasCorrection("beheshti").fit(val_pred, val_age)
        correction.save(output_dir / "bias_correction.json")
        gap = BiasCorrection.load(path).corrected_gap(test_pred, test_age)
    """

    def __init__(self, method: str = "beheshti") -> None:
        if method not in _METHODS:
            raise ValueError(f"BiasCorrection: method must be one of {list(_METHODS)}, got {method!r}.")
        self.method = method
        self.slope: float | None = None
        self.intercept: float | None = None
        self.n_fit = 0

    def fit(self, pred: Any, age: Any) -> BiasCorrection:
        """Fit the line on predictions [N] and true ages [N] (N >= 2, ages not all equal); return ``self``."""
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
        return self

    def corrected_prediction(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected predicted ages [N] (years)."""
        p, a = self._fitted_inputs(pred, age)
        if self.method == "cole":
            return (p - self.intercept) / self.slope
        return p - (self.slope * a + self.intercept)

    def corrected_gap(self, pred: Any, age: Any) -> np.ndarray:
        """Bias-corrected brain-age gap [N] (corrected prediction - age, years)."""
        return self.corrected_prediction(pred, age) - as_vector(age, "age")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of a fitted correction: method, slope, intercept, n_fit."""
        self._check_fitted()
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept, "n_fit": self.n_fit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BiasCorrection:
        """Inverse of :meth:`to_dict`."""
        missing = [k for k in ("method", "slope", "intercept") if k not in d]
        if missing:
            raise ValueError(f"BiasCorrection.from_dict: missing key(s) {missing}; got {sorted(d)}.")
        line = (d["slope"], d["intercept"])
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in line):
            raise ValueError(f"BiasCorrection.from_dict: slope and intercept must be finite numbers, got {line}.")
        correction = cls(d["method"])
        correction.slope, correction.intercept = float(d["slope"]), float(d["intercept"])
        correction.n_fit = int(d.get("n_fit", 0))
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
