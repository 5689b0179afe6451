"""End to end: the stsb bundle on tiny generated sentence pairs (train -> evaluate), other methods, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow, verify_metadata

from _bundle_runs import bundle_configs, one_torch_thread, run_workflow  # noqa: F401 (autouse fixture)
from conftest import BUNDLES
from supremix_med.demo.stsb import generate_demo
from supremix_med.data.sources.text_pairs import EMBEDDINGS_FILE, VOCAB_FILE, Vocabulary

BUNDLE = BUNDLES / "stsb"
TINY = {"pretrain_epochs": 1, "finetune_epochs": 2, "batch_size": 16, "network_config#hidden_size": 4}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """48/16/16 generated pairs and their 16-d word vectors (the demo overlay's file name)."""
    folder = tmp_path_factory.mktemp("stsb_demo")
    generate_demo(folder, (48, 16, 16), seed=0, dim=16)
    return folder


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> Path:
    """One SupReMix train.json + demo.json run; returns its output_dir."""
    out = tmp_path_factory.mktemp("stsb_run") / "supremix"
    run_workflow(bundle_configs(BUNDLE, "train", "demo"), dataset_dir=str(demo_dir), output_dir=str(out),
                 method="supremix", **TINY)
    return out


def test_train_writes_every_output(trained, demo_dir):
    models = trained / "models"
    for name in ("model.pt", "model_final.pt", "pretrained_encoder.pt", "model_config.json", VOCAB_FILE,
                 EMBEDDINGS_FILE):
        assert (models / name).is_file(), name
    vocabulary = Vocabulary.load(models / VOCAB_FILE)
    assert {"the", "big", "large", "."} <= set(vocabulary.words)
    state = torch.load(models / "model.pt", weights_only=True)
    assert state["encoder.embedding.weight"].shape == (len(vocabulary), 16)
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("mae", "mse", "gm", "pearson_r", "spearman_rho", "baseline_mae"):
        assert key in metrics
    assert metrics["n"] == 16 and metrics["method"] == "supremix" and metrics["linear_probe"] is True
    assert set(metrics["shots"]) == {"many", "medium", "few", "rule"}
    predictions = pd.read_csv(trained / "predictions.csv")
    assert list(predictions.columns) == ["id", "score", "predicted_score"]
    assert predictions["predicted_score"].notna().all()


def test_evaluate_overlay_uses_the_saved_vocabulary(trained, demo_dir):
    run_workflow(bundle_configs(BUNDLE, "train", "demo", "evaluate"), dataset_dir=str(demo_dir),
                 output_dir=str(trained), batch_size=16)
    evaluated = json.loads((trained / "eval" / "metrics.json").read_text())
    assert evaluated["mae"] == pytest.approx(json.loads((trained / "metrics.json").read_text())["mae"], rel=1e-5)


@pytest.mark.parametrize("method,probe", [("vanilla", False), ("simcse", True), ("mixsupcon", True)])
def test_vanilla_trains_end_to_end_and_the_text_baselines_pretrain(method, probe, demo_dir, tmp_path):
    run_workflow(bundle_configs(BUNDLE, "train", "demo"), dataset_dir=str(demo_dir), output_dir=str(tmp_path),
                 method=method, **{**TINY, "finetune_epochs": 1})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["linear_probe"] is probe
    assert (tmp_path / "models" / "pretrained_encoder.pt").is_file() == (method != "vanilla")


def test_metadata():
    verify_metadata(meta_file=str(BUNDLE / "metadata.json"), filepath=str(BUNDLES / "meta_schema.json"))


def test_missing_score_column_names_the_file(demo_dir, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    for name in ("train_new.tsv", "dev_new.tsv", "test_new.tsv", "glove.demo.16d.txt"):
        (bad / name).write_bytes((demo_dir / name).read_bytes())
    train = pd.read_csv(bad / "train_new.tsv", sep="\t").drop(columns="score")
    train.to_csv(bad / "train_new.tsv", sep="\t", index=False)
    workflow = ConfigWorkflow(config_file=bundle_configs(BUNDLE, "train", "demo"), workflow_type="train",
                              dataset_dir=str(bad), output_dir=str(tmp_path / "out"), **TINY)
    workflow.initialize()
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    assert f"{bad / 'train_new.tsv'}: no column(s) ['score']" in str(error.value.__cause__)


def test_inference_predicts_pairs_and_names_bad_rows(trained, tmp_path):
    new = tmp_path / "pairs.tsv"
    new.write_text("sentence1\tsentence2\tscore\n"
                   "The big dog is running quickly in the park .\tThe large puppy is jogging rapidly in the garden .\t5\n"
                   "\tThe cat is here .\t1\n"
                   "The cat is eating .\tA zebra sings .\t\n", encoding="utf-8")
    out = tmp_path / "inference"
    run_workflow(bundle_configs(BUNDLE, "inference"), workflow_type="infer", ckpt_dir=str(trained / "models"),
                 data_file=str(new), output_dir=str(out))
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["id"].tolist() == [0, 1, 2]
    assert predictions["error"].fillna("").tolist() == [
        "", f"{new}: line 3 has an empty 'sentence1' (a row with too few tabs?).", ""]
    assert predictions["predicted_score"].isna().tolist() == [False, True, False]
    assert predictions["score"].isna().tolist() == [False, False, True]
