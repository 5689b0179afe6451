"""Face-age datasets in the Deep Imbalanced Regression (DIR) split format (AgeDB-DIR, IMDB-WIKI-DIR).

A DIR split file is a CSV with one row per image and the columns

- ``age``: the target, a non-negative number (years; within ``label_range`` when given, e.g. ``(0, 120)``; an
  unusable age is refused, or its row left out and reported with ``label_policy="drop"``);
- ``path``: the image file, relative to an image folder (AgeDB-DIR: ``AgeDB/<name>.jpg``);
- ``split``: ``train``, ``val`` or ``test``;

and optionally ``id`` (a unique sample id; the ``path`` is the id otherwise). Other columns are ignored.

:func:`read_dir_split` reads and checks the file, :func:`face_records` turns one split into MONAI-style
records ``{"image": absolute path, "label": age, "id": ...}`` for :class:`monai.data.Dataset`, and
:class:`FaceDataset` is that dataset with the image loading built in (RGB, channel-first, [0, 1]) and the
``labels``/``ids`` properties of :class:`supremix_med.data.datasets.RecordDataset`, so a bundle can swap one
for the other. :func:`preprocess` and :func:`fingerprint` make this module the preprocessing pipeline of face
inference (``supremix_med.inference.PreprocessScan(pipeline="supremix_med.data.sources.faces")``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from importlib import metadata
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import Compose
from PIL import Image

from supremix_med.data.datasets import RecordDataset
from supremix_med.data.exclusions import report_exclusions
from supremix_med.data.labels import check_labels
from supremix_med.data.manifest import read_manifest_csv
from supremix_med.data.splits import SPLITS, select_splits

from .face_transforms import face_eval_transforms, face_load_transforms

__all__ = ["DIR_COLUMNS", "FaceDataset", "face_records", "fingerprint", "preprocess", "read_dir_split"]

DIR_COLUMNS: tuple[str, ...] = ("age", "path", "split")
"""Columns every DIR split file has."""
FIRST_LINE = 2  # CSV line of the first data row (line 1 is the header)
#: Ages a DIR split may hold when no ``label_range`` is given: any finite non-negative number (years).
AGE_RANGE = (0.0, math.inf)
_SHOWN = 5  # offending lines listed in an error message
PIPELINE = "faces"
"""Name of the face preprocessing pipeline in fingerprints (this module)."""
VERSION = 1
"""Version of :func:`preprocess`; bump it when its output changes."""


def _lines(mask: pd.Series | np.ndarray, lines: Sequence[int], values: pd.Series | None = None) -> str:
    """The CSV ``lines`` where ``mask`` holds (the first few, with their ``values`` when given) and how many more."""
    positions = np.flatnonzero(np.asarray(mask))
    shown = [f"line {lines[p]}" + ("" if values is None else f" ({values.iloc[p]!r})") for p in positions[:_SHOWN]]
    more = f" and {positions.size - _SHOWN} more" if positions.size > _SHOWN else ""
    return ", ".join(shown) + more


def _read_csv(csv_path: Path) -> pd.DataFrame:
    """The CSV as read by ``read_manifest_csv``, column names and text cells stripped of spaces."""
    try:
        table = read_manifest_csv(csv_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{csv_path}: not a readable DIR split CSV ({error}).") from error
    table = table.rename(columns=lambda c: str(c).strip())
    for column in ("path", "split", "id"):
        if column in table.columns:
            table[column] = table[column].astype(str).str.strip()
    return table


def _check_table(table: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Check columns, paths, splits and ids of a DIR table; return it with ``id`` and ``line`` set (ages unchecked)."""
    missing = [c for c in DIR_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; a DIR split CSV needs {list(DIR_COLUMNS)}, "
                         f"found {list(table.columns)}.")
    if table.empty:
        raise ValueError(f"{csv_path}: no rows after the header.")
    lines = list(range(FIRST_LINE, FIRST_LINE + len(table)))
    empty_path = table["path"] == ""
    if empty_path.any():
        raise ValueError(f"{csv_path}: empty 'path' at {_lines(empty_path, lines)}.")
    bad_split = ~table["split"].isin(SPLITS)
    if bad_split.any():
        raise ValueError(f"{csv_path}: 'split' must be one of {SPLITS}; got {_lines(bad_split, lines, table['split'])}.")
    id_column = "id" if "id" in table.columns else "path"
    table = table.assign(id=table[id_column], line=lines)
    duplicated = table["id"].duplicated(keep=False)
    if duplicated.any():
        raise ValueError(f"{csv_path}: every {id_column!r} must be unique; repeated at "
                         f"{_lines(duplicated, lines, table['id'])}.")
    return table


def read_dir_split(csv_path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                   label_range: Sequence[float] | None = None, label_policy: str = "refuse",
                   output_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read and check a DIR split CSV.

    Args:
        csv_path: the split file (``age,path,split`` and optionally ``id``).
        image_dir: folder the ``path`` entries are relative to; defaults to the CSV's folder. Absolute
            entries are kept.
        label_range: plausible ``(low, high)`` age in years (e.g. ``(0, 120)``); default :data:`AGE_RANGE`.
        label_policy: ``"refuse"`` or ``"drop"`` rows whose age is missing, not finite or implausible (see
            :func:`~supremix_med.data.labels.check_labels`); dropped rows are logged and, with ``output_dir``,
            listed in ``<output_dir>/excluded.csv``.
        output_dir: the run's output folder, for the exclusion report.

    Returns:
        The table with ``age`` (float, years), ``split`` (str), ``id`` (str; the CSV's ``path`` when the file
        has no ``id`` column), ``path`` (str, absolute) and ``line`` (int, the row's CSV line number), in file
        order, index 0..n-1.

    Raises:
        FileNotFoundError: ``csv_path`` does not exist.
        ValueError: the file is not a readable CSV, has no rows, lacks a column, or has an empty path, a split
            other than train/val/test, a repeated id, or an unusable age (``label_policy="refuse"``); the message
            names the file and the offending lines.
    """
    csv_path = Path(csv_path).expanduser()
    table = _check_table(_read_csv(csv_path), csv_path)
    table, excluded = check_labels(table, "age", AGE_RANGE if label_range is None else label_range, label_policy,
                                   str(csv_path), [f"line {n}" for n in table["line"]])
    report_exclusions(excluded, csv_path, list(SPLITS), output_dir, total=len(table) + len(excluded))
    folder = (csv_path.parent if image_dir is None else Path(image_dir)).expanduser().resolve()
    table["path"] = [str(folder / Path(p).expanduser()) for p in table["path"]]
    return table[["id", "path", "age", "split", "line"]]


def _select(table: pd.DataFrame, split: str | Sequence[str], csv_path: Path) -> pd.DataFrame:
    """The rows of ``split`` (a name, a list of names, or ``"all"``); every named split must have rows."""
    names = select_splits(split)
    counts = table["split"].value_counts()
    empty = [] if split == "all" else [s for s in names if counts.get(s, 0) == 0]
    if empty:
        raise ValueError(f"{csv_path}: split(s) {empty} have no rows; the file holds "
                         f"{ {s: int(counts.get(s, 0)) for s in SPLITS} }.")
    return pd.concat([table[table["split"] == s] for s in names], ignore_index=True)


def face_records(
    csv_path: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    split: str | Sequence[str] = "train",
    check_files: bool = True,
    label_range: Sequence[float] | None = None,
    label_policy: str = "refuse",
    output_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """MONAI-style records of one or more splits of a DIR split CSV.

    Args:
        csv_path: the split file (see :func:`read_dir_split`).
        image_dir: folder the ``path`` entries are relative to; defaults to the CSV's folder.
        split: ``"train"``, ``"val"``, ``"test"``, a list of them (concatenated in that order) or ``"all"``.
        check_files: check that every selected image file exists.
        label_range, label_policy, output_dir: the age check and its report, see :func:`read_dir_split`.

    Returns:
        One dict per selected row, in file order within each split: ``"image"`` (str, absolute path),
        ``"label"`` (float, years), ``"id"`` (str), ``"line"`` (int, CSV line number).

    Raises:
        ValueError: see :func:`read_dir_split`; also an unknown or empty split, or (``check_files``) image
            files that do not exist, named with their CSV lines.
    """
    csv_path = Path(csv_path).expanduser()
    rows = _select(read_dir_split(csv_path, image_dir, label_range, label_policy, output_dir), split, csv_path)
    if check_files:
        absent = rows["path"].map(lambda p: not os.path.isfile(p))
        if absent.any():
            raise ValueError(f"{csv_path}: {int(absent.sum())} image file(s) not found: "
                             f"{_lines(absent, rows['line'].tolist(), rows['path'])}; "
                             f"check the image folder (image_dir) the paths are relative to.")
    return [{"image": p, "label": float(y), "id": i, "line": int(n)}
            for p, y, i, n in zip(rows["path"], rows["age"], rows["id"], rows["line"])]


def _reason(path: str, error: BaseException) -> str:
    """Why ``path`` could not be loaded: PIL's own complaint when PIL cannot decode it, else ``error``'s root cause.

    MONAI's ``LoadImage`` reports any reader failure as "cannot find a suitable reader", hiding PIL's reason.
    """
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as pil_error:
        return f"{type(pil_error).__name__}: {pil_error}"
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def _load(load: Callable[[dict[str, Any]], dict[str, Any]], path: str, where: str = "") -> torch.Tensor:
    """``load({"image": path})["image"]``; any failure becomes a ValueError naming ``path`` (and ``where``)."""
    try:
        return load({"image": path})["image"]
    except Exception as error:
        raise ValueError(f"{path}{where}: cannot read the image ({_reason(path, error)}).") from error


class FaceDataset(RecordDataset):
    """The face images of one or more splits of a DIR split CSV, as MONAI-style dicts.

    Item ``i`` is ``transform(d)`` for the dict ``d`` with

    - ``"image"``: float32 tensor [3, H, W] in [0, 1] (RGB, rows first; grey-scale or palette images are
      converted to RGB), loaded by ``load`` (default ``face_transforms.face_load_transforms()``: MONAI's
      ``LoadImaged`` with the PIL reader);
    - ``"label"``: float32 tensor [1], the age (years);
    - ``"id"``: the sample id (str).

    ``self.data`` holds the records of :func:`face_records`, as in :class:`monai.data.Dataset`.

    Args:
        csv_path: the split file (see :func:`read_dir_split`).
        image_dir: folder the ``path`` entries are relative to; defaults to the CSV's folder.
        split: ``"train"``, ``"val"``, ``"test"``, a list of them or ``"all"``.
        transform: callable or sequence of callables (e.g. MONAI dict transforms) applied after loading.
        load: dict transform turning ``{"image": path}`` into the image tensor; defaults to
            ``Compose(face_transforms.face_load_transforms())``.
        check_files: check, when the records are read, that every selected image file exists.
        label_range, label_policy, output_dir: the age check and its report, see :func:`read_dir_split`.

    Raises:
        ValueError: when the records are first read (see :class:`~supremix_med.data.datasets.RecordDataset`), see
            :func:`face_records`; when an item is read, an image that cannot be read (the message names the file
            and its CSV line).
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        split: str | Sequence[str] = "train",
        transform: Sequence[Callable] | Callable | None = None,
        load: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        check_files: bool = True,
        label_range: Sequence[float] | None = None,
        label_policy: str = "refuse",
        output_dir: str | os.PathLike | None = None,
    ) -> None:
        self.csv_path = Path(csv_path).expanduser()
        self.load = Compose(face_load_transforms()) if load is None else load
        self._read = functools.partial(face_records, csv_path, image_dir, split, check_files, label_range,
                                       label_policy, output_dir)
        super().__init__(transform=transform)

    def _load_records(self) -> list[dict[str, Any]]:
        """The records of :func:`face_records`, read on first use."""
        return self._read()

    def _transform(self, index: int) -> Any:
        record = self.data[index]
        image = _load(self.load, record["image"], f" (line {record['line']} of {self.csv_path})")
        item = {"image": image, "label": torch.tensor([record["label"]], dtype=torch.float32), "id": record["id"]}
        return self.transform(item)



# ------------------------------------------------------------------------------- inference pipeline
@functools.lru_cache(maxsize=4)
def _eval_pipeline(image_size: int, crop_fraction: float) -> Compose:
    return Compose([*face_load_transforms(), *face_eval_transforms(image_size, crop_fraction)])


def _check_params(image_size: int, crop_fraction: float) -> None:
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}.")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}.")


def preprocess(path: str | os.PathLike, image_size: int = 224, crop_fraction: float = 0.875) -> np.ndarray:
    """One face image as the network sees it at evaluation: loaded (RGB, [0, 1]), centre-cropped and resized
    (:func:`~supremix_med.data.sources.face_transforms.face_eval_transforms`), ImageNet-normalised.

    With :func:`fingerprint` this module is a preprocessing pipeline for
    :class:`supremix_med.inference.PreprocessScan` (``pipeline="supremix_med.data.sources.faces"``).

    Returns:
        float32 array [3, image_size, image_size].

    Raises:
        ValueError: bad parameters, or an image that cannot be read (the message names the file).
    """
    _check_params(image_size, crop_fraction)
    image = _load(_eval_pipeline(int(image_size), float(crop_fraction)), str(path))
    return np.asarray(image, dtype=np.float32)


def fingerprint(image_size: int = 224, crop_fraction: float = 0.875) -> dict[str, Any]:
    """Everything that determines :func:`preprocess`'s output, as a JSON-ready dict.

    Returns:
        ``{"pipeline", "version", "params", "decisions", "libraries", "output"}``; ``output`` gives the shape
        (3, image_size, image_size), dtype and axis order.
    """
    _check_params(image_size, crop_fraction)
    return {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": {"image_size": int(image_size), "crop_fraction": float(crop_fraction)},
        "decisions": {
            "load": "PIL, converted to 8-bit RGB, divided by 255",
            "crop": "centred square of crop_fraction times the shorter side, antialiased bilinear resize",
            "normalisation": "ImageNet channel mean and standard deviation",
        },
        "libraries": {name: metadata.version(name) for name in ("Pillow", "monai", "torch", "numpy")},
        "output": {"shape": [3, int(image_size), int(image_size)], "dtype": "float32",
                   "axes": "channel, row, column"},
    }
