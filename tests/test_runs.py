"""Runs a cluster can trust (issue 9): run.json, refusing to mix runs, --overwrite, atomic model sets, resume after
SIGKILL in either phase, pre-emption signals, progress.json, and two torchrun launchers meeting at one rendezvous.

The airfoil bundle on a 150-row table is the tiny model: a run takes a few seconds. The killed runs are forked from
the test process (:mod:`_interrupt`), so they start without re-importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from _bundle_runs import bundle_configs, one_torch_thread  # noqa: F401 (autouse fixture)
from _interrupt import exit_status_in_fork, kill_after_checkpoint, signal_at_iteration
from conftest import BUNDLES, REPO
from supremix_med.engines import EXIT_INTERRUPTED, RunCheckpoints, check_model_set, publish_model_set
from supremix_med.engines.model_set import file_run_id, save_weights

BUNDLE = BUNDLES / "airfoil"
TINY = {"pretrain_epochs": 2, "finetune_epochs": 2, "batch_size": 16}
WEIGHTS = ("model.pt", "model_final.pt", "pretrained_encoder.pt")


def _workflow(output_dir: Path, table_dir: Path, *names: str, workflow_type: str = "train", **override):
    override = {"dataset_dir": str(table_dir), "output_dir": str(output_dir), **override}
    workflow = ConfigWorkflow(config_file=bundle_configs(BUNDLE, *(names or ("train", "demo"))),
                              workflow_type=workflow_type, **override)
    workflow.initialize()
    return workflow


def train(output_dir: Path, table_dir: Path, *names: str, **override) -> dict:
    """Run the airfoil bundle (train.json + demo.json by default) and return its run.json."""
    workflow = _workflow(output_dir, table_dir, *names, **{**TINY, **override})
    workflow.run()
    workflow.finalize()
    return _json(output_dir / "run.json")


def refusal(output_dir: Path, table_dir: Path, *names: str, **override) -> str:
    """The one-line message with which the run is refused."""
    workflow = _workflow(output_dir, table_dir, *names, **{**TINY, **override})
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    message = str(error.value.__cause__)
    assert "\n" not in message
    return message


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _numbers(node, prefix=""):
    """Numeric leaves of a metrics.json by path."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _numbers(value, f"{prefix}/{key}").items()}
    return {prefix: node} if isinstance(node, (int, float)) and not isinstance(node, bool) else {}


def assert_same_results(run: Path, reference: Path) -> None:
    """The same metrics.json values (within 1e-6) and the same weights in every model file."""
    got, expected = _numbers(_json(run / "metrics.json")), _numbers(_json(reference / "metrics.json"))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, rel=1e-6), key
    for name in WEIGHTS:
        mine = torch.load(run / "models" / name, weights_only=True)
        theirs = torch.load(reference / "models" / name, weights_only=True)
        assert mine.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def reference(table_dir, tmp_path_factory) -> Path:
    """An uninterrupted run: 2 pre-training and 2 fine-tuning epochs, a checkpoint every epoch."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(out, table_dir)
    return out


def test_run_json_progress_and_the_model_set_name_the_run(reference):
    record = _json(reference / "run.json")
    run_id = record["run_id"]
    assert record["state"] == "finished" and record["kind"] == "train" and record["world_size"] == 1
    assert record["config"]["pretrain_epochs"] == 2 and record["config"]["method"] == "supremix"
    assert record["config"]["pretrain"]["trainer"]["_target_"] == "SupervisedTrainer"  # macros resolved
    assert record["fingerprint"]["pipeline"] == "tables" and record["seed"] == 0
    assert record["code"]["supremix_med"] and record["code"]["torch"] == torch.__version__
    assert [s["state"] for s in record["sessions"]] == ["finished"]
    progress = _json(reference / "progress.json")
    assert progress["run_id"] == run_id and progress["phase"] == "finetune"
    assert (progress["epoch"], progress["max_epochs"], progress["estimated_seconds_left"]) == (2, 2, 0)
    assert progress["metric"]["name"] == "val_mae" and progress["metric"]["best"] <= progress["metric"]["last"]
    assert check_model_set(reference / "models") == run_id
    assert {file_run_id(reference / "models" / name) for name in WEIGHTS} == {run_id}
    assert _json(reference / "metrics.json")["run_id"] == run_id
    checkpoints = sorted(p.name for p in (reference / "checkpoints").glob("checkpoint-*.pt"))
    assert checkpoints == ["checkpoint-000003-finetune-epoch1-iteration8.pt",
                           "checkpoint-000004-finetune-epoch2-iteration16.pt"]  # keep_checkpoints 2


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_a_run_killed_at_an_epoch_boundary_resumes_to_the_same_result(phase, reference, table_dir, tmp_path):
    out = tmp_path / "run"

    def killed_run():
        kill_after_checkpoint(phase, epoch=1)
        train(out, table_dir)

    assert exit_status_in_fork(killed_run) == -signal.SIGKILL
    assert _json(out / "run.json")["state"] == "running"
    assert not (out / "models").exists() and not (out / "metrics.json").exists()  # nothing published yet
    record = train(out, table_dir, resume=True)
    assert record["state"] == "finished" and len(record["sessions"]) == 2
    assert f"{phase} epoch 1" in record["sessions"][1]["resumed_from"]
    assert_same_results(out, reference)
    assert check_model_set(out / "models") == record["run_id"]


def test_sigterm_on_the_command_line_checkpoints_and_exits_75_then_resumes(table_dir, tmp_path):
    out = tmp_path / "run"
    bundle = ["run", "--config_file", str(bundle_configs(BUNDLE, "train", "demo")), "--dataset_dir", str(table_dir),
              "--output_dir", str(out), *[str(a) for k, v in TINY.items() for a in (f"--{k}", v)]]
    command = [sys.executable, str(REPO / "tests" / "_interrupt.py"), "signal", "finetune", "3", "SIGTERM", *bundle]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == EXIT_INTERRUPTED, log[-3000:]
    assert "SIGTERM received" in log and "continue with --resume True" in log
    record = _json(out / "run.json")
    assert record["state"] == "interrupted" and record["sessions"][-1]["state"] == "interrupted"
    newest = sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1]
    assert newest.name.endswith("finetune-epoch1-iteration3.pt")  # the iteration that was running
    record = train(out, table_dir, resume=True)
    assert record["state"] == "finished" and "iteration 3" in record["sessions"][1]["resumed_from"]
    assert sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1].name.endswith("epoch2-iteration16.pt")
    assert check_model_set(out / "models") == record["run_id"]


def test_supremix_med_train_passes_sigterm_on_to_the_run(table_dir, tmp_path):
    """``docker stop`` signals the container's first process: ``supremix-med train`` passes SIGTERM on to its bundle
    run, which checkpoints and exits 75, and the front-end exits with the run's status."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "supremix_med.cli", "train", "airfoil", "--overlay", "demo",
               "--dataset_dir", str(table_dir), "--output_dir", str(out), "--method", "vanilla",
               "--pretrain_epochs", "0", "--finetune_epochs", "1000", "--batch_size", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    front = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        for _ in range(1200):  # until the first epoch's checkpoint is written (at most 10 minutes)
            if list((out / "checkpoints").glob("checkpoint-*.pt")) or front.poll() is not None:
                break
            time.sleep(0.5)
        front.send_signal(signal.SIGTERM)
        log, _ = front.communicate(timeout=300)
    finally:
        front.kill()
    assert front.returncode == EXIT_INTERRUPTED, log[-3000:]
    assert "SIGTERM received" in log and _json(out / "run.json")["state"] == "interrupted"


def test_sigusr1_during_pretraining_stops_with_a_checkpoint(table_dir, tmp_path):
    out = tmp_path / "run"

    def signalled_run():
        signal_at_iteration("pretrain", 2, signal.SIGUSR1)
        train(out, table_dir)

    assert exit_status_in_fork(signalled_run) == EXIT_INTERRUPTED
    assert _json(out / "run.json")["state"] == "interrupted"
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*.pt")] == [
        "checkpoint-000001-pretrain-epoch1-iteration2.pt"]
    assert train(out, table_dir, resume=True)["state"] == "finished"


def _files(folder: Path, skip: str | None = None) -> dict[str, int]:
    """Every file under ``folder`` (but the top-level folder ``skip``) by relative path, with its inode: a file moved
    within the file system keeps its inode, and no new file can take the inode of one that still exists."""
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*")
            if p.is_file() and p.relative_to(folder).parts[0] != skip}


def test_a_folder_with_another_run_is_refused_until_overwrite_moves_it_aside(reference, table_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    old = _json(out / "run.json")
    old_files = _files(out)
    assert {"excluded.csv", "ordinality_pretrained.json", "ordinality_pretrained.png", "ordinality_finetuned.json",
            "models/model_set.json", "models/input_reference.npy"} <= old_files.keys()
    message = refusal(out, table_dir)
    assert message.startswith(f"{out} holds another run (run {old['run_id']}, finished")
    assert "--resume True" in message and "--overwrite True" in message
    assert _files(out) == old_files  # the refused run wrote nothing (its data are read once the folder is its own)
    # the stale-model case: a re-run that never validates must report its own model, not the old one
    record = train(out, table_dir, overwrite=True, method="vanilla", pretrain_epochs=0, finetune_epochs=1,
                   val_interval=5)
    assert record["state"] == "finished" and record["run_id"] != old["run_id"]
    moved = Path(record["previous"])
    assert moved.parent == out / "previous" and _json(moved / "run.json")["run_id"] == old["run_id"]
    assert _files(moved) == old_files  # every file of the old run, moved as it was
    new_files = _files(out, skip="previous")
    assert not set(new_files.values()) & set(old_files.values())  # the top level holds only the new run's files
    assert {"run.json", "metrics.json", "excluded.csv", "ordinality_finetuned.json", "models/model.pt"} <= \
        new_files.keys() and not any(name.startswith("ordinality_pretrained") for name in new_files)
    assert (moved / "models" / "model.pt").read_bytes() == (reference / "models" / "model.pt").read_bytes()
    metrics = _json(out / "metrics.json")
    assert metrics["run_id"] == record["run_id"] and metrics["method"] == "vanilla"
    assert metrics["ordinality"]["pretrained"] is None and metrics["ordinality"]["finetuned"]["n_samples"] == 15
    assert check_model_set(out / "models") == record["run_id"] and not (out / "models" / "pretrained_encoder.pt").exists()
    new_weights = torch.load(out / "models" / "model.pt", weights_only=True)
    old_weights = torch.load(moved / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(new_weights[k], old_weights[k]) for k in new_weights)
    trained = _files(out, skip="eval")
    train(out, table_dir, "train", "demo", "evaluate")  # evaluating the published model gives the report's MAE
    assert _json(out / "eval" / "metrics.json")["mae"] == pytest.approx(metrics["mae"], rel=1e-6)
    assert _json(out / "eval" / "run.json")["model_run_id"] == record["run_id"]
    assert (out / "eval" / "excluded.csv").is_file() and _files(out, skip="eval") == trained  # its own folder only


def test_what_resume_and_overwrite_refuse(reference, table_dir, tmp_path):
    both = refusal(tmp_path / "new", table_dir, resume=True, overwrite=True)
    assert both.startswith("--resume True and --overwrite True together: choose one")
    assert refusal(tmp_path / "new", table_dir, resume=True).startswith(
        f"nothing to resume in {tmp_path / 'new'}: it holds no run.json")
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    differing = refusal(out, table_dir, resume=True, learning_rate=0.01, finetune_epochs=3,
                        **{"network_config#hidden#0": 21})
    assert "the config differs in ['learning_rate', 'network_config#hidden#0']" in differing  # epochs may change
    newest = sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1]
    payload = torch.load(newest, weights_only=True)
    torch.save({**payload, "world_size": 2}, newest)
    assert "its checkpoint checkpoint-000004-finetune-epoch2-iteration16.pt was written by 2" in refusal(
        out, table_dir, resume=True)


def test_a_finished_run_resumed_with_more_epochs_trains_them(reference, table_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    record = train(out, table_dir, resume=True, finetune_epochs=3)
    assert record["state"] == "finished" and "finetune epoch 2, iteration 16, phase complete" in \
        record["sessions"][1]["resumed_from"]
    assert sorted((out / "checkpoints").glob("checkpoint-*.pt"))[-1].name == \
        "checkpoint-000005-finetune-epoch3-iteration24.pt"  # the last epoch: its completion
    assert _json(out / "progress.json")["epoch"] == 3 and check_model_set(out / "models") == record["run_id"]
    assert _json(out / "metrics.json")["finetune_epochs"] == 3
    assert record["config"]["finetune_epochs"] == 3 and record["sessions"][1]["changed"] == {"finetune_epochs": [2, 3]}


def test_evaluation_and_inference_never_write_over_earlier_results(reference, table_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    evaluate = ("train", "demo", "evaluate")
    train(out, table_dir, *evaluate)
    assert refusal(out, table_dir, *evaluate).startswith(f"{out / 'eval'} holds the results of another evaluate (run ")
    assert refusal(out, table_dir, *evaluate, resume=True).startswith("--resume True: an evaluate has no checkpoints")
    first = _json(out / "eval" / "run.json")["run_id"]
    train(out, table_dir, *evaluate, overwrite=True)
    record = _json(out / "eval" / "run.json")
    assert record["run_id"] != first and _json(Path(record["previous"]) / "run.json")["run_id"] == first
    assert Path(record["previous"]).parent == out / "eval" / "previous"
    assert sorted(_files(Path(record["previous"]))) == ["excluded.csv", "metrics.json", "predictions.csv",
                                                        "predictions.png", "run.json"]
    predictions = tmp_path / "predictions"
    infer = {"ckpt_dir": str(out / "models"), "data_file": str(table_dir / "demo_table.csv")}
    for attempt in range(2):
        workflow = _workflow(predictions, table_dir, "inference", workflow_type="infer", **infer)
        if attempt == 0:
            workflow.run()
        else:
            with pytest.raises(RuntimeError) as error:
                workflow.run()
            assert str(error.value.__cause__).startswith(f"{predictions} holds the results of another inference")
    record = _json(predictions / "run.json")
    assert record["kind"] == "inference" and record["model_run_id"] == _json(out / "run.json")["run_id"]
    written = _files(predictions)
    assert sorted(written) == ["predictions.csv", "report.html", "run.json"]
    _workflow(predictions, table_dir, "inference", workflow_type="infer", overwrite=True, **infer).run()
    moved = Path(_json(predictions / "run.json")["previous"])
    assert _files(moved) == written and not set(_files(predictions, skip="previous").values()) & set(written.values())


def test_inference_refuses_a_models_folder_that_mixes_runs(reference, table_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(reference / "models", models)
    fingerprint = _json(models / "preprocessing.json")
    (models / "preprocessing.json").write_text(json.dumps({**fingerprint, "run_id": "20240101-000000-abcdef"}))
    workflow = _workflow(tmp_path / "predictions", table_dir, "inference", workflow_type="infer",
                         ckpt_dir=str(models), data_file=str(table_dir / "demo_table.csv"))
    with pytest.raises(RuntimeError) as error:
        workflow.run()
    run_id = _json(reference / "run.json")["run_id"]
    assert str(error.value.__cause__) == (
        f"{models} mixes files of different training runs: model.pt, model_final.pt, pretrained_encoder.pt, "
        f"model_config.json, bundle.json, conformal.json, input_reference.npy, reference.json, "
        f"validation_predictions.csv (run {run_id}); preprocessing.json (run 20240101-000000-abcdef); use the models "
        f"folder of one run as it was published.")
    assert not (tmp_path / "predictions" / "predictions.csv").exists()


def test_a_models_folder_with_a_file_its_run_did_not_publish_is_refused(reference, tmp_path):
    """Files that cannot name their run (NumPy arrays, tables) or do not (calibration, reference) are named by the
    model set's manifest with their sha256."""
    models = tmp_path / "models"
    shutil.copytree(reference / "models", models)
    run_id = check_model_set(models)
    manifest = _json(models / "model_set.json")
    assert manifest["run_id"] == run_id and sorted(manifest["files"]) == sorted(
        p.name for p in (reference / "models").iterdir() if p.name != "model_set.json")
    (models / "input_reference.npy").write_bytes((models / "input_reference.npy").read_bytes()[:-4] + b"\0\0\0\0")
    conformal = _json(models / "conformal.json")
    (models / "conformal.json").write_text(json.dumps({**conformal, "n": conformal["n"] + 1}))
    shutil.copy(models / "reference.json", models / "notes.json")
    with pytest.raises(ValueError) as error:
        check_model_set(models)
    assert str(error.value) == (
        f"{models} mixes files of different training runs: model.pt, model_final.pt, pretrained_encoder.pt, "
        f"model_config.json, preprocessing.json, bundle.json, reference.json, validation_predictions.csv "
        f"(run {run_id}); conformal.json, input_reference.npy (changed since run {run_id} published it); "
        f"notes.json (not in the model set run {run_id} published); use the models folder of one run as it was "
        f"published.")
    for name in ("notes.json", "model_final.pt", "pretrained_encoder.pt"):  # a set may leave out what it publishes
        (models / name).unlink()
    for name in ("input_reference.npy", "conformal.json"):
        shutil.copy(reference / "models" / name, models / name)
    assert check_model_set(models) == run_id


def _publish(folder: Path, run_id: str, die_after: int | None = None) -> None:
    """Publish a three-file model set whose contents name ``run_id``; SIGKILL after ``die_after`` files."""
    written = []

    def writer(name):
        def write(path):
            if name.endswith(".pt"):
                save_weights({"w": torch.full((2,), float(len(written)))}, path, run_id)
            else:
                path.write_text(json.dumps({"run_id": run_id}))
            written.append(name)
            if die_after is not None and len(written) == die_after:
                os.kill(os.getpid(), signal.SIGKILL)
        return write

    publish_model_set(folder, run_id, {name: writer(name) for name in ("model.pt", "model_config.json",
                                                                      "preprocessing.json")})


def test_a_kill_while_publishing_leaves_the_previous_model_set_whole(tmp_path):
    models = tmp_path / "models"
    _publish(models, "run-a")
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    assert exit_status_in_fork(lambda: _publish(models, "run-b", die_after=2)) == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before and check_model_set(models) == "run-a"
    assert (tmp_path / ".models.run-b.partial").is_dir()  # the killed publication's staging folder
    _publish(models, "run-b")
    assert check_model_set(models) == "run-b" and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


def test_the_newest_readable_checkpoint_is_resumed_and_only_the_newest_are_kept(tmp_path, caplog):
    checkpoints = RunCheckpoints(tmp_path, interval=1, keep=2)
    for epoch in (1, 2, 3):
        checkpoints.write({"format": 1, "phase": "finetune", "epoch": epoch, "iteration": 4 * epoch})
    names = [p.name for p in checkpoints.files()]
    assert names == ["checkpoint-000002-finetune-epoch2-iteration8.pt", "checkpoint-000003-finetune-epoch3-iteration12.pt"]
    newest = checkpoints.files()[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a truncated file, as a full disk leaves it
    point = checkpoints.newest()
    assert point.payload["epoch"] == 2
    assert f"checkpoint {newest} cannot be read" in caplog.text
    assert (tmp_path / f"{newest.name}.corrupt").is_file()
    assert checkpoints.write({"format": 1, "phase": "finetune", "epoch": 3, "iteration": 12}).name.startswith(
        "checkpoint-000003-")
    with pytest.raises(ValueError, match="keep_checkpoints must be an integer >= 1, got 0"):
        RunCheckpoints(tmp_path, keep=0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_two_torchrun_launchers_meet_at_one_rendezvous(table_dir, tmp_path):
    """The multi-node recipe on one machine: two launchers of one process each (gloo), one c10d rendezvous."""
    out = tmp_path / "run"
    configs = bundle_configs(BUNDLE, "train", "demo", "multi_gpu_train")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{_free_port()}", "--rdzv_id", "test-run",
               "-m", "monai.bundle", "run", "--config_file", str(configs), "--dataset_dir", str(table_dir),
               "--output_dir", str(out), "--pretrain_epochs", "1", "--finetune_epochs", "1", "--batch_size", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    _launch_two(command, env)
    assert _json(out / "metrics.json")["world_size"] == 2
    record = _json(out / "run.json")
    assert record["world_size"] == 2 and record["state"] == "finished"
    assert check_model_set(out / "models") == record["run_id"]
    # resumed by two launchers again (a new rendezvous): rank 0 decides, every rank loads the checkpoint
    rendezvous = command.index("--rdzv_endpoint") + 1
    command[rendezvous] = f"localhost:{_free_port()}"
    _launch_two([*command, "--resume", "True", "--finetune_epochs", "2"], env)
    record = _json(out / "run.json")
    assert record["state"] == "finished" and "finetune epoch 1" in record["sessions"][1]["resumed_from"]
    assert _json(out / "progress.json")["epoch"] == 2 and check_model_set(out / "models") == record["run_id"]
    # one process cannot resume what two wrote
    alone = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
             *command[command.index("-m", 3):], "--resume", "True", "--finetune_epochs", "3"]
    done = subprocess.run(alone, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode != 0 and "with 1 process(es): its checkpoint" in log, log[-2000:]
    assert _json(out / "run.json")["state"] == "finished"  # the refused attempt left the finished run as it was


def _launch_two(command: list[str], env: dict[str, str]) -> None:
    """Start ``command`` twice (the two launchers of a two-node run) and wait for both to succeed."""
    launchers = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [launcher.communicate(timeout=600)[0] for launcher in launchers]
    for launcher, output in zip(launchers, outputs):
        assert launcher.returncode == 0, output[-3000:]
