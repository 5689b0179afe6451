"""Collect an inference run's predictions with their QC and write ``predictions.csv``.

:class:`PredictionWriter` is an ignite handler for a MONAI ``SupervisedEvaluator`` run with ``decollate=False``
over items from :class:`~supremix_med.inference.PreprocessScan`: every iteration's output holds ``pred``
[B, 1] (target units) and ``label`` [B] (the known target, NaN if unknown), and ``engine.state.batch`` the ids,
paths, the pipeline's QC fields and errors. At completion it writes one row per scan, atomically (temporary
file + ``os.replace``), so a crashed run never leaves a half-written table that looks complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from supremix_med.engines.reporting import PredictionCollector
from supremix_med.io import atomic_write
from supremix_med.metrics import BiasCorrection

from .scans import qc_fields

__all__ = ["PredictionWriter", "qc_flags"]

logger = logging.getLogger(__name__)

Limits = Mapping[str, Sequence[float | None]]


def _check_range(name: str, bounds: Sequence[float | None], open_ended: bool) -> tuple[float | None, float | None]:
    """``bounds`` as a ``(low, high)`` pair of floats with low < high (None = unbounded where ``open_ended``)."""
    message = (f"qc_flags: {name} must be (low, high) with low < high{' (None for no bound)' if open_ended else ''}, "
               f"got {bounds!r}.")
    if isinstance(bounds, str) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ValueError(message)
    low, high = (None if b is None else float(b) for b in bounds)
    if (None in (low, high) and not open_ended) or (None not in (low, high) and low >= high):
        raise ValueError(message)
    return low, high


def qc_flags(predicted: np.ndarray, target_range: Sequence[float] | None = None,
             qc: Mapping[str, np.ndarray] | None = None, qc_limits: Limits | None = None,
             target_name: str = "age") -> list[str]:
    """Say, per scan, why it may not look like the training data ("" when nothing was noticed).

    Args:
        predicted: predictions [N] in target units (NaN for scans that failed; those get no flag).
        target_range: ``(low, high)`` plausible targets, e.g. the training labels' range; predictions outside
            it are flagged. None disables the check.
        qc: QC values [N] per QC field (e.g. ``registration_similarity``; NaN where not measured, never flagged).
        qc_limits: ``{QC field: (low, high)}``, either bound None for none; values outside are flagged, e.g.
            ``{"registration_similarity": (0.5, None)}``. Every field must be in ``qc``.
        target_name: name of the target in the messages.

    Returns:
        N strings, each reason ``"; "``-joined, QC limits first, in ``qc_limits`` order.

    Raises:
        ValueError: a malformed range, or a limit on a field missing from ``qc``.
    """
    predicted = np.asarray(predicted, float)
    qc, qc_limits = qc or {}, qc_limits or {}
    limits = {field: _check_range(f"qc_limits[{field!r}]", bounds, True) for field, bounds in qc_limits.items()}
    absent = [field for field in limits if field not in qc]
    if absent:
        raise ValueError(f"qc_flags: qc_limits name {absent}, which are not QC fields; QC fields: {list(qc)}.")
    low, high = (None, None) if target_range is None else _check_range("target_range", target_range, False)
    values = {field: np.asarray(qc[field], float) for field in limits}
    flags = []
    for i, pred in enumerate(predicted):
        reasons = []
        for field, (floor, ceiling) in limits.items():
            value, name = values[field][i], field.replace("_", " ")
            if floor is not None and value < floor:
                reasons.append(f"{name} {value:.3g} below {floor:g}")
            if ceiling is not None and value > ceiling:
                reasons.append(f"{name} {value:.3g} above {ceiling:g}")
        if low is not None and not low <= pred <= high:
            reasons.append(f"predicted {target_name} {pred:.1f} outside the training range [{low:g}, {high:g}]")
        flags.append("" if np.isnan(pred) else "; ".join(reasons))
    return flags


def _to_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    return list(values)


class PredictionWriter(PredictionCollector):
    """Gather predictions, known targets and QC of an inference epoch and write them as CSV when the run completes.

    Columns of the table, one row per scan in loader order: ``id, path, predicted_<target>``; when any target
    is known ``<target>, <gap>`` (predicted - target) and, with a ``bias_correction``, ``<gap>_corrected``,
    empty where the target is unknown; then the pipeline's QC fields (its ``QC_FIELDS``, e.g. ``registered,
    register_decision, registration_similarity`` for T1), ``qc_flag`` and ``error``. Rows with an ``error``
    have empty predictions, gaps and QC fields (the network saw a zero image).

    Args:
        output_path: the CSV file to write (its folder is created).
        bias_correction: fitted correction of the model, used for ``<gap>_corrected``.
        target_range: plausible ``(low, high)`` predictions, see :func:`qc_flags`.
        qc_limits: acceptable ``(low, high)`` per QC field, see :func:`qc_flags`.
        target_name: name of the predicted quantity (``age``, ``ef``, ...).
        gap_name: column of predicted - target; default ``<target_name>_gap`` (brain-age bundles use
            ``brain_age_gap``).
        pipeline: the preprocessing module of :class:`~supremix_med.inference.PreprocessScan`, whose
            ``QC_FIELDS`` are the QC columns; ``None`` for inputs read without one (sentence pairs): no QC columns.

    Raises:
        ValueError: a malformed ``target_range`` or ``qc_limits``, or a limit on a field the pipeline does not
            report.
    """

    def __init__(self, output_path: str | os.PathLike, bias_correction: BiasCorrection | None = None,
                 target_range: Sequence[float] | None = None, qc_limits: Limits | None = None,
                 target_name: str = "age", gap_name: str | None = None,
                 pipeline: str | None = "t1") -> None:
        super().__init__(id_key="id")
        self.output_path = Path(output_path)
        self.bias_correction = bias_correction
        self.target_name = target_name
        self.gap_name = gap_name or f"{target_name}_gap"
        self.qc_fields = tuple(qc_fields(pipeline)) if pipeline is not None else ()
        self.target_range = target_range
        self.qc_limits = dict(qc_limits or {})
        qc_flags(np.zeros(0), target_range, dict.fromkeys(self.qc_fields, np.zeros(0)), self.qc_limits)  # validate
        self._batch_keys = ("path", *self.qc_fields, "error")
        self._qc: dict[str, list] = {key: [] for key in self._batch_keys}

    def attach(self, engine: Engine) -> None:
        """Reset at epoch start, collect every iteration, write at completion."""
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self._qc = {key: [] for key in self._batch_keys}

    def collect(self, engine: Engine) -> None:
        """Append this iteration's predictions, targets (``label``), paths, QC fields and errors."""
        super().collect(engine)
        for key in self._batch_keys:
            self._qc[key].extend(_to_list(engine.state.batch[key]))

    def frame(self, target_name: str | None = None) -> pd.DataFrame:
        """The table described in the class docstring, for the epoch collected so far."""
        name = target_name or self.target_name
        base = super().frame(name)
        qc = pd.DataFrame(self._qc, columns=list(self._batch_keys))
        failed = qc["error"].astype(bool).to_numpy()
        truth = base[name].to_numpy(float)
        pred = np.where(failed, np.nan, base[f"predicted_{name}"].to_numpy(float))
        table = pd.DataFrame({"id": base["id"], "path": qc["path"], f"predicted_{name}": pred})
        if not np.isnan(truth).all():
            table[name] = truth
            table[self.gap_name] = pred - truth
            if self.bias_correction is not None:
                known = ~np.isnan(truth) & ~failed
                corrected = np.full(len(truth), np.nan)
                if known.any():
                    corrected[known] = self.bias_correction.corrected_gap(pred[known], truth[known])
                table[f"{self.gap_name}_corrected"] = corrected
        for key in self.qc_fields:
            table[key] = qc[key].astype(object).where(~failed, None)  # unknown for scans that failed
        table["qc_flag"] = qc_flags(pred, self.target_range, {key: qc[key].to_numpy() for key in self.qc_limits},
                                    self.qc_limits, name)
        table["error"] = qc["error"]
        return table

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write :meth:`frame` to ``output_path`` atomically and return it."""
        table = self.frame()
        atomic_write(self.output_path, lambda tmp: table.to_csv(tmp, index=False))
        logger.info("wrote %d predictions to %s (%d failed, %d flagged)", len(table), self.output_path,
                    int(table["error"].astype(bool).sum()), int(table["qc_flag"].astype(bool).sum()))
        return table
