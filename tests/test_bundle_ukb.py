"""End to end: the ukb_brainage bundle on a tiny synthetic cohort (train -> evaluate -> export -> infer, torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from _bundle_runs import bundle_configs, run_workflow
from conftest import BUNDLES, REPO, TINY_TRAINING
from supremix_med.data.cache import read_cache_qc

BUNDLE = BUNDLES / "ukb_brainage"


def _configs(*names: str) -> list[str]:
    return bundle_configs(BUNDLE, *names)


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    """One SupReMix train.json + demo.json run on the tiny cache (``supremix-med train``); returns its output_dir."""
    return tiny_run


def test_train_writes_every_output(trained):
    models = trained / "models"
    for name in ("model.pt", "model_final.pt", "pretrained_encoder.pt", "model_config.json",
                 "bias_correction.json", "preprocessing.json", "bundle.json", "validation_predictions.csv",
                 "conformal.json", "reference.json", "input_reference.npy"):
        assert (models / name).is_file(), name
    assert json.loads((models / "bundle.json").read_text()) == {"bundle": "ukb_brainage"}
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("mae", "mse", "gm", "pearson_r", "n", "baseline_mae", "mae_corrected"):
        assert key in metrics
    assert metrics["n"] == 2 and metrics["method"] == "supremix"
    # two validation cases are too few for a 90 % interval: unbounded, so it covers both test cases
    assert metrics["conformal"] == {"coverage": 1.0, "coverage_target": 0.9, "n": 2, "mean_width": None,
                                    "score": "normalised", "alpha": 0.1, "n_calibration": 2}
    conformal = json.loads((models / "conformal.json").read_text())
    assert conformal["spread_source"] == {"n_samples": 8, "flip_axes": [0], "max_shift": 2, "seed": 0}
    validation = pd.read_csv(models / "validation_predictions.csv")
    assert list(validation.columns) == ["id", "age", "predicted_age", "predicted_age_spread"] and len(validation) == 2
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["id", "age", "predicted_age", "brain_age_gap", "brain_age_gap_corrected"]
    assert predictions["predicted_age"].notna().all()
    assert (trained / "predictions.png").stat().st_size > 0
    assert any((trained / "tensorboard").rglob("events.out.tfevents*"))
    state = torch.load(models / "model.pt", weights_only=True)
    assert "target_mean" in state and 42 <= float(state["target_mean"]) <= 82


def test_evaluate_overlay_reuses_the_stored_model(trained, tiny_cache):
    run_workflow(_configs("train", "evaluate"), dataset_dir=str(tiny_cache), output_dir=str(trained),
         num_workers=0, batch_size=4)
    evaluated = json.loads((trained / "eval" / "metrics.json").read_text())
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(trained_metrics["mae"], rel=1e-5)


def test_monai_bundle_tools(trained, tmp_path):
    meta = str(BUNDLE / "metadata.json")
    verify_metadata(meta_file=meta, filepath=str(BUNDLES / "meta_schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=_configs("train", "demo"),
                      n=1, any=100)
    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(trained / "models" / "model.pt"),
                meta_file=meta, config_file=_configs("train", "evaluate"), ckpt_dir=str(trained / "models"))
    scripted = torch.jit.load(str(exported))
    assert scripted(torch.zeros(1, 1, 100, 100, 100)).shape == (1, 1)


@pytest.mark.parametrize("method", ["vanilla", "supcon", "rnc", "conr", "mixsupcon"])
def test_every_method_runs_the_recipe(method, tiny_cache, tmp_path):
    run_workflow(_configs("train", "demo"), dataset_dir=str(tiny_cache), output_dir=str(tmp_path), method=method,
         pretrain_epochs=1, finetune_epochs=1, batch_size=4, num_workers=0)
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == method
    assert (tmp_path / "models" / "pretrained_encoder.pt").is_file() == (method != "vanilla")


def test_rows_failing_qc_are_left_out_of_the_run_and_listed(tiny_cache, tmp_path):
    """The cache's QC record travels with the data into training: with the default ``qc_policy`` ("exclude") the
    scan whose registration similarity is below ``--qc_limits`` is left out of its split and listed in the run's
    ``excluded.csv``; ``qc_policy`` "fail" refuses the run instead, naming it."""
    qc = read_cache_qc(tiny_cache).sort_values("registration_similarity")
    worst, runner_up = qc["registration_similarity"].iloc[:2]
    limit = {"registration_similarity": [(worst + runner_up) / 2, None]}
    run_workflow(_configs("train", "demo"), dataset_dir=str(tiny_cache), output_dir=str(tmp_path / "exclude"),
                 method="vanilla", finetune_epochs=1, batch_size=4, num_workers=0, qc_limits=limit)
    excluded = pd.read_csv(tmp_path / "exclude" / "excluded.csv")
    assert list(excluded["id"]) == [qc["id"].iloc[0]] and "registration similarity" in excluded["reason"][0]
    with pytest.raises(RuntimeError) as refused:
        run_workflow(_configs("train", "demo"), dataset_dir=str(tiny_cache), output_dir=str(tmp_path / "fail"),
                     method="vanilla", finetune_epochs=1, batch_size=4, num_workers=0, qc_limits=limit,
                     qc_policy="fail")
    assert qc["id"].iloc[0] in str(refused.value.__cause__)


def test_mlflow_tracking(tiny_cache, tmp_path):
    import mlflow
    run_workflow(_configs("train", "demo"), tracking="mlflow", dataset_dir=str(tiny_cache), output_dir=str(tmp_path),
         method="vanilla", finetune_epochs=1, batch_size=4, num_workers=0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True)
    assert (runs["status"] == "FINISHED").all() and runs["metrics.val_mae"].notna().any()


def test_linear_probe_keeps_the_pretrained_encoder(tiny_cache, tmp_path):
    run_workflow(_configs("train", "demo"), dataset_dir=str(tiny_cache), output_dir=str(tmp_path), linear_probe=True,
                 **TINY_TRAINING)
    pretrained = torch.load(tmp_path / "models" / "pretrained_encoder.pt", weights_only=True)
    final = torch.load(tmp_path / "models" / "model_final.pt", weights_only=True)
    for key, value in pretrained.items():
        torch.testing.assert_close(final[f"encoder.{key}"], value)


def test_inference_on_a_folder_of_scans(trained, tiny_cohort, tmp_path):
    run_workflow([str(BUNDLE / "inference.json")], workflow_type="infer", dataset_dir=str(tiny_cohort / "manifest.csv"),
         ckpt_dir=str(trained / "models"), output_dir=str(tmp_path), num_workers=0)
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == 12
    assert predictions["predicted_age"].notna().all() and predictions["brain_age_gap"].notna().all()
    correction = json.loads((trained / "models" / "bias_correction.json").read_text())
    assert correction["n_fit"] == 2 and not correction["usable"]  # 2 validation subjects: refused, not applied
    assert predictions["brain_age_gap_corrected"].isna().all()


def test_multi_gpu_overlay_under_torchrun_with_two_cpu_processes(tiny_cache, tmp_path):
    configs = _configs("train", "demo", "multi_gpu_train")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "--config_file", str(configs), "--dataset_dir", str(tiny_cache),
               "--output_dir", str(tmp_path), "--pretrain_epochs", "1", "--finetune_epochs", "1",
               "--batch_size", "2", "--num_workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert (tmp_path / "models" / "model.pt").is_file()
