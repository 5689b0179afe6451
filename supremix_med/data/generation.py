"""Shared machinery of the demo cohort generators (``supremix_med.data.demo_*``).

Each generator writes its subjects with a per-index writer and the manifest with :func:`write_table`; this
module maps the writer over the indices (serially or on a process pool, behind a tqdm bar) and gives the
command lines their common arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import pandas as pd
from tqdm import tqdm

from supremix_med.io import atomic_write

__all__ = ["add_cohort_arguments", "map_indices", "write_table"]

T = TypeVar("T")


def map_indices(
    write: Callable[[int], T],
    indices: Sequence[int],
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    unit: str = "subject",
    prepare: Callable[[], object] | None = None,
) -> list[T]:
    """Return ``[write(i) for i in indices]``, in order, computed serially or on a process pool.

    Args:
        write: per-index writer; it must be picklable (a module-level function or a ``functools.partial`` of
            one) when ``workers > 1``.
        indices: subject indices, in the order of the returned results.
        workers: number of processes; one, or fewer than two indices, runs in this process.
        progress: show a tqdm progress bar (``desc``, ``unit``) over ``indices``.
        desc: progress bar label.
        unit: progress bar unit.
        prepare: called in this process before a pool starts, so that forked workers inherit what it loads
            (a template, tissue maps) instead of loading it again.

    Returns:
        One result per index, in the order of ``indices``.

    Raises:
        ValueError: ``workers`` < 1.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with tqdm(total=len(indices), desc=desc, unit=unit, disable=not progress) as bar:
        if workers == 1 or len(indices) < 2:
            results = []
            for index in indices:
                results.append(write(index))
                bar.update()
            return results
        if prepare is not None:
            prepare()
        with ProcessPoolExecutor(max_workers=min(workers, len(indices))) as pool:
            results = []
            for future in [pool.submit(write, index) for index in indices]:
                results.append(future.result())
                bar.update()
            return results


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` as CSV without its index to ``path``, atomically (see ``supremix_med.io.atomic_write``)."""
    atomic_write(path, lambda temporary: table.to_csv(temporary, index=False))


def add_cohort_arguments(
    parser: argparse.ArgumentParser, n_default: int, n_name: str = "n_subjects", workers: bool = True
) -> argparse.ArgumentParser:
    """Add the arguments every demo generator takes: ``--output DIR``, ``--<n_name> N``, ``--seed S``,
    ``--workers W`` (when ``workers``) and ``--no_progress``.

    Args:
        parser: the generator's parser; it adds its own model arguments after this call.
        n_default: default cohort size.
        n_name: name of the cohort-size option (``n_subjects``, ``n_clips``).
        workers: whether the generator runs a process pool (``--workers``, default 1).

    Returns:
        ``parser``.
    """
    parser.add_argument("--output", required=True, type=Path, help="cohort folder")
    parser.add_argument(f"--{n_name}", type=int, default=n_default)
    parser.add_argument("--seed", type=int, default=0)
    if workers:
        parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser
