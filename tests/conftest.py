"""Shared fixtures, built once per test session: a tiny synthetic T1 cohort and its preprocessed cache, a small table."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from preprocessing import t1
from supremix_med.data.cache import build_cache
from supremix_med.demo.t1 import generate_cohort
from supremix_med.demo.table import generate_table

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """12 synthetic 1 mm MNI T1 scans (ages 42-82) with manifest.csv: 8 train, 2 val, 2 test."""
    folder = tmp_path_factory.mktemp("cohort")
    manifest = generate_cohort(folder, n_subjects=12, seed=3, workers=2, progress=False)
    manifest["split"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def tiny_cache(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny cohort preprocessed by preprocessing.t1 into a cache folder."""
    import pandas as pd

    manifest = pd.read_csv(tiny_cohort / "manifest.csv")
    manifest["path"] = [str(tiny_cohort / p) for p in manifest["path"]]
    folder = tmp_path_factory.mktemp("cache") / "cache"
    build_cache(manifest, folder, preprocess=functools.partial(t1.preprocess, register="never"),
                fingerprint=t1.fingerprint(register="never"), workers=2, progress=False)
    return folder


@pytest.fixture(scope="session")
def table_dir(tmp_path_factory) -> Path:
    """A 150-row demo table for the airfoil bundle (120/15/15 rows per split)."""
    folder = tmp_path_factory.mktemp("airfoil_table")
    generate_table(folder, n_rows=150, seed=0)
    return folder
