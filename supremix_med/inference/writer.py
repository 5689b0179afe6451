"""Collect an inference run's predictions with their QC and write ``predictions.csv``.

:class:`PredictionWriter` is an ignite handler for a MONAI ``SupervisedEvaluator`` run with ``decollate=False``
over items from :class:`~supremix_med.inference.PreprocessScan`: every iteration's output holds ``pred``
[B, 1] (years) and ``label`` [B] (the known age, NaN if unknown), and ``engine.state.batch`` the ids, paths,
QC fields and errors. At completion it writes one row per scan, atomically (temporary file + ``os.replace``),
so a crashed run never leaves a half-written table that looks complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from supremix_med.engines.reporting import PredictionCollector
from supremix_med.io import atomic_write
from supremix_med.metrics import BiasCorrection

__all__ = ["QC_COLUMNS", "PredictionWriter", "qc_flags"]

logger = logging.getLogger(__name__)

#: Per-scan batch keys copied to the table, after ``id``: the file, the pipeline's QC record and the error.
QC_COLUMNS = ("path", "registered", "register_decision", "registration_similarity", "error")


def qc_flags(predicted: np.ndarray, similarity: np.ndarray, age_range: Sequence[float] | None = None,
             min_similarity: float | None = None) -> list[str]:
    """Say, per scan, why it may not look like the training data ("" when nothing was noticed).

    Args:
        predicted: predicted ages [N] in years (NaN for scans that failed; those get no flag).
        similarity: similarity to the template after preprocessing [N] (NaN when not measured).
        age_range: ``(low, high)`` plausible ages in years, e.g. the training labels' range; predictions
            outside it are flagged. None disables the check.
        min_similarity: similarity below this is flagged. None disables the check.

    Returns:
        N strings, each reason ``"; "``-joined.
    """
    if age_range is not None and (len(age_range) != 2 or age_range[0] >= age_range[1]):
        raise ValueError(f"qc_flags: age_range must be (low, high) with low < high, got {age_range}.")
    flags = []
    for pred, sim in zip(np.asarray(predicted, float), np.asarray(similarity, float)):
        reasons = []
        if min_similarity is not None and sim < min_similarity:
            reasons.append(f"registration similarity {sim:.3f} below {min_similarity:g}")
        if age_range is not None and not age_range[0] <= pred <= age_range[1] and not np.isnan(pred):
            reasons.append(f"predicted age {pred:.1f} outside the training range "
                           f"[{age_range[0]:g}, {age_range[1]:g}]")
        flags.append("; ".join(reasons))
    return flags


def _to_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    return list(values)


class PredictionWriter(PredictionCollector):
    """Gather predictions, ages and QC of an inference epoch and write them as CSV when the run completes.

    Columns of the table, one row per scan in loader order: ``id, path, predicted_age``; when any age is
    known ``age, brain_age_gap`` (predicted - age) ``, brain_age_gap_corrected`` (by ``bias_correction``),
    empty where the age is unknown; then ``registered, register_decision, registration_similarity, qc_flag,
    error``. Rows with an ``error`` have empty predictions, gaps and QC fields (the network saw a zero image).

    Args:
        output_path: the CSV file to write (its folder is created).
        bias_correction: fitted correction of the model, used for ``brain_age_gap_corrected``.
        age_range: plausible ``(low, high)`` predicted ages, see :func:`qc_flags`.
        min_similarity: lowest acceptable registration similarity, see :func:`qc_flags`.
        target_name: name of the predicted quantity (``age``).
    """

    def __init__(self, output_path: str | os.PathLike, bias_correction: BiasCorrection | None = None,
                 age_range: Sequence[float] | None = None, min_similarity: float | None = None,
                 target_name: str = "age") -> None:
        super().__init__(id_key="id")
        self.output_path = Path(output_path)
        self.bias_correction = bias_correction
        self.age_range = None if age_range is None else tuple(float(a) for a in age_range)
        self.min_similarity = min_similarity
        self.target_name = target_name
        self._qc: dict[str, list] = {key: [] for key in QC_COLUMNS}

    def attach(self, engine: Engine) -> None:
        """Reset at epoch start, collect every iteration, write at completion."""
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self._qc = {key: [] for key in QC_COLUMNS}

    def collect(self, engine: Engine) -> None:
        """Append this iteration's predictions, ages (``label``) and the batch's QC fields."""
        super().collect(engine)
        for key in QC_COLUMNS:
            self._qc[key].extend(_to_list(engine.state.batch[key]))

    def frame(self, target_name: str | None = None) -> pd.DataFrame:
        """The table described in the class docstring, for the epoch collected so far."""
        name = target_name or self.target_name
        base = super().frame(name)
        qc = pd.DataFrame(self._qc)
        failed = qc["error"].astype(bool).to_numpy()
        truth = base[name].to_numpy(float)
        pred = np.where(failed, np.nan, base[f"predicted_{name}"].to_numpy(float))
        table = pd.DataFrame({"id": base["id"], "path": qc["path"], f"predicted_{name}": pred})
        if not np.isnan(truth).all():
            known = ~np.isnan(truth) & ~failed
            corrected = np.full(len(truth), np.nan)
            if self.bias_correction is not None and known.any():
                corrected[known] = self.bias_correction.corrected_gap(pred[known], truth[known])
            table[name] = truth
            table["brain_age_gap"] = pred - truth
            table["brain_age_gap_corrected"] = corrected
        for key in ("registered", "register_decision", "registration_similarity"):
            table[key] = qc[key].astype(object).where(~failed, None)  # unknown for scans that failed
        table["qc_flag"] = qc_flags(pred, qc["registration_similarity"].to_numpy(float), self.age_range,
                                    self.min_similarity)
        table["error"] = qc["error"]
        return table

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write :meth:`frame` to ``output_path`` atomically and return it."""
        table = self.frame()
        atomic_write(self.output_path, lambda tmp: table.to_csv(tmp, index=False))
        logger.info("wrote %d predictions to %s (%d failed, %d flagged)", len(table), self.output_path,
                    int(table["error"].astype(bool).sum()), int(table["qc_flag"].astype(bool).sum()))
        return table
