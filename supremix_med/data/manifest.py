"""Manifests: the table of samples (one row each) that a cache is built from.

A manifest has the columns ``id`` (unique sample id) and ``path`` (the raw scan: a file or, for DICOM
series, a folder), and optionally ``age`` (numeric target), ``sex``, ``site`` (covariates) and ``split``
(``train``/``val``/``test``); any other column (more targets or covariates) is carried along unchanged.

An ``age`` is a finite number or empty (an unlabelled sample). :func:`load_manifest` can further check the
training target against a plausible range (``label_range``), refusing or leaving out (``label_policy="drop"``,
reported in ``excluded.csv``) the samples whose target is missing, not finite or implausible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .exclusions import report_exclusions
from .labels import check_labels, label_problems
from .splits import SPLITS

__all__ = ["REQUIRED_COLUMNS", "RESERVED_COLUMNS", "load_manifest", "read_manifest", "read_manifest_csv",
           "validate_manifest"]

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "path")
#: columns read verbatim as text: an id such as "NA" or "nan" must not become a missing value.
TEXT_COLUMNS: tuple[str, ...] = ("id", "path", "split")
#: columns that a cache adds to the manifest it writes, so a user manifest must not have them.
RESERVED_COLUMNS: tuple[str, ...] = ("index",)
_SHOWN = 5  # offending rows listed in an error message


def _where(mask: pd.Series, df: pd.DataFrame, first_line: int | None) -> str:
    """Describe the first offending rows: CSV line numbers when ``first_line`` is given, else positions."""
    positions = [i for i, bad in enumerate(mask.to_numpy()) if bad]
    unit = "line" if first_line is not None else "row"
    shown = [f"{unit} {p + (first_line or 0)} (id {df['id'].iloc[p]!r})" for p in positions[:_SHOWN]]
    more = f" and {len(positions) - _SHOWN} more" if len(positions) > _SHOWN else ""
    return ", ".join(shown) + more


def _strip_strings(df: pd.DataFrame) -> pd.DataFrame:
    """Strip surrounding whitespace from column names and from every text cell."""
    df = df.rename(columns=lambda c: str(c).strip())
    for column in df.columns:
        if not pd.api.types.is_numeric_dtype(df[column]):
            df[column] = df[column].map(lambda v: v.strip() if isinstance(v, str) else v)
    return df


def validate_manifest(df: pd.DataFrame, source: str = "manifest", first_line: int | None = None,
                      target: str | None = None) -> pd.DataFrame:
    """Check a manifest table and return a normalised copy.

    The copy has whitespace stripped, ``id`` and ``path`` as strings, ``age`` (if present) as float (empty
    cells become NaN: unlabelled samples) and the original index replaced by 0..n-1.

    Args:
        df: the manifest, one row per sample.
        source: what to call the manifest in error messages (e.g. its file name).
        first_line: CSV line number of the first row, to report offending rows by line; ``None`` reports
            0-based row positions.
        target: the label column the caller checks next with :func:`~supremix_med.data.labels.check_labels`
            (which refuses or leaves out its unusable values, all of them named); when it is ``age``, the age
            check here is left to that one and ``age`` is kept as read.

    Raises:
        ValueError: a required column is missing, a reserved column is present, an id is empty or
            duplicated, a path is empty, an age is not a finite number (unless ``age`` is the ``target``), or a
            split is not one of train/val/test.
    """
    df = _strip_strings(df.reset_index(drop=True))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; found columns {list(df.columns)}.")
    reserved = [c for c in RESERVED_COLUMNS if c in df.columns]
    if reserved:
        raise ValueError(f"{source}: column(s) {reserved} are written by the cache and must not be in the "
                         f"manifest; rename them.")
    for column in REQUIRED_COLUMNS:
        empty = df[column].isna() | (df[column].astype(str) == "")
        df[column] = df[column].astype(str).where(~empty, "")
        if empty.any():
            raise ValueError(f"{source}: empty {column!r} at {_where(empty, df, first_line)}.")
    duplicated = df["id"].duplicated(keep=False)
    if duplicated.any():
        raise ValueError(f"{source}: ids must be unique; duplicated at {_where(duplicated, df, first_line)}.")
    if "age" in df.columns and target != "age":
        problems = label_problems(df["age"])
        bad = (problems != "") & (problems != "missing")
        if bad.any():
            raise ValueError(f"{source}: 'age' must be a finite number (or empty for unlabelled samples): "
                             f"{problems[bad].iloc[0]} at {_where(bad, df, first_line)}.")
        df["age"] = pd.to_numeric(df["age"], errors="coerce").astype(float)
    if "split" in df.columns:
        bad_split = ~df["split"].isin(SPLITS)
        if bad_split.any():
            raise ValueError(f"{source}: 'split' must be one of {SPLITS}; got "
                             f"{df['split'][bad_split].iloc[0]!r} at {_where(bad_split, df, first_line)}.")
    return df


def read_manifest_csv(path: str | Path) -> pd.DataFrame:
    """``pandas.read_csv`` of a manifest-like table, with the ``id``/``path``/``split`` columns kept verbatim.

    The other columns get pandas' usual type inference and missing-value parsing (an empty age is NaN).
    Leading spaces after a delimiter are skipped.
    """
    df = pd.read_csv(path, skipinitialspace=True)
    text = [c for c in df.columns if str(c).strip() in TEXT_COLUMNS]
    if text:
        df[text] = pd.read_csv(path, skipinitialspace=True, usecols=text, dtype=str, keep_default_na=False)
    return df


def read_manifest(path: str | Path, target: str | None = None) -> pd.DataFrame:
    """Read and validate a manifest CSV; relative ``path`` entries are resolved against the CSV's folder.

    Args:
        path: the CSV file (header row, then one row per sample; see the module docstring for columns).
        target: the label column the caller checks next (see :func:`validate_manifest`); its values are kept
            as read.

    Returns:
        the validated manifest (see :func:`validate_manifest`) with absolute ``path`` entries; its index is the
        0-based data row of the file (CSV line = index + 2).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable CSV or fails validation; the message names the file and the
            offending lines.
    """
    path = Path(path).expanduser()
    try:
        df = read_manifest_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable manifest CSV ({err}).") from err
    df = validate_manifest(df, source=str(path), first_line=2, target=target)
    folder = path.resolve().parent
    df["path"] = [str(folder / Path(p).expanduser()) for p in df["path"]]
    return df


def load_manifest(path: str | Path, target: str | None = None, label_range: Sequence[float] | None = None,
                  label_policy: str = "refuse", output_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """:func:`read_manifest`, then (given a ``target``) the label check of every sample.

    Args:
        path: the CSV file (header row, then one row per sample; see the module docstring for columns).
        target: the training target column; when given, every sample needs a finite ``target`` (within
            ``label_range`` when given): see :func:`~supremix_med.data.labels.check_labels`. ``None``: no check
            beyond :func:`validate_manifest`'s (empty ages allowed).
        label_range: plausible ``(low, high)`` of ``target`` (e.g. ``(0, 120)`` years).
        label_policy: ``"refuse"`` (raise, naming every unusable target by line and id) or ``"drop"`` (leave
            those rows out, with a warning and a report).
        output_dir: where ``excluded.csv`` lists the dropped rows (e.g. the cache folder); ``None`` only logs.

    Returns:
        the validated manifest (see :func:`validate_manifest`) with absolute ``path`` entries (without the
        dropped rows, index 0..n-1).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable CSV, fails validation, or lacks ``target`` or has unusable
            targets (``label_policy="refuse"``); the message names the file and the offending lines.
    """
    df = read_manifest(path, target)
    if target is None:
        return df
    path = Path(path).expanduser()
    if target not in df.columns:
        raise ValueError(f"{path}: no target column {target!r}; found columns {list(df.columns)}.")
    kept, excluded = check_labels(df, target, label_range, label_policy, str(path), [f"line {i + 2}" for i in df.index])
    splits = sorted(set(df["split"])) if "split" in df.columns else [""]
    report_exclusions(excluded, path, splits, output_dir, total=len(df))
    return kept.reset_index(drop=True)
