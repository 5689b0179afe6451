"""supremix_med.inference beyond T1: PET DICOM series folders, X-ray PNG/DICOM, fMRI series, generic QC and writer.

Everything runs on tiny inputs and small output grids (PET 16^3, X-ray 16 x 16) with a linear "network", so the
module takes a few seconds; the T1 bundle end to end is tests/test_inference.py.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from PIL import Image
from pydicom.data import get_testdata_file

from preprocessing import pet, xray
from supremix_med.demo import pet as demo_pet
from supremix_med.inference import (
    FLAGS,
    PredictionWriter,
    PreprocessScan,
    TrainingReference,
    check_fingerprint,
    list_scans,
    named_flags,
    qc_fields,
)
from supremix_med.pipelines import PIPELINES, get_pipeline

PET_PARAMS = {"shape": [16, 16, 16], "spacing_mm": 4.0, "grid": "scan"}
XRAY_PARAMS = {"size": 16}
PET_AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])


def _write_pet(folder: Path, uid: str, level: float = 5000.0) -> Path:
    """A 12 x 12 x 8 PET series of activity ``level`` Bq/ml (plus a gradient) with consistent SUV tags."""
    volume = level * (1.0 + np.linspace(0.0, 1.0, 12 * 12 * 8).reshape(12, 12, 8)).astype(np.float32)
    header = demo_pet.pet_header(weight_kg=70.0, dose_bq=370e6, injection=datetime(2024, 3, 1, 9),
                                 series_start=datetime(2024, 3, 1, 10))
    demo_pet.write_pet_series(folder, volume, PET_AFFINE, header, uid, file_names=[f"{uid}_{k}.dcm" for k in range(8)])
    return folder


@pytest.fixture(scope="module")
def pet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sub-a/pet/*.dcm and sub-b/pet/*.dcm (series), sub-c/pet.nii.gz (NIfTI SUV), sub-d/pet (two series)."""
    root = tmp_path_factory.mktemp("pet")
    _write_pet(root / "sub-a" / "pet", "1.2.3.1")
    _write_pet(root / "sub-b" / "pet", "1.2.3.2", level=8000.0)
    (root / "sub-c").mkdir()
    nib.save(nib.Nifti1Image(np.random.default_rng(0).uniform(1, 9, (12, 12, 8)).astype(np.float32), PET_AFFINE),
             root / "sub-c" / "pet.nii.gz")
    _write_pet(root / "sub-d" / "pet", "1.2.3.4")
    _write_pet(root / "sub-d" / "pet", "1.2.3.5")  # a second series in the same folder: unusable without series_uid
    (root / "sub-a" / "notes.txt").write_text("not a scan")
    return root


@pytest.fixture(scope="module")
def xray_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hand.png (8-bit), IM0001 (a DICOM file without suffix), ct.dcm, broken.png, notes.txt."""
    root = tmp_path_factory.mktemp("xray")
    gradient = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8)
    Image.fromarray(gradient).save(root / "hand.png")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "IM0001")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "ct.dcm")
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not a scan")
    return root


# ------------------------------------------------------------------------------------------------ listing
def test_list_scans_finds_dicom_series_folders_and_nifti(pet_dir):
    items = list_scans(pet_dir, dicom="series")
    assert [item["id"] for item in items] == ["sub-a/pet", "sub-b/pet", "sub-c/pet", "sub-d/pet"]
    assert items[0]["path"] == str(pet_dir / "sub-a" / "pet") and items[2]["path"].endswith("pet.nii.gz")
    assert all(np.isnan(item["label"]) for item in items)
    single = list_scans(pet_dir / "sub-a" / "pet", dicom="series")  # the folder is the series itself
    assert single == [{"id": "pet", "path": str(pet_dir / "sub-a" / "pet"), "label": single[0]["label"]}]


def test_list_scans_finds_pictures_and_dicom_files_by_preamble(xray_dir):
    ids = [item["id"] for item in list_scans(xray_dir, suffixes=xray.IMAGE_SUFFIXES, dicom="files")]
    assert ids == ["IM0001", "broken", "ct", "hand"]
    assert [item["id"] for item in list_scans(xray_dir, suffixes=(".PNG",))] == ["broken", "hand"]


def test_list_scans_says_what_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no \.avi or \.mp4 files or DICOM files under folder"):
        list_scans(tmp_path, suffixes=(".avi", ".mp4"), dicom="files")
    with pytest.raises(ValueError, match=r"dicom must be None or one of \('files', 'series'\), got 'slices'"):
        list_scans(tmp_path, dicom="slices")


def test_list_scans_csv_reads_the_named_target(tmp_path):
    (tmp_path / "clips.csv").write_text("id,path,ef\na,Videos/a.avi,55.5\nb,Videos/b.avi,\n")
    items = list_scans(tmp_path / "clips.csv", target="ef")
    assert items[0] == {"id": "a", "path": str(tmp_path / "Videos" / "a.avi"), "label": 55.5}
    assert np.isnan(items[1]["label"])
    (tmp_path / "bad.csv").write_text("id,path,ef\na,a.avi,high\n")
    with pytest.raises(ValueError, match=r"non-numeric ef on data row\(s\) \[1\]: \['high'\]"):
        list_scans(tmp_path / "bad.csv", target="ef")


# ------------------------------------------------------------------------------------------- preprocessing
def test_pet_series_and_failures_give_the_same_keys(pet_dir):
    transform = PreprocessScan("pet", **PET_PARAMS)
    items = {item["id"]: transform(item) for item in list_scans(pet_dir, dicom="series")}
    expected_keys = {"id", "path", "label", "image", "error", *pet.QC_FIELDS}
    assert all(set(item) == expected_keys for item in items.values())
    good, nifti, mixed = items["sub-a/pet"], items["sub-c/pet"], items["sub-d/pet"]
    assert good["error"] == "" and good["image"].shape == (1, 16, 16, 16) and good["image"].dtype == torch.float32
    assert good["source"] == "dicom" and good["series_uid"] == "1.2.3.1" and good["slices"] == 8
    assert good["suv_factor"] > 0 and good["output_units"] == "SUV" and np.isnan(good["suvr_reference_mean"])
    assert nifti["error"] == "" and nifti["source"] == "nifti" and nifti["series_uid"] == "" and np.isnan(
        nifti["suv_factor"])  # None in the QC record -> the field's default
    assert "holds 2 series" in mixed["error"] and str(pet_dir / "sub-d" / "pet") in mixed["error"]
    assert not mixed["image"].any() and mixed["source"] == "" and mixed["slices"] == 0
    batch = torch.utils.data.default_collate([good, nifti, mixed])
    assert batch["image"].shape == (3, 1, 16, 16, 16) and batch["slices"].tolist() == [8, 8, 0]


def test_xray_failures_name_the_file(xray_dir):
    transform = PreprocessScan("xray", **XRAY_PARAMS)
    good = transform({"id": "hand", "path": str(xray_dir / "hand.png")})
    assert good["error"] == "" and good["image"].shape == (1, 16, 16) and good["format"] == "PNG"
    assert good["inverted"] is False and good["modality"] == ""
    broken = transform({"id": "broken", "path": str(xray_dir / "broken.png")})
    missing = transform({"id": "gone", "path": str(xray_dir / "gone.dcm")})
    assert set(broken) == set(good) == set(missing)
    assert "broken.png" in broken["error"] and "gone.dcm" in missing["error"]


def test_a_message_without_the_path_gets_it_prefixed(monkeypatch, tmp_path):
    def refuse(path, **params):
        raise ValueError("the exposure is constant")

    monkeypatch.setattr(xray, "preprocess_with_qc", refuse)
    item = PreprocessScan("xray", **XRAY_PARAMS)({"path": str(tmp_path / "a.png")})
    assert item["error"] == f"{tmp_path / 'a.png'}: the exposure is constant"


def test_pipeline_without_qc_record_reports_no_qc_fields(tmp_path):
    """fMRI has ``preprocess`` only: its items carry the series and the error, and no QC fields."""
    np.save(tmp_path / "run.npy", np.random.default_rng(0).standard_normal((10, 7)).astype(np.float32))
    transform = PreprocessScan("fmri_parcels", n_parcels=7, frames=8)
    assert qc_fields("fmri_parcels") == {}
    item = transform({"path": str(tmp_path / "run.npy")})
    assert set(item) == {"path", "image", "error"} and item["image"].shape == (7, 8) and item["error"] == ""
    short = PreprocessScan("fmri_parcels", n_parcels=7, frames=20)({"path": str(tmp_path / "run.npy")})
    assert "fewer than the 20 kept" in short["error"] and short["image"].shape == (7, 20)


def test_unknown_pipeline_is_refused_with_the_registered_names():
    with pytest.raises(ValueError, match=r"unknown preprocessing pipeline 'preprocessing.nowhere'; registered .*'t1'"):
        PreprocessScan("preprocessing.nowhere")


def test_registered_module_without_the_pipeline_functions_is_refused(monkeypatch):
    monkeypatch.setitem(PIPELINES, "broken", "supremix_med.io")
    with pytest.raises(ValueError, match="has no preprocess or fingerprint"):
        PreprocessScan("broken")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_registered_pipeline_records_its_own_name(name):
    assert get_pipeline(name).PIPELINE == name


# --------------------------------------------------------------------------------------------- fingerprint
def test_pet_fingerprint_ignores_the_series_choice_and_names_differences(tmp_path, caplog):
    stored = pet.fingerprint(series_uid="1.2.3.1", **PET_PARAMS)
    stored["libraries"]["pydicom"] = "0.0.1"
    (tmp_path / "preprocessing.json").write_text(json.dumps(stored))
    with caplog.at_level(logging.WARNING, logger="supremix_med.inference.scans"):
        current = check_fingerprint(tmp_path / "preprocessing.json", "pet", **PET_PARAMS)
    assert current == pet.fingerprint(**PET_PARAMS) and "libraries.pydicom (model: '0.0.1'" in caplog.text
    with pytest.raises(ValueError, match=r"this code.s pet preprocessing differs .*params.spacing_mm \(model: 4.0, "
                                         r"this code: 2.0\)"):
        check_fingerprint(tmp_path / "preprocessing.json", "pet", shape=[16, 16, 16], grid="scan")
    with pytest.raises(ValueError, match=r"pipeline \(model: 'pet', this code: 'xray'\)"):
        check_fingerprint(tmp_path / "preprocessing.json", "xray")


# ------------------------------------------------------------------------------------------------- writer
def _predict(items: list[dict], transform: PreprocessScan, writer: PredictionWriter) -> pd.DataFrame:
    """Run a linear model (prediction = 10 + mean of the image) through a SupervisedEvaluator with ``writer``."""

    class MeanPlusTen(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return 10.0 + image.flatten(1).mean(1, keepdim=True)

    loader = DataLoader(Dataset(items, transform), batch_size=2, num_workers=0)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=MeanPlusTen(),
                                    val_handlers=[writer], decollate=False)
    evaluator.run()
    return pd.read_csv(writer.output_path)


def test_writer_reports_the_pipelines_qc_and_target(xray_dir, tmp_path):
    items = [{"id": "hand", "path": str(xray_dir / "hand.png"), "label": 12.0},
             {"id": "ct", "path": str(xray_dir / "ct.dcm"), "label": float("nan")},
             {"id": "broken", "path": str(xray_dir / "broken.png"), "label": 30.0}]
    writer = PredictionWriter(tmp_path / "out" / "predictions.csv", target_name="months", pipeline="xray",
                              reference=_reference("months", 0.0, 9.0))
    table = _predict(items, PreprocessScan("xray", **XRAY_PARAMS), writer).set_index("id")
    assert list(table.columns) == ["path", "predicted_months", "months", "months_gap", *xray.QC_FIELDS, *FLAGS,
                                   "qc_flag", "error"]  # no bias correction: no corrected gap
    hand = table.loc["hand"]
    assert hand["predicted_months"] == pytest.approx(10.0, abs=1e-4)  # a z-scored image has mean ~0
    assert hand["months_gap"] == pytest.approx(hand["predicted_months"] - 12.0)
    assert hand["format"] == "PNG" and hand["qc_flag"] == ("months 12 outside the training range [0, 9]; predicted "
                                                           "months 10.0 outside the training range [0, 9]")
    assert table.loc["ct", "format"] == "DICOM" and np.isnan(table.loc["ct", "months_gap"])
    broken = table.loc["broken"]
    assert "broken.png" in broken["error"] and np.isnan(broken["predicted_months"]) and pd.isna(broken["format"])
    assert pd.isna(broken["qc_flag"]) and np.isnan(broken["months_gap"])


def test_writer_flags_qc_limits_of_any_field(pet_dir, tmp_path):
    items = list_scans(pet_dir, dicom="series")[:2]
    writer = PredictionWriter(tmp_path / "predictions.csv", qc_limits={"slices": (9, None)},
                              pipeline="pet")
    table = _predict(items, PreprocessScan("pet", **PET_PARAMS), writer)
    assert list(table["qc_flag"]) == ["slices 8 below 9"] * 2 and list(table["source"]) == ["dicom"] * 2
    with pytest.raises(ValueError, match=r"qc_limits name \['fps'\], which are not QC fields"):
        PredictionWriter(tmp_path / "p.csv", qc_limits={"fps": (1.0, None)}, pipeline="pet")


def _reference(target: str, low: float, high: float) -> TrainingReference:
    """A training reference with a training range and validation gaps too wide to flag any gap."""
    return TrainingReference(target, [low, high], 10, {"mean": 0.0, "sd": 100.0, "n": 10, "corrected": False})


@pytest.mark.parametrize("arguments, message", [
    ({"plausible_range": (9.0, 1.0)}, r"plausible_range must be \(low, high\) with low < high, got \(9.0, 1.0\)"),
    ({"plausible_range": (None, 1.0)}, r"plausible_range must be"),
    ({"qc_limits": {"x": 0.5}}, r"qc_limits\['x'\] must be \(low, high\) .*None for no bound"),
    ({"qc_limits": {"x": (2.0, 1.0)}}, r"qc_limits\['x'\] must be"),
])
def test_flags_reject_malformed_ranges(arguments, message):
    with pytest.raises(ValueError, match=message):
        named_flags(pd.DataFrame({"predicted_age": [1.0], "x": [1.0]}), **arguments)


def test_flags_upper_limit_and_target_name():
    table = pd.DataFrame({"predicted_ef": [50.0, 99.0], "fps": [120.0, 30.0]})
    flags = named_flags(table, _reference("ef", 20.0, 80.0), qc_limits={"fps": (None, 100)})
    assert flags["qc_flag"].tolist() == ["fps 120 above 100", "predicted ef 99.0 outside the training range [20, 80]"]
    assert flags["qc_outside_limits"].tolist() == [True, False]
