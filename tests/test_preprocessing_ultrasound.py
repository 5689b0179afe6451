"""Ultrasound preprocessing (preprocessing.ultrasound) and the synthetic echo cohort (demo_ultrasound)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, get_decoder, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from preprocessing.ultrasound import (
    UltrasoundParams,
    build_echonet_manifest,
    dicom_frame_rate,
    fingerprint,
    load_clip,
    luminance,
    main,
    preprocess,
    preprocess_with_qc,
    sector_mask,
)
from supremix_med.data.cache import read_cache_info
from supremix_med.demo.ultrasound import FPS, N_FRAMES, SIZE, generate_cohort, synthesize_clip, write_avi

SMALL = {"frames": 8, "size": 32}  # output size for tests that do not look at resolution


def _testdata(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-clip synthetic echo cohort in EchoNet layout (seed 0)."""
    root = tmp_path_factory.mktemp("echo")
    generate_cohort(root, n_clips=3, seed=0, progress=False)
    return root


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object) -> Path:
    """Write a multi-frame uncompressed DICOM (uint8 or float32 (T, H, W) pixels) with extra attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.3.1", generate_uid()  # US multi-frame
    ds.Modality = "US"
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, photometric, 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    if pixels.dtype == np.float32:
        ds.FloatPixelData = pixels.tobytes()
    else:
        ds.BitsStored, ds.HighBit = ds.BitsAllocated, ds.BitsAllocated - 1
        ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------------------ DICOM
def test_ybr_jpeg_multiframe_dicom():
    """pydicom's multi-frame US (YBR_FULL_422, JPEG baseline via Pillow): Y recovered, 30 fps from FrameTime."""
    path = _testdata("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    clip = load_clip(path)
    stored_luma = pixel_array(ds, as_rgb=False)[..., 0].astype(np.float32)  # Y of the stored YBR pixels
    assert clip.frames.shape == (30, 240, 320)
    assert clip.colour == "YBR_FULL_422"
    np.testing.assert_array_equal(clip.frames, stored_luma)
    assert clip.fps == pytest.approx(1000 / 33.333) and clip.fps_source == "FrameTime"

    output, qc = preprocess_with_qc(path)
    assert output.shape == (1, 32, 112, 112) and output.dtype == np.float32
    assert qc["input_frames"] == 30 and qc["window_s"] == pytest.approx(0.99999)
    inside = output[0][:, np.any(output[0] != 0, axis=0)]  # padding rows (4:3 frame made square) are 0
    assert inside.mean() == pytest.approx(0.0, abs=1e-4) and inside.std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(output[0, :, :10] == 0) and np.all(output[0, :, -10:] == 0)


def test_rgb_rle_two_frames_without_frame_rate():
    path = _testdata("SC_rgb_rle_2frame.dcm")
    clip = load_clip(path)
    np.testing.assert_allclose(clip.frames, luminance(pydicom.dcmread(path).pixel_array))
    assert clip.fps is None and clip.fps_source is None
    assert preprocess(path, **SMALL).shape == (1, 8, 32, 32)
    with pytest.raises(ValueError, match="SC_rgb_rle_2frame.dcm.*frame rate"):
        preprocess(path, duration_s=0.5, **SMALL)


def test_palette_colour_dicom(tmp_path: Path):
    """A 3-frame PALETTE COLOR clip built from pydicom's palette example goes through apply_color_lut."""
    source = pydicom.dcmread(_testdata("examples_palette.dcm"))
    stack = np.stack([np.roll(source.pixel_array, 5 * k, axis=1) for k in range(3)])
    source.NumberOfFrames, source.FrameTime = 3, "40"
    source.PixelData = stack.tobytes()
    path = tmp_path / "palette.dcm"
    source.save_as(path)

    clip = load_clip(path)
    assert clip.colour == "PALETTE COLOR" and clip.fps == pytest.approx(25.0)
    np.testing.assert_allclose(clip.frames, luminance(apply_color_lut(stack, source)))
    assert np.isfinite(preprocess(path, **SMALL)).all()


def test_compressed_dicom_needs_its_decoder(tmp_path: Path):
    """A 2-frame JPEG-LS clip: decoded when a JPEG-LS plug-in is installed, else a ValueError naming the plug-ins."""
    ds = pydicom.dcmread(_testdata("SC_rgb_jls_lossy_sample.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData, ds.NumberOfFrames = encapsulate([frame, frame]), 2
    path = tmp_path / "jpeg_ls.dcm"
    ds.save_as(path)
    if get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        assert load_clip(path).frames.shape == (2, 100, 100)
    else:
        message = r"(?s)jpeg_ls\.dcm: the pixel data \(JPEG-LS .*cannot be decoded.*pylibjpeg"
        with pytest.raises(ValueError, match=message):
            load_clip(path)


def test_single_frame_dicom_is_not_a_clip():
    with pytest.raises(ValueError, match=r"examples_palette\.dcm: a clip needs at least 2 frames.* has 1"):
        load_clip(_testdata("examples_palette.dcm"))


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"FrameTime": "20"}, (50.0, "FrameTime")),
        ({"FrameTimeVector": [0, 40, 40, 40]}, (25.0, "FrameTimeVector")),
        ({"FrameTimeVector": 0}, (None, None)),
        ({"FrameTime": "0", "CineRate": 30}, (30.0, "CineRate")),
        ({"RecommendedDisplayFrameRate": 24}, (24.0, "RecommendedDisplayFrameRate")),
        ({}, (None, None)),
    ],
)
def test_dicom_frame_rate(attributes: dict, expected: tuple):
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    assert dicom_frame_rate(ds) == expected


def test_monochrome_dicom_duration_window(tmp_path: Path):
    """A 2 s window of a 4 s, 10 fps MONOCHROME2 clip uses its first 20 frames."""
    ramp = np.arange(40, dtype=np.uint8)[:, None, None] * np.ones((1, 16, 24), np.uint8)
    path = _write_dicom(tmp_path / "ramp.dcm", ramp, CineRate=10)
    output, qc = preprocess_with_qc(path, duration_s=2.0, **SMALL)
    assert (qc["window_frames"], qc["window_s"], qc["output_fps"]) == (20, 2.0, 4.0)
    with pytest.raises(ValueError, match="ramp.dcm: duration_s=5.0 s is 50 frames"):
        preprocess(path, duration_s=5.0)


# ------------------------------------------------------------------------------------------------ video
def test_demo_avi_round_trip(demo: Path):
    frames, _, _ = synthesize_clip(np.random.default_rng([0, 1]))
    clip = load_clip(demo / "Videos" / "echo-0001.avi")
    assert (clip.fps, clip.fps_source, clip.colour) == (FPS, "container", "video gray")
    np.testing.assert_array_equal(clip.frames, frames)  # lossless FFV1


def test_mp4_clip(tmp_path: Path):
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = 32, 32, "yuv420p"
        for value in range(0, 200, 20):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), value, np.uint8), "rgb24")))
        container.mux(stream.encode())
    clip = load_clip(path)
    assert clip.frames.shape == (10, 32, 32) and clip.fps == 25.0 and clip.colour == "video yuv420p"
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2)), np.arange(0, 200, 20), atol=3)  # Y, full range


def test_temporal_resampling_is_uniform(tmp_path: Path):
    """Output frame i samples the clip at (i + 0.5) * T / frames - 0.5: a linear ramp in time stays linear and
    centred (output frames i and frames - 1 - i lie symmetrically about the clip's middle)."""
    ramp = (np.arange(64)[:, None, None] * 3 + np.arange(32)[None, None, :] + np.zeros((1, 32, 1))).astype(np.uint8)
    write_avi(ramp, tmp_path / "ramp.avi", fps=25)
    means = preprocess(tmp_path / "ramp.avi", frames=16, size=32)[0].mean(axis=(1, 2))
    middle = slice(2, -2)  # the end frames see the edge of the temporal anti-aliasing filter
    steps = np.diff(means)[middle]
    np.testing.assert_allclose(steps, steps.mean(), rtol=0.01)
    assert np.ptp((means + means[::-1])[middle]) < 1e-3


def test_still_content_keeps_its_level_at_the_clip_ends(tmp_path: Path):
    """Anti-aliasing in time must not darken the first and last frames (no zero padding in time)."""
    pattern = np.random.default_rng(0).integers(0, 255, (1, 24, 24), dtype=np.uint8)
    frames = np.repeat(pattern, 40, axis=0)
    frames[:, 0, 0] = np.arange(40)  # one moving pixel, so the clip is not rejected as still
    write_avi(frames, tmp_path / "still.avi", fps=25)
    output = preprocess(tmp_path / "still.avi", frames=8, size=12)[0]
    np.testing.assert_allclose(output[0, 4:, 4:], output[4, 4:, 4:], atol=1e-4)
    np.testing.assert_allclose(output[-1, 4:, 4:], output[4, 4:, 4:], atol=1e-4)


def test_non_square_frames_are_padded_not_stretched(tmp_path: Path):
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 255, (6, 20, 40), dtype=np.uint8)  # 1:2 aspect
    write_avi(frames, tmp_path / "wide.avi", fps=10)
    output = preprocess(tmp_path / "wide.avi", frames=6, size=40)[0]
    assert np.all(output[:, :10] == 0) and np.all(output[:, 30:] == 0) and np.all(output[:, 10:30] != 0)


# ------------------------------------------------------------------------------------------------- mask
def test_auto_sector_mask_finds_the_sector_not_static_overlays(demo: Path):
    frames, _, _ = synthesize_clip(np.random.default_rng([0, 0]))
    true_sector = frames.max(axis=0) > 0
    overlay = frames.copy()
    overlay[:, 58:62, 2:12] = 200  # static burnt-in text in a corner
    mask = sector_mask(overlay.astype(np.float32))
    assert not mask[58:62, 2:12].any()
    assert (mask & true_sector).sum() / (mask | true_sector).sum() > 0.97

    output, qc = preprocess_with_qc(demo / "Videos" / "echo-0000.avi", sector_mask="auto")
    assert 0.5 < qc["mask_fraction"] < 0.8
    assert np.all(output[0, :, 0, :20] == 0)  # top-left corner, outside the fan


def test_sector_mask_image(tmp_path: Path, demo: Path):
    frames, _, _ = synthesize_clip(np.random.default_rng([0, 2]))
    Image.fromarray((frames.max(axis=0) > 0).astype(np.uint8) * 255).save(tmp_path / "mask.png")
    output = preprocess(demo / "Videos" / "echo-0002.avi", sector_mask=tmp_path / "mask.png", **SMALL)
    assert np.all(output[0, :, 0, :4] == 0)
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"echo-0002\.avi: the sector mask .*small\.png is 10 x 10 pixels"):
        preprocess(demo / "Videos" / "echo-0002.avi", sector_mask=tmp_path / "small.png")


# ------------------------------------------------------------------------------------------- bad inputs
def test_corrupt_files(tmp_path: Path):
    for name in ("broken.dcm", "broken.avi"):
        (tmp_path / name).write_bytes(b"\x00not an image" * 50)
        with pytest.raises(ValueError, match=rf"{name}: cannot be"):
            load_clip(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        load_clip(tmp_path / "missing.avi")


def test_clips_without_frames(tmp_path: Path):
    with av.open(str(tmp_path / "empty.avi"), mode="w", format="avi") as container:  # header, no frame
        stream = container.add_stream("ffv1", rate=25)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "gray"
        container.start_encoding()
    with pytest.raises(ValueError, match="empty.avi: a clip needs at least 2 frames, the video has 0"):
        load_clip(tmp_path / "empty.avi")
    path = _write_dicom(tmp_path / "empty.dcm", np.zeros((1, 8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames, ds.PixelData = 0, b""
    ds.save_as(path)
    with pytest.raises(ValueError, match="empty.dcm: a clip needs at least 2 frames, the DICOM file has 0"):
        load_clip(path)


def test_nan_pixels(tmp_path: Path):
    pixels = np.ones((3, 8, 8), np.float32)
    pixels[1, 2, 2] = np.nan
    path = _write_dicom(tmp_path / "nan.dcm", pixels)
    with pytest.raises(ValueError, match="nan.dcm: 1 of 192 pixels are NaN"):
        load_clip(path)


def test_still_clip(tmp_path: Path):
    still = np.broadcast_to(np.arange(64, dtype=np.uint8).reshape(8, 8), (5, 8, 8))
    write_avi(np.ascontiguousarray(still), tmp_path / "still.avi")
    with pytest.raises(ValueError, match="still.avi: the sector mask \\(auto\\) is empty: no pixel varies"):
        preprocess(tmp_path / "still.avi", sector_mask="auto")
    write_avi(np.full((5, 8, 8), 7, np.uint8), tmp_path / "flat.avi")
    with pytest.raises(ValueError, match="flat.avi: every pixel of every frame is 7"):
        load_clip(tmp_path / "flat.avi")


def test_params_and_fingerprint(tmp_path: Path):
    record = fingerprint()
    assert record == json.loads(json.dumps(record))
    assert record["pipeline"] == "ultrasound" and record["output"]["shape"] == [1, 32, 112, 112]
    assert fingerprint(frames=16) != record
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    assert len(fingerprint(sector_mask=tmp_path / "mask.png")["params"]["sector_mask_sha256"]) == 64
    for bad in ({"frames": 0}, {"duration_s": -1.0}, {"mask_threshold": 1.5}, {"sector_mask": "nowhere.png"}):
        with pytest.raises(ValueError):
            UltrasoundParams(**bad)


# ------------------------------------------------------------------------------------- EchoNet and CLI
def test_echonet_manifest(demo: Path, tmp_path: Path):
    manifest = build_echonet_manifest(demo)
    assert list(manifest.columns) == ["id", "path", "ef", "split", "edv", "esv"]
    assert list(manifest["id"]) == ["echo-0000", "echo-0001", "echo-0002"]
    assert set(manifest["split"]) <= {"train", "val", "test"} and all(map(Path.is_file, map(Path, manifest["path"])))

    listing = pd.read_csv(demo / "FileList.csv")
    broken = tmp_path / "broken"
    (broken / "Videos").mkdir(parents=True)
    listing.assign(Split="HOLDOUT").to_csv(broken / "FileList.csv", index=False)
    with pytest.raises(ValueError, match="Split must be TRAIN, VAL or TEST; got 'HOLDOUT'"):
        build_echonet_manifest(broken)
    listing.to_csv(broken / "FileList.csv", index=False)
    with pytest.raises(FileNotFoundError, match="3 listed video"):
        build_echonet_manifest(broken)


def test_cli_builds_cache(demo: Path, tmp_path: Path):
    manifest_csv = tmp_path / "manifest.csv"
    build_echonet_manifest(demo).to_csv(manifest_csv, index=False)
    output = tmp_path / "cache"
    arguments = ["--manifest", str(manifest_csv), "--output", str(output), "--frames", "8", "--size", "32",
                 "--sector_mask", "auto"]
    main(arguments)
    info = read_cache_info(output)
    assert info.complete and info.sample_shape == (1, 8, 32, 32) and info.failed == 0
    assert info.fingerprint == fingerprint(frames=8, size=32, sector_mask="auto")
    cached = pd.read_csv(output / "manifest.csv")
    np.testing.assert_allclose(cached.sort_values("id")["ef"], pd.read_csv(demo / "FileList.csv")["EF"])
    main(["--echonet_root", str(demo), *arguments[2:]])  # the same samples from FileList.csv: continued, not refused
    assert read_cache_info(output).samples == info.samples


# ------------------------------------------------------------------------------------------------- demo
def test_demo_is_deterministic_and_resumable(demo: Path, tmp_path: Path):
    again = generate_cohort(tmp_path / "again", n_clips=3, seed=0, workers=2, progress=False)
    pd.testing.assert_frame_equal(again, pd.read_csv(demo / "FileList.csv"))
    for name in ("echo-0000.avi", "echo-0002.avi"):
        assert (tmp_path / "again" / "Videos" / name).read_bytes() == (demo / "Videos" / name).read_bytes()
    assert list(again.columns[:3]) == ["FileName", "EF", "ESV"] and again["NumberOfFrames"].eq(N_FRAMES).all()
    with pytest.raises(ValueError, match="cohort.json records output generated with"):
        generate_cohort(tmp_path / "again", n_clips=3, seed=1, progress=False)


@pytest.mark.parametrize("index", range(4))
def test_demo_ejection_fraction_follows_the_areas(index: int):
    frames, areas, geometry = synthesize_clip(np.random.default_rng([7, index]))
    assert frames.shape == (N_FRAMES, SIZE, SIZE) and frames.dtype == np.uint8
    # area-length volumes at fixed aspect scale as area^1.5; the sampled beat holds end-diastole and -systole
    assert 1.0 - (areas.min() / areas.max()) ** 1.5 == pytest.approx(geometry.ef, abs=0.01)
    edv, esv = geometry.volume_ml(geometry.ed_semi_axis_px), geometry.volume_ml(geometry.es_semi_axis_px)
    assert (edv - esv) / edv == pytest.approx(geometry.ef, rel=1e-9)
    assert 30 < edv < 250  # plausible adult LV end-diastolic volumes, ml
