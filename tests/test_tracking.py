"""Experiment tracking (supremix_med.engines.tracking) of a whole airfoil train.json run, file: and sqlite: stores.

The shared recipe holds one MLflowRun (``--mlflow_uri``), an MLflowLogger on the pre-training trainer, the
fine-tuning trainer and the validator, and the report step after the test evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from _bundle_runs import bundle_configs
from conftest import BUNDLES
from supremix_med.demo.table import generate_table
from supremix_med.engines.tracking import MLflowRun, flat_metrics, sqlite_tracking_uri, tensorboard_report

mlflow = pytest.importorskip("mlflow", reason="mlflow is in the dev extra: pip install -e .[dev]")

TINY = {"pretrain_epochs": 1, "finetune_epochs": 2, "batch_size": 32, "num_workers": 0}
ROWS = 150  # 120 / 15 / 15 rows per split: 3 pre-training (drop_last) and 4 fine-tuning iterations per epoch


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("airfoil_table")
    generate_table(folder, n_rows=ROWS, seed=0)
    return folder


def _train(table_dir: Path, output_dir: Path, tracking_uri: str) -> None:
    workflow = ConfigWorkflow(config_file=bundle_configs(BUNDLES / "airfoil", "train", "demo"),
                              workflow_type="train", dataset_dir=str(table_dir), output_dir=str(output_dir),
                              mlflow_uri=tracking_uri, method="supremix", **TINY)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def _train_from_the_command_line(table_dir: Path, output_dir: Path) -> None:
    """``supremix-med train airfoil --tracking mlflow``: the front-end's whole-run record in <output_dir>."""
    from supremix_med.cli import main

    arguments = [a for k, v in TINY.items() for a in (f"--{k}", str(v))]
    assert main(["train", "airfoil", "--overlay", "demo", "--tracking", "mlflow", "--dataset_dir", str(table_dir),
                 "--output_dir", str(output_dir), "--method", "supremix", *arguments]) == 0


@pytest.fixture(scope="module", params=["sqlite", "file", "command line"])
def trained(request, table_dir, tmp_path_factory) -> tuple[Path, str]:
    """(output_dir, tracking URI) of one tiny tracked train.json run per kind of store, and one started by
    ``supremix-med train --tracking mlflow``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")  # as a fresh shell has it: the run must opt in itself
        out = tmp_path_factory.mktemp(request.param.replace(" ", "_")) / "run"
        if request.param == "command line":
            _train_from_the_command_line(table_dir, out)
            return out, sqlite_tracking_uri(out)
        uri = sqlite_tracking_uri(out) if request.param == "sqlite" else (out / "mlruns").as_uri()
        _train(table_dir, out, uri)
    return out, uri


def test_one_mlflow_run_holds_the_whole_workflow(trained, tmp_path):
    out, uri = trained

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("airfoil")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "supremix_seed0"
    assert run.data.params["method"] == "supremix" and run.data.params["finetune_epochs"] == "2"
    assert run.data.params["linear_probe"] == "true"

    def history(name: str) -> list:
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))

    assert [s for s, _ in history("pretrain_loss")] == [1, 2, 3]
    assert [s for s, _ in history("train_loss")] == list(range(1, 9))
    assert [s for s, _ in history("train_mae")] == [1, 2] and [s for s, _ in history("train_lr")] == [1, 2]
    assert [s for s, _ in history("val_mae")][:2] == [1, 2]  # then the best checkpoint's, for the bias correction
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test_mae"] == pytest.approx(metrics["mae"])
    assert run.data.metrics["test_shots.many.n"] == metrics["shots"]["many"]["n"]

    def artifacts(path: str) -> set[str]:
        return {Path(a.path).name for a in client.list_artifacts(run.info.run_id, path)}

    assert {"metrics.json", "predictions.csv", "predictions.png"} <= artifacts("report")
    assert {"model.pt", "model_config.json"} <= artifacts("model")
    assert artifacts("config") == {"run.json"}  # the resolved config, overrides and all, with the run record
    root = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report/metrics.json",
                                                    tracking_uri=uri, dst_path=str(tmp_path / "download")))
    assert json.loads(root.read_text()) == metrics
    written = {p.relative_to(out.parent).parts[0] for p in out.parent.rglob("*")}
    assert written == {"run"}  # the store and its artifacts live in the run folder


def test_tensorboard_holds_pretraining_loss_and_test_metrics(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = trained[0]
    test = EventAccumulator(str(out / "tensorboard" / "test")).Reload()
    metrics = json.loads((out / "metrics.json").read_text())
    assert test.Scalars("test/mae")[0].value == pytest.approx(metrics["mae"])
    assert "test/shots.few.n" in test.Tags()["scalars"]
    pretrain = EventAccumulator(str(out / "tensorboard" / "pretrain")).Reload()
    assert len(pretrain.Scalars("pretrain_loss")) == 3


def test_tracking_off_does_nothing(tmp_path):
    run = MLflowRun(None)
    assert not run.enabled and run.run_id is None
    run.log_metrics({"a": 1.0})
    run.log_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_workflow_marks_its_run_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    run = MLflowRun(tmp_path / "mlruns", experiment_name="e", params={"nested": {"a": [1, 2]}, "long": "x" * 7000})
    run.log_metrics({"loss": 1.5}, step=3)
    run._fail_if_open()  # what the interpreter's exit does to a run nobody ended
    client = mlflow.MlflowClient(run.tracking_uri)
    assert run.tracking_uri == (tmp_path / "mlruns").as_uri()  # a plain folder is the file store
    stored = client.search_runs([client.get_experiment_by_name("e").experiment_id])[0]
    assert stored.info.status == "FAILED" and stored.data.metrics["loss"] == 1.5
    assert stored.data.params["nested.a"] == "[1, 2]" and len(stored.data.params["long"]) == 6000


def test_flat_metrics_keeps_numbers_only():
    record = {"mae": 2.5, "n": 15, "method": "supremix", "linear_probe": True, "shots": {"many": {"mae": None, "n": 3}}}
    assert flat_metrics(record, "test_") == {"test_mae": 2.5, "test_n": 15.0, "test_shots.many.n": 3.0}


def test_tensorboard_report_needs_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        tensorboard_report(tmp_path)
