"""Brain-age inference bundle (bundles/ukb_brainage/inference.json) and supremix_med.inference.

The bundle runs in-process on a tiny quarter-width model whose target mean is 60 years, over nilearn's MNI152
template (a scan already in MNI space) and broken files: corrupt, 2-D, 4-D, NaN and missing.
"""

from __future__ import annotations

import json
import logging
import shutil
from types import SimpleNamespace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigWorkflow, run
from nilearn.datasets import load_mni152_template

from preprocessing.t1 import fingerprint
from supremix_med.inference import (FLAGS, PredictionWriter, TrainingReference, check_fingerprint, list_scans,
                                    named_flags)
from supremix_med.metrics import BiasCorrection
from supremix_med.networks import build_model

BUNDLE = str(Path(__file__).resolve().parents[1] / "bundles" / "ukb_brainage" / "inference.json")
MODEL_CONFIG = {"encoder": "resnet18_3d", "widen_factor": 0.25, "projection_dim": 8}
MEAN_AGE = 60.0
AGE = 63.5


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """model.pt, model_config.json, bias_correction.json and preprocessing.json of a tiny model."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = build_model(**MODEL_CONFIG).set_target_statistics([MEAN_AGE - 5.0, MEAN_AGE + 5.0])
    torch.save(model.state_dict(), folder / "model.pt")
    (folder / "model_config.json").write_text(json.dumps(MODEL_CONFIG))
    (folder / "preprocessing.json").write_text(json.dumps(fingerprint()))
    ages = np.linspace(45.0, 80.0, 40)  # a usable fit needs MIN_SUBJECTS (30) subjects
    BiasCorrection("beheshti").fit(0.7 * ages + 18.0 + np.sin(ages), ages).save(folder / "bias_correction.json")
    return folder


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory) -> Path:
    """good.nii.gz (MNI152 at 1 mm) and one file for each way a scan can be unusable."""
    folder = tmp_path_factory.mktemp("scans")
    nib.save(load_mni152_template(resolution=1), folder / "good.nii.gz")
    (folder / "corrupt.nii.gz").write_bytes((folder / "good.nii.gz").read_bytes()[:4000])
    rng = np.random.default_rng(0)
    volume = rng.random((16, 16, 16, 3), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume[..., 0, 0], np.eye(4)), folder / "slice.nii.gz")
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "series.nii.gz")
    with_nan = volume[..., 0].copy()
    with_nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(with_nan, np.eye(4)), folder / "nan_voxel.nii")
    return folder


def run_bundle(dataset_dir: Path, ckpt_dir: Path, output_dir: Path, **overrides) -> pd.DataFrame:
    run(config_file=BUNDLE, dataset_dir=str(dataset_dir), ckpt_dir=str(ckpt_dir), output_dir=str(output_dir),
        batch_size=2, **{"num_workers": 0, **overrides})
    return pd.read_csv(output_dir / "predictions.csv")  # empty cells read as NaN


@pytest.fixture(scope="module")
def folder_predictions(scan_dir, model_dir, tmp_path_factory) -> pd.DataFrame:
    return run_bundle(scan_dir, model_dir, tmp_path_factory.mktemp("out_folder"), num_workers=2)


def test_folder_gives_one_row_per_file_with_errors_for_bad_scans(folder_predictions, scan_dir):
    table = folder_predictions.set_index("id")
    assert sorted(table.index) == ["corrupt", "good", "nan_voxel", "series", "slice"]
    assert list(table.columns) == ["path", "predicted_age", "registered", "register_decision",
                                   "registration_similarity", "brain_masked", "non_brain_fraction", *FLAGS,
                                   "qc_flag", "error"]  # no ages known: no gaps
    good = table.loc["good"]
    assert good["path"] == str(scan_dir / "good.nii.gz")
    assert np.isfinite(good["predicted_age"]) and abs(good["predicted_age"] - MEAN_AGE) < 20
    assert pd.isna(good["error"]) and pd.isna(good["qc_flag"])
    assert str(good["registered"]) == "False" and "not registered" in good["register_decision"]
    assert good["registration_similarity"] > 0.99
    expected_errors = {"corrupt": "cannot be read", "slice": "3-D", "series": "3-D", "nan_voxel": "NaN"}
    for name, reason in expected_errors.items():
        row = table.loc[name]
        assert reason in row["error"] and Path(row["path"]).name in row["error"], row["error"]
        assert np.isnan(row["predicted_age"]) and pd.isna(row["registered"])


def test_csv_with_relative_paths_and_ages_gives_gaps(scan_dir, model_dir, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [("sub-a", f"../{scan_dir.name}/good.nii.gz", AGE), ("sub-b", f"../{scan_dir.name}/nan_voxel.nii", 70.0),
            ("sub-c", "missing.nii.gz", None)]
    pd.DataFrame(rows, columns=["id", "path", "age"]).to_csv(lists / "scans.csv", index=False)
    shutil.copytree(scan_dir, tmp_path / scan_dir.name)

    table = run_bundle(lists / "scans.csv", model_dir, tmp_path / "out").set_index("id")

    assert list(table.index) == ["sub-a", "sub-b", "sub-c"]
    assert list(table.columns[:5]) == ["path", "predicted_age", "age", "brain_age_gap", "brain_age_gap_corrected"]
    good = table.loc["sub-a"]
    assert Path(good["path"]).resolve() == (tmp_path / scan_dir.name / "good.nii.gz").resolve()
    assert pd.isna(good["error"]) and good["age"] == AGE
    assert good["brain_age_gap"] == pytest.approx(good["predicted_age"] - AGE)
    correction = BiasCorrection.load(model_dir / "bias_correction.json")
    assert good["brain_age_gap_corrected"] == pytest.approx(
        correction.corrected_gap([good["predicted_age"]], [AGE])[0])
    assert "NaN" in table.loc["sub-b", "error"] and np.isnan(table.loc["sub-b", "brain_age_gap"])
    assert "not found" in table.loc["sub-c", "error"] and np.isnan(table.loc["sub-c", "age"])
    assert json.loads((tmp_path / "out" / "run.json").read_text())["state"] == "finished"  # one scan was predicted


def test_a_run_in_which_every_input_failed_fails(scan_dir, model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("corrupt.nii.gz", "slice.nii.gz"):
        shutil.copy(scan_dir / name, bad)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError) as raised:
        run_bundle(bad, model_dir, out)
    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    assert str(cause).startswith(f"{bad}: every one of the 2 inputs failed, none was predicted (the first: corrupt: ")
    assert str(cause).endswith(f"the error of each input is in the 'error' column of {out / 'predictions.csv'}.")
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["id"]) == ["corrupt", "slice"] and table["error"].notna().all()
    record = json.loads((out / "run.json").read_text())
    assert record["state"] == "failed" and record["sessions"][-1]["state"] == "failed"
    assert record["error"] == f"inference: NothingPredicted: {cause}"


def test_bundle_properties_are_complete(scan_dir, model_dir, tmp_path):
    workflow = ConfigWorkflow(config_file=BUNDLE, workflow_type="infer", dataset_dir=str(scan_dir),
                              ckpt_dir=str(model_dir), output_dir=str(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() == []


def test_fingerprint_mismatch_refuses_to_run(scan_dir, model_dir, tmp_path):
    ckpt = tmp_path / "models"
    shutil.copytree(model_dir, ckpt)
    (ckpt / "preprocessing.json").write_text(json.dumps(fingerprint(spacing_mm=1.5, brain_mask_dilation_mm=2.0)))
    with pytest.raises(RuntimeError) as raised:
        run_bundle(scan_dir, ckpt, tmp_path / "out")
    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    assert "params.spacing_mm (model: 1.5, this code: 2.0)" in str(cause)
    assert "params.brain_mask_dilation_mm" in str(cause) and "output.first_voxel_centre_mm" in str(cause)
    assert not (tmp_path / "out").exists()


def test_check_fingerprint_ignores_register_mode_and_warns_on_libraries(tmp_path, caplog):
    stored = fingerprint(register="always")
    stored["libraries"]["numpy"] = "0.0.1"
    (tmp_path / "preprocessing.json").write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="supremix_med.inference.scans"):
        assert check_fingerprint(tmp_path / "preprocessing.json", register="auto") == fingerprint()
    assert "libraries.numpy (model: '0.0.1'" in caplog.text
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        check_fingerprint(tmp_path / "nowhere.json")


def test_list_scans_folder_is_recursive_with_relative_ids(tmp_path):
    for name in ("b.nii", "a.nii.gz", "1000015/T1/T1.nii.gz", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    items = list_scans(tmp_path)
    assert [item["id"] for item in items] == ["1000015/T1/T1", "a", "b"]
    assert items[1]["path"] == str(tmp_path / "a.nii.gz") and np.isnan(items[1]["label"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .nii.gz or .nii files under folder"):
        list_scans(empty)


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,file\nx,x.nii\n", r"needs columns id,path\[,age\]; missing \['id', 'path'\]"),
        ("id,path\nx,a.nii\nx,b.nii\n", r"ids must be unique .*\['x'\]"),
        ("id,path,age\nx,a.nii,old\ny,b.nii,\n", r"non-numeric age on data row\(s\) \[1\]: \['old'\]"),
        ("id,path\nx,\n,b.nii\n", r"empty id or path on data row\(s\) \[1, 2\]"),
    ],
)
def test_list_scans_rejects_bad_csv(tmp_path, text, message):
    (tmp_path / "scans.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        list_scans(tmp_path / "scans.csv")


def _reference(low: float = 45.0, high: float = 82.0) -> TrainingReference:
    """A training reference with a training range and wide validation gaps (no large_gap flag below 30 years)."""
    return TrainingReference("age", [low, high], 40, {"mean": 0.0, "sd": 10.0, "n": 40, "corrected": False})


def test_qc_flags_name_each_reason():
    table = pd.DataFrame({"predicted_age": [60.0, 90.0, 60.0, 60.0, np.nan],
                          "registration_similarity": [0.9, 0.9, 0.3, np.nan, 0.1], "error": ""})
    flags = named_flags(table, _reference(), qc_limits={"registration_similarity": (0.7, None)})["qc_flag"]
    assert flags[0] == "" and flags[3] == "" and flags[4] == ""  # NaN: not measured / the scan failed
    assert flags[1] == "predicted age 90.0 outside the training range [45, 82]"
    assert flags[2] == "registration similarity 0.3 below 0.7"


def written_frame(writer, ages, predicted) -> pd.DataFrame:
    """``writer.frame()`` after one iteration over scans without QC fields and without errors."""
    n = len(ages)
    state = SimpleNamespace(output={"pred": torch.tensor(predicted).reshape(n, 1), "label": torch.tensor(ages)},
                            batch={"id": [f"s{i}" for i in range(n)], "path": [f"s{i}.nii" for i in range(n)],
                                   "error": [""] * n})
    writer.reset()
    writer.collect(SimpleNamespace(state=state))
    return writer.frame().set_index("id")


def test_known_ages_outside_the_training_or_plausible_range_are_flagged(tmp_path):
    ages = np.linspace(45.0, 82.0, 40)
    correction = BiasCorrection("beheshti").fit(0.7 * ages + 18.0, ages)
    writer = PredictionWriter(tmp_path / "p.csv", correction, pipeline=None, gap_name="brain_age_gap",
                              plausible_range=(0, 120), reference=_reference())
    table = written_frame(writer, [30.0, 999.0, float("inf"), float("nan"), 60.0], [52.0, 60.0, 61.0, 62.0, 63.0])
    assert table.loc["s0", "qc_flag"] == "age 30 outside the training range [45, 82]"
    assert [f for f in FLAGS if table.loc["s0", f]] == ["target_outside_training_range"]
    assert [f for f in FLAGS if table.loc["s1", f]] == ["implausible_target"]
    assert table.loc["s0", "brain_age_gap"] == pytest.approx(22.0)  # computed, extrapolated: flagged
    assert table.loc["s0", "brain_age_gap_corrected"] == pytest.approx(correction.corrected_gap([52.0], [30.0])[0])
    assert table.loc["s1", "qc_flag"] == "implausible age: 999 is outside the plausible range [0, 120] (gap left empty)"
    assert table.loc["s2", "qc_flag"] == "implausible age: inf is not finite (gap left empty)"
    for implausible in ("s1", "s2"):
        assert np.isnan(table.loc[implausible, ["brain_age_gap", "brain_age_gap_corrected"]].astype(float)).all()
    assert table.loc["s3", "qc_flag"] == "" and np.isnan(table.loc["s3", "brain_age_gap"])  # age unknown
    assert table.loc["s4", "qc_flag"] == "" and table.loc["s4", "brain_age_gap"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"plausible_range must be \(low, high\)"):
        PredictionWriter(tmp_path / "p.csv", plausible_range=(120, 0), pipeline=None)


def test_unusable_bias_correction_leaves_corrected_gaps_empty(tmp_path, caplog):
    degenerate = BiasCorrection("beheshti").fit([60.0, 61.0, 60.5, 61.5, 60.2, 60.8], [50, 55, 60, 65, 70, 75])
    with caplog.at_level(logging.WARNING, logger="supremix_med.inference.writer"):
        writer = PredictionWriter(tmp_path / "p.csv", degenerate, pipeline=None)
    assert "bias correction is unusable (fitted on 6 subjects, fewer than 30" in caplog.text
    table = written_frame(writer, [50.0, 70.0], [60.0, 61.0])
    assert table["age_gap"].tolist() == [10.0, -9.0] and table["age_gap_corrected"].isna().all()
