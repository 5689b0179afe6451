"""Pieces the preprocessing modules share: library versions and file digests for fingerprints, and the manifest ->
cache CLI tail."""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pandas as pd

from supremix_med.data.cache import build_cache

__all__ = ["add_cache_arguments", "build_cache_from_cli", "cache_parser", "file_sha256", "library_versions"]


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


def cache_parser(prog: str, description: str, alternative: tuple[str, str] | None = None) -> argparse.ArgumentParser:
    """Parser of a preprocessing CLI with its input and output: ``--manifest CSV`` and ``--output DIR``.

    Args:
        prog: program name shown in the usage line (``python -m preprocessing.<module>``).
        description: what the CLI does.
        alternative: ``(flag, help)`` of a dataset folder option (a path) that may replace ``--manifest``;
            exactly one of the two is then required.

    Returns:
        The parser; the module adds its own options, then :func:`add_cache_arguments`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
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

    Args:
        manifest: the samples (see ``supremix_med.data.manifest``).
        args: parsed CLI arguments with ``output``, ``workers`` and ``overwrite``.
        preprocess: the module's ``preprocess(path, **params)``.
        fingerprint: the module's ``fingerprint(**params)``.
        params: preprocessing parameters given to both.
        noun: what a sample is, for the summary line ("scans", "clips").
        **options: further ``build_cache`` keywords (``stratify``, ``dtype``, ``sample_shape``).
    """
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
