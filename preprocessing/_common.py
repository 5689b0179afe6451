"""Pieces the preprocessing modules share: library versions and file digests for fingerprints, NIfTI reading
with a size check, the manifest -> cache command line (its arguments; its refusals and exit codes are
:mod:`supremix_med.cli.refusals`, shared with the ``supremix-med`` commands), and the report of the samples a
dataset-layout reader leaves out of the manifest it builds (``excluded.csv`` in the command's output folder, see
:mod:`supremix_med.data.exclusions`)."""

from __future__ import annotations

import argparse
import functools
import hashlib
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

from supremix_med.cli.refusals import EXIT_FAILED, EXIT_REFUSED, add_debug_argument, one_line, run_cli
from supremix_med.data.cache import build_cache
from supremix_med.data.exclusions import report_exclusions
from supremix_med.data.manifest import load_manifest

__all__ = ["EXIT_FAILED", "EXIT_REFUSED", "add_cache_arguments", "add_debug_argument", "build_cache_from_cli",
           "cache_parser", "file_sha256", "left_out_rows", "library_versions", "load_cli_manifest", "load_nifti",
           "one_line", "read_voxels", "report_left_out", "run_cli"]

def library_versions(*packages: str) -> dict[str, str]:
    """``{package: installed version}`` for the given distribution names (``importlib.metadata.version``).

    Raises:
        importlib.metadata.PackageNotFoundError: a package is not installed.
    """
    return {package: version(package) for package in packages}


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks (for fingerprints that name an input file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        The parser (with ``--debug``); the module adds its own options, then :func:`add_cache_arguments`.
    """
    parser = add_debug_argument(argparse.ArgumentParser(prog=prog, description=description))
    source = parser if alternative is None else parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", required=alternative is None, type=Path,
                        help="CSV; relative paths are relative to it.")
    if alternative is not None:
        source.add_argument(alternative[0], type=Path, help=alternative[1])
    parser.add_argument("--output", required=True, type=Path, help="cache folder")
    return parser


def add_cache_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options every preprocessing CLI ends with, ``--workers W`` and ``--overwrite``; return ``parser``."""
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a cache built with other settings (a matching one continues)"
    )
    return parser


def load_cli_manifest(path: Path) -> pd.DataFrame:
    """``load_manifest(path)`` for a command line: its refusals say to mend the manifest (or ``--manifest``)."""
    try:
        return load_manifest(path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"manifest not found: {path}; check --manifest.") from error
    except ValueError as error:
        raise ValueError(f"{error} Correct the manifest and run again.") from error


def build_cache_from_cli(
    manifest: pd.DataFrame,
    args: argparse.Namespace,
    preprocess: Callable[..., Any],
    fingerprint: Callable[..., dict[str, Any]],
    params: dict[str, Any],
    noun: str,
    **options: Any,
) -> None:
    """Cache ``manifest`` with ``preprocess(path, **params)`` and print how many ``noun`` the cache holds.

    Pipelines with QC pass their ``preprocess_with_qc``: the cache then keeps each sample's QC record
    (``qc.csv``), which training screens with the pipeline's ``QC_LIMITS``.

    Args:
        manifest: the samples (see ``supremix_med.data.manifest``).
        args: parsed CLI arguments with ``output``, ``workers`` and ``overwrite``.
        preprocess: the module's ``preprocess(path, **params)`` or ``preprocess_with_qc``.
        fingerprint: the module's ``fingerprint(**params)``.
        params: preprocessing parameters given to both.
        noun: what a sample is, for the summary line ("scans", "clips").
        **options: further ``build_cache`` keywords (``stratify``, ``dtype``, ``sample_shape``).

    Raises:
        ValueError: the manifest has neither a ``split`` column nor the column the splits are stratified by
            (``stratify``, default ``age``); see ``build_cache`` for the others.
    """
    stratify = options.get("stratify", "age")
    if "split" not in manifest.columns and stratify is not None and stratify not in manifest.columns:
        raise ValueError(f"{args.manifest or 'the manifest'}: no {stratify!r} column to stratify the train/val/test "
                         f"splits by (columns: {list(manifest.columns)}); add it, or a 'split' column.")
    cached = build_cache(
        manifest,
        args.output,
        preprocess=functools.partial(preprocess, **params),
        fingerprint=fingerprint(**params),
        workers=args.workers,
        overwrite=args.overwrite,
        **options,
    )
    print(f"{len(cached)} {noun} in the cache at {args.output}")


def left_out_rows(ids: Iterable[str], reason: str) -> pd.DataFrame:
    """``id, reason`` rows (sorted by id) of the samples a manifest builder leaves out for one ``reason``."""
    return pd.DataFrame({"id": sorted(map(str, ids)), "reason": reason}, columns=["id", "reason"])


def report_left_out(left_out: pd.DataFrame, source: str | os.PathLike, output_dir: str | os.PathLike,
                    kept: int) -> Path | None:
    """Record what a command's manifest builder left out in ``<output_dir>/excluded.csv``, and warn in one line.

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
