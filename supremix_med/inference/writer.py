"""Collect an inference run's predictions with their interval, QC and flags, and write ``predictions.csv``.

:class:`PredictionWriter` is an ignite handler for a MONAI ``SupervisedEvaluator`` run with ``decollate=False``
over items from :class:`~supremix_med.inference.PreprocessScan`: every iteration's output holds ``pred``
[B, 1] (target units), ``label`` [B] (the known target, NaN if unknown) and, with
:class:`~supremix_med.inference.TestTimeAugmentationInferer` and ``SplitSpreadd``, ``pred_spread`` [B, 1];
``engine.state.batch`` holds the ids, paths, inputs, the pipeline's QC fields and errors. At completion it writes
one row per scan, atomically (temporary file + ``os.replace``), so a crashed run never leaves a half-written table
that looks complete. It is the only writer of the table: ``report.html`` (:class:`~supremix_med.inference.
InferenceReport`) shows what it wrote.

:class:`ScanProgress` shows a progress bar over the scans of such a run.

:func:`failed_inputs` tells the inputs that failed from a written table, and :func:`require_predictions` refuses a
run in which every input failed (the inference recipe's last step; ``supremix-med predict`` exits 2 on it).
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

from supremix_med.data.qc import check_qc_limits
from supremix_med.io import atomic_write
from supremix_med.metrics import BiasCorrection

from .flags import FLAGS, implausible_targets, named_flags
from .reference import TrainingReference
from .scans import qc_fields
from .uncertainty import ConformalInterval, SpreadCollector, spread_column

__all__ = ["NothingPredicted", "PredictionWriter", "ScanProgress", "failed_inputs", "require_predictions"]

logger = logging.getLogger(__name__)

Limits = Mapping[str, Sequence[float | None]]
Range = Sequence[float] | None


def _to_list(values) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().reshape(-1).tolist()
    return list(values)


def failed_inputs(table: pd.DataFrame) -> pd.Series:
    """True for each row of a predictions table (:class:`PredictionWriter`'s) whose input failed: a non-empty
    ``error``."""
    return table["error"].fillna("").astype(str) != ""


class PredictionWriter(SpreadCollector):
    """Gather the predictions of an inference epoch with their interval, QC and flags; write them as CSV at the end.

    Columns of the table, one row per scan in loader order:

    - ``id, path, predicted_<target>``; with a ``calibration``, the conformal interval ``predicted_<target>_low``,
      ``predicted_<target>_high``; when the run made spreads (test-time augmentation or an ensemble),
      ``predicted_<target>_spread`` (their standard deviation);
    - when any target is known, ``<target>, <gap>`` (predicted - target) and, with a ``bias_correction``,
      ``<gap>_corrected``, empty where the target is unknown or implausible and, for ``<gap>_corrected``, when the
      correction is unusable (:attr:`BiasCorrection.usable`: too few subjects, a degenerate slope; a warning says
      why);
    - the pipeline's QC fields (its ``QC_FIELDS``, e.g. ``registered, register_decision,
      registration_similarity`` for T1);
    - one boolean column per flag of :data:`~supremix_med.inference.flags.FLAGS` and ``qc_flag`` (their reasons),
      decided by :func:`~supremix_med.inference.flags.named_flags`;
    - ``error``.

    Rows with an ``error`` have empty predictions, intervals, gaps and QC fields and no flag (the network saw a
    zero image).

    Args:
        output_path: the CSV file to write (its folder is created).
        bias_correction: fitted correction of the model, used for ``<gap>_corrected``.
        qc_limits: acceptable ``(low, high)`` per QC field (see :func:`~supremix_med.inference.flags.named_flags`).
        target_name: name of the predicted quantity (``age``, ``ef``, ...).
        gap_name: column of predicted - target; default ``<target_name>_gap`` (brain-age bundles use
            ``brain_age_gap``).
        pipeline: the preprocessing module of :class:`~supremix_med.inference.PreprocessScan`, whose
            ``QC_FIELDS`` are the QC columns; ``None`` for inputs read without one (sentence pairs): no QC columns.
        plausible_range: ``(low, high)`` a known target can take at all (e.g. ``(0, 120)`` years); a known target
            outside it is flagged and gets no gap.
        calibration: the model's conformal interval; a normalised one needs the run's spreads.
        reference: the model's training statistics, for the training-range, gap and input flags.
        k_sd, z_limit: limits of the ``large_gap`` and ``unlike_training_data`` flags.
        image_key, spread_key: batch key of the preprocessed input, output key of the spread.

    Attributes:
        table: the table written at the end of the last epoch (None until then).

    Raises:
        ValueError: a malformed ``plausible_range`` or ``qc_limits``, or a limit on a field the pipeline does not
            report.
    """

    def __init__(self, output_path: str | os.PathLike, bias_correction: BiasCorrection | None = None,
                 qc_limits: Limits | None = None, target_name: str = "age", gap_name: str | None = None,
                 pipeline: str | None = "t1", plausible_range: Range = None,
                 calibration: ConformalInterval | None = None, reference: TrainingReference | None = None,
                 k_sd: float = 3.0, z_limit: float = 6.0, image_key: str = "image",
                 spread_key: str = "pred_spread") -> None:
        super().__init__(id_key="id", spread_key=spread_key)
        self.output_path = Path(output_path)
        self.bias_correction, self.calibration, self.reference = bias_correction, calibration, reference
        self.target_name = target_name
        self.gap_name = gap_name or f"{target_name}_gap"
        self.qc_fields = tuple(qc_fields(pipeline)) if pipeline is not None else ()
        self.plausible_range = plausible_range
        self.qc_limits = check_qc_limits(qc_limits, self.qc_fields, owner="PredictionWriter")
        self.limits = {"k_sd": k_sd, "z_limit": z_limit}
        self.image_key = image_key
        named_flags(pd.DataFrame({f"predicted_{target_name}": []}), qc_limits=self.qc_limits,  # validate the limits
                    plausible_range=plausible_range, target=target_name, **self.limits)
        if bias_correction is not None and not bias_correction.usable:
            logger.warning("the bias correction is unusable (%s): %s_corrected is left empty",
                           "; ".join(bias_correction.problems), self.gap_name)
        self._batch_keys = ("path", *self.qc_fields, "error")
        self.table: pd.DataFrame | None = None
        self.reset()

    def attach(self, engine: Engine) -> None:
        """Reset at epoch start, collect every iteration, write at completion."""
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self._qc: dict[str, list] = {key: [] for key in self._batch_keys}
        self._features: list[dict[str, float]] = []
        self.table = None

    def collect(self, engine: Engine) -> None:
        """Append this iteration's predictions, spreads, targets (``label``), paths, QC fields, errors and, when
        the reference has input statistics, the inputs' features."""
        super().collect(engine)
        batch = engine.state.batch
        for key in self._batch_keys:
            self._qc[key].extend(_to_list(batch[key]))
        if self.reference is not None and self.reference.template is not None:
            for image, error in zip(batch[self.image_key], batch["error"]):
                self._features.append({} if error else self.reference.features(image.detach().cpu().numpy()))

    def _interval(self, pred: np.ndarray, spread: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        calibration = self.calibration
        if calibration is None:
            return None
        if calibration.score == "normalised" and spread is None:
            logger.warning("the model's interval is calibrated on spreads, but this run computed none (no test-time "
                           "augmentation or ensemble): no intervals")
            return None
        return calibration.interval(pred, spread)

    def frame(self, target_name: str | None = None) -> pd.DataFrame:
        """The table described in the class docstring, for the epoch collected so far."""
        name = target_name or self.target_name
        base = super().frame(name)
        qc = pd.DataFrame(self._qc, columns=list(self._batch_keys))
        failed = qc["error"].astype(bool).to_numpy()
        truth = base[name].to_numpy(float)
        pred = np.where(failed, np.nan, base[f"predicted_{name}"].to_numpy(float))
        spread = np.where(failed, np.nan, base[spread_column(name)].to_numpy(float))
        spread = spread if (spread > 0).any() else None  # one unaugmented sample of one model: no spread
        table = pd.DataFrame({"id": base["id"], "path": qc["path"], f"predicted_{name}": pred})
        interval = self._interval(pred, spread)
        if interval is not None:
            table[f"predicted_{name}_low"], table[f"predicted_{name}_high"] = interval
        if spread is not None:
            table[spread_column(name)] = spread
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
        features = pd.DataFrame(self._features, index=table.index) if self._features else None
        flags = named_flags(table.assign(error=qc["error"]), self.reference, features, self.qc_limits,
                            self.plausible_range, name, self.gap_name, **self.limits)
        return pd.concat([table, flags, qc[["error"]]], axis=1)

    def write(self, engine: Engine | None = None) -> pd.DataFrame:
        """Write :meth:`frame` to ``output_path`` atomically, keep it as :attr:`table` and return it."""
        table = self.frame()
        atomic_write(self.output_path, lambda tmp: table.to_csv(tmp, index=False))
        self.table = table
        logger.info("wrote %d predictions to %s (%d failed, %d flagged)", len(table), self.output_path,
                    int(failed_inputs(table).sum()), int(table[list(FLAGS)].any(axis=1).sum()))
        return table


class NothingPredicted(ValueError):
    """Not a single input of an inference run was predicted (see :func:`require_predictions`).

    Attributes:
        table: the run's predictions table; every row's ``error`` says why its input failed.
    """

    def __init__(self, message: str, table: pd.DataFrame) -> None:
        super().__init__(message)
        self.table = table


def require_predictions(table: pd.DataFrame, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                        predictions_file: str | os.PathLike) -> None:
    """Refuse an inference run in which every input failed (:func:`failed_inputs`); a run that predicted at
    least one input passes, its failures listed in its table.

    Args:
        table: the run's predictions table (:attr:`PredictionWriter.table`).
        inputs: what the run read (``dataset_dir``: a folder, a CSV, a scan file, or a list of them), for the
            message.
        predictions_file: where the table was written (the per-input errors), for the message.

    Raises:
        NothingPredicted: a ``ValueError`` saying that every one of the N inputs of ``inputs`` failed, with the
            first error, and where the per-input errors are.
    """
    failed = failed_inputs(table)
    if not failed.all():
        return
    where = ", ".join(map(str, inputs)) if isinstance(inputs, (list, tuple)) else str(inputs)
    first = f"{table['id'].iloc[0]}: {table['error'].iloc[0]}" if len(table) else "none"
    raise NothingPredicted(f"{where}: every one of the {len(table)} inputs failed, none was predicted (the first: "
                           f"{first}); the error of each input is in the 'error' column of {predictions_file}.",
                           table)


class ScanProgress:
    """Ignite handler: a progress bar over the scans of an inference run (tqdm, on stderr; off when stderr is not
    a terminal unless ``disable=False``), with the count of scans that failed so far.

    Args:
        total: scans in the run, or a dataset whose length is read when the run starts (None: unknown).
        disable: tqdm's ``disable`` (None: only on a terminal).
    """

    def __init__(self, total: int | Sequence | None = None, disable: bool | None = None) -> None:
        self.total, self.disable = total, disable
        self.bar = None
        self.failed = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.close)

    def start(self, engine: Engine | None = None) -> None:
        from tqdm.auto import tqdm

        total = self.total if self.total is None or isinstance(self.total, int) else len(self.total)
        self.failed = 0
        self.bar = tqdm(total=total, unit="scan", desc="predicting", disable=self.disable, dynamic_ncols=True)

    def update(self, engine: Engine) -> None:
        errors = _to_list(engine.state.batch.get("error", []))
        self.failed += sum(bool(e) for e in errors)
        self.bar.set_postfix(failed=self.failed, refresh=False)
        self.bar.update(len(errors) or len(engine.state.batch["id"]))

    def close(self, engine: Engine | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
