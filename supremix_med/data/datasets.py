"""Datasets reading a preprocessed-tensor cache (see :mod:`supremix_med.data.cache`).

A sample is a slice of a memory-mapped ``<split>.npy``: random access costs one read of the sample's
bytes (from the page cache once warm) and a float16 -> float32 conversion, with no unpickling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.data import Dataset, list_data_collate

from .cache import MANIFEST_FILE, array_path, read_cache_info, read_cache_qc
from .exclusions import check_policy, report_exclusions
from .labels import LABEL_POLICIES, check_labels
from .manifest import read_manifest_csv
from .qc import QC_POLICIES, check_qc, pipeline_qc_limits
from .splits import select_splits

__all__ = ["CachedDataset", "LazyDataset", "RecordDataset", "collate_fn", "read_records"]


_CHUNK = 32768  # elements per conversion step: torch's intra-op grain size, so each step runs on one thread


def _to_float32(stored: np.ndarray) -> torch.Tensor:
    """A float32 tensor copy of one stored sample (float16 or float32), converted chunk by chunk.

    torch converts float16 with SIMD instructions, several times faster than numpy. Chunks below torch's grain
    size keep the copy on this thread: the conversion is cheap and, on a busy machine, intra-op threads spend
    more time waiting on each other than converting.
    """
    source = torch.from_numpy(stored).reshape(-1)
    image = torch.empty(source.shape, dtype=torch.float32)
    for start in range(0, source.numel(), _CHUNK):
        image[start:start + _CHUNK] = source[start:start + _CHUNK]
    return image.reshape(stored.shape)


class RecordDataset(Dataset):
    """A MONAI ``Dataset`` over records (dicts) with an ``"id"`` and a scalar ``"label"`` (a number or a [1] array),
    read when first needed.

    Subclasses implement :meth:`_load_records`; it runs the first time the dataset's length, an item, ``data``,
    :attr:`ids` or :attr:`labels` is asked for, not when the dataset is built. A bundle config therefore builds its
    engines (and MONAI checks its properties) before any data is there, and a problem with the data is reported
    when the workflow runs. The recipe reads :attr:`labels` (target standardisation, the mean baseline, LDS) and
    reports read :attr:`ids`.

    Args:
        transform: callable or sequence of callables applied to each item, as in :class:`monai.data.Dataset`.
    """

    def __init__(self, transform: Sequence[Callable] | Callable | None = None) -> None:
        super().__init__(data=None, transform=transform)

    @property
    def data(self) -> list[dict[str, Any]]:
        """The records, read on first use."""
        if self._records_read is None:
            self._records_read = self._load_records()
        return self._records_read

    @data.setter
    def data(self, records: list[dict[str, Any]] | None) -> None:
        self._records_read = records

    def _load_records(self) -> list[dict[str, Any]]:
        """Read the records (called once, on first use)."""
        raise NotImplementedError

    @property
    def records_loaded(self) -> bool:
        """Whether the records have been read."""
        return self._records_read is not None

    @property
    def ids(self) -> list[str]:
        """Sample ids, in item order."""
        return [r["id"] for r in self.data]

    @property
    def labels(self) -> np.ndarray:
        """Targets [len(self)] (float32), in item order."""
        return np.array([r["label"] for r in self.data], dtype=np.float32).reshape(len(self.data))


class LazyDataset(RecordDataset):
    """A MONAI ``Dataset`` over the records ``records()`` returns, called the first time the dataset is used.

    Example (a bundle's inference dataset: the scans are listed when the workflow runs)::

        "dataset": {
            "_target_": "supremix_med.data.datasets.LazyDataset",
            "records": {"_target_": "supremix_med.inference.list_scans", "_mode_": "callable", "source": "@dataset_dir"},
            "transform": "@preprocessing"
        }

    Args:
        records: a function of no argument returning the records (dicts).
        transform: applied to each record, as in :class:`monai.data.Dataset`.
    """

    def __init__(self, records: Callable[[], Sequence[dict[str, Any]]],
                 transform: Sequence[Callable] | Callable | None = None) -> None:
        self._list = records
        super().__init__(transform=transform)

    def _load_records(self) -> list[dict[str, Any]]:
        return list(self._list())


class CachedDataset(RecordDataset):
    """The samples of one or more splits of a cache, as MONAI-style dicts.

    Item ``i`` is ``transform(d)`` for the dict ``d`` with

    - ``"image"``: float32 tensor of the cache's sample shape, e.g. [1, 100, 100, 100] (stored as float16
      or float32, converted on access);
    - ``"label"``: float32 tensor [1], the ``target`` column;
    - ``"id"``: the sample id (str);
    - one key per covariate: a float32 tensor [1] for a numeric column, else a str ("" when missing).

    ``self.data`` holds the per-sample records (id, split, index, label and covariates), as in
    :class:`monai.data.Dataset`; slicing gives a :class:`torch.utils.data.Subset`. The arrays are memory
    mapped on first access in each process and are not pickled, so DataLoader workers (fork or spawn) map
    them themselves.

    Screening, when the records are first read (nothing is dropped silently: a warning names every left-out sample and,
    with ``output_dir``, ``<output_dir>/excluded.csv`` lists them, see :mod:`~supremix_med.data.exclusions`):

    1. labels (:func:`~supremix_med.data.labels.check_labels`): a missing, non-numeric, non-finite or (with
       ``label_range``) implausible target is refused (``label_policy="refuse"``: one error naming every such
       sample by id and manifest line) or left out (``"drop"``);
    2. QC (:func:`~supremix_med.data.qc.check_qc`): a sample whose stored QC record (``qc.csv``, see
       :mod:`~supremix_med.data.cache`) violates ``qc_limits`` -- by default the ``QC_LIMITS`` of the pipeline
       named in the cache's fingerprint, e.g. T1's ``registration_similarity >= 0.5`` -- is left out
       (``qc_policy="exclude"``), kept with a warning (``"keep"``) or refused (``"fail"``). A cache built before
       QC was stored has no QC record: every sample is kept and a warning says that QC could not be checked
       (``"fail"`` refuses it).

    Args:
        cache_dir: a complete cache folder.
        split: ``"train"``, ``"val"``, ``"test"``, a list of them (concatenated in that order) or ``"all"``.
        transform: callable or sequence of callables (e.g. MONAI dict transforms) applied to each item.
        target: manifest column holding the regression target; every selected sample needs a value.
        covariates: further manifest columns returned with each item (e.g. ``("sex", "site")``).
        qc_policy: ``"exclude"``, ``"keep"`` or ``"fail"``, for samples that fail QC.
        qc_limits: ``{QC field: (low, high)}`` (either bound None), as inference's ``qc_limits``; ``None``: the
            pipeline's ``QC_LIMITS``; ``{}``: no QC check.
        label_range: plausible ``(low, high)`` target (e.g. ``(0, 120)`` years, see
            a bundle's ``plausible_range``); ``None`` checks only that targets are
            finite numbers.
        label_policy: ``"refuse"`` or ``"drop"``, for unusable targets.
        output_dir: the run's output folder, where ``excluded.csv`` is written; ``None`` only logs.

    Raises:
        ValueError: when the records are first read: the cache is incomplete or damaged, a split name is unknown or selects no sample (or none is
            left after screening), a column is missing, a target is unusable (``label_policy="refuse"``), or a
            sample fails QC (``qc_policy="fail"``).
    """

    def __init__(
        self,
        cache_dir: str | Path,
        split: str | Sequence[str] = "train",
        transform: Sequence[Callable] | Callable | None = None,
        target: str = "age",
        covariates: Sequence[str] = (),
        *,
        qc_policy: str = "exclude",
        qc_limits: Mapping[str, Sequence[float | None]] | None = None,
        label_range: Sequence[float] | None = None,
        label_policy: str = "refuse",
        output_dir: str | Path | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        select_splits(split)  # arguments are checked now, the data when first read
        check_policy("qc_policy", qc_policy, QC_POLICIES)
        check_policy("label_policy", label_policy, LABEL_POLICIES)
        self.split, self.target, self.covariates = split, target, tuple(covariates)
        self._screening = {"qc_policy": qc_policy, "qc_limits": qc_limits, "label_range": label_range,
                           "label_policy": label_policy, "output_dir": output_dir}
        self._arrays: dict[str, np.ndarray] = {}
        super().__init__(transform=transform)

    def _load_records(self) -> list[dict[str, Any]]:
        """Read the manifest, select the splits, screen labels and QC, and check the arrays."""
        info = read_cache_info(self.cache_dir)
        if not info.complete:
            raise ValueError(f"{self.cache_dir}: the cache is incomplete (its build was interrupted or failed): run "
                             f"the build again to finish it.")
        self.sample_shape: tuple[int, ...] = info.sample_shape or ()
        self.dtype = np.dtype(info.dtype)
        manifest = read_manifest_csv(self.cache_dir / MANIFEST_FILE)
        missing = [c for c in (self.target, *self.covariates) if c not in manifest.columns]
        if missing:
            raise ValueError(f"{self.cache_dir / MANIFEST_FILE}: no column(s) {missing}; found "
                             f"{list(manifest.columns)}.")
        names = select_splits(self.split)
        rows = pd.concat([manifest[manifest["split"] == s] for s in names])
        if rows.empty:
            raise ValueError(f"{self.cache_dir}: no cached sample in split(s) {names}; the cache holds {info.samples}.")
        screening = dict(self._screening)
        if screening["qc_limits"] is None:
            screening["qc_limits"] = pipeline_qc_limits(info.fingerprint.get("pipeline"))
        rows = self._screen(rows, self.target, names, **screening)
        self.manifest = rows
        for name in rows["split"].unique():
            self._check_array(name, int(rows.loc[rows["split"] == name, "index"].max()))
        return self._records(rows)

    def _screen(self, rows: pd.DataFrame, target: str, splits: list[str], qc_limits: Mapping,
                qc_policy: str, label_range: Sequence[float] | None, label_policy: str,
                output_dir: str | Path | None) -> pd.DataFrame:
        """The selected manifest rows (index: their manifest row) whose target and QC pass; the others reported."""
        manifest_path = self.cache_dir / MANIFEST_FILE
        kept, bad_labels = check_labels(rows, target, label_range, label_policy, str(manifest_path),
                                        [f"line {i + 2}" for i in rows.index])
        qc = read_cache_qc(self.cache_dir)
        qc = pd.DataFrame(index=kept.index) if qc is None else qc.set_index("id").reindex(kept["id"])
        checked = pd.concat([kept[["id", "split"]], qc.set_axis(kept.index)], axis=1)
        passed, failed_qc = check_qc(checked, qc_limits, qc_policy, str(self.cache_dir))
        excluded = pd.concat([bad_labels, failed_qc], ignore_index=True)
        report_exclusions(excluded, self.cache_dir, splits, output_dir, total=len(rows))
        if passed.empty:
            raise ValueError(f"{self.cache_dir}: no sample of split(s) {splits} is left after screening: all "
                             f"{len(rows)} were left out (listed in the warning above).")
        return kept.loc[passed.index].reset_index(drop=True)

    def _records(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """One dict per sample: id, split, index, label (float) and the covariates' item values."""
        columns = {c: self._covariate_values(rows[c]) for c in self.covariates}
        return [
            {"id": i, "split": s, "index": int(k), "label": float(y), **{c: v[n] for c, v in columns.items()}}
            for n, (i, s, k, y) in enumerate(zip(rows["id"], rows["split"], rows["index"], rows[self.target]))
        ]

    @staticmethod
    def _covariate_values(column: pd.Series) -> list[float] | list[str]:
        """Numeric columns as floats (NaN when missing), others as strings ("" when missing)."""
        if pd.api.types.is_numeric_dtype(column):
            return column.astype(float).tolist()
        return [str(v) for v in column.fillna("")]

    def _check_array(self, split: str, max_index: int) -> None:
        array = self._array(split)
        if array.shape[1:] != self.sample_shape or array.dtype != self.dtype or array.shape[0] <= max_index:
            raise ValueError(f"{array_path(self.cache_dir, split)}: holds {array.dtype} {array.shape}, expected "
                             f"{self.dtype} [>{max_index}, *{self.sample_shape}]; the cache is damaged.")

    def _array(self, split: str) -> np.ndarray:
        if split not in self._arrays:
            # copy-on-write mapping: reads share the page cache like "r", and torch can wrap it without a
            # read-only warning; nothing is ever written back to the file
            self._arrays[split] = np.load(array_path(self.cache_dir, split), mmap_mode="c")
        return self._arrays[split]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # memory maps are re-opened by whoever unpickles the dataset
        return state

    def _transform(self, index: int) -> Any:
        record = self.data[index]
        item = {
            "image": _to_float32(self._array(record["split"])[record["index"]]),
            "label": torch.tensor([record["label"]], dtype=torch.float32),
            "id": record["id"],
        }
        for c in self.covariates:
            value = record[c]
            item[c] = torch.tensor([value], dtype=torch.float32) if isinstance(value, float) else value
        return self.transform(item)


def collate_fn(dataset: Any) -> Callable:
    """How a DataLoader batches ``dataset``'s items: the dataset's own ``collate_fn`` when it has one (e.g. sentence
    pairs padded per batch), else MONAI's ``list_data_collate``."""
    return getattr(dataset, "collate_fn", None) or list_data_collate


def read_records(*datasets: Any) -> None:
    """Read the records of every dataset now (the first step of a bundle run), so a missing or unusable input stops
    the run with its own message before any engine starts."""
    for dataset in datasets:
        len(dataset)
