"""What a trained model keeps about its training data, so inference can say when a new scan is unlike it.

:func:`save_model_reference` runs once after training (on the validation predictions of the best checkpoint) and
writes beside the model (``ckpt_dir``):

- ``validation_predictions.csv``: ``id, <target>, predicted_<target>[, predicted_<target>_spread]`` of the
  validation split: the reference cloud of the report's predicted-vs-target plot and the calibration data;
- ``conformal.json``: the :class:`~supremix_med.inference.uncertainty.ConformalInterval` fitted on them, with the
  ids of the validation cases it left out (a non-finite prediction, target or spread) under ``left_out``;
- ``reference.json`` (:class:`TrainingReference`): the training targets' range, the validation gaps' mean and
  standard deviation (bias-corrected when a correction is given) and, when training inputs are given, robust
  statistics of per-input features (:func:`input_features`), with the mean training input on a coarse grid in
  ``input_reference.npy``.

Input features (any modality; computed on the preprocessed input the network sees):

- ``template_correlation``: Pearson correlation, on a grid of at most 32 points per axis (block means), between
  the input and the mean training input: low for a misplaced, mis-oriented or foreign image;
- ``nonzero_fraction``: the fraction of non-zero values (brain-masked volumes have a typical coverage);
- ``mean`` and ``std`` of all values (a pipeline's normalisation fixes them for inputs like the training data).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from supremix_med.io import atomic_write, atomic_write_json
from supremix_med.metrics import BiasCorrection

from .uncertainty import CONFORMAL_FILE, ConformalInterval, spread_column

__all__ = ["FEATURES", "INPUT_TEMPLATE_FILE", "REFERENCE_FILE", "VALIDATION_PREDICTIONS_FILE", "TrainingReference",
           "coarse", "fit_model_reference", "gap_statistics", "input_features", "save_model_reference",
           "write_model_reference"]

REFERENCE_FILE = "reference.json"
INPUT_TEMPLATE_FILE = "input_reference.npy"
VALIDATION_PREDICTIONS_FILE = "validation_predictions.csv"
#: Per-input features compared with the training inputs, see the module docstring.
FEATURES = ("template_correlation", "nonzero_fraction", "mean", "std")
_GRID = 32
_MAD_TO_SD = 1.4826


def coarse(image: Any, grid: int = _GRID) -> np.ndarray:
    """Block means of an input on at most ``grid`` points per axis (float64).

    Inputs of 1-3 axes are pooled along every axis; a 4-axis input (C, D, H, W) keeps its first (channel) axis.
    """
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if not 1 <= x.dim() <= 4:
        raise ValueError(f"coarse: expected an input of 1 to 4 axes, got shape {tuple(x.shape)}.")
    spatial = x.shape[1:] if x.dim() == 4 else x.shape
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(spatial) - 1]
    pooled = pool(x if x.dim() == 4 else x[None], [min(n, grid) for n in spatial])
    return (pooled if x.dim() == 4 else pooled[0]).double().numpy()


def input_features(image: Any, template: np.ndarray | None) -> dict[str, float]:
    """:data:`FEATURES` of one preprocessed input (``template_correlation`` NaN without a template or for a
    constant input)."""
    x = np.asarray(image, dtype=np.float64)
    correlation = float("nan")
    if template is not None:
        a, b = coarse(x).ravel(), np.asarray(template, dtype=np.float64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"input_features: the input's coarse grid {coarse(x).shape} differs from the training "
                             f"template's {np.shape(template)}; was it preprocessed by another pipeline?")
        a, b = a - a.mean(), b - b.mean()
        norm = np.sqrt((a @ a) * (b @ b))
        correlation = float(a @ b / norm) if norm > 0 else float("nan")
    return {"template_correlation": correlation, "nonzero_fraction": float(np.count_nonzero(x) / x.size),
            "mean": float(x.mean()), "std": float(x.std())}


def _robust(values: np.ndarray) -> dict[str, float]:
    """Median, robust SD (1.4826 x MAD, floored at 1e-3 x (|median| + 1)), min and max of finite values."""
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    scale = max(_MAD_TO_SD * float(np.median(np.abs(values - median))), 1e-3 * (abs(median) + 1.0))
    return {"median": median, "scale": scale, "min": float(values.min()), "max": float(values.max())}


def gap_statistics(validation: pd.DataFrame, target: str = "age",
                   bias_correction: BiasCorrection | None = None) -> dict[str, Any]:
    """``{"mean", "sd", "n", "corrected"}`` of the validation gaps (predicted - target, target units; bias-corrected
    with a ``bias_correction``) over the cases with a finite target and prediction.

    Raises:
        ValueError: fewer than 2 such cases.
    """
    truth = validation[target].to_numpy(float)
    pred = validation[f"predicted_{target}"].to_numpy(float)
    known = np.isfinite(truth) & np.isfinite(pred)
    if known.sum() < 2:
        raise ValueError(f"TrainingReference.fit: need >= 2 validation cases with a finite {target} and "
                         f"prediction, got {int(known.sum())}.")
    gaps = (bias_correction.corrected_gap(pred[known], truth[known]) if bias_correction is not None
            else pred[known] - truth[known])
    return {"mean": float(np.mean(gaps)), "sd": float(np.std(gaps, ddof=1)), "n": int(known.sum()),
            "corrected": bias_correction is not None}


@dataclass
class TrainingReference:
    """Training-data statistics stored beside a model (``reference.json``), see the module docstring.

    Attributes:
        target: the predicted quantity (``age``).
        train_range: ``[min, max]`` of the training targets.
        n_train: training cases.
        gap: ``{"mean", "sd", "n", "corrected"}`` of the validation gaps (predicted - target), target units.
        inputs: ``{feature: {"median", "scale", "min", "max"}}`` over training inputs ({} when none were given).
        n_inputs: training inputs the feature statistics were computed on (at most ``max_inputs``).
        template: mean training input on the coarse grid (:func:`coarse`), stored as ``input_reference.npy``.
    """

    target: str
    train_range: list[float]
    n_train: int
    gap: dict[str, Any]
    inputs: dict[str, dict[str, float]] = field(default_factory=dict)
    n_inputs: int = 0
    template: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def fit(cls, train_targets: Sequence[float], validation: pd.DataFrame, target: str = "age",
            bias_correction: BiasCorrection | None = None, train_inputs: Sequence[Any] | None = None,
            max_inputs: int = 256, image_key: str = "image") -> TrainingReference:
        """Statistics of the training targets, validation gaps and (optionally) training inputs.

        Args:
            train_targets: training-set targets [N].
            validation: ``id, <target>, predicted_<target>`` of the validation split.
            target: the target column's name.
            bias_correction: a fitted correction; the gap statistics are then of corrected gaps (as inference
                reports ``<gap>_corrected``).
            train_inputs: preprocessed training inputs of one shape, as the network's input pipeline gets them
                from preprocessing (e.g. ``CachedDataset(cache_dir, "train")`` without transforms: no augmentation):
                a sequence (list or map-style dataset) of arrays or of dicts holding the array under ``image_key``.
            max_inputs: at most this many inputs, evenly spaced over ``train_inputs``, are read (twice: for the
                mean input, then for the features), so the cost is bounded for large training sets.

        Raises:
            ValueError: no finite training target, or fewer than 2 validation cases with finite values.
        """
        targets = np.asarray(train_targets, dtype=float)
        targets = targets[np.isfinite(targets)]
        if len(targets) == 0:
            raise ValueError("TrainingReference.fit: no finite training target.")
        gap = gap_statistics(validation, target, bias_correction)
        reference = cls(target, [float(targets.min()), float(targets.max())], int(len(targets)), gap)
        if train_inputs is not None:
            reference._fit_inputs(train_inputs, max_inputs, image_key)
        return reference

    def _fit_inputs(self, inputs: Sequence[Any], max_inputs: int, image_key: str) -> None:
        if not hasattr(inputs, "__len__") or not hasattr(inputs, "__getitem__"):
            raise ValueError(f"TrainingReference.fit: train_inputs must be a list or a map-style dataset, got "
                             f"{type(inputs).__name__}.")
        if len(inputs) == 0 or max_inputs < 1:
            raise ValueError(f"TrainingReference.fit: need training inputs and max_inputs >= 1, got {len(inputs)} "
                             f"inputs and max_inputs={max_inputs}.")
        chosen = np.unique(np.linspace(0, len(inputs) - 1, min(len(inputs), max_inputs)).round().astype(int))

        def image(index: int) -> np.ndarray:
            item = inputs[int(index)]
            item = item[image_key] if isinstance(item, Mapping) else item
            return np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item, dtype=np.float32)

        self.template = sum(coarse(image(i)) for i in chosen) / len(chosen)
        table = pd.DataFrame([input_features(image(i), self.template) for i in chosen])
        self.inputs = {name: _robust(table[name].to_numpy(float)) for name in FEATURES}
        self.n_inputs = len(chosen)

    def features(self, image: Any) -> dict[str, float]:
        """:func:`input_features` of a new input against this reference's template."""
        return input_features(image, self.template)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``reference.json`` (and ``input_reference.npy`` when there is a template) into ``folder``."""
        folder = Path(folder)
        record = {k: v for k, v in asdict(self).items() if k != "template"}
        if self.template is not None:
            template = self.template.astype(np.float32)
            atomic_write(folder / INPUT_TEMPLATE_FILE, lambda tmp: np.save(tmp, template), suffix=".npy")
        atomic_write_json(record, folder / REFERENCE_FILE)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> TrainingReference:
        """Read what :meth:`save` wrote.

        Raises:
            FileNotFoundError: no ``reference.json`` in ``folder``. ValueError: it is not a saved reference.
        """
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"TrainingReference: {str(path)!r} does not exist (the model was trained before "
                                    "training references were stored?).")
        try:
            record = json.loads(path.read_text())
            reference = cls(**record)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"TrainingReference: {str(path)!r} is not a saved training reference ({err}).") from err
        template = Path(folder) / INPUT_TEMPLATE_FILE
        if reference.inputs and template.is_file():
            reference.template = np.load(template).astype(np.float64)
        return reference


def fit_model_reference(validation: pd.DataFrame, train_targets: Sequence[float], target: str = "age",
                        bias_correction: BiasCorrection | None = None, train_inputs: Sequence[Any] | None = None,
                        alpha: float = 0.1, max_inputs: int = 256, spread_source: Mapping[str, Any] | None = None
                        ) -> tuple[pd.DataFrame, ConformalInterval, TrainingReference]:
    """What :func:`save_model_reference` writes: ``(validation table, interval, reference)`` (see there)."""
    spread = validation[spread_column(target)] if spread_column(target) in validation else None
    if spread is not None and not (spread.to_numpy(float) > 0).any():  # e.g. one TTA sample of one model
        spread = None
    columns = ["id", target, f"predicted_{target}"] + ([spread_column(target)] if spread is not None else [])
    table = validation[columns]
    interval = ConformalInterval.fit(table[f"predicted_{target}"], table[target], spread, alpha=alpha, target=target,
                                     spread_source=spread_source if spread is not None else None, ids=table["id"])
    reference = TrainingReference.fit(train_targets, table, target, bias_correction, train_inputs, max_inputs)
    return table, interval, reference


def write_model_reference(ckpt_dir: str | os.PathLike, table: pd.DataFrame, interval: ConformalInterval,
                          reference: TrainingReference) -> None:
    """Write :func:`fit_model_reference`'s result into the model folder ``ckpt_dir`` (file names: module docstring)."""
    ckpt_dir = Path(ckpt_dir)
    atomic_write(ckpt_dir / VALIDATION_PREDICTIONS_FILE, lambda tmp: table.to_csv(tmp, index=False))
    interval.save(ckpt_dir / CONFORMAL_FILE)
    reference.save(ckpt_dir)


def save_model_reference(ckpt_dir: str | os.PathLike, validation: pd.DataFrame, train_targets: Sequence[float],
                         target: str = "age", bias_correction: BiasCorrection | None = None,
                         train_inputs: Sequence[Any] | None = None, alpha: float = 0.1,
                         max_inputs: int = 256, spread_source: Mapping[str, Any] | None = None) -> TrainingReference:
    """Write ``validation_predictions.csv``, ``conformal.json`` and ``reference.json`` beside the model.

    Args:
        ckpt_dir: the model folder.
        validation: ``id, <target>, predicted_<target>`` of the validation split from the model being saved,
            plus ``predicted_<target>_spread`` when inference will report spreads (same TTA/ensemble settings):
            the interval is then calibrated on normalised scores (spreads that are all 0, as one unaugmented
            sample of one model gives, are dropped: absolute scores).
        train_targets, target, bias_correction, train_inputs, max_inputs: see :meth:`TrainingReference.fit`.
        alpha: miscoverage of the conformal interval (0.1: 90 % intervals).
        spread_source: how the spreads were made, recorded in ``conformal.json`` (e.g. the calibration
            inferer's :attr:`~supremix_med.inference.uncertainty.TestTimeAugmentationInferer.settings`).

    Returns:
        the reference that was written.
    """
    table, interval, reference = fit_model_reference(validation, train_targets, target, bias_correction,
                                                     train_inputs, alpha, max_inputs, spread_source)
    write_model_reference(ckpt_dir, table, interval, reference)
    return reference
