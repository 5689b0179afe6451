"""End to end: the hcp_aging bundle on a tiny generated fMRI cohort (2 runs per subject): train -> evaluate -> infer."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from monai.bundle import verify_metadata, verify_net_in_out

from _bundle_runs import bundle_configs, one_torch_thread, run_workflow  # noqa: F401 (module fixture)
from conftest import BUNDLES
from preprocessing import fmri
from supremix_med.demo.fmri import CohortParams, generate_cohort, synthesize_run

BUNDLE = BUNDLES / "hcp_aging"
N_PARCELS, N_FRAMES, FRAMES, WINDOW = 16, 44, 40, 16
TINY = {
    "pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 4, "num_workers": 0,
    "window_frames": WINDOW, "window_stride": 8,
    "network_config#in_channels": N_PARCELS, "network_config#widen_factor": 0.125, "network_config#projection_dim": 8,
}


def _configs(*names: str) -> list[str]:
    return bundle_configs(BUNDLE, *names)


def _atlas(path: Path) -> Path:
    """A 4 x 4 x 4 label image at 2 mm: labels 1..16 in blocks of 4 voxels."""
    labels = np.repeat(np.arange(1, N_PARCELS + 1), 4).reshape(4, 4, 4).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def _bold(path: Path, series: np.ndarray) -> Path:
    """A 4-D run whose voxels carry their parcel's series (plus a little noise), TR 0.8 s."""
    noise = 0.05 * np.random.default_rng(0).standard_normal((4 * N_PARCELS, series.shape[1]))
    voxels = np.repeat(series, 4, axis=0) + noise
    image = nib.Nifti1Image((100.0 + voxels).reshape(4, 4, 4, -1).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 0.8
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """10 subjects x 2 runs of 16-parcel series with a fixed subject split (6 train, 2 val, 2 test), an atlas."""
    folder = tmp_path_factory.mktemp("fmri_cohort")
    manifest = generate_cohort(folder, n_subjects=10, seed=1, n_parcels=N_PARCELS, n_frames=N_FRAMES, n_runs=2,
                               progress=False)
    manifest["split"] = manifest["subject"].map(lambda s: "train" if s < "sub-0006" else
                                                "val" if s < "sub-0008" else "test")
    manifest.to_csv(folder / "manifest.csv", index=False)
    _atlas(folder / "atlas.nii.gz")
    return folder


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory) -> Path:
    """The cohort through ``python -m preprocessing.fmri`` (extracted series; the atlas they come from recorded)."""
    folder = tmp_path_factory.mktemp("fmri_cache") / "cache"
    fmri.main(["--manifest", str(cohort / "manifest.csv"), "--output", str(folder), "--atlas",
               str(cohort / "atlas.nii.gz"), "--frames", str(FRAMES), "--n_parcels", str(N_PARCELS)])
    return folder


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hcp_run") / "supremix"
    run_workflow(_configs("train", "demo"), dataset_dir=str(cache), output_dir=str(out), method="supremix", **TINY)
    return out


def test_train_reports_per_subject(trained):
    models = trained / "models"
    for name in ("model.pt", "pretrained_encoder.pt", "model_config.json", "bias_correction.json",
                 "preprocessing.json"):
        assert (models / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["method"] == "supremix" and "shots" in metrics
    predictions = pd.read_csv(trained / "predictions.csv")
    assert predictions["subject"].tolist() == ["sub-0008", "sub-0009"]
    assert predictions["n_runs"].tolist() == [2, 2]
    assert predictions["predicted_age"].notna().all()
    assert (trained / "predictions.png").stat().st_size > 0


def test_evaluate_overlay_and_vanilla(trained, cache, tmp_path):
    run_workflow(_configs("train", "evaluate"), dataset_dir=str(cache), output_dir=str(trained), **TINY)
    evaluated = json.loads((trained / "eval" / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["mae"], rel=1e-5)
    run_workflow(_configs("train", "demo"), dataset_dir=str(cache), output_dir=str(tmp_path),
                 **{**TINY, "method": "vanilla"})
    assert not (tmp_path / "models" / "pretrained_encoder.pt").exists()
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 2


def test_monai_bundle_tools(trained):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=_configs("train", "demo"), n=1)


def test_inference_on_extracted_series_and_4d_nifti(trained, cohort, tmp_path):
    params = CohortParams(seed=1, n_parcels=N_PARCELS, n_frames=N_FRAMES, n_runs=2)
    bold = _bold(tmp_path / "bold.nii.gz", synthesize_run(params, 9, 1))
    np.save(tmp_path / "short.npy", np.zeros((N_PARCELS, FRAMES - 5), dtype=np.float32))
    runs = pd.DataFrame({"id": ["run_npy", "run_nifti", "too_short"],
                         "path": [str(cohort / "sub-0008" / "run-1_parcels.npy"), str(bold), "short.npy"],
                         "age": [np.nan, 70.0, np.nan]})
    runs.to_csv(tmp_path / "runs.csv", index=False)
    run_workflow([str(BUNDLE / "inference.json")], workflow_type="infer", dataset_dir=str(tmp_path / "runs.csv"),
         ckpt_dir=str(trained / "models"), output_dir=str(tmp_path / "out"), num_workers=0,
         atlas_path=str(cohort / "atlas.nii.gz"), window_frames=WINDOW, window_stride=8)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("id")
    assert predictions.loc[["run_npy", "run_nifti"], "predicted_age"].notna().all()
    assert np.isnan(predictions.loc["too_short", "predicted_age"])
    assert "short.npy" in predictions.loc["too_short", "error"] and "frames" in predictions.loc["too_short", "error"]
    assert predictions.loc["run_nifti", "brain_age_gap"] == pytest.approx(
        predictions.loc["run_nifti", "predicted_age"] - 70.0)
