"""Shared fixtures: a tiny synthetic T1 cohort, its preprocessed cache and a model trained on it, built once per test
session."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
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
    """The tiny cohort preprocessed by preprocessing.t1 into a cache folder, with its QC record (as the command line
    builds it)."""
    import pandas as pd

    manifest = pd.read_csv(tiny_cohort / "manifest.csv")
    manifest["path"] = [str(tiny_cohort / p) for p in manifest["path"]]
    folder = tmp_path_factory.mktemp("cache") / "cache"
    build_cache(manifest, folder, preprocess=functools.partial(t1.preprocess_with_qc, register="never"),
                fingerprint=t1.fingerprint(register="never"), workers=2, progress=False)
    return folder


@pytest.fixture(scope="session")
def table_dir(tmp_path_factory) -> Path:
    """A 150-row demo table for the airfoil bundle (120/15/15 rows per split)."""
    folder = tmp_path_factory.mktemp("airfoil_table")
    generate_table(folder, n_rows=150, seed=0)
    return folder
#: The tiny training run's settings (ukb_brainage train.json + demo.json): a few seconds per epoch on one thread.
TINY_TRAINING = {"pretrain_epochs": 1, "finetune_epochs": 2, "batch_size": 4, "num_workers": 0}


@pytest.fixture(scope="session")
def tiny_run(tiny_cache, tmp_path_factory) -> Path:
    """ukb_brainage (train.json + demo.json, SupReMix) trained on the tiny cache by ``supremix-med train``, started
    from another working directory; returns its output_dir (the model set in ``models/``)."""
    out = tmp_path_factory.mktemp("run") / "supremix"
    command = [sys.executable, "-m", "supremix_med.cli", "train", "ukb_brainage", "--overlay", "demo",
               "--method", "supremix", "--dataset_dir", str(tiny_cache), "--output_dir", str(out)]
    command += [arg for key, value in TINY_TRAINING.items() for arg in (f"--{key}", str(value))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path_factory.mktemp("elsewhere"), env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out
