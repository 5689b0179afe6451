"""End to end: the pet_brainage bundle on tiny DICOM PET series (cache -> train -> infer), MONAI checks.

The cohort is 10 small series (12 x 12 x 8 voxels of 6 mm) written with pydicom with consistent SUV tags, cached on
a 24^3 grid of 4 mm (``PET_PARAMS``, given to inference too, as its fingerprint check demands); the network is a
1/8-width ResNet-18. The full-size demo is ``bundles/pet_brainage/README.md``'s.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _bundle_runs import bundle_configs, one_torch_thread, run_workflow  # noqa: F401 (autouse fixture)
from conftest import BUNDLES
from monai.bundle import verify_metadata, verify_net_in_out

from preprocessing import pet
from supremix_med.demo import pet as demo_pet
from supremix_med.data.cache import build_cache
from supremix_med.inference import FLAGS

BUNDLE = BUNDLES / "pet_brainage"
TRAIN_DEMO = bundle_configs(BUNDLE, "train", "demo")
INFERENCE = bundle_configs(BUNDLE, "inference")
PET_PARAMS = {"shape": [24, 24, 24], "spacing_mm": 4.0, "grid": "scan"}
AFFINE = np.diag([6.0, 6.0, 6.0, 1.0])
TINY = {"pretrain_epochs": 1, "finetune_epochs": 1, "batch_size": 3, "num_workers": 0,
        "network_config": {"encoder": "resnet18_3d", "widen_factor": 0.125, "projection_dim": 8, "n_targets": 1}}


def _series(folder: Path, index: int, age: float) -> Path:
    """A PET series whose uptake falls with age, as Bq/ml with consistent SUV tags."""
    rng = np.random.default_rng(index)
    suv = (9.0 - 0.05 * (age - 20.0)) * rng.uniform(0.8, 1.2, (12, 12, 8)).astype(np.float32)
    header = demo_pet.pet_header(weight_kg=70.0, dose_bq=370e6, injection=datetime(2024, 3, 1, 9),
                                 series_start=datetime(2024, 3, 1, 10))
    demo_pet.write_pet_series(folder, suv * 1e4, AFFINE, header, f"1.2.826.0.1.{index}")
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """sub-00..sub-09/pet series with manifest.csv (6 train, 2 val, 2 test)."""
    root = tmp_path_factory.mktemp("pet_cohort")
    ages = np.linspace(25.0, 75.0, 10)
    for i, age in enumerate(ages):
        _series(root / f"sub-{i:02d}" / "pet", i, age)
    manifest = pd.DataFrame({"id": [f"sub-{i:02d}" for i in range(10)], "path": [f"sub-{i:02d}/pet" for i in range(10)],
                             "age": ages, "split": ["train", "val", "test", "train", "train"] * 2})
    manifest.to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory) -> Path:
    """The tiny cohort cached with ``PET_PARAMS``."""
    manifest = pd.read_csv(cohort / "manifest.csv")
    manifest["path"] = [str(cohort / p) for p in manifest["path"]]
    folder = tmp_path_factory.mktemp("pet_cache") / "cache"
    build_cache(manifest, folder, functools.partial(pet.preprocess, **PET_PARAMS), pet.fingerprint(**PET_PARAMS),
                progress=False)
    return folder


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    """One SupReMix train.json + demo.json run on the cache; its output_dir."""
    out = tmp_path_factory.mktemp("pet_run") / "supremix"
    run_workflow(TRAIN_DEMO, dataset_dir=str(cache), output_dir=str(out), **TINY)
    return out


def test_train_writes_every_output(trained):
    for name in ("model.pt", "pretrained_encoder.pt", "model_config.json", "bias_correction.json",
                 "preprocessing.json"):
        assert (trained / "models" / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["method"] == "supremix" and "shots" in metrics
    assert {"mae", "baseline_mae", "mae_corrected"} <= metrics.keys()
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns[:4]) == ["id", "age", "predicted_age", "brain_age_gap"]
    assert (trained / "predictions.png").stat().st_size > 0
    assert json.loads((trained / "models" / "preprocessing.json").read_text())["pipeline"] == "pet"


def test_inference_on_series_folders_and_nifti(trained, cohort, tmp_path):
    scans = tmp_path / "scans"
    _series(scans / "new-a" / "pet", 20, 40.0)
    suv = np.random.default_rng(0).uniform(4.0, 8.0, (12, 12, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(suv, AFFINE), scans / "new-b.nii.gz")
    (scans / "broken").mkdir()
    first_slice = min((cohort / "sub-00" / "pet").iterdir())
    (scans / "broken" / "slice.dcm").write_bytes(first_slice.read_bytes()[:300])  # a truncated DICOM file
    out = tmp_path / "out"
    run_workflow(INFERENCE, workflow_type="infer", dataset_dir=str(scans), ckpt_dir=str(trained / "models"),
                 output_dir=str(out), preprocessing_params=PET_PARAMS, num_workers=0)
    table = pd.read_csv(out / "predictions.csv").set_index("id")
    assert list(table.index) == ["broken", "new-a/pet", "new-b"]
    assert list(table.columns) == ["path", "predicted_age", "predicted_age_low", "predicted_age_high",
                                   "predicted_age_spread", *pet.QC_FIELDS, *FLAGS, "qc_flag", "error"]
    assert table.loc["new-a/pet", "source"] == "dicom" and table.loc["new-b", "source"] == "nifti"
    assert table.loc[["new-a/pet", "new-b"], "predicted_age"].notna().all()
    assert str(scans / "broken") in table.loc["broken", "error"] and np.isnan(table.loc["broken", "predicted_age"])


def test_inference_refuses_other_preprocessing(trained, cohort, tmp_path):
    with pytest.raises(RuntimeError) as raised:
        run_workflow(INFERENCE, workflow_type="infer", dataset_dir=str(cohort), ckpt_dir=str(trained / "models"),
                     output_dir=str(tmp_path))  # the bundle's default grid (100^3, 2 mm) is not the cache's
    assert "params.spacing_mm (model: 4.0, this code: 2.0)" in str(raised.value.__cause__)


def test_monai_bundle_tools(trained):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=TRAIN_DEMO, n=1, any=100)


def test_vanilla_method_skips_pretraining(cache, tmp_path):
    run_workflow(TRAIN_DEMO, dataset_dir=str(cache), output_dir=str(tmp_path), **TINY, method="vanilla")
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "vanilla"
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "models" / "pretrained_encoder.pt").exists()
