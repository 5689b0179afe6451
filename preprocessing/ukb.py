"""UK Biobank T1 images + an age table -> a manifest for ``python -m preprocessing.t1``.

Accepted layouts under ``ukb_root`` (one folder per subject; ``<eid>`` is the participant id, digits):

- ``<eid>/T1/T1_brain_to_MNI.nii.gz``
- ``<eid>_20252_<instance>_<array>/T1/T1_brain_to_MNI.nii.gz``: the unzipped bulk download of field 20252
  (T1 structural brain images, NIfTI). Only folders of the requested ``instance`` (2: first imaging visit;
  3: repeat imaging visit) are used, array index 0; plain ``<eid>`` folders are taken to be of that instance.

Other folders are left out. A subject with both layouts is an error: which scan to use is the user's decision.

The age table is a CSV with an ``eid`` column and an age column (e.g. ``age`` or UKB's field
``21003-2.0``, age at the imaging visit), optionally sex and site columns (e.g. fields ``31-0.0`` and
``54-2.0``). Subjects with an image but no age, and subjects of the table without an image, are left out.
An age that is not finite or outside the plausible range of the bundle the manifest feeds (``BUNDLE``, its
``plausible_range``) refuses the table, naming the eids, unless ``--label_policy drop`` leaves those subjects
out too.

Nothing is left out silently: the command line lists every folder and subject left out, with the reason, in
``excluded.csv`` beside the manifest (columns ``id, split, reason, source``; ``id`` is the folder name or the
eid, ``source`` the UK Biobank folder) and warns in one line how many and where the list is.

Command line::

    python -m preprocessing.ukb --ukb_root DIR --age_table CSV --output manifest.csv [--label_policy drop]
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from preprocessing._common import (
    add_debug_argument,
    add_label_policy_argument,
    left_out_rows,
    report_left_out,
    run_cli,
    screen_labels,
)
from preprocessing.t1 import BUNDLE  # the manifest is for preprocessing.t1, whose caches feed this bundle
from supremix_med.io import atomic_write

__all__ = ["BUNDLE", "IMAGE_RELATIVE_PATH", "build_ukb_manifest", "main"]

IMAGE_RELATIVE_PATH = Path("T1") / "T1_brain_to_MNI.nii.gz"
_FOLDER = re.compile(r"^(?P<eid>\d+)(?:_20252_(?P<instance>\d+)_(?P<array>\d+))?$")
_SHOWN = 5  # ids listed in a warning


def _examples(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    more = f", ... ({len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def _subject_folders(ukb_root: Path, instance: int) -> tuple[dict[str, Path], pd.DataFrame]:
    """eid -> subject folder of the requested instance, and the folders left out (``id, reason``)."""
    folders: dict[str, list[Path]] = {}
    unmatched, other_instance = [], []
    for folder in sorted(p for p in ukb_root.iterdir() if p.is_dir()):
        match = _FOLDER.match(folder.name)
        if match is None:
            unmatched.append(folder.name)
        elif match["instance"] is not None and (int(match["instance"]), int(match["array"])) != (instance, 0):
            other_instance.append(folder.name)
        else:
            folders.setdefault(match["eid"], []).append(folder)
    duplicated = {eid: paths for eid, paths in folders.items() if len(paths) > 1}
    if duplicated:
        shown = "; ".join(" and ".join(p.name for p in paths) for paths in list(duplicated.values())[:_SHOWN])
        raise ValueError(
            f"{ukb_root}: {len(duplicated)} subjects have both an <eid> and an <eid>_20252_{instance}_0 folder "
            f"({shown}); keep one of each."
        )
    skipped = pd.concat([
        left_out_rows(unmatched, "folder not named <eid> or <eid>_20252_<instance>_<array>"),
        left_out_rows(other_instance, f"folder of another instance/array than {instance}_0"),
    ], ignore_index=True)
    return {eid: paths[0] for eid, paths in folders.items()}, skipped


def _read_age_table(
    age_table: Path, age_column: str, columns: dict[str, str | None]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table indexed by eid (str) with the age and the available covariates; returns it and the
    manifest-name -> table-column mapping of the covariates found."""
    if not age_table.is_file():
        raise FileNotFoundError(f"age table not found: {age_table}")
    table = pd.read_csv(age_table, dtype={"eid": str})
    missing = [c for c in ("eid", age_column) if c not in table.columns]
    if missing:
        raise ValueError(
            f"{age_table}: expected columns 'eid' and {age_column!r}; missing {missing} "
            f"(columns: {list(table.columns)[:10]})."
        )
    table["eid"] = table["eid"].str.strip()
    duplicated = table["eid"][table["eid"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"{age_table}: {len(duplicated)} eids appear more than once: {_examples(duplicated)}")
    ages = pd.to_numeric(table[age_column], errors="coerce")
    not_numeric = table["eid"][ages.isna() & table[age_column].notna()]
    if len(not_numeric):
        raise ValueError(
            f"{age_table}: column {age_column!r} has non-numeric ages for {len(not_numeric)} eids: "
            f"{_examples(not_numeric)}"
        )
    table[age_column] = ages
    found = {}
    for name, column in columns.items():
        if column is None:
            continue
        if column in table.columns:
            found[name] = column
        else:
            warnings.warn(f"{age_table}: no column {column!r}; the manifest has no {name} column.", stacklevel=3)
    return table.set_index("eid"), found


def build_ukb_manifest(
    ukb_root: str | os.PathLike,
    age_table: str | os.PathLike,
    age_column: str = "age",
    sex_column: str | None = "sex",
    site_column: str | None = "site",
    instance: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Find the UK Biobank ``T1_brain_to_MNI`` images under ``ukb_root`` and join their ages.

    Args:
        ukb_root: folder with one sub-folder per subject (layouts in the module docstring).
        age_table: CSV with ``eid`` and ``age_column`` (years), optionally ``sex_column``/``site_column``.
        age_column: the age column, e.g. ``"21003-2.0"`` for UKB's age at the first imaging visit.
        sex_column: copied to the manifest's ``sex`` column if present; None to skip.
        site_column: copied to the manifest's ``site`` column if present; None to skip.
        instance: UKB instance of the ``<eid>_20252_<instance>_0`` folders to use.

    Returns:
        ``(manifest, left_out)``: the manifest has one row per subject with an image and an age, sorted by id:
        ``id`` (eid, str), ``path`` (absolute), ``age`` (float), and ``sex``/``site`` when found; ``left_out``
        has one row (``id, reason``) per folder and subject left out: folders named otherwise or of another
        instance (``id``: the folder name), subjects without an image or without an age (``id``: the eid).

    Raises:
        FileNotFoundError: ``ukb_root`` or ``age_table`` does not exist.
        ValueError: missing columns, duplicated or doubly-stored eids, non-numeric ages, or no subject with
            both an image and an age.
    """
    ukb_root, age_table = Path(ukb_root), Path(age_table)
    if not ukb_root.is_dir():
        raise FileNotFoundError(f"UK Biobank folder not found: {ukb_root}")
    table, covariates = _read_age_table(age_table, age_column, {"sex": sex_column, "site": site_column})
    folders, skipped = _subject_folders(ukb_root, instance)
    images = {eid: folder / IMAGE_RELATIVE_PATH for eid, folder in folders.items()}
    images = {eid: path for eid, path in images.items() if path.is_file()}
    with_age = set(table.index[table[age_column].notna()])
    left_out = pd.concat([
        skipped,
        left_out_rows(set(folders) - set(images), f"no {IMAGE_RELATIVE_PATH} in its folder"),
        left_out_rows(set(table.index) - set(folders), f"in {age_table.name} but no subject folder"),
        left_out_rows(set(images) - with_age, f"no {age_column!r} in {age_table.name}"),
    ], ignore_index=True)
    eids = sorted(set(images) & with_age)
    if not eids:
        raise ValueError(f"no subject has both an image under {ukb_root} and an age in {age_table}.")
    manifest = pd.DataFrame(
        {
            "id": eids,
            "path": [str(images[eid].resolve()) for eid in eids],
            "age": table.loc[eids, age_column].astype(float).to_numpy(),
        }
    )
    for name, column in covariates.items():
        manifest[name] = table.loc[eids, column].to_numpy()
    return manifest, left_out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m preprocessing.ukb", description=__doc__.splitlines()[0])
    parser.add_argument("--ukb_root", required=True, type=Path, help="folder of subject folders")
    parser.add_argument("--age_table", required=True, type=Path, help="CSV with eid and age columns")
    parser.add_argument("--output", required=True, type=Path, help="manifest CSV to write")
    parser.add_argument("--age_column", default="age", help="age column (default: age)")
    parser.add_argument("--sex_column", default="sex", help="sex column, copied if present (default: sex)")
    parser.add_argument("--site_column", default="site", help="site column, copied if present (default: site)")
    parser.add_argument("--instance", type=int, default=2, help="UKB instance of bulk folders (default: 2)")
    return add_label_policy_argument(add_debug_argument(parser))


def _write_manifest(args: argparse.Namespace) -> None:
    """Screen the ages, write the manifest, then ``excluded.csv`` beside it (what was left out, see the module
    docstring)."""
    manifest, left_out = build_ukb_manifest(
        args.ukb_root, args.age_table, args.age_column, args.sex_column, args.site_column, args.instance
    )
    manifest, implausible = screen_labels(manifest, BUNDLE, "age", args.label_policy, args.age_table,
                                          ["subject"] * len(manifest))
    left_out = pd.concat([left_out, implausible], ignore_index=True)
    atomic_write(args.output, lambda temporary: manifest.to_csv(temporary, index=False))
    report_left_out(left_out, args.ukb_root, args.output.parent, kept=len(manifest))
    print(f"{len(manifest)} subjects written to {args.output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the manifest CSV (see the module docstring).

    A refused input prints one line and exits with status 2; ``--debug`` shows the traceback (see
    ``preprocessing._common.run_cli``).
    """
    run_cli(_parser(), argv, _write_manifest)


if __name__ == "__main__":
    main()
