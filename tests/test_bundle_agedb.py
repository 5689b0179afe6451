"""End to end: the agedb and imdb_wiki bundles on tiny generated faces (train -> infer, transfer, MONAI checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out
from PIL import Image

from _bundle_runs import bundle_configs, one_torch_thread, run_workflow  # noqa: F401 (autouse fixture)
from conftest import BUNDLES
from supremix_med.demo.faces import generate_faces
from supremix_med.inference import FLAGS

AGEDB, IMDB_WIKI = BUNDLES / "agedb", BUNDLES / "imdb_wiki"
TINY = {
    "pretrain_epochs": 1,
    "finetune_epochs": 1,
    "batch_size": 6,
    "num_workers": 0,
    "image_size": 24,
    "network_config": {"encoder": "resnet", "spatial_dims": 2, "depth": 10, "in_channels": 3, "widen_factor": 0.125,
                       "projection_dim": 16, "n_targets": 1},
}


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """24 generated faces (17 train, 3 val, 4 test) with their DIR split CSV as ``faces.csv`` and ``imdb_wiki.csv``."""
    folder = tmp_path_factory.mktemp("faces")
    generate_faces(folder, n_subjects=24, seed=0, progress=False)
    (folder / "imdb_wiki.csv").write_bytes((folder / "faces.csv").read_bytes())
    return folder


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory) -> Path:
    """One SupReMix agedb train.json + demo.json run on the tiny faces; returns its output_dir."""
    out = tmp_path_factory.mktemp("agedb_run")
    run_workflow(bundle_configs(AGEDB, "train", "demo"), dataset_dir=str(faces), output_dir=str(out), **TINY)
    return out


def test_train_writes_metrics_predictions_and_model(trained):
    models = trained / "models"
    for name in ("model.pt", "model_final.pt", "pretrained_encoder.pt", "model_config.json", "preprocessing.json"):
        assert (models / name).is_file(), name
    fingerprint = json.loads((models / "preprocessing.json").read_text())
    assert fingerprint["pipeline"] == "faces" and fingerprint["output"]["shape"] == [3, 24, 24]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["method"] == "supremix" and metrics["linear_probe"] is True
    assert {"mae", "baseline_mae", "gm", "pearson_r"} <= metrics.keys()
    assert set(metrics["shots"]) == {"many", "medium", "few", "rule"}
    predictions = pd.read_csv(trained / "predictions.csv")
    assert len(predictions) == 4 and predictions["predicted_age"].notna().all()
    assert (trained / "predictions.png").stat().st_size > 0


def test_linear_probe_keeps_the_pretrained_encoder(trained):
    pretrained = torch.load(trained / "models" / "pretrained_encoder.pt", weights_only=True)
    final = torch.load(trained / "models" / "model_final.pt", weights_only=True)
    for key, value in pretrained.items():
        torch.testing.assert_close(final[f"encoder.{key}"], value)


def test_inference_on_a_csv_with_unreadable_and_missing_images(trained, faces, tmp_path):
    table = pd.read_csv(faces / "faces.csv").head(3)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [{"id": f"face{i}", "path": str(faces / p), "age": a} for i, (p, a) in enumerate(zip(table.path, table.age))]
    rows += [{"id": "broken", "path": "broken.jpg", "age": ""}, {"id": "gone", "path": "gone.png", "age": ""}]
    pd.DataFrame(rows).to_csv(tmp_path / "faces.csv", index=False)
    run_workflow([str(AGEDB / "inference.json")], workflow_type="infer", dataset_dir=str(tmp_path / "faces.csv"),
                 ckpt_dir=str(trained / "models"), output_dir=str(tmp_path / "out"), num_workers=0)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False).set_index("id")
    assert list(predictions.columns) == ["path", "predicted_age", "predicted_age_low", "predicted_age_high",
                                         "predicted_age_spread", "age", "age_gap", *FLAGS, "qc_flag", "error"]
    assert (predictions.loc[["face0", "face1", "face2"], "error"] == "").all()
    assert predictions.loc[["face0", "face1", "face2"], "predicted_age"].astype(float).notna().all()
    assert "broken.jpg: cannot read the image (UnidentifiedImageError" in predictions.loc["broken", "error"]
    assert "gone.png: cannot read the image (FileNotFoundError" in predictions.loc["gone", "error"]
    assert predictions.loc["broken", "predicted_age"] == ""


def test_inference_on_a_folder(trained, tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "nested/b.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / name)
    run_workflow([str(AGEDB / "inference.json")], workflow_type="infer", dataset_dir=str(tmp_path),
                 ckpt_dir=str(trained / "models"), output_dir=str(tmp_path / "out"), num_workers=0)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert predictions["id"].tolist() == ["a", "nested/b"] and (predictions["error"] == "").all()


def test_imdb_wiki_probes_the_agedb_encoder_through_the_transfer_overlay(trained, faces, tmp_path):
    run_workflow(bundle_configs(IMDB_WIKI, "train", "demo", "transfer"), dataset_dir=str(faces),
                 output_dir=str(tmp_path), encoder_checkpoint=str(trained / "models" / "pretrained_encoder.pt"),
                 **{**TINY, "pretrain_epochs": 0})
    assert not (tmp_path / "models" / "pretrained_encoder.pt").exists()  # no pre-training of its own
    pretrained = torch.load(trained / "models" / "pretrained_encoder.pt", weights_only=True)
    final = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)
    for key, value in pretrained.items():
        torch.testing.assert_close(final[f"encoder.{key}"], value)


def test_imdb_wiki_vanilla_trains_end_to_end(faces, tmp_path):
    run_workflow(bundle_configs(IMDB_WIKI, "train", "demo"), dataset_dir=str(faces), output_dir=str(tmp_path),
                 method="vanilla", **TINY)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "vanilla" and metrics["linear_probe"] is False and metrics["n"] == 4
    assert not (tmp_path / "models" / "pretrained_encoder.pt").exists()


def test_bad_split_csv_fails_naming_the_file(faces, tmp_path):
    (tmp_path / "imdb_wiki.csv").write_text("age,path,split\n30,missing.png,train\n")
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the dataset's error: "Failed to instantiate ..."
        run_workflow(bundle_configs(IMDB_WIKI, "train"), dataset_dir=str(tmp_path), output_dir=str(tmp_path / "o"),
                     **TINY)
    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    assert f"{tmp_path / 'imdb_wiki.csv'}: 1 image file(s) not found: line 2" in str(cause)


@pytest.mark.parametrize("bundle", [AGEDB, IMDB_WIKI])
def test_monai_bundle_tools(bundle, faces):
    meta = str(bundle / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    # the network's label range comes from the training labels, so the check reads the tiny faces' split file
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=bundle_configs(bundle, "train"),
                      dataset_dir=str(faces), csv_path=str(faces / "faces.csv"))
