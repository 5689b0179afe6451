"""Preprocessed-tensor cache: one folder per dataset, built once, read by random access.

A cache folder holds

- ``<split>.npy`` for each split (``train``/``val``/``test``): one array of shape [n_planned, *sample_shape]
  (float16 by default, float32 on request) read with ``numpy.load(mmap_mode="r")``, so a sample is a slice of
  a memory map: no per-sample file or unpickling.
- ``manifest.csv``: one row per cached sample, the input manifest's columns plus ``split`` and ``index`` (the
  sample's row in ``<split>.npy``).
- ``preprocessing.json``: ``fingerprint`` (the caller's description of the preprocessing: pipeline, version,
  parameters, library versions), ``sample_shape``, ``dtype``, ``created``/``updated`` times (UTC, ISO 8601),
  ``samples`` (count per split) and ``failed``.
- ``qc.csv``: one row per cached sample, ``id`` then the QC record of its preprocessing (see below).
- ``failures.csv`` (``id``, ``path``, ``error``): samples that could not be preprocessed in the latest run.
- ``plan.csv`` (``id``, ``path``, ``split``, ``index``: the slot of every sample of the manifest),
  ``progress.jsonl`` (the journal of written samples) and ``complete`` (written last): build bookkeeping.

QC stays with the data. ``preprocess`` may return ``(image, record)`` (a pipeline's ``preprocess_with_qc``):
the record's scalar entries (numbers, bools, strings, None; e.g. T1's ``registered``, ``register_decision``,
``registration_similarity``: every ``QC_FIELDS`` entry inference reports) are journalled with the sample and
written to ``qc.csv``, so training can leave out the samples that fail QC (:func:`read_cache_qc`,
:class:`~supremix_med.data.CachedDataset`'s ``qc_policy``). A ``preprocess`` returning the image alone records
no QC (``qc.csv`` holds ids only); a cache built before QC was stored has no ``qc.csv``.

Every sample of the manifest gets a slot when the build starts. A failed sample keeps its slot, which stays
unused: it is absent from ``manifest.csv`` (the arrays are never compacted, so a finished cache is never
rewritten). A re-run retries the failed samples, e.g. after the missing file was restored.

Writes are atomic and resumable. Only the parent process writes: a worker returns the sample and the parent
writes it into its slot. Every ``COMMIT_SECONDS`` (and at the end) the parent flushes the memory maps to
disk and only then appends the written samples' ids to the journal, fsync'ed (a group commit). An
interrupted build (even ``kill -9``) therefore never leaves a half-written sample that a later run trusts,
and a re-run with the same fingerprint and manifest processes only the samples missing from the journal.
``manifest.csv``, ``preprocessing.json`` and ``failures.csv`` are replaced atomically (temporary file +
``os.replace``). A changed fingerprint, dtype or manifest layout (ids, paths, splits) is refused; with
``overwrite=True`` the new cache is built in a hidden sibling folder and swapped in only once complete, so a
failed rebuild leaves the old cache intact.

Resources. Before the arrays are allocated the free space of the output folder is checked against their size
(``shutil.disk_usage``), then their blocks are reserved (``os.posix_fallocate``, see :func:`_preallocate`), so a
full disk is a :class:`DiskFullError` ("disk full at <path>: need X GB, have Y GB") before any sample is
written, never a SIGBUS in the middle of a memory-mapped write; ENOSPC while journalling or writing the
bookkeeping files becomes the same error. Committed samples are kept: free space and re-run to continue. With
``workers > 1`` each worker process ends when the build process dies, even by ``kill -9``
(:func:`_exit_with_parent`), so no orphaned worker keeps its memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pickle
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from supremix_med.io import atomic_write

from .manifest import read_manifest_csv, validate_manifest
from .splits import assign_splits

__all__ = ["CacheInfo", "DTYPES", "DiskFullError", "array_path", "build_cache", "read_cache_info", "read_cache_qc",
           "read_fingerprint"]

DTYPES: tuple[str, ...] = ("float16", "float32")
FORMAT = "supremix-med-cache/1"
INFO_FILE = "preprocessing.json"
MANIFEST_FILE = "manifest.csv"
FAILURES_FILE = "failures.csv"
QC_FILE = "qc.csv"
PLAN_FILE = "plan.csv"
JOURNAL_FILE = "progress.jsonl"
COMPLETE_FILE = "complete"
_LAYOUT = ["id", "path", "split"]
_SHOWN = 5  # examples listed in messages
#: written samples are committed (arrays flushed, then journalled) at most this often: an interrupted build
#: redoes at most this many seconds of work, and fast builds do not wait on a disk sync per sample.
COMMIT_SECONDS = 1.0
#: free space kept beyond the arrays, for the journal, manifest, failures and info files
BOOKKEEPING_BYTES = 16 * 2**20
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_SECONDS = 0.5


class DiskFullError(OSError):
    """Not enough disk space for the cache: "disk full at <path>: need X GB, have Y GB".

    An ``OSError`` with ``errno.ENOSPC``; the samples committed before it are kept, so freeing space (or
    choosing another output folder) and re-running continues the build.

    Args:
        path: the file or folder that did not fit.
        need: bytes it needed.
        free: bytes free on its file system.
    """

    def __init__(self, path: str | os.PathLike, need: int, free: int) -> None:
        super().__init__(f"disk full at {path}: need {_size(need)}, have {_size(free)}; free some space (or choose "
                         "another output folder) and run again: the build continues where it stopped.")
        self.errno = errno.ENOSPC


def _size(n_bytes: float) -> str:
    """A byte count for messages: GB, or MB below 1 GB."""
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.2f} MB"


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (an existing file or folder)."""
    return shutil.disk_usage(path).free


@contextlib.contextmanager
def _enospc_as_disk_full(path: Path, need: int) -> Iterator[None]:
    """Turn an ENOSPC ``OSError`` raised inside the block into a :class:`DiskFullError` for ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        folder = path if path.is_dir() else path.parent
        raise DiskFullError(path, need, _free_bytes(folder)) from err


def _check_free_space(folder: Path, need: int) -> None:
    """Raise :class:`DiskFullError` unless ``folder``'s disk has ``need`` bytes plus ``BOOKKEEPING_BYTES`` free."""
    free = _free_bytes(folder)
    if need + BOOKKEEPING_BYTES > free:
        raise DiskFullError(folder, need + BOOKKEEPING_BYTES, free)


def _unallocated_bytes(path: Path) -> int:
    """Bytes of ``path`` without disk blocks yet (a sparse file's holes); its whole size if unknown."""
    status = os.stat(path)
    blocks = getattr(status, "st_blocks", None)
    return status.st_size if blocks is None else max(status.st_size - 512 * blocks, 0)


def _preallocate(path: Path) -> None:
    """Give every byte of the file ``path`` a real disk block now, or raise :class:`DiskFullError`.

    ``numpy.lib.format.open_memmap`` creates a sparse file: its blocks are taken when a page is first written
    through the memory map. On a full disk that write cannot fail with an exception: the kernel sends SIGBUS,
    which Python cannot catch, and the process dies without a message. ``os.posix_fallocate`` reserves the
    blocks up front, so a full disk shows here as ENOSPC (turned into :class:`DiskFullError`) before any
    sample is written, and later writes into the map need no new block. Where ``posix_fallocate`` is not
    available (macOS, Windows) or the file system refuses it, the free-space check made before allocating
    (:func:`_check_free_space`) is the only guard: a disk filled by another program during the build can
    still end it with SIGBUS there, and so it can on copy-on-write file systems (btrfs, ZFS), where an
    overwrite takes a new block. Already allocated blocks are kept, so calling this on a resumed cache costs
    nothing.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path)
    descriptor = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise DiskFullError(path, _unallocated_bytes(path), _free_bytes(path.parent)) from err
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class CacheInfo:
    """What ``preprocessing.json`` and the ``complete`` marker say about a cache folder.

    Attributes:
        path: the cache folder.
        fingerprint: the preprocessing description given to :func:`build_cache`.
        sample_shape: shape of one sample, e.g. (1, 100, 100, 100); ``None`` before the first sample is written.
        dtype: storage dtype of the arrays, ``"float16"`` or ``"float32"``.
        created: creation time (UTC, ISO 8601).
        updated: time of the last completed build (UTC, ISO 8601).
        complete: whether the last build finished (``manifest.csv`` is then final).
        samples: cached samples per split (empty until the first build completes).
        failed: samples left out by the last build (see ``failures.csv``).
    """

    path: Path
    fingerprint: dict[str, Any]
    sample_shape: tuple[int, ...] | None
    dtype: str
    created: str
    updated: str
    complete: bool
    samples: dict[str, int]
    failed: int


def read_cache_info(cache_dir: str | Path) -> CacheInfo:
    """Read a cache folder's ``preprocessing.json``; ``ValueError`` naming the file if it is missing or invalid."""
    cache_dir = Path(cache_dir)
    info = _read_json(cache_dir / INFO_FILE)
    shape = info["sample_shape"]
    return CacheInfo(
        path=cache_dir,
        fingerprint=info["fingerprint"],
        sample_shape=tuple(shape) if shape is not None else None,
        dtype=info["dtype"],
        created=info["created"],
        updated=info["updated"],
        complete=(cache_dir / COMPLETE_FILE).exists(),
        samples=info.get("samples", {}),
        failed=info.get("failed", 0),
    )


def read_fingerprint(cache_dir: str | Path) -> dict[str, Any]:
    """The preprocessing fingerprint a cache was built with (the dict given to :func:`build_cache`)."""
    return read_cache_info(cache_dir).fingerprint


def array_path(cache_dir: str | Path, split: str) -> Path:
    """Path of the array holding the samples of ``split``."""
    return Path(cache_dir) / f"{split}.npy"


def read_cache_qc(cache_dir: str | Path) -> pd.DataFrame | None:
    """The QC record of every cached sample (``qc.csv``: ``id`` then one column per QC entry), or ``None`` for a
    cache built before QC was stored. Empty cells (entries the pipeline left None) read as NaN."""
    path = Path(cache_dir) / QC_FILE
    if not path.exists():
        return None
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically and durably (fsync before the rename); ENOSPC -> DiskFullError."""
    with _enospc_as_disk_full(path, len(text.encode("utf-8"))):
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        what = f"{path.name} is missing" if path.parent.is_dir() else "no such folder"
        raise ValueError(f"{path.parent} is not a supremix-med cache ({what}): build one with python -m "
                         f"preprocessing.<modality> (the bundle's README names it) or give --dataset_dir the folder "
                         f"of one.") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown cache format {info.get('format')!r}, expected {FORMAT!r}.")
    return info


def _normalise_fingerprint(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Return the fingerprint as it will read back from JSON (tuples become lists), so comparisons are exact."""
    if not isinstance(fingerprint, dict):
        raise ValueError(f"fingerprint must be a dict, got {type(fingerprint).__name__}.")
    try:
        return json.loads(json.dumps(fingerprint, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ValueError(f"fingerprint must be JSON-serialisable: {err}.") from err


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} so differences can be named by dotted key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, dict) and value else {name: value})
    return flat


def _fingerprint_differences(cached: dict[str, Any], given: dict[str, Any]) -> list[str]:
    old, new = _flatten(cached), _flatten(given)
    missing = "<missing>"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, missing) != new.get(k, missing))
    shown = [f"fingerprint[{k!r}]: cache has {old.get(k, missing)!r}, now {new.get(k, missing)!r}"
             for k in keys[:_SHOWN]]
    return shown + [f"... and {len(keys) - _SHOWN} more fingerprint keys"] * (len(keys) > _SHOWN)


def _layout_differences(cached: pd.DataFrame, given: pd.DataFrame) -> list[str]:
    """Name how ``given``'s (id, path, split) rows differ from the planned layout of a cache."""
    problems = []
    added, removed = sorted(set(given["id"]) - set(cached["id"])), sorted(set(cached["id"]) - set(given["id"]))
    for ids, what in ((added, "not in the cache"), (removed, "in the cache but not in the manifest")):
        if ids:
            problems.append(f"{len(ids)} id(s) {what}, e.g. {ids[:_SHOWN]}")
    both = cached.merge(given, on="id", suffixes=("_cache", "_now"))
    for column in ("path", "split"):
        changed = both[both[f"{column}_cache"] != both[f"{column}_now"]]
        if len(changed):
            first = changed.iloc[0]
            problems.append(f"{len(changed)} sample(s) with another {column}, e.g. id {first['id']!r}: cache "
                            f"{first[f'{column}_cache']!r}, now {first[f'{column}_now']!r}")
    return problems


def _read_plan(folder: Path) -> pd.DataFrame:
    return read_manifest_csv(folder / PLAN_FILE)


def _is_empty(folder: Path) -> bool:
    """True for a missing folder or one holding nothing but temporary files of an interrupted first write."""
    return not folder.exists() or all(p.name.endswith(".tmp") for p in folder.iterdir())


def _incompatibilities(folder: Path, fingerprint: dict[str, Any], table: pd.DataFrame, dtype: str,
                       sample_shape: tuple[int, ...] | None) -> list[str]:
    """Reasons why the cache in ``folder`` cannot be continued with these settings (empty: it can)."""
    if _is_empty(folder):
        return []
    if not (folder / INFO_FILE).exists():
        raise ValueError(f"{folder} is not empty and is not a supremix-med cache (no {INFO_FILE}); refusing to "
                         f"write into it: choose a new or empty output folder.")
    info = read_cache_info(folder)
    problems = _fingerprint_differences(info.fingerprint, fingerprint)
    if info.dtype != dtype:
        problems.append(f"dtype: cache has {info.dtype!r}, now {dtype!r}")
    if sample_shape is not None and info.sample_shape is not None and info.sample_shape != sample_shape:
        problems.append(f"sample_shape: cache has {info.sample_shape}, now {sample_shape}")
    if (folder / PLAN_FILE).exists():
        problems += _layout_differences(_read_plan(folder), table[_LAYOUT])
    return problems


def _with_splits(manifest: pd.DataFrame, seed: int, fractions: Sequence[float], stratify: str | None) -> pd.DataFrame:
    """Validated manifest with a ``split`` column (kept if given, else assigned independently of row order)."""
    table = validate_manifest(manifest)
    if "split" not in table.columns:
        by_id = table.sort_values("id", kind="stable")
        table["split"] = assign_splits(by_id, fractions, seed=seed, stratify=stratify).reindex(table.index)
    return table


class _Prepared(NamedTuple):
    """One preprocessed sample: the array in the storage dtype and its QC record (``{}`` when none)."""

    array: np.ndarray
    qc: dict[str, Any]


def _qc_record(record: Any) -> dict[str, Any]:
    """The scalar entries (numbers, bools, strings, None) of a QC record, as plain Python values for JSON."""
    if not isinstance(record, dict):
        raise ValueError(f"preprocess returned (image, {type(record).__name__}), expected (image, dict) with the "
                         f"QC record second.")
    scalars = (str, bool, int, float, type(None), np.generic)
    return {str(k): v.item() if isinstance(v, np.generic) else v for k, v in record.items() if isinstance(v, scalars)}


def _prepare_sample(preprocess: Callable[[str], Any], path: str, dtype: str) -> _Prepared:
    """Preprocess one sample (runs in a worker): the array in the storage dtype and its QC record.

    ``preprocess`` returns the image, or ``(image, record)`` with the record of a pipeline's
    ``preprocess_with_qc`` (its scalar entries are kept, see :func:`_qc_record`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``preprocess`` returned something other than a floating-point array, or non-finite values
            (NaN/inf, or values beyond the float16 range).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    sample, qc = preprocess(path), {}
    if isinstance(sample, tuple) and len(sample) == 2:
        sample, qc = sample[0], _qc_record(sample[1])
    if not isinstance(sample, np.ndarray) or not np.issubdtype(sample.dtype, np.floating):
        kind = f"array of {sample.dtype}" if isinstance(sample, np.ndarray) else type(sample).__name__
        raise ValueError(f"preprocess returned a {kind}, expected a floating-point numpy array.")
    low, high = float(sample.min()), float(sample.max())  # NaN propagates through both
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"preprocess returned {int((~np.isfinite(sample)).sum())} non-finite values (NaN/inf).")
    if max(-low, high) > np.finfo(dtype).max:
        raise ValueError(f"values up to {max(-low, high):.6g} overflow {dtype}; normalise the image or build the "
                         f"cache with dtype='float32'.")
    return _Prepared(np.ascontiguousarray(sample, dtype=dtype), qc)


def _check_picklable(preprocess: Callable[[str], np.ndarray]) -> None:
    try:
        pickle.dumps(preprocess)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        raise ValueError(f"with workers > 1, preprocess must be picklable (a module-level function, an instance of a "
                         f"module-level class or a functools.partial of one); got {preprocess!r}: {err}") from err


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _attempt(preprocess: Callable[[str], Any], path: str, dtype: str) -> _Prepared | str:
    """:func:`_prepare_sample` in this process, with a bad item's exception turned into its message."""
    try:
        return _prepare_sample(preprocess, path, dtype)
    except Exception as err:  # a bad item: recorded, the build goes on
        return _describe(err)


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker process when the build process ``parent_pid`` dies, even by ``kill -9``.

    A pool worker whose parent is killed would otherwise wait on its task queue for ever, holding its memory.
    On Linux the kernel kills the worker (SIGKILL) when its parent dies: ``prctl(PR_SET_PDEATHSIG)``, called
    through ctypes. The signal follows the parent *thread* that started the worker; the pool starts its spawn
    workers from the thread calling ``submit``, i.e. the thread running the build, which outlives the pool.
    Everywhere, a daemon thread also polls the parent pid every ``_PARENT_POLL_SECONDS`` and calls
    ``os._exit`` once the worker has been re-parented (macOS; a parent that died before the prctl call).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc or no prctl: the watchdog still works
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    """Poll until this process's parent is no longer ``parent_pid``, then end the process at once."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)


def _samples(tasks: list[tuple[str, str]], preprocess: Callable[[str], Any], dtype: str,
             workers: int) -> Iterator[tuple[str, _Prepared | str]]:
    """Yield ``(id, sample)`` or ``(id, error message)`` for every ``(id, path)`` task, in completion order.

    With ``workers > 1`` a spawn-context process pool runs at most ``2 * workers`` tasks at a time, so memory
    stays bounded however long the manifest is; its workers end with this process (:func:`_exit_with_parent`).
    """
    if workers == 1:
        for sample_id, path in tasks:
            yield sample_id, _attempt(preprocess, path, dtype)
        return
    queue = iter(tasks)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        running: dict[Future, str] = {}

        def submit(n: int) -> None:
            for sample_id, path in islice(queue, n):
                running[pool.submit(_prepare_sample, preprocess, path, dtype)] = sample_id

        submit(2 * workers)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                sample_id = running.pop(future)
                try:
                    sample: _Prepared | str = future.result()
                except BrokenProcessPool as err:
                    raise RuntimeError("a preprocessing worker died (out of memory or killed); samples written "
                                       "so far are kept: re-run to continue.") from err
                except Exception as err:  # a bad item: recorded, the build goes on
                    sample = _describe(err)
                yield sample_id, sample
            submit(len(finished))


def _read_journal(text: str, plan: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``{id: QC record}`` of the samples journalled as written to their planned slot (``{}`` for an entry
    without QC); a torn line (interrupted append) is ignored."""
    slots = {(i, s, int(k)) for i, s, k in zip(plan["id"], plan["split"], plan["index"])}
    done: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            key = (entry["id"], entry["split"], int(entry["index"]))
        except (ValueError, KeyError, TypeError):
            continue
        if key in slots:
            done[entry["id"]] = entry.get("qc", {})
    return done


class _Store:
    """The writing side of one cache folder: its plan (a slot per sample), arrays and journal."""

    def __init__(self, folder: Path, table: pd.DataFrame, fingerprint: dict[str, Any], dtype: str,
                 sample_shape: tuple[int, ...] | None) -> None:
        self.folder = folder
        if (folder / INFO_FILE).exists():
            self.info = _read_json(folder / INFO_FILE)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.info = {"format": FORMAT, "fingerprint": fingerprint, "sample_shape": None, "dtype": dtype,
                         "created": _now(), "updated": _now()}
            self._save_info()
        if not (folder / PLAN_FILE).exists():
            plan = table[_LAYOUT].assign(index=table.groupby("split", sort=False).cumcount())
            _write_atomic(folder / PLAN_FILE, plan.to_csv(index=False))
        self.plan = _read_plan(folder)
        self.slots = {i: (s, int(k)) for i, s, k in zip(self.plan["id"], self.plan["split"], self.plan["index"])}
        self.arrays: dict[str, np.memmap] = {}
        shape = self.info["sample_shape"] or sample_shape
        if shape is not None:
            self._open_arrays(tuple(shape))
        journal = folder / JOURNAL_FILE
        text = journal.read_text(encoding="utf-8") if journal.exists() else ""
        self.qc = _read_journal(text, self.plan)  # QC record of every journalled sample, then of the new ones
        self.done = set(self.qc)
        # unbuffered: a failed append leaves nothing pending that closing the file would try to write again
        self.journal = open(journal, "ab", buffering=0)
        if text and not text.endswith("\n"):
            self._append("\n")  # end a torn line so the next entry parses
        self.uncommitted: list[str] = []
        self.last_commit = time.monotonic()

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.journal.close()
        self.arrays.clear()

    def _save_info(self) -> None:
        _write_atomic(self.folder / INFO_FILE, json.dumps(self.info, indent=2) + "\n")

    def _open_arrays(self, shape: tuple[int, ...]) -> None:
        """Open the split arrays, creating them (then recording the shape) on the first sample.

        The disk must hold them: free space is checked first and their blocks are reserved (:func:`_preallocate`),
        for new arrays and for those of a resumed build alike.

        Raises:
            DiskFullError: not enough free space; nothing is recorded, so a re-run allocates them again.
        """
        create = self.info["sample_shape"] is None
        dtype = np.dtype(self.info["dtype"])
        counts = self.plan["split"].value_counts(sort=False)
        paths = {split: array_path(self.folder, split) for split in counts.index}
        if create:
            _check_free_space(self.folder, sum(int(n) * int(np.prod(shape)) * dtype.itemsize for n in counts))
        else:
            _check_free_space(self.folder, sum(_unallocated_bytes(path) for path in paths.values() if path.exists()))
        for split, n in counts.items():
            path = paths[split]
            if create:
                self.arrays[split] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, *shape))
                _preallocate(path)
                continue
            array = np.load(path, mmap_mode="r+")
            if array.shape != (n, *shape) or array.dtype != dtype:
                raise ValueError(f"{path}: holds {array.dtype} {array.shape}, expected {dtype} {(n, *shape)}; the "
                                 f"cache is damaged: delete {self.folder} and build it again.")
            _preallocate(path)
            self.arrays[split] = array
        if create:
            for array in self.arrays.values():
                array.flush()
            self.info["sample_shape"] = list(shape)
            self._save_info()

    def mark_incomplete(self) -> None:
        """Remove the ``complete`` marker before the folder changes."""
        (self.folder / COMPLETE_FILE).unlink(missing_ok=True)

    def write(self, sample_id: str, sample: np.ndarray, qc: dict[str, Any]) -> str | None:
        """Write a sample into its slot (its QC record is journalled with it); it is trusted once committed.
        Returns why it was refused, or None."""
        if not self.arrays:
            self._open_arrays(sample.shape)
        shape = tuple(self.info["sample_shape"])
        if sample.shape != shape:
            return f"ValueError: preprocess returned shape {sample.shape}, the cache holds {shape}."
        split, index = self.slots[sample_id]
        self.arrays[split][index] = sample
        self.qc[sample_id] = qc
        self.uncommitted.append(sample_id)
        if time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            self.commit()
        return None

    def commit(self) -> None:
        """Flush the written samples to disk, then journal them (fsync'ed): from then on they are trusted."""
        if not self.uncommitted:
            return
        entries = "".join(json.dumps(self._journal_entry(i)) + "\n" for i in self.uncommitted)
        with _enospc_as_disk_full(self.folder / JOURNAL_FILE, len(entries)):
            for array in self.arrays.values():
                array.flush()
            self._append(entries)
            os.fsync(self.journal.fileno())
        self.done.update(self.uncommitted)
        self.uncommitted.clear()
        self.last_commit = time.monotonic()

    def _journal_entry(self, sample_id: str) -> dict[str, Any]:
        """The journal line of a written sample: its slot and, when it has one, its QC record."""
        split, index = self.slots[sample_id]
        entry = {"id": sample_id, "split": split, "index": index}
        if self.qc[sample_id]:
            entry["qc"] = self.qc[sample_id]
        return entry

    def _append(self, text: str) -> None:
        """Append ``text`` to the journal (unbuffered: loop over short writes)."""
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[self.journal.write(data):]

    def finalise(self, table: pd.DataFrame, errors: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Write ``failures.csv``, ``manifest.csv``, ``qc.csv``, ``preprocessing.json`` and the ``complete`` marker.

        Returns:
            the final manifest (cached samples in manifest order, with ``index``) and the failures table.

        Raises:
            ValueError: no sample at all could be cached.
        """
        self.commit()
        failed = self.plan.loc[~self.plan["id"].isin(self.done), ["id", "path"]]
        failures = failed.assign(error=failed["id"].map(errors).fillna("not processed"))
        _write_atomic(self.folder / FAILURES_FILE, failures.to_csv(index=False))
        if len(failures) == len(self.plan):
            raise ValueError(f"no sample could be preprocessed: {_summary(failures, self.folder)}")
        manifest = table[table["id"].isin(self.done)].reset_index(drop=True)
        manifest["index"] = manifest["id"].map(lambda i: self.slots[i][1]).astype(int)
        _write_atomic(self.folder / MANIFEST_FILE, manifest.to_csv(index=False))
        qc = pd.DataFrame([{"id": i, **self.qc[i]} for i in manifest["id"]])
        _write_atomic(self.folder / QC_FILE, qc.to_csv(index=False))
        self.info.update(updated=_now(), samples={s: int(n) for s, n in manifest["split"].value_counts().items()},
                         failed=len(failures))
        self._save_info()
        _write_atomic(self.folder / COMPLETE_FILE, self.info["updated"] + "\n")
        return manifest, failures


def _summary(failures: pd.DataFrame, folder: Path) -> str:
    shown = "; ".join(f"{i!r}: {e}" for i, e in zip(failures["id"][:_SHOWN], failures["error"][:_SHOWN]))
    more = f"; ... {len(failures) - _SHOWN} more" if len(failures) > _SHOWN else ""
    return f"{len(failures)} failed (listed in {folder / FAILURES_FILE}): {shown}{more}"


def _build_in(folder: Path, table: pd.DataFrame, preprocess: Callable[[str], np.ndarray], fingerprint: dict[str, Any],
              dtype: str, sample_shape: tuple[int, ...] | None, workers: int, progress: bool) -> pd.DataFrame:
    """Create or continue the cache in ``folder``: process the samples not yet journalled, then finalise."""
    with _Store(folder, table, fingerprint, dtype, sample_shape) as store:
        todo = [(i, p) for i, p in zip(store.plan["id"], store.plan["path"]) if i not in store.done]
        if todo:
            store.mark_incomplete()
        errors: dict[str, str] = {}
        with tqdm(total=len(todo), desc=f"caching {folder.name}", unit="sample", disable=not progress) as bar:
            for sample_id, sample in _samples(todo, preprocess, dtype, workers):
                error = sample if isinstance(sample, str) else store.write(sample_id, *sample)
                if error is not None:
                    errors[sample_id] = error
                    bar.set_postfix(failed=len(errors))
                bar.update()
        manifest, failures = store.finalise(table, errors)
    if len(failures):
        warnings.warn(f"{len(failures)} of {len(table)} samples could not be preprocessed and are left out of the "
                      f"cache; {_summary(failures, folder)}", stacklevel=3)
    return manifest


def _sibling(output_dir: Path, role: str) -> Path:
    """Hidden folder next to ``output_dir`` used while replacing it (``role``: "rebuild" or "old")."""
    return output_dir.with_name(f".{output_dir.name}.{role}")


def _swap_in(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` by the complete cache in ``staging``; the old cache is deleted last."""
    retired = _sibling(output_dir, "old")
    shutil.rmtree(retired, ignore_errors=True)
    if output_dir.exists():
        os.replace(output_dir, retired)
    os.replace(staging, output_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _restore_interrupted_swap(output_dir: Path) -> None:
    """If a swap was interrupted between its two renames, put the old cache back (the rebuild stays staged)."""
    retired = _sibling(output_dir, "old")
    if retired.exists() and not output_dir.exists():
        os.replace(retired, output_dir)


def build_cache(
    manifest: pd.DataFrame,
    output_dir: str | Path,
    preprocess: Callable[[str], np.ndarray],
    fingerprint: dict[str, Any],
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    seed: int = 0,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    dtype: str = "float16",
    *,
    stratify: str | None = "age",
    sample_shape: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Preprocess every sample of ``manifest`` into the cache folder ``output_dir`` (see the module docstring).

    Re-running with the same arguments continues an interrupted build, retries the samples that failed,
    and refreshes ``manifest.csv`` from the given manifest's other columns (targets, covariates).

    Args:
        manifest: one row per sample with ``id`` and ``path`` (see :func:`~.manifest.validate_manifest`); a
            ``split`` column is kept, otherwise splits are assigned by :func:`~.splits.assign_splits`.
        output_dir: the cache folder; created if missing. A non-empty folder that is not a cache is refused.
        preprocess: ``path -> float array`` of the same shape for every sample, or ``path -> (array, QC record)``
            (a pipeline's ``preprocess_with_qc``: the record's scalar entries go to ``qc.csv``); with
            ``workers > 1`` it must be picklable (a module-level function or an instance of a module-level class).
        fingerprint: JSON-serialisable description of the preprocessing (pipeline, version, parameters,
            library versions), stored in ``preprocessing.json``; a cache built with another is refused.
        workers: processes running ``preprocess``; 1 runs it in this process.
        overwrite: replace a cache built with another fingerprint, dtype or manifest layout. The new cache is
            built next to it and swapped in once complete. A matching cache is continued, never rebuilt.
        progress: show a tqdm progress bar.
        seed: seed of the split assignment (used only without a ``split`` column); splits are assigned to the
            rows sorted by id, so they do not depend on the manifest's row order.
        split_fractions: fractions of (train, val, test) for the split assignment.
        dtype: storage dtype, ``"float16"`` (normalised images) or ``"float32"``.
        stratify: manifest column the split assignment is stratified by, or ``None``.
        sample_shape: expected shape of every sample; ``None`` takes the shape of the first valid sample.

    Returns:
        the final manifest: the rows of the cached samples, in manifest order, with ``split`` and ``index``.

    Raises:
        ValueError: bad arguments or manifest; ``output_dir`` holds a cache built otherwise (the message names
            every difference) and ``overwrite`` is False; or no sample at all could be preprocessed.
        RuntimeError: a worker process died; the samples already written are kept.
        DiskFullError: the output folder's disk cannot hold the arrays or the bookkeeping files (an ``OSError``
            with ``errno.ENOSPC``); the samples committed so far are kept and a re-run continues.

    Warns:
        UserWarning: some samples failed (missing file, exception in ``preprocess``, wrong shape, non-finite
            values); they are listed in ``failures.csv`` and left out of the manifest.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if workers > 1:
        _check_picklable(preprocess)
    output_dir = Path(output_dir).expanduser().resolve()
    fingerprint = _normalise_fingerprint(fingerprint)
    shape = tuple(int(s) for s in sample_shape) if sample_shape is not None else None
    table = _with_splits(manifest, seed, split_fractions, stratify)
    if table.empty:
        raise ValueError("the manifest has no rows: nothing to cache.")
    _restore_interrupted_swap(output_dir)
    problems = _incompatibilities(output_dir, fingerprint, table, dtype, shape)
    if not problems:
        return _build_in(output_dir, table, preprocess, fingerprint, dtype, shape, workers, progress)
    if not overwrite:
        raise ValueError(f"{output_dir} holds a cache built otherwise: {'; '.join(problems)}. Pass overwrite=True "
                         f"(--overwrite) to rebuild it, or choose another output folder.")
    staging = _sibling(output_dir, "rebuild")
    if not _is_empty(staging) and (not (staging / INFO_FILE).exists()
                                   or _incompatibilities(staging, fingerprint, table, dtype, shape)):
        shutil.rmtree(staging)  # a partial rebuild with other settings: nothing worth continuing
    result = _build_in(staging, table, preprocess, fingerprint, dtype, shape, workers, progress)
    _swap_in(staging, output_dir)
    return result
