"""End to end: the xray_boneage bundle on a tiny synthetic hand cohort (train -> infer, evaluate, bundle tools), image
only and with sex as a covariate."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import BUNDLES
from preprocessing import xray
from supremix_med.data.cache import build_cache
from supremix_med.demo.xray import generate_cohort

BUNDLE = BUNDLES / "xray_boneage"
SIZE = 64  # the tiny cohort is cached at 64 x 64 pixels
TINY = {
    "pretrain_epochs": 1,
    "finetune_epochs": 1,
    "batch_size": 4,
    "num_workers": 0,
    "network_config": {"encoder": "resnet50_2d", "in_channels": 1, "widen_factor": 0.125, "projection_dim": 16,
                       "n_targets": 1},
}


def _configs(*names: str) -> list[str]:
    return [str(BUNDLE / f"{name}.json") for name in names]


def _run(configs: list[str], workflow_type: str = "train", **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(config_file=configs, workflow_type=workflow_type, **override)
    workflow.initialize()
    assert not workflow.check_properties(), workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return workflow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """14 synthetic hand radiographs (PNG) with manifest.csv: 8 train, 2 val, 2 test, 2 never cached."""
    folder = tmp_path_factory.mktemp("xray_cohort")
    manifest = generate_cohort(folder, n_subjects=14, seed=4)
    manifest["split"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2 + ["new"] * 2
    manifest.to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def cache(cohort, tmp_path_factory) -> Path:
    """The cohort's first 12 radiographs preprocessed by preprocessing.xray at 64 x 64 into a cache."""
    manifest = pd.read_csv(cohort / "manifest.csv")
    manifest = manifest[manifest["split"] != "new"].assign(path=lambda m: [str(cohort / p) for p in m["path"]])
    folder = tmp_path_factory.mktemp("xray_cache") / "cache"
    build_cache(manifest, folder, preprocess=functools.partial(xray.preprocess, size=SIZE),
                fingerprint=xray.fingerprint(size=SIZE), progress=False, stratify=None,
                sample_shape=(1, SIZE, SIZE))
    return folder


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> Path:
    """One SupReMix train.json + demo.json run on the tiny cache; returns its output_dir."""
    out = tmp_path_factory.mktemp("xray_run") / "supremix"
    _run(_configs("train", "demo"), dataset_dir=str(cache), output_dir=str(out), **TINY)
    return out


def test_train_writes_every_output(trained):
    models = trained / "models"
    for name in ("model.pt", "model_final.pt", "pretrained_encoder.pt", "model_config.json", "preprocessing.json"):
        assert (models / name).is_file(), name
    assert not (models / "bias_correction.json").exists()  # bone age has no brain-age bias correction
    assert json.loads((models / "preprocessing.json").read_text())["params"]["size"] == SIZE
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["method"] == "supremix" and metrics["n"] == 2
    for key in ("mae", "mse", "gm", "pearson_r", "baseline_mae"):
        assert key in metrics
    assert metrics["shots"]["rule"] == {"bin_width": 12.0, "many": 100, "few": 20}
    assert sum(metrics["shots"][group]["n"] for group in ("many", "medium", "few")) == 2
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["id", "boneage", "predicted_boneage"]
    assert predictions["predicted_boneage"].notna().all()
    assert (trained / "predictions.png").stat().st_size > 0


def _new_radiographs(cohort: Path, folder: Path) -> Path:
    """A folder of new inputs in every accepted form: PNG, JPEG, a DICOM file without suffix, a broken PNG."""
    folder.mkdir()
    new = pd.read_csv(cohort / "manifest.csv").query("split == 'new'")
    shutil.copy(cohort / new["path"].iloc[0], folder / "child_a.png")
    Image.open(cohort / new["path"].iloc[1]).save(folder / "child_b.jpg", quality=95)
    (folder / "dicom").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "dicom" / "IM0001")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_inference_on_a_folder_of_new_radiographs(trained, cohort, tmp_path):
    folder = _new_radiographs(cohort, tmp_path / "new")
    _run([str(BUNDLE / "inference.json")], workflow_type="infer", dataset_dir=str(folder),
         ckpt_dir=str(trained / "models"), output_dir=str(tmp_path / "out"), num_workers=0)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("id")
    assert sorted(predictions.index) == ["broken", "child_a", "child_b", "dicom/IM0001"]
    assert predictions.loc["dicom/IM0001", "format"] == "DICOM" and predictions.loc["child_b", "format"] != ""
    good = predictions.drop(index="broken")
    assert (good["error"] == "").all() and good["predicted_boneage"].astype(float).notna().all()
    assert str(folder / "broken.png") in predictions.loc["broken", "error"]
    assert predictions.loc["broken", "predicted_boneage"] == ""


def test_inference_on_a_csv_with_known_bone_ages(trained, cohort, tmp_path):
    new = pd.read_csv(cohort / "manifest.csv").query("split == 'new'")
    csv = cohort / "new.csv"
    new[["id", "path", "boneage"]].to_csv(csv, index=False)
    _run([str(BUNDLE / "inference.json")], workflow_type="infer", dataset_dir=str(csv),
         ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), num_workers=0)
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions["id"]) == list(new["id"])
    gap = predictions["predicted_boneage"] - predictions["boneage"]
    pd.testing.assert_series_equal(predictions["boneage_gap"], gap, check_names=False)


def test_evaluate_overlay_reuses_the_stored_model(trained, cache):
    _run(_configs("train", "evaluate"), dataset_dir=str(cache), output_dir=str(trained), num_workers=0,
         batch_size=4)
    evaluated = json.loads((trained / "eval" / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["mae"], rel=1e-5)


def test_vanilla_runs_the_recipe_without_pretraining(cache, tmp_path):
    _run(_configs("train", "demo"), dataset_dir=str(cache), output_dir=str(tmp_path), **{**TINY, "method": "vanilla"})
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "vanilla"
    assert not (tmp_path / "models" / "pretrained_encoder.pt").exists()


def test_monai_bundle_tools(trained, tmp_path):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=_configs("train", "demo"),
                      network_config=TINY["network_config"])
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(trained / "models" / "model.pt"),
                meta_file=meta, config_file=_configs("train", "evaluate"), ckpt_dir=str(trained / "models"))
    assert torch.jit.load(str(exported))(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 1)


@pytest.fixture(scope="module")
def trained_with_sex(cache, tmp_path_factory) -> Path:
    """The same run with ``--covariates "['sex']"``: the regressor also sees sex (M 0, F 1)."""
    out = tmp_path_factory.mktemp("xray_run") / "sex"
    _run(_configs("train", "demo"), dataset_dir=str(cache), output_dir=str(out), covariates=["sex"], **TINY)
    return out


def test_sex_covariate_is_a_model_input_stored_with_the_model(trained_with_sex, cache, tmp_path):
    models = trained_with_sex / "models"
    config = json.loads((models / "model_config.json").read_text())
    assert config["covariates"] == ["sex"]
    head = torch.load(models / "model.pt", weights_only=True)["regressor.weight"]
    assert head.shape == (1, 2048 // 8 + 1)  # resnet50_2d at widen 1/8: 256 image features, then sex
    assert json.loads((trained_with_sex / "metrics.json").read_text())["n"] == 2
    # the evaluate overlay reads the covariate list from the stored model config
    _run(_configs("train", "evaluate"), dataset_dir=str(cache), output_dir=str(trained_with_sex), num_workers=0,
         batch_size=4)
    evaluated = json.loads((trained_with_sex / "eval" / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(json.loads((trained_with_sex / "metrics.json").read_text())["mae"],
                                             rel=1e-5)
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(models / "model.pt"),
                meta_file=str(BUNDLE / "metadata.json"), config_file=_configs("train", "evaluate"),
                ckpt_dir=str(models))
    assert torch.jit.load(str(exported))(torch.zeros(1, 1, SIZE, SIZE), None, torch.ones(1, 1)).shape == (1, 1)


def test_inference_with_sex_from_a_csv_reports_a_bad_sex_per_file(trained_with_sex, cohort, tmp_path):
    new = pd.read_csv(cohort / "manifest.csv").query("split == 'new'")
    rows = new[["id", "path", "sex"]].assign(path=lambda m: [str(cohort / p) for p in m["path"]])
    shutil.copy(rows["path"].iloc[0], tmp_path / "bad_sex.png")
    rows.loc[len(rows) + 100] = ["bad_sex", str(tmp_path / "bad_sex.png"), "X"]
    rows.to_csv(tmp_path / "new.csv", index=False)
    _run([str(BUNDLE / "inference.json")], workflow_type="infer", dataset_dir=str(tmp_path / "new.csv"),
         ckpt_dir=str(trained_with_sex / "models"), output_dir=str(tmp_path / "out"), num_workers=0)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("id")
    assert list(predictions.index) == [*new["id"], "bad_sex"]
    good = predictions.drop(index="bad_sex")
    assert (good["error"] == "").all() and good["predicted_boneage"].astype(float).notna().all()
    error = predictions.loc["bad_sex", "error"]
    assert str(tmp_path / "bad_sex.png") in error and "covariate 'sex'" in error and "'X'" in error
    assert predictions.loc["bad_sex", "predicted_boneage"] == ""
