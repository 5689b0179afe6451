"""The ``supremix-med`` command line: predict on files, folders, manifests and DICOM series; train; exit statuses.

The model is the session's tiny ukb_brainage run (``tiny_run``, trained by ``supremix-med train``); the scans are the
tiny cohort's 1 mm T1 volumes, one of them also written as a DICOM MR series. ``predict`` runs in-process (each
call is a whole inference run: listing, T1 preprocessing, test-time augmentation, predictions.csv, report.html).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import BUNDLES, REPO
from supremix_med.cli import main
from supremix_med.cli.train import train_command
from supremix_med.demo.dicom import write_dicom_series
from supremix_med.inference import FLAGS

FAST = ["--num_workers", "0", "--batch_size", "2"]


@pytest.fixture(scope="module")
def models(tiny_run) -> Path:
    return tiny_run / "models"


@pytest.fixture(scope="module")
def scans(tiny_cohort, tmp_path_factory) -> dict[str, Path]:
    """Two cohort scans (NIfTI), the first also as a DICOM series folder, a folder holding two series, a corrupt
    file, and a manifest with ages."""
    manifest = pd.read_csv(tiny_cohort / "manifest.csv")
    folder = tmp_path_factory.mktemp("scans")
    first, second = (tiny_cohort / p for p in manifest["path"][:2])
    write_dicom_series(first, folder / "dicom_series", description="T1w MPRAGE")
    for name, uid in (("t1", "1.2.826.0.1.1"), ("other", "1.2.826.0.1.2")):
        shutil.copy(first if name == "t1" else second, folder / f"{name}.nii.gz")
        write_dicom_series(folder / f"{name}.nii.gz", folder / "two_series", uid, f"series {name}")
    (folder / "corrupt.nii.gz").write_bytes(first.read_bytes()[:3000])
    rows = [("sub-a", str(first), manifest["age"][0]), ("sub-b", "missing.nii.gz", 70.0)]
    pd.DataFrame(rows, columns=["id", "path", "age"]).to_csv(folder / "manifest.tsv", sep="\t", index=False)
    return {"nifti": first, "other": second, "dicom": folder / "dicom_series", "two_series": folder / "two_series",
            "corrupt": folder / "corrupt.nii.gz", "manifest": folder / "manifest.tsv"}


def predict(*args: str) -> int:
    """Run ``supremix-med predict`` in-process; its exit status."""
    try:
        return main(["predict", *args, *FAST])
    except SystemExit as stop:
        return int(stop.code)


def test_a_nifti_and_a_dicom_series_give_predictions_and_a_report(models, scans, tmp_path, capsys):
    """The issue's "done when": predict --model <models> <a .nii.gz> <a DICOM series folder> --output out/."""
    out = tmp_path / "out"
    assert predict("--model", str(models), str(scans["nifti"]), str(scans["dicom"]), "--output", str(out)) == 0
    table = pd.read_csv(out / "predictions.csv").set_index("id")
    assert list(table.index) == ["T1_brain_to_MNI", "dicom_series"] and table["error"].isna().all()
    assert list(table.columns[:5]) == ["path", "predicted_age", "predicted_age_low", "predicted_age_high",
                                       "predicted_age_spread"]
    # the same scan as NIfTI and as a DICOM series (int16 voxels, LPS geometry) is the same input
    assert table.loc["dicom_series", "predicted_age"] == pytest.approx(table.loc["T1_brain_to_MNI", "predicted_age"],
                                                                      abs=1e-3)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<tr class="scan') == 2 and page.count('<img class="preview"') == 2
    stdout = capsys.readouterr().out
    assert f"predicted 2 of 2 scans (0 failed" in stdout and str(out / "report.html") in stdout


def test_a_folder_a_tsv_manifest_and_strict(models, scans, tmp_path, capsys):
    out = tmp_path / "out"
    status = predict("--model", str(models), str(scans["manifest"]), "--output", str(out))
    table = pd.read_csv(out / "predictions.csv").set_index("id")
    assert status == 0 and list(table.index) == ["sub-a", "sub-b"]
    assert table.loc["sub-a", "brain_age_gap"] == pytest.approx(table.loc["sub-a", "predicted_age"]
                                                                - table.loc["sub-a", "age"])
    assert "not found" in table.loc["sub-b", "error"] and set(FLAGS) <= set(table.columns)
    err = capsys.readouterr().err
    assert "failed: sub-b: " in err and "missing.nii.gz" in err
    assert predict("--model", str(models), str(scans["manifest"]), "--output", str(out), "--strict") == 2
    assert "holds the results of another inference" in capsys.readouterr().err
    assert predict("--model", str(models), str(scans["manifest"]), "--output", str(out), "--strict",
                   "--overwrite") == 1
    assert len(list((out / "previous").iterdir())) == 1


def test_a_folder_of_scans_and_a_csv_manifest(models, scans, tmp_path):
    """A folder gives one row per scan file in it (ids from the file names); a comma-separated manifest gives its
    ids and ages."""
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(scans["nifti"], folder / "first.nii.gz")
    shutil.copy(scans["other"], folder / "second.nii.gz")
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"id": ["sub-c"], "path": [str(scans["nifti"])], "age": [61.5]}).to_csv(manifest, index=False)
    out = tmp_path / "out"
    assert predict("--model", str(models), str(folder), str(manifest), "--output", str(out)) == 0
    table = pd.read_csv(out / "predictions.csv").set_index("id")
    assert sorted(table.index) == ["first", "second", "sub-c"] and table["error"].isna().all()
    assert table.loc["sub-c", "age"] == 61.5 and np.isnan(table.loc["first", "age"])
    assert table.loc["sub-c", "predicted_age"] == pytest.approx(table.loc["first", "predicted_age"], abs=1e-4)


def test_several_inputs_need_unique_ids_and_all_failed_exits_2(models, scans, tmp_path, capsys):
    assert predict("--model", str(models), str(scans["corrupt"]), "--output", str(tmp_path / "out")) == 2
    captured = capsys.readouterr()
    assert "predicted 0 of 1 scans (1 failed" in captured.out and "failed: corrupt: " in captured.err
    assert f"predict: error: {scans['corrupt']}: every one of the 1 inputs failed" in captured.err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["state"] == "failed"
    nested = tmp_path / "a"
    nested.mkdir()
    shutil.copy(scans["nifti"], nested / "T1_brain_to_MNI.nii.gz")
    assert predict("--model", str(models), str(scans["nifti"]), str(nested), "--output", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert re.search(r"^supremix-med predict: error: list_scans: ids must be unique in the inputs .*"
                     r"\['T1_brain_to_MNI'\]", err, re.M) and len(err.strip().splitlines()) == 1


def test_a_folder_of_several_series_needs_series(models, scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict("--model", str(models), str(scans["two_series"]), "--output", str(out)) == 2
    error = pd.read_csv(out / "predictions.csv")["error"][0]
    assert "holds 2 DICOM series" in error and "1.2.826.0.1.1 ('series t1', 182 slices)" in error
    assert "1.2.826.0.1.2 ('series other', 182 slices)" in capsys.readouterr().err
    assert predict("--model", str(models), str(scans["two_series"]), "--series", "1.2.826.0.1.2",
                   "--output", str(out), "--overwrite") == 0
    table = pd.read_csv(out / "predictions.csv")
    assert table["error"].isna().all() and np.isfinite(table["predicted_age"]).all()


def test_an_ensemble_of_model_folders(models, scans, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(models, copy)
    (copy / "bundle.json").unlink()
    out = tmp_path / "out"
    assert predict("--model", str(copy), str(scans["nifti"]), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert "bundle.json does not exist" in err and "name it with --bundle <name>" in err
    assert predict("--model", str(models), "--model", str(copy), "--bundle", "ukb_brainage", str(scans["nifti"]),
                   "--output", str(out)) == 0
    ensemble = pd.read_csv(out / "predictions.csv")
    assert predict("--model", str(models.parent), str(scans["nifti"]), "--output", str(tmp_path / "single")) == 0
    single = pd.read_csv(tmp_path / "single" / "predictions.csv")
    # two identical members: the ensemble's prediction and spread are the model's
    np.testing.assert_allclose(ensemble[["predicted_age", "predicted_age_spread"]],
                               single[["predicted_age", "predicted_age_spread"]], rtol=1e-5)
    assert "Ensemble of 2 models" in (out / "report.html").read_text(encoding="utf-8")


def test_refusals_are_one_line_with_status_2(models, scans, tmp_path, capsys):
    assert predict("--model", str(tmp_path / "nowhere"), str(scans["nifti"]), "--output", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere does not exist" in err[0]
    assert predict("--model", str(models), str(scans["nifti"]), "--series", "1.2", "--bundle", "airfoil",
                   "--output", str(tmp_path)) == 2
    assert "bundle 'airfoil' reads no DICOM series" in capsys.readouterr().err


def test_help_and_unknown_commands(capsys):
    assert main(["--help"]) == 0 and "supremix-med predict --model" in capsys.readouterr().out
    assert main(["fly"]) == 2 and "unknown command 'fly'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0 and "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["compare", "--help"])
    help_text = capsys.readouterr().out
    assert stop.value.code == 0 and help_text.startswith("usage: supremix-med compare") and "examples:" in help_text


def test_train_is_the_bundle_runner_with_absolute_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    command = train_command("ukb_brainage", ["demo"], {"dataset_dir": "cache", "output_dir": "$'x'", "method": "rnc"})
    assert command[:4] == [sys.executable, "-m", "monai.bundle", "run"]
    assert json.loads(command[5].replace("'", '"')) == [str(BUNDLES / "ukb_brainage" / f) for f in
                                                         ("train.json", "demo.json")]
    assert command[6:] == ["--dataset_dir", str(tmp_path / "cache"), "--output_dir", "$'x'", "--method", "rnc"]
    tracked = train_command("airfoil", (), {"tracking": "mlflow", "output_dir": "runs"})
    assert tracked[6:] == ["--output_dir", str(tmp_path / "runs"),
                           "--mlflow_uri", "$supremix_med.engines.sqlite_tracking_uri(@output_dir)"]
    uris = train_command("airfoil", (), {"mlflow_uri": "sqlite:///runs/mlflow.db", "tracking_uri": "sqlite:////abs.db"})
    assert uris[6:] == ["--mlflow_uri", f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
                        "--tracking_uri", "sqlite:////abs.db"]
    assert main(["train", "ukb_brainage", "--dry_run", "--finetune_epochs", "3"]) == 0
    assert "--finetune_epochs 3" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        main(["train", "nope"])
    assert stop.value.code == 2 and "unknown bundle 'nope'; the bundles are ['agedb'" in capsys.readouterr().err


def test_a_refused_training_run_is_one_line_and_debug_shows_the_traceback(tmp_path, capfd):
    """The bundle run's refusal (its own process) reaches the user as one line and status 2; ``--debug`` passes
    SUPREMIX_MED_DEBUG=1 on, so the run shows its traceback."""
    missing = tmp_path / "no_cache"
    with pytest.raises(SystemExit) as stop:
        main(["train", "airfoil", "--dataset_dir", str(missing), "--output_dir", str(tmp_path / "a")])
    errors = [line for line in capfd.readouterr().err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert stop.value.code == 2 and len(errors) == 1 and str(missing) in errors[0], errors
    with pytest.raises(SystemExit) as stop:
        main(["train", "airfoil", "--debug", "--dataset_dir", str(missing), "--output_dir", str(tmp_path / "b")])
    assert stop.value.code == 1 and "Traceback" in capfd.readouterr().err


def test_the_console_script_is_declared():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts == {"supremix-med": "supremix_med.cli:main"}


def test_the_progress_bar_counts_scans_and_failures(capsys):
    from ignite.engine import Engine

    from supremix_med.inference import ScanProgress

    progress = ScanProgress(total=[0, 1, 2], disable=False)
    engine = Engine(lambda engine, batch: None)
    progress.attach(engine)
    engine.run([{"id": ["a", "b"], "error": ["", "unreadable"]}, {"id": ["c"], "error": [""]}])
    assert progress.bar.n == 3 and progress.failed == 1
    assert "3/3" in capsys.readouterr().err
