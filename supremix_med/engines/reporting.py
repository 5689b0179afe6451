"""Collect an evaluator's predictions and write the run's report: metrics.json, predictions.csv, a plot.

The evaluators run with ``decollate=False`` so each iteration's output holds ``pred`` [B, 1] and ``label``
[B, 1] and ``engine.state.batch["id"]`` the sample ids. :class:`PredictionCollector` keeps them;
:func:`write_report` turns the test set's predictions into the files users read, with the brain-age gap
corrected by a :class:`~supremix_med.metrics.BiasCorrection` fitted on the validation set.

A bundle's test evaluator reports through two handlers: :class:`BiasCorrectionHandler` (fit the correction on
the validation predictions of the selected model, or load a stored one) and :class:`TestReport` (write the
files when the test epoch completes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events

from supremix_med.engines.distributed import world_size, writes_files
from supremix_med.io import atomic_write, atomic_write_json
from supremix_med.metrics import BiasCorrection, regression_metrics, shot_metrics

__all__ = ["BiasCorrectionHandler", "PredictionCollector", "TestReport", "plot_predictions", "write_report"]


class PredictionCollector:
    """Ignite handler that gathers ids, targets and predictions of one evaluation epoch.

    Args:
        id_key: batch key of the sample ids.
    """

    def __init__(self, id_key: str = "id") -> None:
        self.id_key = id_key
        self._ids: list[str] = []
        self._targets: list[np.ndarray] = []
        self._predictions: list[np.ndarray] = []

    def attach(self, engine: Engine) -> None:
        """Reset at every epoch start, collect at every iteration."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)

    def reset(self, engine: Engine | None = None) -> None:
        self._ids, self._targets, self._predictions = [], [], []

    def collect(self, engine: Engine) -> None:
        """Append this iteration's outputs (``pred`` [B, 1], ``label`` [B, 1]) and batch ids."""
        output = engine.state.output
        pred = torch.as_tensor(output["pred"]).detach().float().cpu().reshape(-1)
        self._predictions.append(pred.numpy())
        label = output.get("label")
        self._targets.append(np.full(len(pred), np.nan) if label is None
                             else torch.as_tensor(label).detach().float().cpu().reshape(-1).numpy())
        ids = engine.state.batch.get(self.id_key, [""] * len(pred))
        self._ids.extend(str(i) for i in ids)

    def frame(self, target_name: str = "age") -> pd.DataFrame:
        """Return ``id, <target_name>, predicted_<target_name>`` of the last epoch."""
        empty = np.zeros(0)
        return pd.DataFrame({
            "id": self._ids,
            target_name: np.concatenate(self._targets) if self._targets else empty,
            f"predicted_{target_name}": np.concatenate(self._predictions) if self._predictions else empty,
        })


def plot_predictions(frame: pd.DataFrame, path: str | os.PathLike, target_name: str = "age",
                     title: str = "") -> None:
    """Scatter predicted vs true target with the identity line; save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, pred = frame[target_name].to_numpy(), frame[f"predicted_{target_name}"].to_numpy()
    lo, hi = float(np.nanmin([truth.min(), pred.min()])), float(np.nanmax([truth.max(), pred.max()]))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(truth, pred, s=12, alpha=0.7)
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    ax.set_xlabel(f"true {target_name}")
    ax.set_ylabel(f"predicted {target_name}")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(fig)


def _shot_report(pred: np.ndarray, truth: np.ndarray, train_targets: Sequence[float],
                 shots: Mapping) -> dict[str, dict[str, float | None]]:
    """``{"many" | "medium" | "few": {"mae", "mse", "gm", "n"}, "rule": shots}``: each group's test-sample count
    and metrics (``None`` where the group has no test sample), and the grouping rule used."""
    groups = shot_metrics(pred, truth, train_targets, **shots)
    report: dict = {group: {name: None if np.isnan(value) else value for name, value in values.items()}
                    for group, values in groups.items() if group != "all"}
    report["rule"] = dict(shots)
    return report


def write_report(test: pd.DataFrame, output_dir: str | os.PathLike, train_targets: Sequence[float],
                 bias_correction: BiasCorrection | None = None, target_name: str = "age",
                 extra: dict | None = None, shots: Mapping | None = None) -> dict:
    """Write ``metrics.json``, ``predictions.csv`` and ``predictions.png`` under ``output_dir``.

    Args:
        test: ``id, <target>, predicted_<target>`` of the test set (from :class:`PredictionCollector`).
        output_dir: where the files go (created if needed).
        train_targets: the training set's targets; ``baseline_mae`` is the MAE of predicting their mean.
        bias_correction: a fitted correction; adds ``brain_age_gap`` and ``brain_age_gap_corrected`` columns
            and ``mae_corrected`` to the metrics.
        target_name: the target column's name (``age`` for brain age).
        extra: more entries for ``metrics.json`` (method, epochs, ...).
        shots: when given, ``metrics["shots"]`` holds MAE/MSE/GM of the many-, medium- and few-shot test
            samples: ``bin_width`` (label units), ``many`` and ``few`` (training samples per bin) of
            :func:`~supremix_med.metrics.shot_groups`; the rule is recorded with the numbers.

    Returns:
        The metrics dict that was written.
    """
    if len(test) == 0:
        raise ValueError("write_report: the test set produced no predictions (is the test split empty?).")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    truth = test[target_name].to_numpy(dtype=float)
    pred = test[f"predicted_{target_name}"].to_numpy(dtype=float)
    metrics = regression_metrics(pred, truth)
    metrics["baseline_mae"] = float(np.mean(np.abs(truth - float(np.mean(train_targets)))))
    if shots is not None:
        metrics["shots"] = _shot_report(pred, truth, train_targets, shots)
    frame = test.copy()
    if bias_correction is not None:
        frame["brain_age_gap"] = pred - truth
        frame["brain_age_gap_corrected"] = bias_correction.corrected_gap(pred, truth)
        metrics["mae_corrected"] = (float(np.mean(np.abs(frame["brain_age_gap_corrected"])))
                                    if bias_correction.usable else None)
        metrics["bias_correction"] = bias_correction.to_dict()
    metrics.update(extra or {})
    atomic_write(output_dir / "predictions.csv", lambda tmp: frame.to_csv(tmp, index=False))
    plot_predictions(frame, output_dir / "predictions.png", target_name,
                     title=f"test MAE {metrics['mae']:.2f} (mean-baseline {metrics['baseline_mae']:.2f})")
    atomic_write_json(metrics, output_dir / "metrics.json")  # last: a report with metrics.json is complete
    return metrics


class BiasCorrectionHandler:
    """At an evaluator's start: the brain-age bias correction, fitted on validation predictions or loaded.

    Fitting runs ``evaluator`` (the validation evaluator, with the selected model already loaded) and fits a
    :class:`~supremix_med.metrics.BiasCorrection` on its collected predictions; rank 0 saves it to ``path`` when
    one is given (a training run publishes it with its model set instead). Without an evaluator the correction
    stored at ``path`` is loaded (a trained model's evaluation).

    Args:
        method: ``"beheshti"`` or ``"cole"``; ``None``: no correction (targets other than brain age).
        path: where the fitted correction is saved (``None``: not saved), or read from.
        evaluator, collector: the validation evaluator and its :class:`PredictionCollector`; ``None`` to load.
        target: the target column's name.

    Attributes:
        correction: the fitted or loaded correction (``None`` until the evaluator starts, or without a method).
    """

    def __init__(self, method: str | None, path: str | os.PathLike | None, evaluator: Engine | None = None,
                 collector: PredictionCollector | None = None, target: str = "age") -> None:
        if (evaluator is None) != (collector is None):
            raise ValueError("BiasCorrectionHandler: give both the validation evaluator and its collector, or neither.")
        if evaluator is None and path is None:
            raise ValueError("BiasCorrectionHandler: give the file to load the correction from.")
        self.method, self.path, self.target = method, None if path is None else Path(path), target
        self.evaluator, self.collector = evaluator, collector
        self.correction: BiasCorrection | None = None

    def attach(self, engine: Engine) -> None:
        """Fit or load when ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.method is None:
            self.correction = None
        elif self.evaluator is None:
            self.correction = BiasCorrection.load(self.path)
        else:
            self.evaluator.run()
            val = self.collector.frame(self.target)
            self.correction = BiasCorrection(self.method).fit(val[f"predicted_{self.target}"], val[self.target])
            if writes_files() and self.path is not None:
                self.correction.save(self.path)


class TestReport:
    """When a test evaluator completes: write ``metrics.json``, ``predictions.csv`` and the plot (rank 0).

    Args:
        collector: the test evaluator's :class:`PredictionCollector` (attached before this handler).
        output_dir: where the files go.
        train_dataset: the training dataset; its ``labels`` give ``baseline_mae`` and the shot groups.
        bias_correction: the :class:`BiasCorrectionHandler` of the same evaluator, or ``None``.
        target: the target column's name.
        shots: shot-group rule (see :func:`write_report`), or ``None``.
        run_info: entries describing the run for ``metrics.json`` (method, epochs, ...); ``world_size`` is added.
        ordinality: ``{phase: handler}`` of the run's :class:`~supremix_med.engines.OrdinalityHandler` s; their
            results (``None`` for a phase that did not run) go to ``metrics["ordinality"]``.
        calibration: a handler of the same evaluator with a ``coverage`` dict (the interval's test coverage,
            :class:`supremix_med.inference.ConformalCalibration`), added to ``metrics.json`` as ``conformal``; or
            ``None``.

    Attributes:
        metrics: what was written (empty on ranks other than 0, or before completion).
    """

    def __init__(self, collector: PredictionCollector, output_dir: str | os.PathLike, train_dataset,
                 bias_correction: BiasCorrectionHandler | None = None, target: str = "age",
                 shots: Mapping | None = None, run_info: Mapping[str, Any] | None = None,
                 ordinality: Mapping[str, Any] | None = None, calibration: Any = None) -> None:
        self.collector, self.output_dir, self.train_dataset = collector, output_dir, train_dataset
        self.bias_correction, self.target, self.shots = bias_correction, target, shots
        self.run_info = dict(run_info or {})
        self.ordinality, self.calibration = dict(ordinality or {}), calibration
        self.metrics: dict = {}

    def attach(self, engine: Engine) -> None:
        """Write the report when ``engine`` completes."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        test = self.collector.frame(self.target)
        if not writes_files():
            return
        correction = self.bias_correction.correction if self.bias_correction is not None else None
        extra = {**self.run_info, "world_size": world_size()}
        if self.ordinality:
            extra["ordinality"] = {phase: handler.result for phase, handler in self.ordinality.items()}
        if self.calibration is not None:
            extra["conformal"] = self.calibration.coverage
        self.metrics = write_report(test, self.output_dir, self.train_dataset.labels, correction, self.target, extra,
                                    self.shots)
