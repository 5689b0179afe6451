"""Pieces the preprocessing modules share: library versions for fingerprints (file digests are
:func:`supremix_med.io.file_sha256`), NIfTI reading
with a size check, the manifest -> cache command line (its arguments; its refusals and exit codes are
:mod:`supremix_med.cli.refusals`, shared with the ``supremix-med`` commands), the check of the manifest's labels
against the plausible range of the bundle a module feeds (:func:`screen_labels`, before anything is
preprocessed), and the report of the samples a command leaves out (``excluded.csv`` in its output folder, see
:mod:`supremix_med.data.exclusions`)."""

from __future__ import annotations

import argparse
import functools
import os
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from supremix_med.bundles import load_config
from supremix_med.cli.refusals import EXIT_FAILED, EXIT_REFUSED, add_debug_argument, one_line, run_cli
from supremix_med.data.cache import build_cache
from supremix_med.data.exclusions import report_exclusions
from supremix_med.data.labels import LABEL_POLICIES, check_labels, check_range
from supremix_med.data.manifest import read_manifest

__all__ = ["EXIT_FAILED", "EXIT_REFUSED", "add_cache_arguments", "add_debug_argument", "add_label_policy_argument",
           "build_cache_from_cli", "bundle_label_range", "cache_parser", "left_out_rows",
           "library_versions", "load_cli_manifest", "load_nifti", "one_line", "read_voxels", "report_left_out",
           "run_cli", "screen_labels"]

def library_versions(*packages: str) -> dict[str, str]:
    """``{package: installed version}`` for the given distribution names (``importlib.metadata.version``).

    Raises:
        importlib.metadata.PackageNotFoundError: a package is not installed.
    """
    return {package: version(package) for package in packages}


def load_nifti(path: str | os.PathLike, max_voxels: int) -> nib.Nifti1Image:
    """Open a NIfTI file and check the size its header declares before any voxel is read.

    A corrupt or hostile header can declare e.g. 30000^3 voxels; reading it would fail with an empty
    ``MemoryError`` (or exhaust the machine), so the declared voxel count (all dimensions) is compared with
    ``max_voxels`` first. Each reader documents its limit.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        max_voxels: the largest voxel count accepted.

    Returns:
        the image, its voxels not yet read (see :func:`read_voxels`).

    Raises:
        ValueError: the header cannot be read, or declares more than ``max_voxels`` voxels; the message names
            the file.
    """
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a NIfTI image ({error}).") from error
    voxels = int(np.prod(image.shape, dtype=np.float64))
    if voxels > max_voxels:
        raise ValueError(
            f"{path}: the header declares shape {' x '.join(map(str, image.shape))} = {voxels:.3g} voxels, more "
            f"than the {max_voxels:.3g} this reader accepts (a damaged header, or not a scan this pipeline takes)."
        )
    return image


def read_voxels(image: nib.Nifti1Image, path: str | os.PathLike) -> np.ndarray:
    """The voxels of an image from :func:`load_nifti` as float32 (scaled by the header's slope/intercept).

    Raises:
        ValueError: the data cannot be read (truncated or corrupt file) or do not fit in memory; the message
            names the file.
    """
    try:
        return image.get_fdata(dtype=np.float32)
    except MemoryError as error:
        size_gb = np.prod(image.shape, dtype=np.float64) * 4 / 1e9
        raise ValueError(f"{path}: not enough memory to read its {image.shape} voxels ({size_gb:.2f} GB as "
                         "float32).") from error
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise ValueError(f"{path}: cannot be read as a NIfTI image ({error}).") from error


def cache_parser(prog: str, description: str, alternative: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """Parser of a preprocessing CLI with its input and output: ``--manifest CSV`` and ``--output DIR``.

    Args:
        prog: program name shown in the usage line (``python -m preprocessing.<module>``).
        description: what the CLI does.
        alternative: ``(flag, help)`` of a dataset folder option (a path) that may replace ``--manifest``;
            exactly one of the two is then required.

    Returns:
        The parser (with ``--debug`` and ``--label_policy``); the module adds its own options, then
        :func:`add_cache_arguments`.
    """
    parser = add_debug_argument(argparse.ArgumentParser(prog=prog, description=description))
    source = parser if alternative is None else parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", required=alternative is None, type=Path,
                        help="CSV; relative paths are relative to it.")
    if alternative is not None:
        source.add_argument(alternative[0], type=Path, help=alternative[1])
    parser.add_argument("--output", required=True, type=Path, help="cache folder")
    return add_label_policy_argument(parser)


def add_label_policy_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--label_policy {refuse,drop}`` (default ``refuse``, see :func:`screen_labels`); return ``parser``."""
    parser.add_argument(
        "--label_policy", choices=LABEL_POLICIES, default="refuse",
        help="a label that is missing, not finite or outside the bundle's plausible range: refuse the manifest "
             "(default) or leave the sample out, listed in excluded.csv in the output folder",
    )
    return parser


def add_cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every preprocessing CLI ends with, ``--workers W`` and ``--overwrite``; return ``parser``."""
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a cache built with other settings (a matching one continues)"
    )
    return parser


def load_cli_manifest(path: Path, target: str = "age") -> pd.DataFrame:
    """``read_manifest(path, target)`` for a command line: its refusals say to mend the manifest (or
    ``--manifest``); the ``target`` label column is left to :func:`screen_labels` (index: the CSV's data rows)."""
    try:
        return read_manifest(path, target)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"manifest not found: {path}; check --manifest.") from error
    except ValueError as error:
        raise ValueError(f"{error} Correct the manifest and run again.") from error


def bundle_label_range(bundle: str) -> tuple[float, float]:
    """The plausible ``(low, high)`` of bundle ``bundle``'s label, in its own units (years, months, %): the
    ``plausible_range`` its ``train.json`` declares, which its training checks the cached labels against too.

    Raises:
        ValueError: no such bundle, or a malformed range (the message names the bundle).
    """
    return check_range(f"bundle {bundle!r}: plausible_range", load_config(bundle)["plausible_range"])


def screen_labels(manifest: pd.DataFrame, bundle: str, column: str, policy: str, source: str | os.PathLike,
                  where: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refuse, or leave out, the manifest rows whose label cannot be trained on, before anything is preprocessed.

    A label is unusable when it is missing, not a number, not finite or outside the ``plausible_range`` of the
    ``bundle`` the command feeds (:func:`bundle_label_range`; each value is judged by
    :func:`~supremix_med.data.labels.label_problems`). A manifest without ``column`` (a cache for inference only)
    is not checked.

    Args:
        manifest: the samples, with an ``id`` column.
        bundle: the bundle the command's cache or manifest is for (the module's ``BUNDLE``).
        column: the label column (e.g. ``age`` in years, ``boneage`` in months, ``ef`` in %).
        policy: ``--label_policy``: ``"refuse"`` or ``"drop"``.
        source: the file the rows were read from, named in the messages and the report.
        where: per row, where it is in ``source`` (e.g. ``"line 5"``); default: its 0-based row position.

    Returns:
        ``(kept, left_out)``: the usable rows (``column`` as float, index kept), and ``id, reason`` of the rows
        left out (empty unless ``policy="drop"``), for :func:`report_left_out`.

    Raises:
        ValueError: with ``"refuse"``, any unusable label: one line naming ``source``, the range, the first
            rows by id with their problem (then how many more) and ``--label_policy drop``; with ``"drop"``, a
            manifest in which no label is usable.
    """
    if column not in manifest.columns:
        return manifest, left_out_rows([], "")
    kept, excluded = check_labels(manifest, column, bundle_label_range(bundle), policy, str(source), where,
                                  drop_option="--label_policy drop")
    if kept.empty and len(excluded):
        raise ValueError(f"{source}: none of the {len(manifest)} samples has a usable {column!r} label (e.g. "
                         f"{excluded['id'].iloc[0]!r}: {excluded['reason'].iloc[0]}); correct the manifest.")
    return kept, excluded[["id", "reason"]]


def build_cache_from_cli(
    manifest: pd.DataFrame,
    args: argparse.Namespace,
    preprocess: Callable[..., Any],
    fingerprint: Callable[..., dict[str, Any]],
    params: dict[str, Any],
    noun: str,
    *,
    bundle: str,
    target: str = "age",
    source: str | os.PathLike | None = None,
    left_out: pd.DataFrame | None = None,
    **options: Any,
) -> None:
    """Screen ``manifest``'s labels, cache it with ``preprocess(path, **params)`` and print how many ``noun`` the
    cache holds.

    The labels are screened first (:func:`screen_labels` with ``args.label_policy``), so an unusable one refuses
    the run before any sample is preprocessed. With ``--label_policy drop``, or when the command's manifest
    builder left samples out (``left_out``), ``excluded.csv`` in the cache lists them all once the cache is built
    (:func:`report_left_out`).

    Pipelines with QC pass their ``preprocess_with_qc``: the cache then keeps each sample's QC record
    (``qc.csv``), which training screens with the pipeline's ``QC_LIMITS``.

    Args:
        manifest: the samples (see ``supremix_med.data.manifest``); read from ``--manifest`` by
            :func:`load_cli_manifest` unless a ``source`` is given.
        args: parsed CLI arguments with ``manifest``, ``output``, ``workers``, ``overwrite`` and ``label_policy``.
        preprocess: the module's ``preprocess(path, **params)`` or ``preprocess_with_qc``.
        fingerprint: the module's ``fingerprint(**params)``.
        params: preprocessing parameters given to both.
        noun: what a sample is, for the summary line ("scans", "clips").
        bundle: the bundle the cache is for (the module's ``BUNDLE``), whose plausible range the labels need.
        target: the label column, also the one the splits are stratified by.
        source: the dataset table a manifest builder read (messages then name rows by position and id);
            default ``args.manifest`` (rows named by CSV line).
        left_out: ``id, reason`` of the samples the command's manifest builder left out of ``source``.
        **options: further ``build_cache`` keywords (``dtype``, ``sample_shape``).

    Raises:
        ValueError: an unusable label (``--label_policy refuse``, see :func:`screen_labels`); the manifest has
            neither a ``split`` column nor the ``target`` column to stratify the splits by; see ``build_cache``
            for the others.
    """
    lines = [f"line {i + 2}" for i in manifest.index] if source is None else None  # load_cli_manifest's index
    source = args.manifest if source is None else source
    manifest, dropped = screen_labels(manifest, bundle, target, args.label_policy, source, lines)
    if "split" not in manifest.columns and target not in manifest.columns:
        raise ValueError(f"{args.manifest or 'the manifest'}: no {target!r} column to stratify the train/val/test "
                         f"splits by (columns: {list(manifest.columns)}); add it, or a 'split' column.")
    cached = build_cache(
        manifest,
        args.output,
        preprocess=functools.partial(preprocess, **params),
        fingerprint=fingerprint(**params),
        workers=args.workers,
        overwrite=args.overwrite,
        stratify=target,
        **options,
    )
    print(f"{len(cached)} {noun} in the cache at {args.output}")
    if left_out is not None or args.label_policy == "drop":
        everything = pd.concat([left_out, dropped], ignore_index=True) if left_out is not None else dropped
        report_left_out(everything, source, args.output, kept=len(manifest))


def left_out_rows(ids: Iterable[str], reason: str) -> pd.DataFrame:
    """``id, reason`` rows (sorted by id) of the samples a manifest builder leaves out for one ``reason``."""
    return pd.DataFrame({"id": sorted(map(str, ids)), "reason": reason}, columns=["id", "reason"])


def report_left_out(left_out: pd.DataFrame, source: str | os.PathLike, output_dir: str | os.PathLike,
                    kept: int) -> Path | None:
    """Record what a command left out (its manifest builder, ``--label_policy drop``) in ``<output_dir>/excluded.csv``,
    and warn in one line.

    The warning counts the samples left out of all the builder found (``kept`` + left out), names a few with
    their reasons and the report's path; the command line prints it as ``<prog>: warning: ...``. The report has
    the columns of :data:`~supremix_med.data.exclusions.EXCLUDED_COLUMNS` (``split`` empty); a re-run replaces the
    rows an earlier run reported from ``source``. A cache command reports once its cache is built: the build
    needs an empty folder or a cache, and ``--overwrite`` replaces the folder.

    Args:
        left_out: ``id, reason`` of the samples left out (may be empty), e.g. from :func:`left_out_rows`.
        source: the dataset folder or table they were found in.
        output_dir: the command's output folder (the cache folder, or the folder of the manifest written).
        kept: how many samples the manifest holds.

    Returns:
        the report's path (see :func:`~supremix_med.data.exclusions.report_exclusions`).
    """
    return report_exclusions(left_out, source, [""], output_dir, total=kept + len(left_out), warn=warnings.warn)
