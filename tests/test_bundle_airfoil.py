"""End to end: the airfoil bundle on a tiny generated table (train -> evaluate -> export -> infer), and any CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from _bundle_runs import bundle_configs, run_workflow
from conftest import BUNDLES
from supremix_med.demo.table import TABLE_FILE
from supremix_med.data.sources.tables import AIRFOIL_TARGET, TABLE_INFO_FILE, TableInfo, load_table

BUNDLE = BUNDLES / "airfoil"
TINY = {"pretrain_epochs": 1, "finetune_epochs": 2, "batch_size": 16}
PREDICTED = f"predicted_{AIRFOIL_TARGET}"


def _configs(*names: str) -> list[str]:
    return bundle_configs(BUNDLE, *names)


@pytest.fixture(scope="module")
def trained(table_dir, tmp_path_factory) -> Path:
    """One SupReMix train.json + demo.json run on the tiny table; returns its output_dir."""
    out = tmp_path_factory.mktemp("airfoil_run") / "supremix"
    run_workflow(_configs("train", "demo"), dataset_dir=str(table_dir), output_dir=str(out), method="supremix", **TINY)
    return out


def test_train_writes_every_output(trained, table_dir):
    models = trained / "models"
    for name in ("model.pt", "model_final.pt", "pretrained_encoder.pt", "model_config.json", TABLE_INFO_FILE):
        assert (models / name).is_file(), name
    assert json.loads((models / "model_config.json").read_text())["in_features"] == 5
    assert TableInfo.load(models / TABLE_INFO_FILE) == load_table(table_dir / TABLE_FILE).info
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("mae", "mse", "gm", "pearson_r", "n", "baseline_mae", "shots"):
        assert key in metrics
    assert metrics["n"] == 15 and metrics["method"] == "supremix" and metrics["linear_probe"] is True
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["id", AIRFOIL_TARGET, PREDICTED]
    assert predictions[PREDICTED].notna().all()
    assert (trained / "predictions.png").stat().st_size > 0


def test_evaluate_overlay_reuses_the_stored_model(trained, table_dir):
    exclusions = (trained / "excluded.csv").stat().st_ino
    run_workflow(_configs("train", "demo", "evaluate"), dataset_dir=str(table_dir), output_dir=str(trained), batch_size=16)
    evaluated = json.loads((trained / "eval" / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["mae"], rel=1e-5)
    # its exclusion report goes to its own folder; the training run's stays as training wrote it
    assert (trained / "eval" / "excluded.csv").is_file() and (trained / "excluded.csv").stat().st_ino == exclusions


def test_monai_bundle_tools(trained, table_dir, tmp_path):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=_configs("train", "demo"),
                      dataset_dir=str(table_dir))
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(trained / "models" / "model.pt"),
                meta_file=meta, config_file=_configs("train", "evaluate"), ckpt_dir=str(trained / "models"))
    assert torch.jit.load(str(exported))(torch.zeros(3, 5)).shape == (3, 1)


def test_inference_predicts_rows_and_names_bad_ones(trained, table_dir, tmp_path):
    rows = pd.read_csv(table_dir / TABLE_FILE).head(4).astype(object)
    rows.loc[1, "chord_length"] = "unknown"
    new = tmp_path / "new_rows.csv"
    rows.to_csv(new, index=False)
    out = tmp_path / "inference"
    run_workflow(_configs("inference"), workflow_type="infer", ckpt_dir=str(trained / "models"), data_file=str(new),
         output_dir=str(out))
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["id"].tolist() == [1, 2, 3, 4]
    assert (predictions["path"] == str(new)).all()
    assert predictions["error"].fillna("").tolist() == [
        "", f"{new}: row 2, column 'chord_length': 'unknown' is not a finite number", "", ""]
    assert predictions[PREDICTED].isna().tolist() == [False, True, False, False]
    gap = predictions[PREDICTED] - predictions[AIRFOIL_TARGET]  # the known targets are reported beside
    assert predictions[f"{AIRFOIL_TARGET}_gap"].to_numpy() == pytest.approx(gap.to_numpy(), nan_ok=True)


def test_any_csv_with_its_own_target_column(table_dir, tmp_path):
    renamed = pd.read_csv(table_dir / TABLE_FILE).drop(columns="chord_length")
    renamed.columns = ["f1", "f2", "f3", "f4", "y"]
    data_file = tmp_path / "my_table.csv"
    renamed.to_csv(data_file, index=False)
    out = tmp_path / "vanilla"
    with pytest.raises(RuntimeError) as refused:  # the network is declared, not read from the data
        run_workflow(_configs("train"), data_file=str(data_file), target_column="y", output_dir=str(tmp_path / "x"),
                     method="vanilla", pretrain_epochs=1, finetune_epochs=1, batch_size=16, num_workers=0)
    assert "4 feature columns" in str(refused.value.__cause__) and "--network_config#in_features 4" in str(
        refused.value.__cause__)
    run_workflow(_configs("train"), data_file=str(data_file), target_column="y", output_dir=str(out), method="vanilla",
                 pretrain_epochs=1, finetune_epochs=1, batch_size=16, num_workers=0,
                 **{"network_config#in_features": 4, "label_range": [100.0, 145.0]})
    assert json.loads((out / "models" / "model_config.json").read_text())["in_features"] == 4
    assert not (out / "models" / "pretrained_encoder.pt").exists()
    assert json.loads((out / "metrics.json").read_text())["method"] == "vanilla"
    assert list(pd.read_csv(out / "predictions.csv").columns) == ["id", "y", "predicted_y"]


def test_missing_target_column_names_the_file_and_columns(table_dir, tmp_path):
    workflow = ConfigWorkflow(config_file=_configs("train", "demo"), workflow_type="train",
                              dataset_dir=str(table_dir), output_dir=str(tmp_path), target_column="noise")
    workflow.initialize()
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    cause = str(error.value.__cause__)
    assert f"{table_dir / TABLE_FILE}: no target column 'noise'; the columns are ['frequency'," in cause


def test_conr_as_a_regulariser_trains_end_to_end_and_says_so(table_dir, tmp_path):
    out = tmp_path / "conr_regularizer"
    run_workflow(_configs("train", "demo"), dataset_dir=str(table_dir), output_dir=str(out), method="conr_regularizer",
                 pretrain_epochs=3, finetune_epochs=1, batch_size=16, num_workers=0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "end to end + conr regulariser" and metrics["pretrain_epochs"] == 0
    assert metrics["linear_probe"] is False and not (out / "models" / "pretrained_encoder.pt").exists()
    assert metrics["ordinality"]["pretrained"] is None  # no pre-training phase to measure
    assert -1.0 <= metrics["ordinality"]["finetuned"]["spearman"] <= 1.0
    assert (out / "ordinality_finetuned.png").stat().st_size > 0
