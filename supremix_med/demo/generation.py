"""Shared machinery of the demo cohort generators (``supremix_med.demo.*``).

Each generator checks its request (T1 and PET with :func:`check_cohort_request`), draws its jitter with
:func:`truncated_normal` (T1, X-ray), writes its subjects with a per-index writer that :func:`map_indices` maps
over the indices (serially or on a process pool, behind a tqdm bar), writes the manifest with :func:`write_table`
(T1 and PET write only the subjects not on disk yet, then the manifest, with :func:`write_missing`), and builds
its command line on :func:`add_cohort_arguments` and :func:`cohort_options`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from tqdm import tqdm

from supremix_med.io import atomic_write

__all__ = [
    "add_cohort_arguments", "check_cohort_request", "cohort_main", "cohort_options", "map_indices", "truncated_normal",
    "write_missing", "write_table",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


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


def check_cohort_request(n_subjects: int, workers: int, age_range: tuple[float, float]) -> tuple[float, float]:
    """Check a cohort's size, worker count and age range (years); return the range as floats.

    Raises:
        ValueError: a non-positive ``n_subjects`` or ``workers``, or ``age_range`` not (youngest, oldest)
            with youngest < oldest.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    age_range = (float(age_range[0]), float(age_range[1]))
    if not age_range[0] < age_range[1]:
        raise ValueError(f"age_range must be (youngest, oldest) with youngest < oldest, got {age_range}")
    return age_range


def truncated_normal(rng: np.random.Generator, sd: float, size: int | None = None) -> np.ndarray | float:
    """``size`` draws (one float when ``size`` is None) of N(0, sd) clipped to +-2 sd: anatomy and pose jitter
    without gross outliers in the tails."""
    return np.clip(rng.normal(0.0, sd, size=size), -2.0 * sd, 2.0 * sd)


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` as CSV without its index to ``path``, atomically (see ``supremix_med.io.atomic_write``)."""
    atomic_write(path, lambda temporary: table.to_csv(temporary, index=False))


def write_missing(
    manifest: pd.DataFrame,
    output_dir: Path,
    exists: Callable[[Path], bool],
    write: Callable[[int], object],
    manifest_path: Path,
    workers: int = 1,
    progress: bool = True,
    desc: str = "",
    prepare: Callable[[], object] | None = None,
) -> None:
    """Write the subjects of ``manifest`` not on disk yet, then ``manifest`` itself.

    Args:
        manifest: one row per subject, in index order, with ``path`` relative to ``output_dir``.
        output_dir: cohort folder.
        exists: whether a subject's ``output_dir / path`` is already written (``Path.exists``, ``Path.is_dir``).
        write: per-index writer of one subject; see :func:`map_indices` for ``workers``, ``progress``,
            ``desc`` and ``prepare``.
        manifest_path: where :func:`write_table` writes ``manifest``.
    """
    missing = [index for index, path in enumerate(manifest["path"]) if not exists(output_dir / path)]
    logger.info("%d of %d subjects already exist in %s", len(manifest) - len(missing), len(manifest), output_dir)
    map_indices(write, missing, workers, progress, desc=desc, prepare=prepare)
    write_table(manifest, manifest_path)


def add_cohort_arguments(
    parser: argparse.ArgumentParser,
    n_default: int,
    n_name: str = "n_subjects",
    workers: bool = True,
    age_range: tuple[float, float] | None = None,
) -> argparse.ArgumentParser:
    """Add the arguments the demo generators share: ``--output DIR``, ``--<n_name> N``, ``--seed S``,
    ``--age_min A --age_max B`` (when ``age_range``), ``--workers W`` (when ``workers``) and ``--no_progress``.

    Args:
        parser: the generator's parser; it adds its own model arguments after this call.
        n_default: default cohort size.
        n_name: name of the cohort-size option (``n_subjects``, ``n_clips``).
        workers: whether the generator runs a process pool (``--workers``, default 1).
        age_range: default (youngest, oldest) age in years, for generators with an age range.

    Returns:
        ``parser``.
    """
    parser.add_argument("--output", required=True, type=Path, help="cohort folder")
    parser.add_argument(f"--{n_name}", type=int, default=n_default)
    parser.add_argument("--seed", type=int, default=0)
    if age_range is not None:
        parser.add_argument("--age_min", type=float, default=age_range[0])
        parser.add_argument("--age_max", type=float, default=age_range[1])
    if workers:
        parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def cohort_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate_cohort`` keywords from the arguments :func:`add_cohort_arguments` added.

    Returns:
        The cohort size (``n_subjects`` or ``n_clips``), ``seed``, ``age_range`` (``(age_min, age_max)``) and
        ``workers`` where the parser has them, and ``progress`` (``not no_progress``).
    """
    options = {name: getattr(args, name) for name in ("n_subjects", "n_clips", "seed") if hasattr(args, name)}
    if hasattr(args, "age_min"):
        options["age_range"] = (args.age_min, args.age_max)
    if hasattr(args, "workers"):
        options["workers"] = args.workers
    options["progress"] = not args.no_progress
    return options


def cohort_main(generate: Callable[..., pd.DataFrame], description: str, n_default: int,
                argv: Sequence[str] | None = None, **arguments: Any) -> pd.DataFrame:
    """The command line of a generator that takes only the shared cohort arguments.

    Parses ``argv`` with :func:`add_cohort_arguments` (``n_default`` and ``arguments``: ``n_name``, ``workers``,
    ``age_range``) and returns ``generate(output, **cohort_options(args))``.
    """
    parser = add_cohort_arguments(argparse.ArgumentParser(description=description), n_default, **arguments)
    args = parser.parse_args(argv)
    return generate(args.output, **cohort_options(args))
