"""Which scans to predict, and their preprocessing with per-scan error capture, for any modality.

Every modality's pipeline (a module of :data:`supremix_med.pipelines.PIPELINES`) offers ``preprocess(path, **params)``
(optionally ``preprocess_with_qc``, returning its QC record too) and ``fingerprint(**params)``; a module may
also declare

- ``QC_FIELDS``: ``{QC record entry: value of a failed scan}``, the per-scan QC columns inference reports. The
  default's type is the column's type (bool, int, float or str) and a ``None`` in the record becomes it.
- ``RUN_PARAMS``: parameters chosen per run that may differ between the model's training cache and inference
  (e.g. T1's ``register``), so :func:`check_fingerprint` does not compare them.

The pieces, used by every bundle's ``inference.json``:

- :func:`list_scans` turns the bundle's ``dataset_dir`` (a folder of scans, one scan, or a CSV
  ``id,path[,<target>]``) into MONAI dataset items ``{"id", "path", "label"}`` (``label`` is the known target,
  NaN if unknown), plus the model's covariate columns (e.g. ``sex``) from the CSV when the model takes covariates.
- :func:`check_fingerprint` refuses a model whose stored ``preprocessing.json`` differs from what this code's
  pipeline does: a scan preprocessed differently from the training data gets a confidently wrong prediction.
- :class:`PreprocessScan` is the bundle's ``preprocessing``: it runs the training pipeline on one item and
  never raises for a bad scan. It stores the reason in ``error`` and a zero image instead, so one unreadable
  file (or one unknown covariate value) does not stop a batch of thousands and the collated batch keeps its shape.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from monai.transforms import Transform
from pydicom.misc import is_dicom

from supremix_med.data.covariates import COVARIATES_KEY, EncodeCovariatesd
from supremix_med.io import RUN_ID_KEY
from supremix_med.pipelines import get_pipeline

__all__ = ["DICOM_LAYOUTS", "FINGERPRINT_IGNORED", "NIFTI_SUFFIXES", "PreprocessScan", "check_fingerprint",
           "list_scans", "qc_fields"]

logger = logging.getLogger(__name__)

#: File name endings of NIfTI scans, the default of :func:`list_scans`.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: How :func:`list_scans` finds DICOM input in a folder: ``"files"`` (each DICOM file is a scan) or
#: ``"series"`` (each folder directly holding DICOM files is a scan).
DICOM_LAYOUTS = ("files", "series")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_TABLE_SUFFIXES = (".csv", ".txt")  # scan suffixes that a CSV list of scans may also have
_NOT_SCANS = ("DICOMDIR",)  # DICOM media index files
#: Fingerprint entries never compared: library versions differ between machines and are logged as a warning; the
#: run id names the training run that stored the file.
FINGERPRINT_IGNORED = ("libraries", RUN_ID_KEY)




def qc_fields(pipeline: str) -> dict[str, Any]:
    """The pipeline's ``QC_FIELDS`` (``{entry: value of a failed scan}``), ``{}`` when it declares none."""
    return dict(getattr(get_pipeline(pipeline), "QC_FIELDS", {}))


# --------------------------------------------------------------------------------------------- listing
def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive)."""
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    return path.name not in _NOT_SCANS and is_dicom(path)


def _scans_in_folder(folder: Path, suffixes: Sequence[str], dicom: str | None) -> pd.DataFrame:
    """The scans under ``folder`` (recursive); id = path relative to the folder without the matched suffix."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    scans = {p: _strip_suffix(p.relative_to(folder).as_posix(), suffixes) for p in files
             if p.name.lower().endswith(suffixes)}
    if dicom == "files":
        scans.update({p: _strip_suffix(p.relative_to(folder).as_posix(), _DICOM_SUFFIXES) for p in files
                      if p not in scans and _is_dicom_file(p)})
    elif dicom == "series":
        series: set[Path] = set()
        for path in files:  # one DICOM file makes its folder a series: the other slices need no reading
            if path.parent not in series and path not in scans and _is_dicom_file(path):
                series.add(path.parent)
        scans.update({p: p.relative_to(folder).as_posix() if p != folder else folder.name for p in series})
    if not scans:
        kinds = " or ".join(suffixes) + " files"
        dicom_file = next((p for p in files if _is_dicom_file(p)), None) if dicom is None else None
        if dicom_file is not None:
            raise ValueError(f"list_scans: folder {str(folder)!r} holds DICOM files (e.g. "
                             f"{dicom_file.relative_to(folder).as_posix()!r}) but no {kinds}, and this pipeline does "
                             f"not read DICOM: convert the scans first{_conversion_hint(suffixes)}.")
        kinds += {None: "", "files": " or DICOM files", "series": " or DICOM series folders"}[dicom]
        raise ValueError(f"list_scans: no {kinds} under folder {str(folder)!r}.")
    ordered = sorted(scans.items(), key=lambda item: item[0].as_posix())
    return pd.DataFrame({"id": [i for _, i in ordered], "path": [str(p) for p, _ in ordered], "label": math.nan})


def _conversion_hint(suffixes: Sequence[str]) -> str:
    """How to turn DICOM into what a pipeline reads, when there is a standard tool."""
    return " to NIfTI (e.g. with dcm2niix)" if set(suffixes) <= set(NIFTI_SUFFIXES) else ""


def _one_scan(path: Path, suffixes: Sequence[str], dicom: str | None) -> pd.DataFrame | None:
    """``path`` as the only scan to predict, or None if it is a CSV list of scans.

    A file is a scan when its name ends with one of ``suffixes`` (a ``.csv``/``.txt`` name only when its first
    line is not a header naming ``id`` and ``path``: extracted fMRI series are such files) or, with
    ``dicom="files"``, when it is a DICOM file; its id is its name without the suffix.

    Raises:
        ValueError: a DICOM file where the pipeline reads no DICOM, or one slice where it reads a series folder.
    """
    suffix = next((s for s in suffixes if path.name.lower().endswith(s)), None)
    if suffix is not None:
        if suffix in _TABLE_SUFFIXES and _has_list_header(path):
            return None
        scan_id = _strip_suffix(path.name, suffixes)
    elif not _is_dicom_file(path):
        return None
    elif dicom == "files":
        scan_id = _strip_suffix(path.name, _DICOM_SUFFIXES)
    elif dicom == "series":
        raise ValueError(f"list_scans: {str(path)!r} is one DICOM file, and this pipeline reads a DICOM series as the "
                         f"folder holding its slices: give {str(path.parent)!r}.")
    else:
        raise ValueError(f"list_scans: {str(path)!r} is a DICOM file, and this pipeline reads {' or '.join(suffixes)} "
                         f"files, not DICOM: convert it first{_conversion_hint(suffixes)}.")
    return pd.DataFrame({"id": [scan_id], "path": [str(path)], "label": math.nan})


def _separator(path: Path) -> str:
    """The field separator of a list of scans: a tab for ``.tsv``, else a comma."""
    return "\t" if path.name.lower().endswith(".tsv") else ","


def _has_list_header(path: Path) -> bool:
    """Whether the first line of a text file is a CSV/TSV header with ``id`` and ``path`` columns."""
    try:
        with open(path, encoding="utf-8") as handle:
            header = {field.strip().lower() for field in handle.readline().split(_separator(path))}
    except (OSError, UnicodeDecodeError):
        return False
    return {"id", "path"} <= header


def _scans_in_csv(csv: Path, target: str, covariates: Sequence[str]) -> pd.DataFrame:
    """Rows of ``csv`` (a ``.tsv`` is tab-separated) with columns ``id,path[,<covariates>][,<target>]``; relative
    paths are resolved against the file's folder; covariate values are kept as strings, checked per scan by
    :class:`PreprocessScan`."""
    try:
        # ids, paths and covariates verbatim (an id "NA" stays "NA"); empty or NA-like targets are unknown
        table = pd.read_csv(csv, sep=_separator(csv), dtype={"id": str, "path": str, **dict.fromkeys(covariates, str)},
                            keep_default_na=False, na_values={target: ["", "NA", "NaN", "nan"]})
    except UnicodeDecodeError as err:
        raise ValueError(f"list_scans: {str(csv)!r} is neither a scan this pipeline reads (see scan_suffixes) nor a "
                         f"CSV list of scans (id,path[,{target}]): it is not text ({err.reason}).") from err
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"list_scans: cannot read {str(csv)!r} as a CSV: {err}") from err
    required = ("id", "path", *covariates)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"list_scans: {str(csv)!r} needs columns {','.join(required)}[,{target}]; missing "
                         f"{missing}, found {list(table.columns)}.")
    if table.empty:
        raise ValueError(f"list_scans: {str(csv)!r} lists no scans.")
    blank = table.index[(table["id"].str.strip() == "") | (table["path"].str.strip() == "")]
    if len(blank):
        raise ValueError(f"list_scans: {str(csv)!r} has an empty id or path on data row(s) {(blank + 1).tolist()}.")
    label = pd.Series(math.nan, index=table.index)
    if target in table.columns:
        label = pd.to_numeric(table[target], errors="coerce")
        bad = table.index[label.isna() & table[target].notna()]
        if len(bad):
            raise ValueError(f"list_scans: {str(csv)!r} has non-numeric {target} on data row(s) "
                             f"{(bad + 1).tolist()}: {table.loc[bad, target].tolist()}.")
    paths = [str(csv.parent / Path(raw.strip()).expanduser()) for raw in table["path"]]  # absolute paths stay
    return pd.DataFrame({"id": table["id"].str.strip(), "path": paths, "label": label.astype(float),
                         **{c: table[c] for c in covariates}})


def list_scans(source: str | os.PathLike | Sequence[str | os.PathLike], suffixes: Sequence[str] = NIFTI_SUFFIXES,
               dicom: str | None = None, target: str = "age", covariates: Sequence[str] = ()) -> list[dict[str, Any]]:
    """List the scans to predict as MONAI dataset items.

    Args:
        source: one input or a list of inputs, listed in order (their ids must be unique together). An input is
            a folder, searched recursively; a single scan (a file ending with one of ``suffixes``, or a
            DICOM file with ``dicom="files"``; its id is its name without the suffix); or a CSV file (TSV when
            it ends with ``.tsv``) with columns ``id,path`` and optionally ``target`` (empty where unknown),
            whose relative paths are resolved against the file's folder (a ``.csv`` that is also a scan suffix,
            as for extracted fMRI series, is a list when its header names ``id`` and ``path``). In a folder, a
            scan is

            - a file whose name ends with one of ``suffixes`` (any case); its id is its path relative to the
              folder without that suffix (a flat folder gives plain file names; nested layouts such as
              ``<subject>/T1/T1.nii.gz`` stay unique as ``<subject>/T1/T1``);
            - with ``dicom="files"``, also any other DICOM file (recognised by its ``DICM`` preamble, whatever
              its name; e.g. X-ray or ultrasound exports); its id is its relative path without a ``.dcm`` or
              ``.dicom`` suffix;
            - with ``dicom="series"``, also every folder directly holding DICOM files (one series each, e.g.
              PET ``<subject>/pet/*.dcm``); its id is the folder's relative path (the folder's name when
              the input itself is the series).

            Listed files that do not exist are not an error here: they get an ``error`` in the predictions
            like any other unreadable scan.
        suffixes: lower-case file name endings of scans, e.g. ``(".png", ".jpg", ".jpeg")``,
            ``(".avi", ".mp4")`` or ``(".npy", ".csv", ".mat")``.
        dicom: ``None`` (no DICOM search), or one of :data:`DICOM_LAYOUTS`.
        target: CSV column of the known target (e.g. ``"age"``, ``"ef"``).
        covariates: CSV columns the model takes per scan (its ``model_config.json`` ``covariates``, e.g.
            ``["sex"]``); they need a CSV ``source``. Their values are passed on as strings (empty where the
            CSV has none) and checked per scan by :class:`PreprocessScan`.

    Returns:
        one dict per scan, ``{"id": str, "path": str, "label": float, <covariate>: str, ...}`` (``label`` = the
        target, NaN if unknown), in folder (sorted path) or CSV order.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no input; an unknown ``dicom`` layout; a folder without scans (one holding only DICOM files when
            ``dicom`` is None says so); a DICOM file where the pipeline reads none, or one DICOM slice where it
            reads series folders; a folder or single scan given for a model with covariates; a CSV that cannot
            be parsed (or a binary file that is not a scan), lacks ``id``/``path`` or a covariate column, has
            empty ids or paths, non-numeric targets; ids repeated within or across the inputs (the message names
            the file and rows).
    """
    if dicom not in (None, *DICOM_LAYOUTS):
        raise ValueError(f"list_scans: dicom must be None or one of {DICOM_LAYOUTS}, got {dicom!r}.")
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not sources:
        raise ValueError("list_scans: no input given.")
    suffixes = tuple(s.lower() for s in suffixes)
    table = pd.concat([_scans_in(Path(s).expanduser(), suffixes, dicom, target, covariates) for s in sources],
                      ignore_index=True)
    duplicated = table["id"][table["id"].duplicated()].unique().tolist()
    if duplicated:
        where = repr(str(sources[0])) if len(sources) == 1 else f"the inputs {[str(s) for s in sources]}"
        raise ValueError(f"list_scans: ids must be unique in {where}; repeated: {duplicated}"
                         f"{'' if len(sources) == 1 else ' (list the scans in one CSV with unique ids)'}.")
    return table.to_dict("records")


def _scans_in(source: Path, suffixes: tuple[str, ...], dicom: str | None, target: str,
              covariates: Sequence[str]) -> pd.DataFrame:
    """The scans of one input of :func:`list_scans` as a table ``id, path, label[, <covariates>]``."""
    if not (source.is_dir() or source.is_file()):
        raise FileNotFoundError(f"list_scans: {str(source)!r} is neither a folder of scans, a scan nor a CSV file.")
    table = _scans_in_folder(source, suffixes, dicom) if source.is_dir() else _one_scan(source, suffixes, dicom)
    if table is None:
        return _scans_in_csv(source, target, covariates)
    if covariates:
        what = "a folder" if source.is_dir() else "a single scan file"
        raise ValueError(f"list_scans: the model takes the covariate(s) {list(covariates)} per scan, which {what} "
                         f"({str(source)!r}) cannot give; list the scans in a CSV with columns "
                         f"id,path,{','.join(covariates)}.")
    return table


# ----------------------------------------------------------------------------------------- fingerprint
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


def _read_fingerprint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"check_fingerprint: the model's preprocessing fingerprint {str(path)!r} does not "
                                "exist; without it the scans cannot be checked against the training data.")
    try:
        stored = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"check_fingerprint: {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(stored, dict):
        raise ValueError(f"check_fingerprint: {str(path)!r} must hold a JSON object, got {type(stored).__name__}.")
    return stored


def check_fingerprint(stored_path: str | os.PathLike, pipeline: str = "t1",
                      **params: Any) -> dict[str, Any]:
    """Refuse to predict if this code would preprocess scans differently from the model's training data.

    Compares the model's ``preprocessing.json`` (the training cache's fingerprint, copied next to
    ``model.pt``) with ``<pipeline>.fingerprint(**params)`` entry by entry: pipeline name, version, every
    parameter and the output. Entries under :data:`FINGERPRINT_IGNORED` and the pipeline's ``RUN_PARAMS``
    are not compared; different library versions are logged as a warning.

    Args:
        stored_path: the model's ``preprocessing.json``.
        pipeline: the preprocessing module inference will run.
        **params: the preprocessing parameters inference will use (as given to :class:`PreprocessScan`).

    Returns:
        this code's fingerprint.

    Raises:
        FileNotFoundError: ``stored_path`` does not exist.
        ValueError: the file is not a JSON object, or the fingerprints differ (the message lists every
            differing entry with both values).
    """
    path = Path(stored_path)
    stored = _read_fingerprint(path)
    module = get_pipeline(pipeline)
    current = module.fingerprint(**params)
    flat_stored, flat_current = _flatten(stored), _flatten(current)
    keys = sorted(flat_stored.keys() | flat_current.keys())
    ignored_prefixes = (*FINGERPRINT_IGNORED, *(f"params.{name}" for name in getattr(module, "RUN_PARAMS", ())))
    ignored = [k for k in keys if any(k == i or k.startswith(i + ".") for i in ignored_prefixes)]
    differing = _differences(flat_stored, flat_current, [k for k in keys if k not in ignored])
    if differing:
        raise ValueError(
            f"check_fingerprint: this code's {pipeline} preprocessing differs from the one the model was trained "
            f"on ({str(path)!r}), so its predictions would be wrong; differing: " + "; ".join(differing)
            + ". Run the preprocessing version the model was trained with, or re-train on a cache built by this code."
        )
    libraries = _differences(flat_stored, flat_current, [k for k in ignored if k.startswith("libraries.")])
    if libraries:
        logger.warning("preprocessing library versions differ from the model's training: %s", "; ".join(libraries))
    return current


# ------------------------------------------------------------------------------------------ preprocess
def _collatable(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (``default`` itself for None)."""
    return default if value is None else type(default)(value)


class PreprocessScan(Transform):
    """Preprocess one dataset item with the training pipeline, capturing failures instead of raising.

    Adds to the item (all collatable, none ``None``, the same keys whether the scan succeeded or failed):

    - ``image``: float32 tensor of the pipeline's output shape (``fingerprint(**params)["output"]["shape"]``,
      e.g. (1, 100, 100, 100) for T1/PET, (1, 32, 112, 112) for ultrasound), zeros when the scan failed;
    - one entry per ``QC_FIELDS`` item of the pipeline, from its QC record (``preprocess_with_qc``; a
      pipeline without it reports no QC): the record's value converted to the default's type, the default
      when the record has None or the scan failed;
    - with ``covariates``, ``covariates``: float32 [C], the item's covariate values encoded by
      :class:`~supremix_med.data.covariates.EncodeCovariatesd` (zeros when a value is missing or unknown: the
      scan then fails and is not preprocessed);
    - ``error``: empty, or why the scan could not be used: the ``ValueError`` / ``OSError`` message (prefixed
      with the path if it does not name it); any other exception is logged with its traceback and reported
      with its class name and the path.

    Args:
        pipeline: the preprocessing module, e.g. ``"t1"``, ``"pet"`` (a name of :data:`supremix_med.pipelines.PIPELINES`).
        path_key: item key holding the scan's path.
        covariates: item keys of the covariates the model takes (e.g. ``["sex"]`` from the inference CSV).
        **params: the pipeline's parameters (e.g. ``register="auto"`` for T1, ``frames=32`` for ultrasound),
            given to its ``preprocess_with_qc`` / ``preprocess`` and ``fingerprint``.

    Raises:
        ValueError: an unusable ``pipeline`` or invalid ``params`` (raised by its ``fingerprint``).
    """

    def __init__(self, pipeline: str = "t1", path_key: str = "path", covariates: Sequence[str] = (),
                 **params: Any) -> None:
        module = get_pipeline(pipeline)
        self.pipeline = pipeline
        self.path_key = path_key
        self.encode_covariates = EncodeCovariatesd(list(covariates), id_key="id") if covariates else None
        self.params = params
        self.image_shape = tuple(module.fingerprint(**params)["output"]["shape"])
        self.qc_defaults = qc_fields(pipeline)
        self._preprocess = module.preprocess
        self._preprocess_with_qc = getattr(module, "preprocess_with_qc", None)

    def _run(self, path: str) -> tuple[Any, dict[str, Any]]:
        """(image, QC record) of one scan; the record is empty for a pipeline without ``preprocess_with_qc``."""
        if self._preprocess_with_qc is None:
            return self._preprocess(path, **self.params), {}
        return self._preprocess_with_qc(path, **self.params)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        item = dict(data)
        path = str(item[self.path_key])
        image, qc, error = None, {}, ""
        try:
            if self.encode_covariates is not None:  # first: a scan without its covariates is not worth reading
                item = self.encode_covariates(item)
            image, qc = self._run(path)
        except (ValueError, OSError) as err:  # unusable or missing scan; the message names the file
            error = str(err) if path in str(err) else f"{path}: {err}"
        except Exception as err:  # an unexpected failure on one scan must not stop the others
            logger.exception("unexpected failure while preprocessing %s", path)
            error = f"{type(err).__name__} while preprocessing {path}: {err}"
        item["image"] = torch.zeros(self.image_shape) if image is None else torch.as_tensor(image, dtype=torch.float32)
        item.update({key: _collatable(qc.get(key), default) for key, default in self.qc_defaults.items()})
        if self.encode_covariates is not None:
            item.setdefault(COVARIATES_KEY, torch.zeros(len(self.encode_covariates.keys)))
        item["error"] = error
        return item
