"""Tests of the synthetic resting-state demo cohort (supremix_med.demo.fmri)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from preprocessing.fmri import preprocess
from supremix_med.demo.fmri import (
    NETWORKS,
    SITES,
    CohortParams,
    generate_cohort,
    main,
    network_of_parcels,
    synthesize_run,
)

N_PARCELS = 60
N_FRAMES = 480


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """40 subjects x 2 runs of 60 parcels."""
    folder = tmp_path_factory.mktemp("demo_fmri")
    return folder, generate_cohort(folder, n_subjects=40, seed=0, n_parcels=N_PARCELS, n_runs=2, progress=False)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_and_files(cohort):
    folder, manifest = cohort
    assert list(manifest.columns) == ["id", "path", "subject", "run", "age", "sex", "site"]
    pd.testing.assert_frame_equal(pd.read_csv(folder / "manifest.csv"), manifest)
    assert manifest["id"].iloc[:3].tolist() == ["sub-0000_run-1", "sub-0000_run-2", "sub-0001_run-1"]
    assert manifest.groupby("subject")["age"].nunique().max() == 1
    assert manifest["age"].between(36.0, 100.0).all()
    assert set(manifest["sex"]) == {"F", "M"} and set(manifest["site"]) <= set(SITES)
    series = np.load(folder / manifest["path"].iloc[0])
    assert series.shape == (N_PARCELS, N_FRAMES) and series.dtype == np.float32
    np.testing.assert_allclose(series.std(axis=1, ddof=1), 1.0, atol=1e-5)


def test_runs_feed_the_preprocessing_pipeline(cohort):
    folder, manifest = cohort
    path = folder / manifest["path"].iloc[1]
    np.testing.assert_array_equal(preprocess(path, n_parcels=N_PARCELS), np.load(path)[:, :478])


def test_deterministic_resumable_and_independent_of_cohort_size(cohort, tmp_path):
    folder, manifest = cohort
    small = generate_cohort(tmp_path, n_subjects=3, seed=0, n_parcels=N_PARCELS, n_runs=2, progress=False)
    extended = generate_cohort(tmp_path, n_subjects=5, seed=0, n_parcels=N_PARCELS, n_runs=2, progress=False)
    pd.testing.assert_frame_equal(extended.iloc[: len(small)], small)
    for path in extended["path"]:
        assert (tmp_path / path).read_bytes() == (folder / path).read_bytes()
    other_seed = synthesize_run(CohortParams(seed=1, n_parcels=N_PARCELS), 0, 1)
    assert not np.array_equal(other_seed, np.load(folder / manifest["path"].iloc[0]))
    assert not np.array_equal(np.load(folder / manifest["path"].iloc[0]), np.load(folder / manifest["path"].iloc[1]))


def test_refuses_to_mix_cohorts(cohort):
    folder, _ = cohort
    with pytest.raises(ValueError, match="cohort.json records output generated with"):
        generate_cohort(folder, n_subjects=2, seed=1, n_parcels=N_PARCELS, n_runs=2, progress=False)


def test_networks_partition_the_parcels():
    networks = network_of_parcels(400)
    counts = np.bincount(networks)
    assert len(counts) == len(NETWORKS) and counts.sum() == 400 and counts.min() > 10
    assert np.all(np.diff(networks) >= 0)  # contiguous blocks


def _network_features(series: np.ndarray) -> tuple[float, float]:
    """Mean within-network correlation and mean correlation default <-> dorsal attention."""
    networks = network_of_parcels(series.shape[0])
    correlation = np.corrcoef(series)
    within = networks[:, None] == networks[None, :]
    np.fill_diagonal(within, False)
    between = (networks[:, None] == NETWORKS.index("default")) & (networks[None, :] == 2)
    return float(correlation[within].mean()), float(correlation[between].mean())


def test_age_is_learnable_from_network_structure(cohort):
    """Within-network coupling falls and default/attention anticorrelation fades with age (40 subjects)."""
    folder, manifest = cohort
    first_runs = manifest[manifest["run"] == 1]
    features = np.array([_network_features(np.load(folder / p)) for p in first_runs["path"]])
    within_r = np.corrcoef(features[:, 0], first_runs["age"])[0, 1]
    between_r = np.corrcoef(features[:, 1], first_runs["age"])[0, 1]
    assert within_r < -0.5
    assert between_r > 0.5


def test_cli(tmp_path):
    manifest = main(["--output", str(tmp_path), "--n_subjects", "2", "--n_parcels", "14", "--n_frames", "30",
                     "--no_progress"])
    assert len(manifest) == 2
    assert np.load(tmp_path / manifest["path"].iloc[1]).shape == (14, 30)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_parcels >= 7"):
        CohortParams(n_parcels=3)
    with pytest.raises(ValueError, match="youngest < oldest"):
        CohortParams(age_range=(80, 40))
