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

from supremix_med.data.labels import check_range, label_problems
from supremix_med.data.qc import check_qc_limits, qc_reasons
from supremix_med.engines.reporting import PredictionCollector
from supremix_med.io import atomic_write
from supremix_med.metrics import BiasCorrection

from .scans import qc_fields

__all__ = ["PredictionWriter", "implausible_targets", "qc_flags"]

logger = logging.getLogger(__name__)

Limits = Mapping[str, Sequence[float | None]]
Range = Sequence[float] | None


def _range(name: str, bounds: Range) -> tuple[float, float] | None:
    return None if bounds is None else check_range(f"qc_flags: {name}", bounds)


def implausible_targets(known: np.ndarray, plausible_range: Range = None) -> list[str]:
    """Per scan, why its known target cannot be true (the training label rule,
    :func:`supremix_med.data.labels.label_problems`: not finite, or outside ``plausible_range``), e.g.
    ``"999 is outside the plausible range [0, 120]"``; ``""`` for a plausible or unknown (NaN) target."""
    _range("plausible_range", plausible_range)
    problems = label_problems(pd.Series(np.asarray(known, float)), plausible_range)
    return problems.where(problems != "missing", "").tolist()


def _target_reason(known: float, implausible: str, training: tuple[float, float] | None, name: str) -> list[str]:
    """Why a scan's known target makes its gap doubtful: implausible (the gap is left empty) or unseen in training."""
    if implausible:
        return [f"implausible {name}: {implausible} (gap left empty)"]
    if training is not None and not np.isnan(known) and not training[0] <= known <= training[1]:
        return [f"{name} {known:g} outside the training range [{training[0]:g}, {training[1]:g}]"]
    return []


def qc_flags(predicted: np.ndarray, target_range: Range = None, qc: Mapping[str, np.ndarray] | None = None,
             qc_limits: Limits | None = None, target_name: str = "age", known: np.ndarray | None = None,
             plausible_range: Range = None) -> list[str]:
    """Say, per scan, why it may not look like the training data ("" when nothing was noticed).

    The flags, each reason ``"; "``-joined in this order:

    - ``"<QC field> <value> below|above <limit>"``: a QC value outside its ``qc_limits``
      (:func:`supremix_med.data.qc.qc_reasons`, the rule training uses to leave samples out);
    - ``"implausible <target>: <value> is outside the plausible range [low, high] (gap left empty)"`` (or
      ``"...: inf is not finite (gap left empty)"``): the known target cannot be true, e.g. an age of 999 (a
      data-entry error);
    - ``"<target> <value> outside the training range [low, high]"``: the known target is plausible but unseen
      in training (e.g. age 30 for a model trained on ages 45-82): the gap is computed but extrapolated;
    - ``"predicted <target> <value> outside the training range [low, high]"``.

    Args:
        predicted: predictions [N] in target units (NaN for scans that failed; those get no flag).
        target_range: ``(low, high)`` of the training labels; known targets and predictions outside it are
            flagged. None disables both checks.
        qc: QC values [N] per QC field (e.g. ``registration_similarity``; NaN where not measured, never flagged).
        qc_limits: ``{QC field: (low, high)}``, either bound None for none; values outside are flagged, e.g.
            ``{"registration_similarity": (0.5, None)}``. Every field must be in ``qc``.
        target_name: name of the target in the messages.
        known: the known targets [N] (NaN where unknown); None: none known.
        plausible_range: ``(low, high)`` a known target can take at all (e.g. ``(0, 120)`` years, see
            a bundle's ``plausible_range``); a non-finite target is always implausible.

    Returns:
        N strings.

    Raises:
        ValueError: a malformed range, or a limit on a field missing from ``qc``.
    """
    predicted = np.asarray(predicted, float)
    known = np.full(predicted.shape, np.nan) if known is None else np.asarray(known, float)
    qc = qc or {}
    limits = check_qc_limits(qc_limits, list(qc), owner="qc_flags")
    training = _range("target_range", target_range)
    implausible = implausible_targets(known, plausible_range)
    reasons = qc_reasons(qc, limits, len(predicted))
    flags = []
    for i, pred in enumerate(predicted):
        reasons[i] += _target_reason(known[i], implausible[i], training, target_name)
        if training is not None and not training[0] <= pred <= training[1]:
            reasons[i].append(f"predicted {target_name} {pred:.1f} outside the training range "
                              f"[{training[0]:g}, {training[1]:g}]")
        flags.append("" if np.isnan(pred) else "; ".join(reasons[i]))
    return flags


def _to_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    return list(values)


class PredictionWriter(PredictionCollector):
    """Gather predictions, known targets and QC of an inference epoch and write them as CSV when the run completes.

    Columns of the table, one row per scan in loader order: ``id, path, predicted_<target>``; when any target
    is known ``<target>, <gap>`` (predicted - target) and, with a ``bias_correction``, ``<gap>_corrected``,
    empty where the target is unknown or implausible (see :func:`qc_flags`) and, for ``<gap>_corrected``, when
    the correction is unusable (:attr:`BiasCorrection.usable`: too few subjects, a degenerate slope; a warning
    says why); then the pipeline's QC fields (its ``QC_FIELDS``, e.g. ``registered, register_decision,
    registration_similarity`` for T1), ``qc_flag`` and ``error``. Rows with an ``error`` have empty predictions,
    gaps and QC fields (the network saw a zero image).

    Args:
        output_path: the CSV file to write (its folder is created).
        bias_correction: fitted correction of the model, used for ``<gap>_corrected``.
        target_range: the training labels' ``(low, high)``; known targets and predictions outside it are
            flagged, see :func:`qc_flags`.
        qc_limits: acceptable ``(low, high)`` per QC field, see :func:`qc_flags`.
        plausible_range: ``(low, high)`` a known target can take at all (e.g. ``(0, 120)`` years); a known target
            outside it is flagged and gets no gap, see :func:`qc_flags`.
        target_name: name of the predicted quantity (``age``, ``ef``, ...).
        gap_name: column of predicted - target; default ``<target_name>_gap`` (brain-age bundles use
            ``brain_age_gap``).
        pipeline: the preprocessing module of :class:`~supremix_med.inference.PreprocessScan`, whose
            ``QC_FIELDS`` are the QC columns; ``None`` for inputs read without one (sentence pairs): no QC columns.

    Raises:
        ValueError: a malformed ``target_range``, ``plausible_range`` or ``qc_limits``, or a limit on a field the
            pipeline does not report.
    """

    def __init__(self, output_path: str | os.PathLike, bias_correction: BiasCorrection | None = None,
                 target_range: Range = None, qc_limits: Limits | None = None,
                 target_name: str = "age", gap_name: str | None = None,
                 pipeline: str | None = "t1", plausible_range: Range = None) -> None:
        super().__init__(id_key="id")
        self.output_path = Path(output_path)
        self.bias_correction = bias_correction
        self.target_name = target_name
        self.gap_name = gap_name or f"{target_name}_gap"
        self.qc_fields = tuple(qc_fields(pipeline)) if pipeline is not None else ()
        self.target_range = target_range
        self.plausible_range = plausible_range
        self.qc_limits = dict(qc_limits or {})
        qc_flags(np.zeros(0), target_range, dict.fromkeys(self.qc_fields, np.zeros(0)), self.qc_limits,  # validate
                 plausible_range=plausible_range)
        if bias_correction is not None and not bias_correction.usable:
            logger.warning("the bias correction is unusable (%s): %s_corrected is left empty",
                           "; ".join(bias_correction.problems), self.gap_name)
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
            implausible = np.array(implausible_targets(truth, self.plausible_range)) != ""
            usable = ~np.isnan(truth) & ~failed & ~implausible
            table[name] = truth
            table[self.gap_name] = np.where(usable, pred - truth, np.nan)
            if self.bias_correction is not None:
                corrected = np.full(len(truth), np.nan)
                if usable.any():
                    corrected[usable] = self.bias_correction.corrected_gap(pred[usable], truth[usable])
                table[f"{self.gap_name}_corrected"] = corrected
        for key in self.qc_fields:
            table[key] = qc[key].astype(object).where(~failed, None)  # unknown for scans that failed
        table["qc_flag"] = qc_flags(pred, self.target_range, {key: qc[key].to_numpy() for key in self.qc_limits},
                                    self.qc_limits, name, truth, self.plausible_range)
        table["error"] = qc["error"]
        return table

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write :meth:`frame` to ``output_path`` atomically and return it."""
        table = self.frame()
        atomic_write(self.output_path, lambda tmp: table.to_csv(tmp, index=False))
        logger.info("wrote %d predictions to %s (%d failed, %d flagged)", len(table), self.output_path,
                    int(table["error"].astype(bool).sum()), int(table["qc_flag"].astype(bool).sum()))
        return table
