"""What inference reads from a trained model's folder (``ckpt_dir``), and the check that it is all there.

A bundle's ``inference.json`` builds its network from the bundle's declared architecture while the folder is empty
(so MONAI can check the config before any model exists) and from the folder's ``model_config.json`` once there is
one (:func:`supremix_med.networks.stored_model_config`); the preprocessing parameters come from the folder's
``preprocessing.json`` (:func:`stored_params`). :func:`check_model_folder` is the first step of the inference run:
a missing file stops it with one line naming the file.

Beside the model, training stores (each optional for inference, which says what it could not do without it):

- ``bundle.json`` (:func:`save_bundle_record`): which bundle trained the model, so ``supremix-med predict`` knows
  which ``inference.json`` runs it (:func:`read_bundle_record`);
- ``bias_correction.json``, and ``validation_predictions.csv``, ``conformal.json``, ``reference.json``
  (:func:`~supremix_med.inference.reference.save_model_reference`): read together by :meth:`StoredModel.read`,
  for one model or a deep ensemble of several model folders.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from supremix_med.engines.distributed import writes_files
from supremix_med.engines.model_set import BIAS_CORRECTION as BIAS_CORRECTION_FILE
from supremix_med.engines.model_set import check_model_set
from supremix_med.engines.model_set import MODEL_WEIGHTS as MODEL_FILE
from supremix_med.engines.workflow import FINGERPRINT as FINGERPRINT_FILE
from supremix_med.io import atomic_write_json
from supremix_med.metrics import BiasCorrection

from .reference import REFERENCE_FILE, VALIDATION_PREDICTIONS_FILE, TrainingReference, gap_statistics
from .uncertainty import CONFORMAL_FILE, ConformalInterval, combine_members, spread_column

__all__ = ["BIAS_CORRECTION_FILE", "BUNDLE_FILE", "FINGERPRINT_FILE", "MODEL_FILE", "StoredModel",
           "check_model_folder", "read_bundle_record", "save_bundle_record", "stored_params"]

logger = logging.getLogger(__name__)

#: Which bundle trained the model (:func:`save_bundle_record`).
BUNDLE_FILE = "bundle.json"


def stored_params(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The preprocessing parameters of the model in ``ckpt_dir`` (``preprocessing.json``'s ``params``), ``{}`` while
    the folder holds no model.

    Raises:
        ValueError: the file exists but is not a fingerprint (the message names it).
    """
    path = Path(ckpt_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return {}
    try:
        params = json.loads(path.read_text(encoding="utf-8")).get("params", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: not a preprocessing fingerprint ({err}).") from err
    if not isinstance(params, dict):
        raise ValueError(f"{path}: its 'params' entry is not a JSON object.")
    return params


def check_model_folder(ckpt_dir: str | os.PathLike, files: Sequence[str] = (MODEL_FILE, "model_config.json"),
                       ensemble: Sequence[str | os.PathLike] = ()) -> Path:
    """Refuse a model folder (or any of the ``ensemble``'s further model folders) that lacks any of ``files`` or
    mixes files of different training runs; return ``ckpt_dir``.

    Raises:
        FileNotFoundError: one line naming the first missing file and what to do.
        ValueError: a folder mixes runs (:func:`~supremix_med.engines.model_set.check_model_set` names the files).
    """
    for folder in (Path(ckpt_dir), *map(Path, ensemble)):
        for name in files:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"no {name} in {folder}: point --ckpt_dir at the models folder of a finished "
                                        f"training run (<output_dir>/models).")
        check_model_set(folder)
    return Path(ckpt_dir)


def save_bundle_record(ckpt_dir: str | os.PathLike, bundle_root: str | os.PathLike) -> None:
    """Write ``<ckpt_dir>/bundle.json``: ``{"bundle": <name>}``, the name of the bundle folder ``bundle_root``
    (e.g. ``"bundles/ukb_brainage"`` -> ``"ukb_brainage"``), whose ``inference.json`` runs the model.

    Under ``torch.distributed`` only rank 0 writes (:func:`~supremix_med.engines.distributed.writes_files`).
    """
    if not writes_files():
        return
    atomic_write_json({"bundle": Path(bundle_root).name}, Path(ckpt_dir) / BUNDLE_FILE)


def read_bundle_record(ckpt_dir: str | os.PathLike) -> str:
    """The name of the bundle that trained the model in ``ckpt_dir`` (its ``bundle.json``).

    Raises:
        FileNotFoundError: no ``bundle.json`` (a model trained before it was stored: name the bundle yourself).
        ValueError: the file is not a bundle record.
    """
    path = Path(ckpt_dir) / BUNDLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist, so the bundle that trained this model is unknown (trained by "
                                f"an older version?); name it with --bundle <name>.")
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["bundle"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a bundle record ({err!r}).") from err
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: 'bundle' must name a bundle, got {name!r}.")
    return name


def _optional(path: Path, load, notes: list[str], without: str):
    """``load(path)`` when the file exists, else None and a note (also logged) saying what inference does without
    it."""
    if path.is_file():
        return load(path)
    notes.append(f"{without} (the model folder {path.parent} has no {path.name}).")
    logger.warning("%s", notes[-1])
    return None


@dataclass(frozen=True)
class StoredModel:
    """What inference uses from beside one trained model, or from beside every member of a deep ensemble.

    Attributes:
        folders: the model folders (one, or the ensemble's members).
        bias_correction: the brain-age gap correction (None: none stored, or not asked for).
        calibration: the conformal interval (None: no ``conformal.json``).
        reference: the training statistics behind the flags (None: no ``reference.json``).
        validation: the validation predictions, the report's reference cloud (None: none stored).
        notes: what the folders lack and what inference does without it, for the report.
        fingerprint: the first folder's ``preprocessing.json`` (None: none), what the model's inputs look like.
    """

    folders: tuple[Path, ...]
    bias_correction: BiasCorrection | None = None
    calibration: ConformalInterval | None = None
    reference: TrainingReference | None = None
    validation: pd.DataFrame | None = dataclasses.field(default=None, compare=False)
    notes: tuple[str, ...] = ()
    fingerprint: dict[str, Any] | None = None

    @classmethod
    def read(cls, folders: str | os.PathLike | Sequence[str | os.PathLike],
             bias_correction: bool = True) -> StoredModel:
        """Read one model folder, or several (a deep ensemble, see :meth:`ensemble`).

        Args:
            folders: a model folder or a list of them.
            bias_correction: use the stored brain-age gap correction (bundles whose target is not an age: False).
        """
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise ValueError("StoredModel.read: no model folder given.")
        members = [cls._read_one(Path(f), bias_correction) for f in folders]
        return members[0] if len(members) == 1 else cls.ensemble(members)

    @classmethod
    def _read_one(cls, folder: Path, bias_correction: bool) -> StoredModel:
        notes: list[str] = []
        correction = BiasCorrection.load(folder / BIAS_CORRECTION_FILE) if (
            bias_correction and (folder / BIAS_CORRECTION_FILE).is_file()) else None
        calibration = _optional(folder / CONFORMAL_FILE, ConformalInterval.load, notes, "No intervals")
        reference = _optional(folder / REFERENCE_FILE, lambda p: TrainingReference.load(p.parent), notes,
                              "No training-range, gap or input checks")
        validation = _optional(folder / VALIDATION_PREDICTIONS_FILE, lambda p: pd.read_csv(p, dtype={"id": str}),
                               notes, "No validation cloud in the plot")
        fingerprint = folder / FINGERPRINT_FILE
        fingerprint = json.loads(fingerprint.read_text(encoding="utf-8")) if fingerprint.is_file() else None
        return cls((folder,), correction, calibration, reference, validation, tuple(notes), fingerprint)

    @classmethod
    def ensemble(cls, members: Sequence[StoredModel]) -> StoredModel:
        """A deep ensemble of models trained on the same splits: the members' mean is a new predictor, so its
        interval, bias correction and gap statistics are fitted again on the members' pooled validation
        predictions (:func:`~supremix_med.inference.uncertainty.combine_members`); the training range and
        input statistics are the first member's.

        Without every member's validation predictions there is no interval, no correction and no gap check.
        """
        folders = tuple(f for m in members for f in m.folders)
        first = members[0]
        if any(m.validation is None or m.calibration is None for m in members):
            notes = (f"No intervals, bias correction or gap check for the ensemble of {len(members)} models: some "
                     f"member folders lack {VALIDATION_PREDICTIONS_FILE} or {CONFORMAL_FILE}.",)
            logger.warning("%s", notes[0])
            unknown_gap = {"mean": float("nan"), "sd": float("nan"), "n": 0, "corrected": False}  # flags no gap
            reference = None if first.reference is None else dataclasses.replace(first.reference, gap=unknown_gap)
            return cls(folders, None, None, reference, None, notes, first.fingerprint)
        target = first.calibration.target
        pooled = combine_members([m.validation for m in members], target)
        spread = pooled[spread_column(target)]
        calibration = ConformalInterval.fit(pooled[f"predicted_{target}"], pooled[target],
                                            spread if (spread.to_numpy(float) > 0).any() else None,
                                            alpha=first.calibration.alpha, target=target,
                                            spread_source=first.calibration.spread_source, ids=pooled["id"])
        correction = None
        if first.bias_correction is not None:
            correction = BiasCorrection(first.bias_correction.method).fit(pooled[f"predicted_{target}"],
                                                                         pooled[target])
        reference = None
        if first.reference is not None:
            reference = dataclasses.replace(first.reference, gap=gap_statistics(pooled, target, correction))
        notes = (f"Ensemble of {len(members)} models: the mean of their predictions; interval, bias correction and "
                 f"gap statistics fitted on their pooled validation predictions.",)
        logger.info("%s", notes[0])
        return cls(folders, correction, calibration, reference, pooled, notes + first.notes, first.fingerprint)
