"""The exclusion report: every sample a data loader leaves out is logged and listed in ``excluded.csv``.

Loaders that drop samples (failed QC with ``qc_policy="exclude"``, unusable labels with ``label_policy="drop"``)
call :func:`report_exclusions`, so nothing is dropped silently: a warning names how many and which, and with an
``output_dir`` (the run's output folder) the file ``<output_dir>/excluded.csv`` lists them with the columns
``id, split, reason, source``.

One run builds several datasets (pre-training, training, validation, test) that all report into one file:
each call replaces the rows of the ``(source, split)`` pairs it checked and keeps the others, so the file
holds every exclusion of the run once, and a re-run over the same folder does not pile up old rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from supremix_med.io import atomic_write

__all__ = ["EXCLUDED_COLUMNS", "EXCLUDED_FILE", "check_policy", "report_exclusions"]

logger = logging.getLogger(__name__)

EXCLUDED_FILE = "excluded.csv"
EXCLUDED_COLUMNS: tuple[str, ...] = ("id", "split", "reason", "source")
_SHOWN = 5  # exclusions named in the warning


def check_policy(name: str, policy: str, choices: Sequence[str]) -> None:
    """Refuse a screening ``policy`` (``qc_policy``, ``label_policy``) that is not one of ``choices``."""
    if policy not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {policy!r}.")


def _writes_files() -> bool:
    """False on ranks other than 0 of a distributed run: every rank excludes the same rows, one writes them."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _merged(path: Path, rows: pd.DataFrame, source: str, splits: Sequence[str]) -> pd.DataFrame:
    """The rows already in ``path`` except those of ``source`` x ``splits``, then ``rows``."""
    if not path.exists():
        return rows
    old = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(old.columns) != list(EXCLUDED_COLUMNS):
        raise ValueError(f"{path}: not an exclusion report (columns {list(old.columns)}, expected "
                         f"{list(EXCLUDED_COLUMNS)}); move it away or choose another output folder.")
    replaced = (old["source"] == source) & old["split"].isin(list(splits))
    return pd.concat([old[~replaced], rows], ignore_index=True)


def report_exclusions(excluded: pd.DataFrame, source: str | os.PathLike, splits: Sequence[str],
                      output_dir: str | os.PathLike | None = None, total: int | None = None,
                      warn: Callable[[str], object] | None = None) -> Path | None:
    """Warn about the left-out samples in one line and record them in ``<output_dir>/excluded.csv``.

    Args:
        excluded: ``id, split, reason`` of the samples left out (may be empty).
        source: the file or cache folder they were read from.
        splits: the splits that were checked (their earlier rows from ``source`` are replaced; ``""`` for a
            table without splits).
        output_dir: the run's output folder; ``None`` only warns.
        total: how many samples were checked, for the message.
        warn: what shows the one-line message; ``None`` logs it at level WARNING (the preprocessing commands
            pass ``warnings.warn``, which their command line prints as ``<prog>: warning: ...``).

    Returns:
        the report's path, or None when nothing was written (no ``output_dir``, or a rank other than 0).
    """
    source = str(source)
    rows = excluded.reindex(columns=["id", "split", "reason"]).astype(object).fillna("").astype(str)
    rows = rows.assign(source=source)
    if len(rows):
        shown = "; ".join(f"{i!r} ({r})" for i, r in zip(rows["id"][:_SHOWN], rows["reason"][:_SHOWN]))
        more = f"; and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
        of = f" of {total}" if total is not None else ""
        of_splits = f" of split(s) {list(splits)}" if any(splits) else ""
        where = f"; listed in {Path(output_dir) / EXCLUDED_FILE}" if output_dir is not None else ""
        (warn or logger.warning)(f"{source}: left out {len(rows)}{of} sample(s){of_splits}: {shown}{more}{where}")
    if output_dir is None or not _writes_files():
        return None
    path = Path(output_dir) / EXCLUDED_FILE
    table = _merged(path, rows, source, splits)
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, columns=list(EXCLUDED_COLUMNS)))
    return path
