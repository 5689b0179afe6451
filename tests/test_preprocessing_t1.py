"""T1 preprocessing (preprocessing.t1), its CLI, and the UK Biobank manifest helper (preprocessing.ukb)."""

from __future__ import annotations

import gzip
import json
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk

from preprocessing import t1, ukb
from preprocessing.registration import image_from_array, mni152_template, normalised_cross_correlation
from supremix_med.demo.dicom import write_dicom_series

GRID_CENTRE = (np.asarray(t1.T1Params().shape) - 1) / 2.0


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


@pytest.fixture(scope="module")
def mni_file(tmp_path_factory) -> Path:
    """nilearn's MNI152 1 mm template as a .nii.gz file."""
    data, _, affine = mni152_template()
    return _save(tmp_path_factory.mktemp("mni") / "mni152.nii.gz", data, affine)


@pytest.fixture(scope="module")
def mni_result(mni_file) -> tuple[np.ndarray, dict]:
    return t1.preprocess_with_qc(mni_file)


@pytest.fixture(scope="module")
def brain() -> np.ndarray:
    """MNI152 brain mask on the output grid, (X, Y, Z) bool."""
    return t1._template_on_grid(t1.T1Params()).brain


def test_mni_template_is_not_registered_and_centred(mni_result):
    image, qc = mni_result
    assert image.shape == (1, 100, 100, 100) and image.dtype == np.float32
    assert np.isfinite(image).all()
    assert qc["registered"] is False and qc["space"] == "MNI152"
    assert qc["register_decision"].startswith("auto: MNI-like header") and "not registered" in qc["register_decision"]
    assert qc["registration_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert qc["input_shape"] == [197, 233, 189] and qc["input_spacing_mm"] == [1.0, 1.0, 1.0]
    foreground = image[0] != 0
    # the grid is centred on the brain's bounding box; its centre of mass sits 2.5 voxels posterior and
    # 2.25 superior of that
    assert np.abs(ndi.center_of_mass(foreground) - GRID_CENTRE).max() < 3.0
    lows, highs = np.argwhere(foreground).min(axis=0), np.argwhere(foreground).max(axis=0)
    assert lows.min() >= 2 and highs.max() <= 97  # no brain voxel on (or next to) the border


def test_normalisation_is_a_robust_z_score_with_statistics_from_the_brain_core(mni_result):
    """A float64 reference: threshold, clip and moments from the core's foreground, applied in the brain mask."""
    template = t1._template_on_grid(t1.T1Params())  # the template file resamples to exactly template.array
    volume = template.array.astype(np.float64)
    assert template.core.sum() > 0.3 * template.brain.sum() and not (template.core & ~template.brain).any()
    threshold = 0.05 * np.percentile(volume[template.core], 99.5)
    foreground = volume[template.core & (volume > threshold)]
    low, high = np.percentile(foreground, (0.5, 99.5))
    clipped = np.clip(foreground, low, high)
    kept = template.brain & (volume > threshold)
    expected = np.where(kept, (np.minimum(volume, high) - clipped.mean()) / clipped.std(), 0.0)
    np.testing.assert_allclose(mni_result[0][0], expected, atol=1e-4)
    assert not mni_result[0][0][~template.brain].any()


def test_whole_mni_brain_fits_in_the_output_field_of_view():
    """Every 1 mm MNI152 brain-mask voxel (and the whole UKB FSL brain box) lies inside the output grid."""
    _, mask, affine = mni152_template()
    world = nib.affines.apply_affine(affine, np.argwhere(mask))
    output = t1.fingerprint()["output"]
    half = output["spacing_mm"] / 2
    low, high = np.asarray(output["first_voxel_centre_mm"]) - half, np.asarray(output["last_voxel_centre_mm"]) + half
    assert (world.min(axis=0) >= low + 8).all() and (world.max(axis=0) <= high - 8).all()


def test_ukb_fsl_orientation_gives_the_same_image(tmp_path, mni_result):
    """The template stored like UKB's T1_brain_to_MNI (LAS, x flipped) preprocesses to the same array."""
    data, _, affine = mni152_template()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    path = _save(tmp_path / "las.nii.gz", (data[::-1] * 1000).astype(np.int16), affine @ flip)
    image, qc = t1.preprocess_with_qc(path)
    assert qc["input_orientation"] == "LAS" and not qc["registered"]
    np.testing.assert_allclose(image, mni_result[0], atol=0.02)


def _scanner_version(path: Path) -> Path:
    """The template with a fake skull, rotated 15 deg about x and z, shifted (12, -10, 8) mm, stored LPS
    with 1 x 1 x 3 mm voxels: what a scanner might give."""
    data, mask, affine = mni152_template()
    distance = ndi.distance_transform_edt(~mask)
    head = data + 0.9 * ((distance > 5) & (distance < 11))
    moved_to_mni = sitk.Euler3DTransform((0.0, -17.0, 5.0), np.deg2rad(15), 0.0, np.deg2rad(15), (12.0, -10.0, 8.0))
    spacing, size = np.array([1.0, 1.0, 3.0]), np.array([220, 240, 80])
    direction = np.diag([-1.0, -1.0, 1.0])  # LPS
    origin = np.array([0.0, -17.0, 5.0]) - direction @ ((size - 1) * spacing / 2)
    scan = sitk.Resample(
        image_from_array(head.astype(np.float32), affine), size.tolist(), moved_to_mni, sitk.sitkLinear,
        origin.tolist(), spacing.tolist(), direction.ravel().tolist(), 0.0, sitk.sitkFloat32,
    )
    scan_affine = np.eye(4)
    scan_affine[:3, :3] = direction * spacing
    scan_affine[:3, 3] = origin
    return _save(path, (sitk.GetArrayFromImage(scan).T * 800).astype(np.int16), scan_affine)


def test_scanner_space_scan_is_registered(tmp_path, mni_result, brain):
    path = _scanner_version(tmp_path / "scanner.nii.gz")
    registered, qc = t1.preprocess_with_qc(path)
    assert qc["registered"] is True and qc["space"] == "MNI152"
    assert qc["register_decision"].startswith("auto: header is not an MNI152 grid") and "3.0" in qc["register_decision"]
    assert qc["input_orientation"] == "LPS" and qc["input_spacing_mm"] == [1.0, 1.0, 3.0]
    assert qc["registration_similarity"] > 0.9 and qc["mutual_information"] > 0
    assert np.asarray(qc["transform_mni_to_scan"]).shape == (4, 4)
    assert registered.shape == (1, 100, 100, 100) and registered.dtype == np.float32 and np.isfinite(registered).all()
    assert normalised_cross_correlation(registered[0], mni_result[0][0], brain) > 0.9
    # registered or not, the same brain mask: its fake skull is outside the output, and named in the QC
    assert qc["brain_masked"] and not registered[0][~brain].any()
    assert qc["non_brain_fraction"] > t1.NON_BRAIN_LIMIT > mni_result[1]["non_brain_fraction"] == 0.0

    unregistered, never = t1.preprocess_with_qc(path, register="never")
    assert never["registered"] is False and never["space"] == "scanner"
    assert never["register_decision"].startswith("register='never'")
    assert never["registration_similarity"] < 0.5
    assert normalised_cross_correlation(unregistered[0], mni_result[0][0], brain) < 0.5


def test_mni_header_with_misaligned_content_fails_the_similarity_check(tmp_path):
    """An MNI-like header alone does not make ``auto`` skip registration: content shifted by 10 mm scores
    below the threshold (``never`` shows the score without paying for the registration ``auto`` would run)."""
    data, _, affine = mni152_template()
    path = _save(tmp_path / "shifted.nii.gz", np.roll(data, 10, axis=1), affine)
    _, qc = t1.preprocess_with_qc(path, register="never")
    assert qc["space"] == "MNI152" and "MNI-centred grid" in qc["register_decision"]
    assert qc["registration_similarity"] < t1.T1Params().mni_similarity_threshold


def _with_skull(path: Path, data: np.ndarray, affine: np.ndarray, brain: np.ndarray, gap_mm: float) -> Path:
    """``data`` with a synthetic skull and scalp: a shell from ``gap_mm`` to ``gap_mm`` + 10 mm outside ``brain``
    (the CSF and inner table stay dark), 1.5 times as bright as the brain's 99th percentile (fat and marrow)."""
    distance = ndi.distance_transform_edt(~brain, sampling=np.linalg.norm(affine[:3, :3], axis=0))
    shell = (distance > gap_mm) & (distance < gap_mm + 10.0)
    return _save(path, (data + 1.5 * np.percentile(data[brain], 99) * shell).astype(np.float32), affine)


def test_skull_on_and_skull_off_give_one_brain(tmp_path, mni_result, brain):
    """The MNI152 head with a skull 2-12 mm outside its brain: ``auto`` keeps it unregistered (MNI-like) and it
    gets the same mask and normalisation as the skull-stripped template; the QC names the skull."""
    data, mask, affine = mni152_template()
    skull_on, qc = t1.preprocess_with_qc(_with_skull(tmp_path / "head.nii.gz", data, affine, mask, 2.0))
    skull_off, qc_off = mni_result
    assert not qc["registered"] and qc["brain_masked"] and qc_off["brain_masked"]
    assert normalised_cross_correlation(skull_on[0], skull_off[0], brain) >= 0.99
    np.testing.assert_array_equal(skull_on != 0, skull_off != 0)  # the same voxels: the skull is not in the input
    assert not skull_on[0][~brain].any()
    assert qc_off["non_brain_fraction"] == 0.0 and qc["non_brain_fraction"] > 0.3 > t1.NON_BRAIN_LIMIT
    # the former 4 mm dilated mask let the skull in: 3 % more non-zero voxels, as reported for a real head
    dilated = t1.preprocess(tmp_path / "head.nii.gz", brain_mask_dilation_mm=4.0)
    assert np.mean(dilated != 0) > np.mean(skull_off != 0) + 0.02


def _pooled(image: np.ndarray) -> np.ndarray:
    """(1, 100, 100, 100) -> the 1000 means of its 10^3-voxel blocks, float64."""
    return np.asarray(image, np.float64).reshape(10, 10, 10, 10, 10, 10).mean(axis=(1, 3, 5)).ravel()


def test_skull_does_not_move_the_prediction_of_a_fitted_model(tiny_cohort, tiny_cache, tmp_path):
    """A tiny brain-age model (ridge regression on 10^3-voxel block means, fitted to the 10 train/val scans of
    the cached demo cohort) predicts a held-out subject within a year whether or not its head has a skull
    (4-14 mm outside its own brain: the CSF and inner table of the skull stay dark)."""
    cached = pd.read_csv(tiny_cache / "manifest.csv", dtype={"id": str})
    features, ages = [], []
    for split in ("train", "val"):
        array = np.load(tiny_cache / f"{split}.npy", mmap_mode="r")
        rows = cached[cached["split"] == split]
        features += [_pooled(array[i]) for i in rows["index"]]
        ages += rows["age"].tolist()
    features, ages = np.asarray(features), np.asarray(ages)
    centre = features.mean(axis=0)
    centred = features - centre
    weights = centred.T @ np.linalg.solve(centred @ centred.T + np.eye(len(ages)), ages - ages.mean())

    def predict(path: Path, **params) -> float:
        return float(ages.mean() + (_pooled(t1.preprocess(path, register="never", **params)) - centre) @ weights)

    subject = cached[cached["split"] == "test"].iloc[0]
    image = nib.load(tiny_cohort / subject["path"])
    data = image.get_fdata(dtype=np.float32)
    head = _with_skull(tmp_path / "head.nii.gz", data, image.affine, data > 0, 4.0)
    stripped = predict(tiny_cohort / subject["path"])
    assert abs(stripped - subject["age"]) < 10  # the model is a brain-age model, not noise
    assert abs(predict(head) - stripped) < 1.0
    # with the former 4 mm dilated mask the skull moved the prediction by years
    assert abs(predict(head, brain_mask_dilation_mm=4.0) - predict(tiny_cohort / subject["path"],
                                                                   brain_mask_dilation_mm=4.0)) > 1.0


def _small_scan(path: Path, rng: np.random.Generator, spacing: float = 8.0) -> Path:
    data = ndi.gaussian_filter(rng.normal(size=(24, 24, 24)), 2).astype(np.float32)
    data[6:18, 6:18, 6:18] += 3.0
    return _save(path, data, np.diag([spacing, spacing, spacing, 1.0]))


def test_small_non_mni_scan_under_never_is_scan_centred(tmp_path):
    path = _small_scan(tmp_path / "small.nii", np.random.default_rng(0))
    image, qc = t1.preprocess_with_qc(path, register="never")
    assert qc["space"] == "scanner" and "scan-centred grid" in qc["register_decision"]
    # no brain mask can be placed outside MNI space: named, not silent
    assert qc["brain_masked"] is False and qc["register_decision"].endswith("; no brain mask (not in MNI space)")
    assert qc["non_brain_fraction"] is None
    assert image.shape == (1, 100, 100, 100) and np.isfinite(image).all()
    # the 192 mm field of view is centred in the 200 mm grid
    foreground = np.argwhere(image[0] != 0)
    assert np.abs((foreground.min(axis=0) + foreground.max(axis=0)) / 2 - GRID_CENTRE).max() <= 1.0


def test_four_d_image_with_one_volume_is_accepted(tmp_path):
    data = np.random.default_rng(0).random((10, 11, 12, 1), dtype=np.float32)
    loaded, affine = t1.load_t1(_save(tmp_path / "one_volume.nii.gz", data, np.eye(4)))
    assert loaded.shape == (10, 11, 12) and np.array_equal(affine, np.eye(4))


def test_dicom_series_reads_like_its_nifti(tmp_path, mni_file, mni_result):
    """The MNI template written as an MR series (int16 + rescale slope) preprocesses like the NIfTI, with the same
    fingerprint (the series choice is not recorded)."""
    process_locale = locale.setlocale(locale.LC_ALL)
    uid = write_dicom_series(mni_file, tmp_path / "series", description="T1 MPRAGE")
    assert locale.setlocale(locale.LC_ALL) == process_locale  # GDCM's writer switches to "C"; it is restored
    image, qc = t1.preprocess_with_qc(tmp_path / "series")
    assert qc["series_uid"] == uid and mni_result[1]["series_uid"] is None
    assert qc["input_shape"] == [197, 233, 189] and qc["input_orientation"] == "RAS"
    np.testing.assert_allclose(image, mni_result[0], atol=1e-3)
    assert t1.fingerprint(series_uid=uid) == t1.fingerprint()


def test_dicom_geometry_round_trip_with_an_oblique_left_handed_grid(tmp_path):
    rotation = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = rotation @ np.diag([-1.0, 1.2, 2.0]), [90.0, -100.0, -60.0]
    data = np.random.default_rng(0).integers(0, 1000, (20, 24, 16)).astype(np.float32)
    write_dicom_series(_save(tmp_path / "oblique.nii.gz", data, affine), tmp_path / "series")
    loaded, loaded_affine = t1.load_t1(tmp_path / "series")
    # DICOM slices are stacked along the row x column normal: a left-handed grid comes back in reverse slice order
    np.testing.assert_array_equal(loaded, data[:, :, ::-1])
    flipped = affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 15], [0, 0, 0, 1]])
    np.testing.assert_allclose(loaded_affine, flipped, atol=1e-4)


def test_a_folder_of_several_series_is_refused_unless_one_is_chosen(tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (12, 12, 10)).astype(np.float32)
    folder = tmp_path / "two"
    for name, uid, description in (("t1", "1.2.3.1", "T1 MPRAGE"), ("flair", "1.2.3.2", "FLAIR")):
        write_dicom_series(_save(tmp_path / f"{name}.nii.gz", data, np.eye(4)), folder, uid, description)
    with pytest.raises(ValueError) as refused:
        t1.load_t1(folder)
    assert str(folder) in str(refused.value) and "holds 2 DICOM series" in str(refused.value)
    assert "1.2.3.1 ('T1 MPRAGE', 10 slices)" in str(refused.value)
    assert "1.2.3.2 ('FLAIR', 10 slices)" in str(refused.value)
    loaded, _ = t1.load_t1(folder, series_uid="1.2.3.2")
    np.testing.assert_array_equal(loaded, data)
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID 9.9; found 1.2.3.1"):
        t1.load_t1(folder, series_uid="9.9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM image files directly in this folder"):
        t1.load_t1(tmp_path / "empty")


def _corrupt(path: Path) -> Path:
    path.write_bytes(b"this is not a NIfTI file" * 10)
    return path


def _truncated(path: Path) -> Path:
    full = _save(path.with_suffix(".full.nii.gz"), np.ones((20, 20, 20), np.float32), np.eye(4)).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    return path


def _huge_header(path: Path) -> Path:
    """A header claiming 30000^3 voxels (108 TB as float32) over a few bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(4096)))
    return path


BAD_INPUTS = {
    "huge header": (_huge_header, "the header declares shape 30000 x 30000 x 30000 = 2.7e+13 voxels, more than"),
    "corrupt": (_corrupt, "cannot be read as a NIfTI image"),
    "truncated": (_truncated, "cannot be read as a NIfTI image"),
    "2-D": (lambda p: _save(p, np.ones((30, 30), np.float32), np.eye(4)), "expected a 3-D image"),
    "thin slab": (lambda p: _save(p, np.arange(30 * 30 * 2, dtype=np.float32).reshape(30, 30, 2), np.eye(4)),
                  "at least 8 voxels"),
    "4-D": (lambda p: _save(p, np.ones((20, 20, 20, 3), np.float32), np.eye(4)), "got shape (20, 20, 20, 3)"),
    "NaN": (lambda p: _save(p, np.where(np.eye(20)[..., None] > 0, np.nan, 1.0) * np.ones((20, 20, 20)), np.eye(4)),
            "400 of 8000 voxels are NaN or infinite"),
    "constant": (lambda p: _save(p, np.full((20, 20, 20), 7.0, np.float32), np.eye(4)), "constant"),
    "voxel size": (lambda p: _save(p, np.arange(8000, dtype=np.float32).reshape(20, 20, 20), np.diag([1, 1, 50, 1.0])),
                   "voxel sizes must lie in"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_value_error_naming_file_and_problem(tmp_path, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError) as error:
        t1.preprocess(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        t1.preprocess(tmp_path / "missing.nii.gz")


def test_params_are_validated():
    with pytest.raises(ValueError, match="register must be one of"):
        t1.T1Params(register="sometimes")
    with pytest.raises(ValueError, match="clip_percentiles"):
        t1.T1Params(clip_percentiles=(99.0, 1.0))
    with pytest.raises(TypeError):
        t1.preprocess("x.nii.gz", no_such_parameter=1)


def test_fingerprint_records_params_versions_and_output():
    record = t1.fingerprint()
    assert record["pipeline"] == "t1" and record["version"] == t1.VERSION
    assert record["params"]["spacing_mm"] == 2.0 and record["params"]["register"] == "auto"
    assert record["params"]["registration"]["shrink_factors"] == [4, 2, 1]
    assert set(record["libraries"]) == {"nibabel", "SimpleITK", "nilearn", "numpy", "scipy"}
    assert record["output"]["shape"] == [1, 100, 100, 100] and record["output"]["dtype"] == "float32"
    assert record["output"]["first_voxel_centre_mm"] == [-99.0, -116.0, -94.0]
    assert json.loads(json.dumps(record)) == record
    assert t1.fingerprint(register="never") != record
    assert t1.fingerprint(clip_percentiles=[1.0, 99.0]) != record
    assert t1.fingerprint(registration={"seed": 2})["params"]["registration"]["seed"] == 2


def test_cli_builds_a_cache(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        _small_scan(scans / f"s{i}.nii.gz", rng)
    manifest = pd.DataFrame({"id": ["a", "b", "c"], "path": [f"scans/s{i}.nii.gz" for i in range(3)],
                             "age": [50.0, 60.0, 70.0], "split": ["train", "val", "test"]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    t1.main(["--manifest", str(tmp_path / "manifest.csv"), "--output", str(tmp_path / "cache"), "--register", "never"])
    assert "3 scans in the cache" in capsys.readouterr().out
    info = json.loads((tmp_path / "cache" / "preprocessing.json").read_text())
    assert info["fingerprint"] == t1.fingerprint(register="never")
    cached = pd.read_csv(tmp_path / "cache" / "manifest.csv", dtype={"id": str})
    assert sorted(cached["id"]) == ["a", "b", "c"]
    train = np.load(tmp_path / "cache" / "train.npy", mmap_mode="r")
    expected = t1.preprocess(scans / "s0.nii.gz", register="never")
    np.testing.assert_allclose(train[0], expected, atol=5e-3 * np.abs(expected).max())


# ------------------------------------------------------------------------------------------- UK Biobank
def _ukb_tree(root: Path) -> None:
    for folder in ("1000001", "1000002_20252_2_0", "1000003", "1000004_20252_3_0", "notes", "1000005"):
        (root / folder / "T1").mkdir(parents=True)
    for folder in ("1000001", "1000002_20252_2_0", "1000003", "1000004_20252_3_0"):
        (root / folder / "T1" / "T1_brain_to_MNI.nii.gz").write_bytes(gzip.compress(b""))


def test_ukb_manifest_joins_images_and_ages_and_lists_what_it_leaves_out(tmp_path):
    _ukb_tree(tmp_path / "ukb")
    ages = pd.DataFrame({"eid": [1000001, 1000002, 1000003, 1000006], "age": [61.5, 70.25, None, 55.0],
                         "sex": ["F", "M", "F", "M"], "site": [11025, 11026, 11027, 11025]})
    ages.to_csv(tmp_path / "age.csv", index=False)
    manifest, left_out = ukb.build_ukb_manifest(tmp_path / "ukb", tmp_path / "age.csv")
    assert list(manifest.columns) == ["id", "path", "age", "sex", "site"]
    assert manifest["id"].tolist() == ["1000001", "1000002"] and manifest["age"].tolist() == [61.5, 70.25]
    assert manifest["sex"].tolist() == ["F", "M"] and manifest["site"].tolist() == [11025, 11026]
    assert manifest["path"][1] == str((tmp_path / "ukb/1000002_20252_2_0/T1/T1_brain_to_MNI.nii.gz").resolve())
    assert dict(zip(left_out["id"], left_out["reason"])) == {
        "notes": "folder not named <eid> or <eid>_20252_<instance>_<array>",
        "1000004_20252_3_0": "folder of another instance/array than 2_0",
        "1000005": "no T1/T1_brain_to_MNI.nii.gz in its folder",
        "1000006": "in age.csv but no subject folder",
        "1000003": "no 'age' in age.csv",
    }


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_ukb_manifest_errors(tmp_path):
    _ukb_tree(tmp_path / "ukb")
    pd.DataFrame({"eid": [1000001], "21003-2.0": [60.0]}).to_csv(tmp_path / "age.csv", index=False)
    with pytest.raises(ValueError, match="missing \\['age'\\]"):
        ukb.build_ukb_manifest(tmp_path / "ukb", tmp_path / "age.csv")
    with pytest.warns(UserWarning, match="no column 'sex'"):
        manifest, _ = ukb.build_ukb_manifest(
            tmp_path / "ukb", tmp_path / "age.csv", age_column="21003-2.0", site_column=None
        )
    assert manifest["id"].tolist() == ["1000001"]
    (tmp_path / "ukb" / "1000001_20252_2_0").mkdir()
    with pytest.raises(ValueError, match="both an <eid> and"):
        ukb.build_ukb_manifest(tmp_path / "ukb", tmp_path / "age.csv", age_column="21003-2.0")
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        ukb.build_ukb_manifest(tmp_path / "ukb", tmp_path / "nowhere.csv")


def test_ukb_cli_writes_manifest_and_the_report_of_what_it_left_out(tmp_path, capsys):
    _ukb_tree(tmp_path / "ukb")
    pd.DataFrame({"eid": [1000001, 1000003], "age": [60.0, 65.0]}).to_csv(tmp_path / "age.csv", index=False)
    out = tmp_path / "out"
    arguments = ["--ukb_root", str(tmp_path / "ukb"), "--age_table", str(tmp_path / "age.csv"),
                 "--output", str(out / "manifest.csv")]
    with pytest.warns(UserWarning) as caught:
        ukb.main(arguments)
    assert "2 subjects written" in capsys.readouterr().out
    written = pd.read_csv(out / "manifest.csv", dtype={"id": str})
    assert written["id"].tolist() == ["1000001", "1000003"] and written["age"].tolist() == [60.0, 65.0]
    report = pd.read_csv(out / "excluded.csv", dtype=str, keep_default_na=False)
    assert list(report.columns) == ["id", "split", "reason", "source"]
    assert sorted(report["id"]) == ["1000002", "1000004_20252_3_0", "1000005", "notes"]
    assert set(report["source"]) == {str(tmp_path / "ukb")} and set(report["split"]) == {""}
    assert report.set_index("id").loc["1000002", "reason"] == "no 'age' in age.csv"
    warned = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(warned) == 1 and "left out 4 of 6 sample(s)" in warned[0]
    assert f"listed in {out / 'excluded.csv'}" in warned[0]
    pd.DataFrame({"eid": [1000001, 1000002, 1000003], "age": [60.0, 61.0, 65.0]}).to_csv(tmp_path / "age.csv",
                                                                                           index=False)
    with pytest.warns(UserWarning, match="left out 3 of 6"):
        ukb.main(arguments)  # a re-run replaces the earlier rows of the same folder
    report = pd.read_csv(out / "excluded.csv", dtype=str)
    assert sorted(report["id"]) == ["1000004_20252_3_0", "1000005", "notes"]


def test_ukb_cli_refuses_or_leaves_out_implausible_ages(tmp_path, capsys):
    _ukb_tree(tmp_path / "ukb")
    pd.DataFrame({"eid": [1000001, 1000002, 1000003], "age": [60.0, 999.0, float("inf")], "sex": ["F", "M", "F"],
                  "site": [1, 1, 2]}).to_csv(tmp_path / "age.csv", index=False)
    out = tmp_path / "out"
    arguments = ["--ukb_root", str(tmp_path / "ukb"), "--age_table", str(tmp_path / "age.csv"),
                 "--output", str(out / "manifest.csv")]
    with pytest.raises(SystemExit) as exit_:
        ukb.main(arguments)
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and not out.exists()
    assert f"{tmp_path / 'age.csv'}: 2 unusable 'age' label(s), plausible range [0, 120]: subject (id '1000002'): " \
           "999 is outside the plausible range [0, 120]; subject (id '1000003'): inf is not finite." in error
    with pytest.warns(UserWarning, match="left out 5 of 6 sample"):
        ukb.main([*arguments, "--label_policy", "drop"])
    assert pd.read_csv(out / "manifest.csv", dtype={"id": str})["id"].tolist() == ["1000001"]
    reasons = pd.read_csv(out / "excluded.csv", dtype=str).set_index("id")["reason"]
    assert reasons["1000002"] == "label 999 is outside the plausible range [0, 120]"
    assert reasons["1000003"] == "label inf is not finite"
