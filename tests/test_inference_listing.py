"""supremix_med.inference.list_scans given one scan instead of a folder or CSV, and DICOM where a pipeline reads
none (issue 11 §6)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from supremix_med.inference import list_scans


def test_a_single_nifti_file_is_one_scan(tmp_path):
    scan = tmp_path / "sub-01_T1w.nii.gz"
    scan.write_bytes(b"\x1f\x8b not read here")  # binary: read as a CSV it gave "'utf-8' codec can't decode"
    items = list_scans(scan)
    assert len(items) == 1 and math.isnan(items[0].pop("label"))
    assert items == [{"id": "sub-01_T1w", "path": str(scan)}]
    with pytest.raises(ValueError, match=r"covariate\(s\) \['sex'\] per scan, which a single scan file"):
        list_scans(scan, covariates=["sex"])


def test_a_single_dicom_file_is_one_scan_where_the_pipeline_reads_dicom_files(tmp_path):
    scan = tmp_path / "IM0001.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), scan)
    assert [item["id"] for item in list_scans(scan, suffixes=(".png",), dicom="files")] == ["IM0001"]
    with pytest.raises(ValueError) as error:
        list_scans(scan)
    assert str(error.value) == (f"list_scans: {str(scan)!r} is a DICOM file, and this pipeline reads .nii.gz or .nii "
                                "files, not DICOM: convert it first to NIfTI (e.g. with dcm2niix).")
    with pytest.raises(ValueError, match=rf"one DICOM file.*series as the folder holding its slices: give "
                                         rf"{str(tmp_path)!r}"):
        list_scans(scan, dicom="series")


def test_extracted_series_csv_is_a_scan_and_a_list_with_header_is_a_list(tmp_path):
    suffixes = (".nii.gz", ".nii", ".npy", ".csv")
    series = tmp_path / "run1.csv"
    np.savetxt(series, np.random.default_rng(0).standard_normal((4, 20)), delimiter=",")
    assert [item["id"] for item in list_scans(series, suffixes=suffixes)] == ["run1"]
    listing = tmp_path / "runs.csv"
    listing.write_text("id,path,age\nrun1,run1.csv,61\n")
    assert list_scans(listing, suffixes=suffixes) == [{"id": "run1", "path": str(series), "label": 61.0}]


def test_a_binary_file_that_is_no_scan_says_what_was_expected(tmp_path):
    photo = tmp_path / "scan.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"is neither a scan this pipeline reads \(see scan_suffixes\) nor a CSV list "
                                         r"of scans \(id,path\[,age\]\): it is not text"):
        list_scans(photo)


def test_dicom_only_folder_given_to_a_nifti_pipeline_says_so_in_one_line(tmp_path):
    series = tmp_path / "sub-01" / "anat"
    series.mkdir(parents=True)
    for k in range(3):
        shutil.copy(get_testdata_file("MR_small.dcm"), series / f"IM{k:04d}")
    (tmp_path / "README.txt").write_text("scans")
    with pytest.raises(ValueError) as error:
        list_scans(tmp_path)
    message = str(error.value)
    assert message == (f"list_scans: folder {str(tmp_path)!r} holds DICOM files (e.g. 'sub-01/anat/IM0000') but no "
                       ".nii.gz or .nii files, and this pipeline does not read DICOM: convert the scans first to NIfTI "
                       "(e.g. with dcm2niix).")
    assert "\n" not in message
    assert len(list_scans(tmp_path, dicom="series")) == 1  # a pipeline reading series finds it
