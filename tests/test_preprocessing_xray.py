"""X-ray preprocessing (preprocessing.xray), its CLI and RSNA helper, and the demo hand cohort."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from scipy.stats import spearmanr

from preprocessing import xray
from supremix_med.data import read_cache_info
from supremix_med.demo.xray import IMAGE_SHAPE, generate_cohort

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
STORED = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 100)  # stored values 0, 100, ..., 1100


def _dataset(modality: str = "CR") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    return ds


def _dicom(path: Path, pixels: np.ndarray | None, photometric: str = "MONOCHROME1", **attributes) -> Path:
    """Write a small single-frame DICOM (12 bits stored) with the given attributes."""
    ds = _dataset()
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, 12)
    else:
        ds.PhotometricInterpretation, ds.Rows, ds.Columns = photometric, 3, 4
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(pixels, mode=mode).save(path)
    return path


# ------------------------------------------------------------------------------------------ DICOM steps
def test_monochrome1_rescale_and_first_window_by_hand(tmp_path):
    """Rescale, first of two LINEAR windows, inversion in pydicom's output range, [0, 1] scaling."""
    path = _dicom(tmp_path / "cr.dcm", STORED, RescaleSlope=2, RescaleIntercept=-100,
                  WindowCenter=[1000, 500], WindowWidth=[1000, 200], ImagerPixelSpacing=[0.15, 0.14])
    image, qc = xray.load_xray(path)

    modality = 2.0 * STORED - 100.0  # -100 .. 2100
    low, high = 0 * 2 - 100.0, 4095 * 2 - 100.0  # 12-bit stored range through the rescale
    centre, width = 1000 - 0.5, 1000 - 1.0  # DICOM PS3.3 C.11.2.1.2.1 (LINEAR)
    window = np.where(modality <= centre - width / 2, low, np.where(
        modality > centre + width / 2, high, ((modality - centre) / width + 0.5) * (high - low) + low))
    expected = ((low + high - window) - low) / (high - low)
    np.testing.assert_allclose(image, expected, atol=1e-12)
    assert image[0, 0] == 1.0 and image[-1, -1] == 0.0  # MONOCHROME1: the lowest stored value is the brightest
    assert qc["inverted"] is True and qc["photometric_interpretation"] == "MONOCHROME1"
    assert qc["voi"] == "window centre 1000 width 1000 (LINEAR, window 1 of 2)"
    assert qc["modality_lut"] == "rescale slope 2 intercept -100" and qc["output_range"] == [low, high]
    assert qc["original_shape"] == [3, 4] and qc["modality"] == "CR"
    assert qc["pixel_spacing_mm"] == [0.15, 0.14] and qc["pixel_spacing_source"] == "ImagerPixelSpacing"


def test_sigmoid_window_by_hand(tmp_path):
    path = _dicom(tmp_path / "sigmoid.dcm", STORED, "MONOCHROME2", WindowCenter=600, WindowWidth=400,
                  VOILUTFunction="SIGMOID")
    image, qc = xray.load_xray(path)
    np.testing.assert_allclose(image, 1.0 / (1.0 + np.exp(-4.0 * (STORED - 600.0) / 400.0)), atol=1e-12)
    assert qc["output_range"] == [0.0, 4095.0] and "SIGMOID" in qc["voi"]


def test_monochrome1_equals_inverted_monochrome2(tmp_path):
    """Without a VOI, MONOCHROME1 stored values v give the image of MONOCHROME2 stored values (4095 - v)."""
    mono1 = _dicom(tmp_path / "m1.dcm", STORED, "MONOCHROME1")
    mono2 = _dicom(tmp_path / "m2.dcm", (4095 - STORED).astype(np.uint16), "MONOCHROME2")
    (image1, qc1), (image2, qc2) = xray.load_xray(mono1), xray.load_xray(mono2)
    np.testing.assert_allclose(image1, image2, atol=1e-12)
    assert qc1["voi"].startswith("none") and qc2["inverted"] is False
    np.testing.assert_allclose(image2, (4095 - STORED - 2995) / 1100.0, atol=1e-12)


def test_voi_lut_sequence_is_preferred_to_the_window(tmp_path):
    lut, other = Dataset(), Dataset()
    lut.add_new("LUTDescriptor", "US", [4, 200, 16])  # 4 entries, first mapped value 200, 16 bits per entry
    lut.add_new("LUTData", "OW", np.array([10, 20, 40, 80], "<u2").tobytes())
    other.add_new("LUTDescriptor", "US", [2, 0, 16])
    other.add_new("LUTData", "US", [0, 1])
    path = _dicom(tmp_path / "lut.dcm", STORED, "MONOCHROME2", VOILUTSequence=Sequence([lut, other]),
                  WindowCenter=500, WindowWidth=100, RescaleSlope=1, RescaleIntercept=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns when a LUT is applied to floats: the identity rescale's
        image, qc = xray.load_xray(path)
    table = np.clip(STORED.astype(int) - 200, 0, 3)  # below the first mapped value -> entry 0, above -> last
    expected = (np.array([10, 20, 40, 80])[table] - 10) / 70.0
    np.testing.assert_allclose(image, expected, atol=1e-12)
    assert qc["voi"] == "VOI LUT Sequence item 1 of 2 (4 entries)" and qc["output_range"] == [10.0, 80.0]


def test_real_pydicom_files():
    """pydicom's own test images (no CR/DX ships with it): an MR with a window and a CT without one."""
    image, qc = xray.preprocess_with_qc(get_testdata_file("MR_small.dcm"))
    assert image.shape == (1, 512, 512) and image.dtype == np.float32
    assert qc["voi"] == "window centre 600 width 1600 (LINEAR, window 1 of 1)"
    assert qc["original_shape"] == [64, 64] and qc["resized_shape"] == [512, 512]
    assert qc["pixel_spacing_mm"] == [0.3125, 0.3125] and qc["pixel_spacing_source"] == "PixelSpacing"
    assert abs(float(image.mean())) < 1e-4 and float(image.std()) == pytest.approx(1.0, abs=1e-4)
    json.dumps(qc)
    assert xray.preprocess_with_qc(get_testdata_file("CT_small.dcm"))[1]["voi"].startswith("none")


# ------------------------------------------------------------------------------------------ PNG / JPEG
def test_png_grey_rgb_and_16_bit(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))
    image_l, qc = xray.load_xray(_png(tmp_path / "grey.png", grey))
    image_rgb, _ = xray.load_xray(_png(tmp_path / "rgb.png", np.repeat(grey[..., None], 3, axis=2)))
    np.testing.assert_allclose(image_l, grey / 255.0)
    np.testing.assert_allclose(image_rgb, image_l)
    assert qc["format"] == "PNG" and qc["output_range"] == [0.0, 255.0] and qc["inverted"] is False
    sixteen = grey.astype(np.uint16) * 257
    image_16, qc_16 = xray.load_xray(_png(tmp_path / "sixteen.png", sixteen))
    np.testing.assert_allclose(image_16, image_l)
    assert qc_16["output_range"] == [0.0, 65535.0] and qc_16["photometric_interpretation"] == "Pillow mode I;16"


def test_jpeg(tmp_path):
    pixels = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    path = tmp_path / "hand.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    image, qc = xray.preprocess_with_qc(path, size=32)
    assert image.shape == (1, 32, 32) and qc["format"] == "JPEG" and qc["resized_shape"] == [24, 32]


def test_aspect_preserving_resize_and_centred_black_padding(tmp_path):
    """A 100 x 50 (rows x columns) image fills rows 0..511 and columns 128..383; the padding is black."""
    pixels = np.tile(np.linspace(60, 250, 100).astype(np.uint8)[:, None], (1, 50))
    path = _png(tmp_path / "tall.png", pixels)
    unit, qc = xray.preprocess_with_qc(path, normalize="unit")
    assert unit.shape == (1, 512, 512) and qc["resized_shape"] == [512, 256] and qc["pad_value"] == 0.0
    assert np.all(unit[0, :, :128] == 0) and np.all(unit[0, :, 384:] == 0)
    content = unit[0, :, 128:384]
    assert content.min() > 0.2 and content.max() <= 1.0
    np.testing.assert_allclose(content[:, 0], content[:, 128], atol=1e-6)  # columns alike: no shear or shift
    assert content[0, 0] < content[-1, 0]  # rows keep their order (no flip)

    zscore, qc_z = xray.preprocess_with_qc(path)
    assert np.all(zscore[0, :, :128] == np.float32(qc_z["pad_value"]))
    assert qc_z["pad_value"] == pytest.approx(-qc_z["mean"] / qc_z["std"])
    np.testing.assert_allclose(zscore[0, :, 128:384], (content - qc_z["mean"]) / qc_z["std"], atol=1e-4)


# ------------------------------------------------------------------------------------------ bad inputs
def _multi_frame(tmp_path):
    return Path(get_testdata_file("rtdose.dcm"))


def _not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image")
    return path


def _truncated_dicom(tmp_path):
    good = _dicom(tmp_path / "good.dcm", np.zeros((64, 64), np.uint16) + STORED[0, 1])
    path = tmp_path / "truncated.dcm"
    path.write_bytes(good.read_bytes()[:-2000])
    return path


def _no_pixel_data(tmp_path):
    return _dicom(tmp_path / "no_pixels.dcm", None)


def _nan(tmp_path):
    path = _dicom(tmp_path / "nan.dcm", STORED, "MONOCHROME2", RescaleSlope=1, RescaleIntercept=0)
    ds = pydicom.dcmread(path)
    values = STORED.astype(np.float32)
    values[1, 1] = np.nan
    del ds.PixelData, ds.PixelRepresentation, ds.BitsStored, ds.HighBit
    ds.BitsAllocated, ds.FloatPixelData = 32, values.tobytes()
    ds.save_as(path)
    return path


def _empty(tmp_path):
    return _dicom(tmp_path / "empty.dcm", None, PixelData=b"", Rows=0, Columns=0, BitsAllocated=16,
                  BitsStored=12, HighBit=11, PixelRepresentation=0, SamplesPerPixel=1)


def _bad_window(tmp_path):
    return _dicom(tmp_path / "window.dcm", STORED, WindowCenter=500, WindowWidth=0.5)


def _colour(tmp_path):
    return Path(get_testdata_file("SC_rgb_small_odd.dcm"))


def _constant(tmp_path):
    return _png(tmp_path / "constant.png", np.full((8, 8), 90, np.uint8))


def _corrupt_png(tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / "corrupt.png"
    path.write_bytes(good.read_bytes()[:100])
    return path


@pytest.mark.parametrize("make, problem", [
    (_not_dicom, "not a DICOM file"),
    (_truncated_dicom, "cannot decode the pixel data"),
    (_multi_frame, "multi-frame image with 15 frames"),
    (_no_pixel_data, "no pixel data"),
    (_nan, "NaN or infinite"),
    (_empty, "empty image"),
    (_bad_window, "cannot apply the VOI LUT/window"),
    (_colour, "expected a greyscale image"),
    (_constant, "constant"),
    (_corrupt_png, "not a readable PNG/JPEG"),
])
def test_bad_input_raises_value_error_naming_the_file(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=problem) as error:
        xray.preprocess(path)
    assert str(path) in str(error.value)


def test_missing_file_and_bad_parameters(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.dcm"):
        xray.preprocess(tmp_path / "missing.dcm")
    for params, message in (({"size": 4}, "size"), ({"normalize": "minmax"}, "normalize"),
                            ({"interpolation": "spline"}, "interpolation")):
        with pytest.raises(ValueError, match=message):
            xray.XRayParams(**params)


def test_fingerprint():
    record = xray.fingerprint(size=256, normalize="unit")
    assert record == json.loads(json.dumps(record))
    assert record["pipeline"] == "xray" and record["output"]["shape"] == [1, 256, 256]
    assert record["params"] == {"size": 256, "normalize": "unit", "interpolation": "bilinear", "anti_aliasing": True}
    assert record["libraries"]["pydicom"] == pydicom.__version__
    assert xray.fingerprint() != xray.fingerprint(size=256)


# ------------------------------------------------------------------------------------------ demo cohort
@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo_xray")
    generate_cohort(folder, n_subjects=4, seed=3)
    return folder


def test_demo_cohort_is_deterministic_and_resumable(cohort, tmp_path):
    manifest = pd.read_csv(cohort / "manifest.csv")
    assert list(manifest.columns) == ["id", "path", "boneage", "sex"] and len(manifest) == 4
    assert manifest["boneage"].between(12, 216).all() and set(manifest["sex"]) <= {"F", "M"}
    with Image.open(cohort / manifest["path"][0]) as picture:
        assert picture.mode == "L" and picture.size[::-1] == IMAGE_SHAPE
    generate_cohort(tmp_path, n_subjects=2, seed=3)
    extended = generate_cohort(tmp_path, n_subjects=4, seed=3)  # resumes: extends the 2-image cohort
    pd.testing.assert_frame_equal(extended, manifest)
    for name in manifest["path"]:
        assert (tmp_path / name).read_bytes() == (cohort / name).read_bytes()
    with pytest.raises(ValueError, match="another output folder"):
        generate_cohort(tmp_path, n_subjects=4, seed=4)


def test_demo_bone_age_is_visible():
    """Bone area grows with bone age across children, despite size, pose and exposure jitter."""
    from supremix_med.demo.xray import _child_rng, _draw_covariates, synthesize_hand

    boneage, bone_area = [], []
    for index in range(12):
        rng = _child_rng(0, index)
        age, sex = _draw_covariates(rng, (12.0, 216.0))
        image = synthesize_hand(rng, age, sex)
        boneage.append(age)
        bone_area.append(np.count_nonzero(image > 0.5 * image.max()))
    assert spearmanr(boneage, bone_area).statistic > 0.8


def test_cli_caches_the_demo_cohort_by_bone_age(cohort, tmp_path, capsys):
    xray.main(["--manifest", str(cohort / "manifest.csv"), "--output", str(tmp_path / "cache"), "--size", "64",
               "--target", "boneage"])
    info = read_cache_info(tmp_path / "cache")
    assert info.complete and info.sample_shape == (1, 64, 64) and info.failed == 0
    assert info.fingerprint == xray.fingerprint(size=64)
    cached = pd.read_csv(tmp_path / "cache" / "manifest.csv")
    assert sorted(cached["id"]) == [f"xr-{i:04d}" for i in range(4)] and "boneage" in cached.columns
    row = cached.iloc[0]
    stored = np.load(tmp_path / "cache" / f"{row['split']}.npy", mmap_mode="r")[row["index"]]
    np.testing.assert_allclose(stored, xray.preprocess(cohort / f"{row['id']}.png", size=64), atol=2e-2)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # a refusal: one line, exit status 2
        xray.main(["--manifest", str(cohort / "manifest.csv"), "--output", str(tmp_path / "other")])
    assert refused.value.code == 2 and "no target column 'age'" in capsys.readouterr().err


def test_rsna_layout_and_the_report_of_what_it_left_out(cohort, tmp_path):
    manifest = pd.read_csv(cohort / "manifest.csv")
    table = pd.DataFrame({"id": manifest["id"], "boneage": manifest["boneage"], "male": manifest["sex"] == "M"})
    table.loc[len(table)] = ["xr-9999", 100.0, True]  # a row without an image
    table.to_csv(tmp_path / "boneage.csv", index=False)
    images = tmp_path / "images"
    images.mkdir()
    for name in manifest["id"]:
        shutil.copy(cohort / f"{name}.png", images)
    shutil.copy(cohort / f"{manifest['id'][0]}.png", images / "stray.png")  # an image without a row
    rsna, left_out = xray.build_rsna_manifest(images, tmp_path / "boneage.csv")
    assert list(rsna.columns) == ["id", "path", "boneage", "sex"]
    assert list(rsna["sex"]) == list(manifest["sex"]) and list(rsna["boneage"]) == list(manifest["boneage"])
    assert all(Path(p).is_absolute() and Path(p).exists() for p in rsna["path"])
    assert dict(zip(left_out["id"], left_out["reason"])) == {"xr-9999": f"no image <id>.png in {images}",
                                                             "stray": f"an image in {images} without a row"}
    with pytest.warns(UserWarning) as caught:
        xray.main(["--rsna_images", str(images), "--rsna_csv", str(tmp_path / "boneage.csv"),
                   "--output", str(tmp_path / "cache"), "--size", "32"])
    assert read_cache_info(tmp_path / "cache").samples and len(pd.read_csv(tmp_path / "cache" / "manifest.csv")) == 4
    report = pd.read_csv(tmp_path / "cache" / "excluded.csv", dtype=str, keep_default_na=False)
    assert sorted(report["id"]) == ["stray", "xr-9999"] and set(report["source"]) == {str(tmp_path / "boneage.csv")}
    warned = [str(w.message) for w in caught if "left out" in str(w.message)]
    assert len(warned) == 1 and "left out 2 of 6 sample(s)" in warned[0]
    assert f"listed in {tmp_path / 'cache' / 'excluded.csv'}" in warned[0]
    table.drop(columns="male").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="missing column"):
        xray.build_rsna_manifest(images, tmp_path / "bad.csv")
