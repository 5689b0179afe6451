"""Which scans to predict, and their preprocessing with per-scan error capture.

- :func:`list_scans` turns the bundle's ``dataset_dir`` (a folder of NIfTI files, or a CSV ``id,path[,age]``)
  into MONAI dataset items ``{"id", "path", "label"}`` (``label`` is the known age in years, NaN if unknown).
- :func:`check_fingerprint` refuses a model whose stored ``preprocessing.json`` differs from what this code's
  pipeline does: a scan preprocessed differently from the training data gets a confidently wrong age.
- :class:`PreprocessScan` is the bundle's ``preprocessing``: it runs the training pipeline
  (``preprocessing.t1.preprocess_with_qc``) on one item and never raises for a bad scan. It stores the
  reason in ``error`` and a zero image instead, so one unreadable file does not stop a batch of thousands
  and the collated batch keeps its shape.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.transforms import Transform

from preprocessing.t1 import fingerprint, preprocess_with_qc

__all__ = ["NIFTI_SUFFIXES", "FINGERPRINT_IGNORED", "list_scans", "check_fingerprint", "PreprocessScan"]

logger = logging.getLogger(__name__)

#: File name endings read as scans when ``dataset_dir`` is a folder.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CSV_COLUMNS = ("id", "path")
#: Fingerprint entries that may differ between the model's cache and inference: the registration mode is a
#: per-run choice (``"auto"`` keeps MNI-space scans as they are and registers the others, which is what
#: training did to every scan), and library versions are logged as a warning instead.
FINGERPRINT_IGNORED = ("params.register", "libraries")


def _strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _scans_in_folder(folder: Path) -> pd.DataFrame:
    """Every ``*.nii`` / ``*.nii.gz`` under ``folder`` (recursive); id = relative path without extension."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    if not paths:
        raise ValueError(f"list_scans: no {' or '.join(NIFTI_SUFFIXES)} files under folder {str(folder)!r}.")
    ids = [_strip_nifti_suffix(p.relative_to(folder).as_posix()) for p in paths]
    return pd.DataFrame({"id": ids, "path": [str(p) for p in paths], "label": math.nan})


def _scans_in_csv(csv: Path) -> pd.DataFrame:
    """Rows of ``csv`` with columns ``id,path[,age]``; relative paths are resolved against the CSV's folder."""
    try:
        # ids and paths verbatim (an id "NA" stays "NA"); empty or NA-like ages are unknown
        table = pd.read_csv(csv, dtype={"id": str, "path": str}, keep_default_na=False,
                            na_values={"age": ["", "NA", "NaN", "nan"]})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"list_scans: cannot read {str(csv)!r} as a CSV: {err}") from err
    missing = [c for c in _CSV_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"list_scans: {str(csv)!r} needs columns id,path[,age]; missing {missing}, "
                         f"found {list(table.columns)}.")
    if table.empty:
        raise ValueError(f"list_scans: {str(csv)!r} lists no scans.")
    blank = table.index[(table["id"].str.strip() == "") | (table["path"].str.strip() == "")]
    if len(blank):
        raise ValueError(f"list_scans: {str(csv)!r} has an empty id or path on data row(s) {(blank + 1).tolist()}.")
    age = pd.Series(math.nan, index=table.index)
    if "age" in table.columns:
        age = pd.to_numeric(table["age"], errors="coerce")
        bad = table.index[age.isna() & table["age"].notna()]
        if len(bad):
            raise ValueError(f"list_scans: {str(csv)!r} has non-numeric age on data row(s) {(bad + 1).tolist()}: "
                             f"{table.loc[bad, 'age'].tolist()}.")
    paths = [str(csv.parent / Path(raw.strip()).expanduser()) for raw in table["path"]]  # absolute paths stay
    return pd.DataFrame({"id": table["id"].str.strip(), "path": paths, "label": age.astype(float)})


def list_scans(source: str | os.PathLike) -> list[dict[str, Any]]:
    """List the scans to predict as MONAI dataset items.

    Args:
        source: either a folder, searched recursively for ``*.nii`` and ``*.nii.gz`` files whose ids are their
            paths relative to the folder without the extension (a flat folder gives plain file names; nested
            layouts such as ``<subject>/T1/T1.nii.gz`` stay unique as ``<subject>/T1/T1``), or a CSV file with
            columns ``id,path`` and optionally ``age`` (years; empty where unknown), whose relative paths are
            resolved against the CSV's folder. Listed files that do not exist are not an error here: they
            get an ``error`` in the predictions like any other unreadable scan.

    Returns:
        one dict per scan, ``{"id": str, "path": str, "label": float}`` (``label`` = age, NaN if unknown), in
        folder (sorted path) or CSV order.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: an empty folder; a CSV that cannot be parsed, lacks ``id``/``path``, has empty ids or paths,
            non-numeric ages or duplicate ids (the message names the file and rows).
    """
    source = Path(source).expanduser()
    if source.is_dir():
        table = _scans_in_folder(source)
    elif source.is_file():
        table = _scans_in_csv(source)
    else:
        raise FileNotFoundError(f"list_scans: {str(source)!r} is neither a folder of NIfTI files nor a CSV file.")
    duplicated = table["id"][table["id"].duplicated()].unique().tolist()
    if duplicated:
        raise ValueError(f"list_scans: ids must be unique in {str(source)!r}; repeated: {duplicated}.")
    return table.to_dict("records")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": leaf}``."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, Mapping) else {name: value})
    return flat


def _differences(stored: dict[str, Any], current: dict[str, Any], keys: list[str]) -> list[str]:
    missing = "<absent>"
    return [f"{k} (model: {stored.get(k, missing)!r}, this code: {current.get(k, missing)!r})" for k in keys
            if stored.get(k, missing) != current.get(k, missing)]


def check_fingerprint(stored_path: str | os.PathLike, register: str = "auto") -> dict[str, Any]:
    """Refuse to predict if this code would preprocess scans differently from the model's training data.

    Compares the model's ``preprocessing.json`` (the training cache's fingerprint, copied next to
    ``model.pt``) with ``preprocessing.t1.fingerprint(register=register)`` entry by entry: pipeline, version,
    every parameter and the output grid. Entries under :data:`FINGERPRINT_IGNORED` are not compared;
    different library versions are logged as a warning.

    Args:
        stored_path: the model's ``preprocessing.json``.
        register: the registration mode inference will use.

    Returns:
        this code's fingerprint.

    Raises:
        FileNotFoundError: ``stored_path`` does not exist.
        ValueError: the file is not a JSON object, or the fingerprints differ (the message lists every
            differing entry with both values).
    """
    path = Path(stored_path)
    if not path.is_file():
        raise FileNotFoundError(f"check_fingerprint: the model's preprocessing fingerprint {str(path)!r} does not "
                                "exist; without it the scans cannot be checked against the training data.")
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"check_fingerprint: {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(stored, dict):
        raise ValueError(f"check_fingerprint: {str(path)!r} must hold a JSON object, got {type(stored).__name__}.")
    current = fingerprint(register=register)
    flat_stored, flat_current = _flatten(stored), _flatten(current)
    keys = sorted(flat_stored.keys() | flat_current.keys())
    ignored = [k for k in keys if any(k == i or k.startswith(i + ".") for i in FINGERPRINT_IGNORED)]
    compared = [k for k in keys if k not in ignored]
    differing = _differences(flat_stored, flat_current, compared)
    if differing:
        raise ValueError(
            f"check_fingerprint: this code's T1 preprocessing differs from the one the model was trained on "
            f"({str(path)!r}), so its predictions would be wrong; differing: " + "; ".join(differing)
            + ". Run the preprocessing version the model was trained with, or re-train on a cache built by this code."
        )
    libraries = _differences(flat_stored, flat_current, [k for k in ignored if k.startswith("libraries.")])
    if libraries:
        logger.warning("preprocessing library versions differ from the model's training: %s", "; ".join(libraries))
    return current


class PreprocessScan(Transform):
    """Preprocess one dataset item with the training pipeline, capturing failures instead of raising.

    Adds to the item (all collatable, none ``None``):

    - ``image``: float32 tensor of the pipeline's output shape (1, 100, 100, 100), zeros when the scan failed;
    - ``registered`` (bool), ``register_decision`` (str), ``registration_similarity`` (float, NaN when not
      measured) from the pipeline's QC record;
    - ``error``: empty, or why the scan could not be used: the ``ValueError`` / ``OSError`` message, which
      names the file; any other exception is logged with its traceback and reported with its class name.

    Args:
        register: registration mode of ``preprocess_with_qc``: ``"auto"``, ``"always"`` or ``"never"``.
        path_key: item key holding the scan's path.
    """

    def __init__(self, register: str = "auto", path_key: str = "path") -> None:
        self.register = register
        self.image_shape = tuple(fingerprint(register=register)["output"]["shape"])
        self.path_key = path_key

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        item = dict(data)
        path = item[self.path_key]
        image, qc, error = None, {}, ""
        try:
            image, qc = preprocess_with_qc(path, register=self.register)
        except (ValueError, OSError) as err:  # unusable or missing scan; the message names the file
            error = str(err)
        except Exception as err:  # noqa: BLE001 -- an unexpected failure on one scan must not stop the others
            logger.exception("unexpected failure while preprocessing %s", path)
            error = f"{type(err).__name__} while preprocessing {path}: {err}"
        similarity = qc.get("registration_similarity")
        item.update(
            image=torch.zeros(self.image_shape) if image is None else torch.as_tensor(image, dtype=torch.float32),
            registered=bool(qc.get("registered", False)),
            register_decision=str(qc.get("register_decision", "")),
            registration_similarity=math.nan if similarity is None else float(similarity),
            error=error,
        )
        return item
