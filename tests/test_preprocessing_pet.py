"""Tests of preprocessing.pet (DICOM series reading, SUV, SUVR, output grid, CLI) and the demo PET cohort."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from preprocessing import pet, t1
from supremix_med.demo import pet as demo_pet
from supremix_med.data.cache import array_path, read_cache_info

INJECTION = datetime(2024, 3, 1, 9, 0, 0)
SERIES_START = datetime(2024, 3, 1, 10, 0, 0)  # 60 min after injection
SHAPE = (16, 16, 8)


def _volume(rng: np.random.Generator) -> np.ndarray:
    """Activity (Bq/ml) with a different level per slice so a wrong slice order shows."""
    levels = 1000.0 * (1 + np.arange(SHAPE[2]))
    return (rng.uniform(0.5, 1.0, SHAPE) * levels).astype(np.float32)


def _affine(rotation_deg: float = 0.0, flip_slices: bool = False) -> np.ndarray:
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, :3] = Rotation.from_euler("x", rotation_deg, degrees=True).as_matrix() @ affine[:3, :3]
    affine[:3, 3] = (-10.0, -30.0, 5.0)
    if flip_slices:
        affine[:3, 2] *= -1
    return affine


def _header(**changes: object) -> pydicom.Dataset:
    header = demo_pet.pet_header(weight_kg=70.0, dose_bq=370e6, injection=INJECTION, series_start=SERIES_START)
    for keyword, value in changes.items():
        setattr(header, keyword, value)
    return header


def _write(folder: Path, volume: np.ndarray, affine: np.ndarray, header: pydicom.Dataset | None = None,
           uid: str = "1.2.3.4", shuffle_seed: int | None = 0) -> None:
    """Write a series; with ``shuffle_seed`` the file names and InstanceNumbers are shuffled."""
    n = volume.shape[2]
    rng = np.random.default_rng(shuffle_seed)
    numbers = rng.permutation(n) + 1 if shuffle_seed is not None else None
    names = [f"{uid}_{i:02d}.dcm" for i in rng.permutation(n)] if shuffle_seed is not None else None
    demo_pet.write_pet_series(folder, volume, affine, header or _header(), uid, numbers, names)


# ------------------------------------------------------------------------------------------------ series
@pytest.mark.parametrize("rotation_deg", [0.0, 20.0])
def test_slices_ordered_by_position_not_instance_number(tmp_path: Path, rotation_deg: float) -> None:
    volume, affine = _volume(np.random.default_rng(1)), _affine(rotation_deg)
    _write(tmp_path, volume, affine)
    instance_order = [pydicom.dcmread(p).InstanceNumber for p in sorted(tmp_path.iterdir())]
    assert instance_order != sorted(instance_order)
    series = pet.read_dicom_series(tmp_path)
    np.testing.assert_allclose(series.affine, affine, atol=1e-3)
    np.testing.assert_allclose(series.activity, volume, rtol=1e-4, atol=0.5)
    assert series.slice_spacing_mm == pytest.approx(3.0, abs=1e-3)


def test_geometry_agrees_with_simpleitk(tmp_path: Path) -> None:
    # an independent reader: SimpleITK/GDCM sorts the files itself and reports LPS+ geometry
    volume, affine = _volume(np.random.default_rng(8)), _affine(rotation_deg=-35.0)
    _write(tmp_path, volume, affine)
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    series = pet.read_dicom_series(tmp_path)
    np.testing.assert_allclose(series.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-3)
    np.testing.assert_allclose(series.activity, sitk.GetArrayFromImage(image).T, rtol=1e-4, atol=0.5)


def test_slices_stored_against_the_normal_come_back_flipped(tmp_path: Path) -> None:
    volume, affine = _volume(np.random.default_rng(2)), _affine(flip_slices=True)
    _write(tmp_path, volume, affine)
    series = pet.read_dicom_series(tmp_path)
    # same world mapping: the slice axis now runs along cross(row, column)
    expected_affine = affine.copy()
    expected_affine[:3, 2] *= -1
    expected_affine[:3, 3] = (affine @ [0, 0, SHAPE[2] - 1, 1])[:3]  # the last slice comes first
    np.testing.assert_allclose(series.affine, expected_affine, atol=1e-3)
    np.testing.assert_allclose(series.activity, volume[:, :, ::-1], rtol=1e-4, atol=0.5)


def test_each_slice_uses_its_own_rescale_slope(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(3)) * (10.0 ** np.arange(SHAPE[2]))[None, None, :]
    _write(tmp_path, volume, _affine())
    slopes = {float(pydicom.dcmread(p).RescaleSlope) for p in tmp_path.iterdir()}
    assert len(slopes) == SHAPE[2]
    np.testing.assert_allclose(pet.read_dicom_series(tmp_path).activity, volume, rtol=1e-4)


def test_rescale_slice_applies_slope_and_intercept(tmp_path: Path) -> None:
    _write(tmp_path, _volume(np.random.default_rng(4)), _affine(), shuffle_seed=None)
    ds = pydicom.dcmread(tmp_path / "slice_000.dcm")
    ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-10"
    np.testing.assert_array_equal(pet.rescale_slice(ds), ds.pixel_array * 2.5 - 10)


def test_mixed_series_are_refused_unless_one_is_picked(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(5))
    _write(tmp_path, volume, _affine(), uid="1.2.3.4")
    _write(tmp_path, 2 * volume, _affine(), uid="1.2.3.5")
    with pytest.raises(ValueError, match=r"1\.2\.3\.4.*1\.2\.3\.5") as error:
        pet.read_dicom_series(tmp_path)
    assert str(tmp_path) in str(error.value)
    np.testing.assert_allclose(pet.read_dicom_series(tmp_path, "1.2.3.5").activity, 2 * volume, rtol=1e-4, atol=1)


def test_empty_or_non_dicom_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no DICOM image files"):
        pet.preprocess(tmp_path)
    with pytest.raises(FileNotFoundError, match="PET scan not found"):
        pet.preprocess(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("not a scan")
    with pytest.raises(ValueError, match="no DICOM image files"):
        pet.read_dicom_series(tmp_path)


def test_missing_slice_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, _volume(np.random.default_rng(6)), _affine(), shuffle_seed=None)
    (tmp_path / "slice_003.dcm").unlink()
    with pytest.raises(ValueError, match="slice spacing is not uniform"):
        pet.read_dicom_series(tmp_path)


def test_slices_with_another_pixel_grid_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, _volume(np.random.default_rng(9)), _affine(), shuffle_seed=None)
    ds = pydicom.dcmread(tmp_path / "slice_005.dcm")
    ds.PixelSpacing = ["2.5", "2.1"]
    ds.save_as(tmp_path / "slice_005.dcm")
    with pytest.raises(ValueError, match="slices differ in PixelSpacing"):
        pet.read_dicom_series(tmp_path)


@pytest.mark.parametrize("keyword", pet.RESCALE_TAGS)
@pytest.mark.parametrize("slices", ["all", "one"])
def test_missing_rescale_tag_is_named(tmp_path: Path, keyword: str, slices: str) -> None:
    """Without its slope/intercept a slice's stored integers are not activity: refused, naming file and tag."""
    paths = demo_pet.write_pet_series(tmp_path, _volume(np.random.default_rng(11)), _affine(), _header(), "1.2.3")
    for path in paths if slices == "all" else paths[3:4]:
        ds = pydicom.dcmread(path)
        delattr(ds, keyword)
        ds.save_as(path)
    with pytest.raises(ValueError, match=f"no DICOM tag {keyword}") as error:
        pet.preprocess(tmp_path, grid="scan", shape=(8, 8, 8))
    count = SHAPE[2] if slices == "all" else 1
    assert f"{count} of {SHAPE[2]} slices" in str(error.value)
    assert str(paths[0] if slices == "all" else paths[3]) in str(error.value)
    with pytest.raises(ValueError, match=f"{paths[3]}: missing DICOM tag {keyword}"):
        pet.rescale_slice(pydicom.dcmread(paths[3]))


@pytest.mark.parametrize("keep", ["pixels", "header"])
def test_truncated_slice_is_named(tmp_path: Path, keep: str) -> None:
    """A slice cut short in its pixel data, or before it, is refused with the path (not pydicom's bare message)."""
    paths = demo_pet.write_pet_series(tmp_path, _volume(np.random.default_rng(12)), _affine(), _header(), "1.2.3")
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[:-100] if keep == "pixels" else data[: len(data) // 2 - 300])
    expected = "cannot decode the pixel data" if keep == "pixels" else "truncated or damaged"
    with pytest.raises(ValueError, match=expected) as error:
        pet.preprocess(tmp_path, grid="scan", shape=(8, 8, 8))
    assert str(paths[5]) in str(error.value)


def test_two_acquisitions_in_one_series_are_named(tmp_path: Path) -> None:
    volume = _volume(np.random.default_rng(13))
    _write(tmp_path, volume, _affine(), uid="1.2.3.4")
    later = demo_pet.pet_header(weight_kg=70.0, dose_bq=370e6, injection=INJECTION,
                                series_start=datetime(2024, 3, 1, 10, 30, 0))
    names = [f"late_{k:02d}.dcm" for k in range(SHAPE[2])]
    demo_pet.write_pet_series(tmp_path, 0.8 * volume, _affine(), later, "1.2.3.4", file_names=names)
    with pytest.raises(ValueError) as error:
        pet.read_dicom_series(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}: duplicate slice positions: likely two scans in one series")
    assert "16 slices at 8 distinct positions, 2 slices per position, 2 different AcquisitionTime values" in message


# --------------------------------------------------------------------------------------------------- SUV
def test_suv_factor_by_hand() -> None:
    # 60 min after injecting 370 MBq of F-18 (half-life 6586.2 s) the dose has decayed to
    # 370e6 * 2 ** (-3600 / 6586.2) = 370e6 * 2 ** -0.546597 = 370e6 * 0.684633 = 253.314 MBq;
    # a 70 kg patient gives 70 000 g / 253.314e6 Bq = 2.76337e-4 g/Bq.
    assert pet.suv_factor(_header()) == pytest.approx(2.76337e-4, rel=1e-5)
    # ADMIN: the image is decay-corrected to the injection, no decay in the factor: 70 000 / 370e6
    assert pet.suv_factor(_header(DecayCorrection="ADMIN")) == pytest.approx(1.891892e-4, rel=1e-6)


def test_suv_uses_acquisition_time_when_earlier_than_series_time() -> None:
    header = _header(AcquisitionTime="093000")  # 30 min after injection, series time 10:00
    assert pet.suv_factor(header) == pytest.approx(70_000 / (370e6 * 2 ** (-1800 / 6586.2)), rel=1e-9)
    header = _header(AcquisitionTime="103000")  # later than the series start: the series time is used
    assert pet.suv_factor(header) == pytest.approx(2.76337e-4, rel=1e-5)


def test_suv_fractional_seconds() -> None:
    header = _header(SeriesTime="100000.750000", AcquisitionTime="100000.750000")
    header.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = "20240301090000.250000"
    assert pet.suv_factor(header) == pytest.approx(70_000 / (370e6 * 2 ** (-3600.5 / 6586.2)), rel=1e-9)


@pytest.mark.parametrize("with_start_date", [True, False])
def test_suv_across_midnight(with_start_date: bool) -> None:
    injection, start = datetime(2024, 3, 1, 23, 30, 0), datetime(2024, 3, 2, 0, 30, 0)
    header = demo_pet.pet_header(70.0, 370e6, injection, start)
    if not with_start_date:  # only the time: the injection is on the day before the series
        del header.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    assert pet.suv_factor(header) == pytest.approx(2.76337e-4, rel=1e-5)


@pytest.mark.parametrize(
    "keyword",
    ["PatientWeight", "Units", "DecayCorrection", "SeriesDate", "SeriesTime", "RadiopharmaceuticalInformationSequence",
     "RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime"],
)
def test_missing_suv_tag_is_named(keyword: str) -> None:
    header = _header(AcquisitionTime="")
    drug = header.RadiopharmaceuticalInformationSequence[0]
    if keyword == "RadiopharmaceuticalStartTime":
        del drug.RadiopharmaceuticalStartTime, drug.RadiopharmaceuticalStartDateTime
    elif keyword in drug:
        delattr(drug, keyword)
    else:
        delattr(header, keyword)
    with pytest.raises(ValueError, match=f"missing DICOM tag .*{keyword}"):
        pet.suv_factor(header)


def test_bad_time_value_is_named() -> None:
    invalid = pytest.raises(ValueError, match="SeriesTime '25xx' is not a valid DICOM TM")
    with pytest.warns(UserWarning, match="Invalid value"), invalid:
        pet.suv_factor(_header(SeriesTime="25xx"))
    with pytest.raises(ValueError, match="injection .* is after the series start"):
        pet.suv_factor(_header(SeriesDate="20240229", AcquisitionDate="20240229"))


def test_series_suv_uses_the_first_acquired_slice(tmp_path: Path) -> None:
    # two bed positions: the lower slices (the first in volume order) were acquired 5 min after the upper ones
    volume = np.full(SHAPE, 1000.0, np.float32)
    _write(tmp_path, volume, _affine(), shuffle_seed=None)
    for path in sorted(tmp_path.iterdir())[: SHAPE[2] // 2]:
        ds = pydicom.dcmread(path)
        ds.SeriesTime = ds.AcquisitionTime = "100500"
        ds.save_as(path)
    _, qc = pet.preprocess_with_qc(tmp_path, grid="scan", shape=(8, 8, 8))
    assert qc["suv_factor"] == pytest.approx(2.76337e-4, rel=1e-5)


def test_units_other_than_bqml_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'CNTS'"):
        pet.suv_factor(_header(Units="CNTS"))
    _write(tmp_path, _volume(np.random.default_rng(7)), _affine(), header=_header(Units="GML"))
    with pytest.raises(ValueError, match="'GML'"):
        pet.preprocess(tmp_path)


# ------------------------------------------------------------------------------------------- output grid
def test_known_point_lands_on_the_t1_grid(tmp_path: Path) -> None:
    # output voxel (55, 48, 50) has centre (-99 + 110, -116 + 96, -94 + 100) = (11, -20, 6) mm
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (11.0 - 16, -20.0 - 16, 6.0 - 8)  # input voxel (8, 8, 4) is at (11, -20, 6) mm
    volume = np.full(SHAPE, 100.0, np.float32)
    volume[8, 8, 4] = 5000.0
    _write(tmp_path, volume, affine)
    image, qc = pet.preprocess_with_qc(tmp_path, antialias=False)
    assert image.shape == (1, 100, 100, 100) and image.dtype == np.float32
    assert np.unravel_index(image.argmax(), image.shape) == (0, 55, 48, 50)
    assert image.max() == pytest.approx(5000.0 * qc["suv_factor"], rel=1e-4)
    assert qc["slices"] == SHAPE[2] and qc["units"] == "BQML" and qc["input_spacing_mm"] == [2.0, 2.0, 2.0]
    assert pet.fingerprint()["output"]["first_voxel_centre_mm"] == t1.fingerprint()["output"]["first_voxel_centre_mm"]


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_suvr_divides_by_the_reference_region_mean(tmp_path: Path) -> None:
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = (-39.0, -60.0, -40.0)  # on the output grid's nodes
    suv = np.full((20, 20, 20), 4.0, np.float32)
    suv[:, :, :10] = 2.0
    atlas = np.zeros(suv.shape, np.int16)
    atlas[5:15, 5:15, 2:8] = 3  # inside the SUV 2 half
    atlas[5:15, 5:15, 12:18] = 7
    scan = _nifti(tmp_path / "suv.nii.gz", suv, affine)
    mask = _nifti(tmp_path / "atlas.nii.gz", atlas, affine)
    image, qc = pet.preprocess_with_qc(scan, suvr_mask=mask, suvr_label=3, antialias=False)
    assert qc["suvr_reference_mean"] == pytest.approx(2.0) and qc["output_units"] == "SUVR"
    assert image.max() == pytest.approx(2.0)  # SUV 4 / 2
    bqml = pet.preprocess(scan, suvr_mask=mask, nifti_units="BQML", antialias=False)  # labels 3 and 7: mean 3
    assert bqml.max() == pytest.approx(4.0 / 3.0, rel=1e-5)
    with pytest.raises(ValueError, match="label 5 is empty"):
        pet.preprocess(scan, suvr_mask=mask, suvr_label=5)
    with pytest.raises(ValueError, match="no SUV factor"):
        pet.preprocess(scan, nifti_units="BQML")
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    huge = tmp_path / "huge.nii"
    huge.write_bytes(header.binaryblock + bytes(4) + bytes(4096))
    for arguments in ({"path": huge}, {"path": scan, "suvr_mask": huge}):  # the scan, and the reference mask
        with pytest.raises(ValueError, match=f"{huge}: the header declares shape 30000 x 30000 x 30000"):
            pet.preprocess(**arguments)


def test_params_and_fingerprint() -> None:
    with pytest.raises(ValueError, match="grid must be one of"):
        pet.PETParams(grid="native")
    with pytest.raises(ValueError, match="needs suvr_mask"):
        pet.PETParams(suvr_label=1)
    record = pet.fingerprint(suvr_mask="/data/ref.nii.gz")
    assert json.loads(json.dumps(record)) == record
    assert record["output"]["units"] == "SUVR" and record["output"]["shape"] == [1, 100, 100, 100]


# ------------------------------------------------------------------------------------------ demo and CLI
@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo_pet")
    demo_pet.generate_cohort(folder, n_subjects=3, seed=3, progress=False)
    return folder


def test_demo_series_carries_consistent_suv_tags(demo_cohort: Path) -> None:
    manifest = pd.read_csv(demo_cohort / "manifest.csv")
    assert list(manifest.columns) == ["id", "path", "age", "sex"] and len(manifest) == 3
    series = pet.read_dicom_series(demo_cohort / manifest.path[0])
    suv = series.activity * pet.suv_factor(series.slices[0])
    rng = demo_pet._subject_rng(3, 0)
    age, sex = demo_pet._draw_covariates(rng, (20.0, 80.0))
    demo_pet._acquisition(rng, 0)
    expected = demo_pet.synthesize_suv(rng, age, sex)
    np.testing.assert_allclose(suv, expected, atol=1e-4 * expected.max())
    np.testing.assert_allclose(series.affine, demo_pet.GRID_AFFINE, atol=1e-4)


def test_demo_is_deterministic(demo_cohort: Path, tmp_path: Path) -> None:
    demo_pet.generate_cohort(tmp_path, n_subjects=1, seed=3, progress=False)
    first = sorted((demo_cohort / "sub-0000" / "pet").iterdir())
    again = sorted((tmp_path / "sub-0000" / "pet").iterdir())
    assert [p.name for p in first] == [p.name for p in again]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, again))
    with pytest.raises(ValueError, match="seed"):
        demo_pet.generate_cohort(tmp_path, n_subjects=1, seed=4, progress=False)


def test_cli_builds_a_cache(demo_cohort: Path, tmp_path: Path) -> None:
    mask = np.zeros(demo_pet.GRID_SHAPE, np.uint8)
    mask[14:25, 20:31, 18:29] = 1  # a 44 mm cube around the brain centre
    mask_path = _nifti(tmp_path / "reference.nii.gz", mask, demo_pet.GRID_AFFINE)
    output = tmp_path / "cache"
    pet.main(["--manifest", str(demo_cohort / "manifest.csv"), "--output", str(output), "--suvr_mask", str(mask_path)])
    info = read_cache_info(output)
    assert info.fingerprint["pipeline"] == "pet" and info.fingerprint["output"]["units"] == "SUVR"
    assert info.fingerprint["params"]["suvr_mask"] == str(mask_path)
    cached = pd.read_csv(output / "manifest.csv")
    assert len(cached) == 3
    row = cached.iloc[0]
    sample = np.load(array_path(output, row["split"]), mmap_mode="r")[row["index"]]
    expected = pet.preprocess(demo_cohort / row["path"], suvr_mask=mask_path)
    assert sample.shape == expected.shape == (1, 100, 100, 100)
    np.testing.assert_allclose(sample, expected, rtol=1e-3, atol=1e-3)  # stored as float16
