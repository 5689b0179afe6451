"""Tabular regression data: the UCI Airfoil Self-Noise table or any numeric CSV, split and standardised.

Layouts read by :func:`read_table` (chosen by the file's suffix):

- ``*.dat``: UCI Airfoil Self-Noise (``airfoil_self_noise.dat``): no header, 6 whitespace-separated numbers
  per row, named :data:`AIRFOIL_COLUMNS` (5 features + the target ``scaled_sound_pressure``, dB);
- anything else: a CSV with a header row; the target is the ``target_column``, the features are all the
  other columns. Every feature cell must be a finite number; an unusable target (missing, not finite or, with
  ``label_range``, implausible) is refused, or its row left out and reported with ``label_policy="drop"``
  (:func:`supremix_med.data.labels.check_labels`).

:func:`load_table` splits the rows (seeded, stratified by the target: 1203/150/150 for the 1503-row airfoil
table, the same fractions for any other table) and fits a :class:`FeatureScaler` on the training split only.
The result, a :class:`RegressionTable`, gives what a bundle config needs: :class:`TableDataset` per split
(MONAI dict items ``{"features": float32 [d], "label": float32 [1], "id": str}``), ``in_features`` (``d``, the
MLP's input width) and ``label_range`` (the training targets' ``[min, max]``).

For inference this module is a preprocessing pipeline like ``preprocessing.t1`` (:func:`fingerprint`,
:func:`preprocess`, see :mod:`supremix_med.inference`): the recipe stores :meth:`TableInfo.fingerprint` (the
target, label range and scaler) with the model as :data:`TABLE_INFO_FILE` under ``ckpt_dir`` (its ``params`` are
:func:`fingerprint`'s arguments), and :func:`prediction_records` applies them to new rows,
reporting bad rows in an ``error`` field instead of raising.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from importlib import metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supremix_med.data.datasets import RecordDataset
from supremix_med.data.exclusions import report_exclusions
from supremix_med.data.labels import check_labels
from supremix_med.data.splits import SPLITS, assign_splits
from supremix_med.io import atomic_write_json

__all__ = [
    "AIRFOIL_COLUMNS", "AIRFOIL_FILE", "AIRFOIL_SPLIT_SIZES", "AIRFOIL_TARGET", "FEATURES_KEY", "PIPELINE",
    "TABLE_INFO_FILE", "VERSION", "FeatureScaler", "RegressionTable", "TableDataset", "TableInfo", "fingerprint",
    "load_table", "prediction_records", "preprocess", "read_table",
]

logger = logging.getLogger(__name__)

AIRFOIL_FILE = "airfoil_self_noise.dat"
#: Column names of the UCI file, in file order: frequency (Hz), angle of attack (degrees), chord length (m),
#: free-stream velocity (m/s), suction side displacement thickness (m), scaled sound pressure level (dB).
AIRFOIL_COLUMNS = ("frequency", "angle_of_attack", "chord_length", "free_stream_velocity",
                   "suction_side_displacement_thickness", "scaled_sound_pressure")
AIRFOIL_TARGET = "scaled_sound_pressure"
#: (train, val, test) rows of the 1503-row airfoil table; other tables are split in the same proportions.
AIRFOIL_SPLIT_SIZES = (1203, 150, 150)
#: File under ``ckpt_dir`` holding the :class:`TableInfo` of a trained model, as a fingerprint (the name the
#: inference recipe reads a model's preprocessing from).
TABLE_INFO_FILE = "preprocessing.json"
PIPELINE = "tables"
VERSION = 1
#: Item key of the standardised feature vector.
FEATURES_KEY = "features"


def _read_cells(path: Path) -> pd.DataFrame:
    """Every cell of ``path`` as text (missing cells NaN), with the layout's column names."""
    airfoil = path.suffix.lower() == ".dat"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give --dataset_dir the folder holding {AIRFOIL_FILE} (UCI "
                                f"Airfoil Self-Noise) or --data_file a CSV table.")
    try:
        if airfoil:
            cells = pd.read_csv(path, sep=r"\s+", header=None, dtype=str)
        else:
            cells = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: the file is empty.") from error
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as a {'whitespace-separated' if airfoil else 'CSV'} "
                         f"table: {error}") from error
    if airfoil:
        if cells.shape[1] != len(AIRFOIL_COLUMNS):
            raise ValueError(f"{path}: a .dat file is read in the UCI airfoil layout, {len(AIRFOIL_COLUMNS)} "
                             f"whitespace-separated numbers per row {AIRFOIL_COLUMNS}, but it has "
                             f"{cells.shape[1]} columns.")
        cells.columns = list(AIRFOIL_COLUMNS)
    if cells.empty:
        raise ValueError(f"{path}: the table has no data rows (columns: {list(cells.columns)}).")
    return cells


def _to_numbers(cells: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Cells -> float64 frame (NaN where missing, not a number or not finite) and its NaN mask [rows, columns]."""
    values = cells.apply(lambda column: pd.to_numeric(column, errors="coerce")).astype(float)
    values = values.where(np.isfinite(values))
    return values, values.isna().to_numpy()


def _cell_problem(cells: pd.DataFrame, row: int, column: int) -> str:
    """'row R, column 'C': why the cell is unusable' (rows 1-based, the header row not counted)."""
    value = cells.iat[row, column]
    what = "is missing" if pd.isna(value) or str(value).strip() == "" else f"{value!r} is not a finite number"
    return f"row {row + 1}, column {cells.columns[column]!r}: {what}"


def read_table(path: str | os.PathLike, target_column: str = AIRFOIL_TARGET,
               label_range: Sequence[float] | None = None, label_policy: str = "refuse",
               output_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a regression table whose every feature cell is a finite number.

    Args:
        path: a ``.dat`` file in the UCI airfoil layout (no header, columns :data:`AIRFOIL_COLUMNS`) or a CSV
            file with a header row.
        target_column: the column holding the regression target; it must exist.
        label_range: plausible ``(low, high)`` target (e.g. ``(0, 194)`` dB); ``None``: any finite number.
        label_policy: ``"refuse"`` or ``"drop"`` rows whose target is unusable (see
            :func:`~supremix_med.data.labels.check_labels`); dropped rows are logged and, with ``output_dir``,
            listed in ``<output_dir>/excluded.csv`` (id: the row number).
        output_dir: the run's output folder, for the exclusion report.

    Returns:
        float64 frame [rows, columns] with the file's column order; row ``i`` of the index is data row ``i + 1``
        of the file (0..n-1 unless rows were dropped).

    Raises:
        ValueError: the file is empty, unparsable or has no data row; ``target_column`` is not a column (the
            message lists the columns); a feature cell is missing, not a number or not finite (the message names
            the file, the first such cell's row and column, and how many cells are bad); or a target is
            unusable (``label_policy="refuse"``; the message names every such row).
    """
    path = Path(path)
    cells = _read_cells(path)
    if target_column not in cells.columns:
        raise ValueError(f"{path}: no target column {target_column!r}; the columns are {list(cells.columns)}.")
    if cells.shape[1] < 2:
        raise ValueError(f"{path}: only the target column {target_column!r}; a table needs feature columns too.")
    values, bad = _to_numbers(cells)
    bad = bad & (cells.columns != target_column)  # feature cells; the targets are checked below
    if bad.any():
        rows, columns = np.nonzero(bad)
        raise ValueError(f"{path}: {_cell_problem(cells, rows[0], columns[0])} ({len(rows)} unusable cell(s) "
                         f"in {len(np.unique(rows))} row(s)); every feature cell must be a finite number.")
    targets = pd.DataFrame({"id": [str(i + 1) for i in range(len(cells))], target_column: cells[target_column]})
    kept, excluded = check_labels(targets, target_column, label_range, label_policy, str(path),
                                  [f"row {i + 1}" for i in range(len(cells))])
    report_exclusions(excluded, path, [""], output_dir, total=len(cells))
    return values.loc[kept.index]


@dataclass(frozen=True)
class FeatureScaler:
    """Standardisation ``(x - mean) / std`` per feature column, fitted on the training rows.

    Columns with zero variance in the training rows (std 0) are centred only (their std is stored as 1), so
    they map to 0 instead of dividing by zero; they are listed in ``constant``.

    Attributes:
        columns: feature column names, in the order of the output's last axis.
        mean: per-column training mean.
        std: per-column training standard deviation (population, ddof 0), 1 for constant columns.
        constant: the columns that were constant in the training rows.
    """

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    constant: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.columns) == len(self.mean) == len(self.std) or not self.columns:
            raise ValueError(f"FeatureScaler: columns, mean and std must be non-empty and of one length, got "
                             f"{len(self.columns)}, {len(self.mean)} and {len(self.std)}.")
        if not all(np.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"FeatureScaler: every std must be positive and finite, got {self.std}.")

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: Sequence[str]) -> FeatureScaler:
        """Fit on ``frame[columns]`` (the training rows, float); logs a warning naming constant columns."""
        values = frame[list(columns)].to_numpy(dtype=float)
        is_constant = np.ptp(values, axis=0) == 0
        constant = tuple(c for c, flat in zip(columns, is_constant) if flat)
        if constant:
            logger.warning("feature column(s) %s are constant in the training rows: centred only (they carry "
                           "no information for the model)", list(constant))
        std = np.where(is_constant, 1.0, values.std(axis=0))
        return cls(tuple(columns), tuple(values.mean(axis=0).tolist()), tuple(std.tolist()), constant)

    @property
    def n_features(self) -> int:
        """Number of feature columns ``d``."""
        return len(self.columns)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised ``frame[columns]`` as float32 [rows, n_features].

        Raises:
            ValueError: a feature column is missing from ``frame``.
        """
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"FeatureScaler: no column(s) {missing}; got {list(frame.columns)}, the model was "
                             f"trained on {list(self.columns)}.")
        values = frame[list(self.columns)].to_numpy(dtype=float)
        return ((values - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"columns", "mean", "std", "constant"}`` (the inverse of :meth:`from_dict`)."""
        return {"columns": list(self.columns), "mean": list(self.mean), "std": list(self.std),
                "constant": list(self.constant)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> FeatureScaler:
        """Rebuild a scaler from :meth:`to_dict`'s output."""
        return cls(tuple(record["columns"]), tuple(float(m) for m in record["mean"]),
                   tuple(float(s) for s in record["std"]), tuple(record.get("constant", ())))


@dataclass(frozen=True)
class TableInfo:
    """What inference needs from a model's training table: the target's name, its training range, the scaler.

    Attributes:
        target: name of the target column.
        label_range: ``(min, max)`` of the training targets.
        scaler: the feature standardisation fitted on the training rows.
    """

    target: str
    label_range: tuple[float, float]
    scaler: FeatureScaler

    @classmethod
    def from_params(cls, target: str, label_range: Sequence[float], scaler: dict[str, Any]) -> TableInfo:
        """Build from the ``params`` of a fingerprint (see :func:`fingerprint`)."""
        low, high = label_range
        return cls(str(target), (float(low), float(high)), FeatureScaler.from_dict(scaler))

    def params(self) -> dict[str, Any]:
        """The JSON-ready keyword arguments of :func:`fingerprint` and :func:`preprocess`."""
        return {"target": self.target, "label_range": list(self.label_range), "scaler": self.scaler.to_dict()}

    def fingerprint(self) -> dict[str, Any]:
        """``{"pipeline", "version", "params", "decisions", "libraries", "output"}`` of this table's preprocessing."""
        return {
            "pipeline": PIPELINE,
            "version": VERSION,
            "params": self.params(),
            "decisions": {
                "read": "a .dat file in the UCI airfoil layout, otherwise a CSV with a header row; every feature "
                        "cell a finite number",
                "standardisation": "(x - mean) / std per feature column, both of the training rows (std 1 for "
                                   "a column constant there)",
            },
            "libraries": {name: metadata.version(name) for name in ("pandas", "numpy")},
            "output": {"shape": [self.scaler.n_features], "dtype": "float32", "axes": "feature"},
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`fingerprint` as JSON at ``path``, atomically."""
        atomic_write_json(self.fingerprint(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TableInfo:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: the file is not valid JSON or not a table fingerprint (the message names the file).
        """
        path = Path(path)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record["pipeline"] != PIPELINE:
                raise ValueError(f"pipeline {record['pipeline']!r} is not {PIPELINE!r}")
            return cls.from_params(**record["params"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a table fingerprint written by TableInfo.save "
                             f"({type(error).__name__}: {error}).") from error


@dataclass(frozen=True)
class RegressionTable:
    """A table's rows split into train/val/test, with the scaler fitted on the training rows.

    Build with :func:`load_table`.

    Attributes:
        source: the file read.
        values: float64 values [rows, columns] in file column order; row ``i`` is data row ``i + 1`` of the file,
            whose id is ``str(i + 1)``.
        split: ``"train"``, ``"val"`` or ``"test"`` per row (same index as ``values``).
        info: target name, training label range and fitted scaler.
    """

    source: Path
    values: pd.DataFrame = field(repr=False)
    split: pd.Series = field(repr=False)
    info: TableInfo

    @property
    def target(self) -> str:
        """Name of the target column."""
        return self.info.target

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Names of the ``d`` feature columns, in the order of the feature vectors."""
        return self.info.scaler.columns

    @property
    def in_features(self) -> int:
        """Number of feature columns ``d`` (the MLP's ``in_features``)."""
        return self.info.scaler.n_features

    @property
    def label_range(self) -> list[float]:
        """``[min, max]`` of the training targets (a list, as bundle configs and losses take it)."""
        return list(self.info.label_range)

    def rows(self, split: str) -> pd.DataFrame:
        """The values of the rows of ``split``, in file order.

        Raises:
            ValueError: ``split`` is not one of :data:`~supremix_med.data.splits.SPLITS`.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return self.values[self.split == split]

    def labels(self, split: str) -> np.ndarray:
        """Targets of ``split``, float32 [rows]."""
        return self.rows(split)[self.target].to_numpy(dtype=np.float32)

    def records(self, split: str, key: str = FEATURES_KEY) -> list[dict[str, Any]]:
        """Items of ``split`` for :class:`monai.data.Dataset`, in file order.

        Each is ``{key: float32 [d] standardised features, "label": float32 [1], "id": str(row)}``; the DataLoader
        collates them to ``[B, d]``, ``[B, 1]`` and a list of ids.
        """
        rows = self.rows(split)
        return _items(self.info.scaler.transform(rows), rows[self.target].to_numpy(dtype=np.float32),
                      rows.index.to_numpy() + 1, key)


def _items(features: np.ndarray, labels: np.ndarray, rows: np.ndarray, key: str) -> list[dict[str, Any]]:
    """``{key: features[i] [d], "label": labels[i:i+1] [1], "id": str(rows[i])}`` per row."""
    return [{key: x, "label": labels[i:i + 1], "id": str(r)} for i, (x, r) in enumerate(zip(features, rows))]


#: Fractions of (train, val, test) rows.
_SPLIT_FRACTIONS = tuple(size / sum(AIRFOIL_SPLIT_SIZES) for size in AIRFOIL_SPLIT_SIZES)


def load_table(data_file: str | os.PathLike, target_column: str = AIRFOIL_TARGET, seed: int = 0,
               label_range: Sequence[float] | None = None, label_policy: str = "refuse",
               output_dir: str | os.PathLike | None = None) -> RegressionTable:
    """Read a table, split its rows and fit the feature scaler on the training split.

    The split is seeded and stratified by the target (:func:`~supremix_med.data.splits.assign_splits`) with the
    fractions of :data:`AIRFOIL_SPLIT_SIZES`: exactly 1203/150/150 rows for the 1503-row airfoil table.

    Args:
        data_file: ``airfoil_self_noise.dat`` or any CSV, see :func:`read_table`.
        target_column: the target; every other column is a feature.
        seed: seed of the split.
        label_range, label_policy, output_dir: the target check and its report, see :func:`read_table`.

    Returns:
        The split table with its fitted scaler and training label range.

    Raises:
        ValueError: any error of :func:`read_table`, or a table too small to give every split a row.
    """
    values = read_table(data_file, target_column, label_range, label_policy, output_dir)
    split = assign_splits(values, _SPLIT_FRACTIONS, seed=seed, stratify=target_column)
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        raise ValueError(f"{data_file}: {len(values)} row(s) leave split(s) {empty} empty with the fractions "
                         f"{AIRFOIL_SPLIT_SIZES} / {sum(AIRFOIL_SPLIT_SIZES)}; the table needs more rows.")
    train = values[split == "train"]
    info = TableInfo(target_column, (float(train[target_column].min()), float(train[target_column].max())),
                     FeatureScaler.fit(train, [c for c in values.columns if c != target_column]))
    return RegressionTable(Path(data_file), values, split, info)


class TableSource:
    """A table read the first time it is needed, shared by the datasets of its splits.

    A bundle config names one source; its pre-training, training, validation and test datasets and its fingerprint
    all read the same :func:`load_table` result, loaded when the workflow first uses it rather than when the config
    is built.

    Args:
        data_file, target_column, seed, label_range, label_policy, output_dir: as :func:`load_table`.
    """

    def __init__(self, data_file: str | os.PathLike, target_column: str = AIRFOIL_TARGET, seed: int = 0,
                 label_range: Sequence[float] | None = None, label_policy: str = "refuse",
                 output_dir: str | os.PathLike | None = None) -> None:
        self._load = functools.partial(load_table, data_file, target_column, seed, label_range, label_policy,
                                       output_dir)

    @functools.cached_property
    def table(self) -> RegressionTable:
        """The loaded table."""
        return self._load()

    def fingerprint(self) -> dict[str, Any]:
        """The fingerprint of the table's preprocessing (see :meth:`TableInfo.fingerprint`)."""
        return self.table.info.fingerprint()


class TableDataset(RecordDataset):
    """The items of one split of a table (see :meth:`RegressionTable.records`), read on first use.

    Args:
        table: the loaded table, or a :class:`TableSource` (read when the dataset is first used).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: callable(s) applied to each item, as in :class:`monai.data.Dataset`.
        key: item key of the feature vector.
        in_features: the number of features the network expects (its declared ``in_features``), checked against
            the table's; ``None``: not checked.

    Raises:
        ValueError: when the records are first read: the table's errors, or a feature count other than
            ``in_features`` (the message names the file and both counts).
    """

    def __init__(self, table: RegressionTable | TableSource, split: str = "train",
                 transform: Sequence[Callable] | Callable | None = None, key: str = FEATURES_KEY,
                 in_features: int | None = None) -> None:
        self.table, self.split, self.key, self.in_features = table, split, key, in_features
        super().__init__(transform=transform)

    def _load_records(self) -> list[dict[str, Any]]:
        table = self.table.table if isinstance(self.table, TableSource) else self.table
        if self.in_features is not None and table.in_features != self.in_features:
            raise ValueError(f"{table.source}: {table.in_features} feature columns {list(table.feature_columns)}, "
                             f"but the network takes in_features={self.in_features}; pass "
                             f"--network_config#in_features {table.in_features} (and --label_range) for this table.")
        return table.records(self.split, self.key)



def prediction_records(data_file: str | os.PathLike, info: TableInfo | str | os.PathLike,
                       key: str = FEATURES_KEY) -> list[dict[str, Any]]:
    """Items for inference on the rows of a table, standardised with the model's scaler; never fails per row.

    Every row gives ``{key: float32 [d], "label": float32 [1], "id": str(row), "path": str(data_file),
    "error": str}`` (``row`` 1-based, the header not counted). ``label`` is the row's target when the table has
    a numeric one, else NaN. A row with a missing, non-numeric or non-finite feature gets zero features and an
    ``error`` naming the file, row and column; its prediction is meaningless and must be discarded. Columns
    other than the model's features and target are ignored.

    Args:
        data_file: a CSV (header row) or ``.dat`` file, as in :func:`read_table`.
        info: the model's :class:`TableInfo` or the path of its ``preprocessing.json``.
        key: item key of the feature vector.

    Raises:
        ValueError: the file is empty or unparsable, or lacks a feature column (no row could be used).
    """
    path = Path(data_file)
    info = info if isinstance(info, TableInfo) else TableInfo.load(info)
    cells = _read_cells(path)
    columns = list(info.scaler.columns)
    missing = [c for c in columns if c not in cells.columns]
    if missing:
        raise ValueError(f"{path}: no feature column(s) {missing}; the columns are {list(cells.columns)} and the "
                         f"model needs {columns}.")
    values, bad = _to_numbers(cells[columns])
    usable = ~bad.any(axis=1)
    features = np.zeros((len(values), len(columns)), dtype=np.float32)
    features[usable] = info.scaler.transform(values[usable])
    labels = (_to_numbers(cells[[info.target]])[0][info.target].to_numpy(dtype=np.float32)
              if info.target in cells.columns else np.full(len(values), np.nan, dtype=np.float32))
    items = _items(features, labels, np.arange(1, len(values) + 1), key)
    for i, item in enumerate(items):
        item["path"] = str(path)
        item["error"] = "" if usable[i] else f"{path}: {_cell_problem(cells[columns], i, int(np.argmax(bad[i])))}"
    return items


def fingerprint(target: str, label_range: Sequence[float], scaler: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a model's table preprocessing (see :meth:`TableInfo.fingerprint`).

    Args:
        target: name of the target column.
        label_range: ``[min, max]`` of the training targets.
        scaler: :meth:`FeatureScaler.to_dict` of the scaler fitted on the training rows.
    """
    return TableInfo.from_params(target, label_range, scaler).fingerprint()


def preprocess(path: str | os.PathLike, target: str, label_range: Sequence[float],
               scaler: dict[str, Any]) -> np.ndarray:
    """Standardised features float32 [rows, d] of every row of the table at ``path`` (arguments as for
    :func:`fingerprint`).

    Raises:
        ValueError: as :func:`prediction_records`, or a row with an unusable feature cell (the message names the
            file, row and column).
    """
    items = prediction_records(path, TableInfo.from_params(target, label_range, scaler))
    errors = [item["error"] for item in items if item["error"]]
    if errors:
        raise ValueError(f"{errors[0]} ({len(errors)} unusable row(s)).")
    return np.stack([item[FEATURES_KEY] for item in items])
