"""Tests of the fMRI parcel time-series pipeline (preprocessing.fmri)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.io
import torch
from monai.transforms import RandSpatialCrop
from nilearn.signal import clean

from preprocessing.fmri import (
    FmriParams,
    assign_subject_splits,
    fingerprint,
    main,
    minimum_frames,
    parcel_timeseries,
    preprocess,
)

T_R = 0.8
N_FRAMES = 480
FREQUENCIES_HZ = tuple(k / (N_FRAMES * T_R) for k in (12, 16, 20, 24))  # 0.031-0.063 Hz, whole cycles
AFFINE_2MM = np.diag([2.0, 2.0, 2.0, 1.0])


def _blocks() -> np.ndarray:
    """(10, 10, 10) labels: four 5 x 5 x 10 blocks labelled 1..4."""
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels[:5, :5], labels[5:, :5], labels[:5, 5:], labels[5:, 5:] = 1, 2, 3, 4
    return labels


def _truth() -> np.ndarray:
    """(4, N_FRAMES) known parcel signals: one sinusoid per block."""
    time = np.arange(N_FRAMES) * T_R
    return np.stack([np.sin(2 * np.pi * f * time + k) for k, f in enumerate(FREQUENCIES_HZ)])


def _filtered_truth() -> np.ndarray:
    """The truth after the pipeline's detrend, band-pass and z-score (which add edge transients)."""
    return clean(_truth().T, detrend=True, standardize="zscore_sample", high_pass=0.008, low_pass=0.08, t_r=T_R).T


def _bold(extra: np.ndarray | None = None, t_r: float = T_R, seed: int = 0) -> nib.Nifti1Image:
    """4-D image: every voxel of block k carries truth[k-1] (+ ``extra``[k-1] if given) + N(0, 1) noise + 100."""
    rng = np.random.default_rng(seed)
    signal = _truth() if extra is None else _truth() + extra
    data = 100.0 + signal[_blocks() - 1] + rng.standard_normal((10, 10, 10, N_FRAMES))
    image = nib.Nifti1Image(data.astype(np.float32), AFFINE_2MM)
    image.header.set_zooms((2.0, 2.0, 2.0, t_r))
    image.header.set_xyzt_units("mm", "sec")
    return image


def _save(image: nib.Nifti1Image, path: Path) -> Path:
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fmri")
    atlas = nib.Nifti1Image(_blocks(), AFFINE_2MM)
    return {"bold": _save(_bold(), folder / "bold.nii.gz"), "atlas": _save(atlas, folder / "atlas.nii.gz"),
            "folder": folder}


def _correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of two (n, T) arrays."""
    a = (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True)
    b = (b - b.mean(1, keepdims=True)) / b.std(1, keepdims=True)
    return (a * b).mean(1)


def test_recovers_known_parcel_signals_zscored(files):
    series = parcel_timeseries(files["bold"], files["atlas"], n_parcels=4)
    assert series.shape == (4, N_FRAMES) and series.dtype == np.float32
    assert np.all(_correlations(series, _filtered_truth()) > 0.99)
    centre = slice(N_FRAMES // 8, -N_FRAMES // 8)  # away from the filter's edge transients
    assert np.all(_correlations(series[:, centre], _truth()[:, centre]) > 0.95)
    np.testing.assert_allclose(series.mean(1), 0.0, atol=1e-4)
    np.testing.assert_allclose(series.std(1, ddof=1), 1.0, atol=1e-4)


def test_rows_follow_label_order_not_label_values(files):
    """Relabelling the blocks 4, 3, 2, 1 reverses the rows."""
    atlas = _save(nib.Nifti1Image((5 - _blocks()).astype(np.int16), AFFINE_2MM), files["folder"] / "rev.nii.gz")
    forward = parcel_timeseries(files["bold"], files["atlas"], n_parcels=4)
    np.testing.assert_allclose(parcel_timeseries(files["bold"], atlas, n_parcels=4), forward[::-1], atol=1e-5)


def test_parcel_outside_field_of_view_is_a_zero_row_and_reported(files):
    labels = np.zeros((14, 10, 10), dtype=np.int16)  # the atlas reaches 4 voxels beyond the scan in x
    labels[:10] = _blocks()
    labels[11:, :, :] = 6  # parcel 6 lies only outside the scan; parcel 5 is nowhere in the atlas
    atlas = _save(nib.Nifti1Image(labels, AFFINE_2MM), files["folder"] / "wide.nii.gz")
    with pytest.warns(UserWarning, match=r"bold\.nii\.gz.*2 of 6 parcels.*\[5, 6\]"):
        series = parcel_timeseries(files["bold"], atlas, n_parcels=6)
    assert series.shape == (6, N_FRAMES)
    assert not series[4:].any()
    np.testing.assert_allclose(series[:4], parcel_timeseries(files["bold"], files["atlas"], n_parcels=4), atol=1e-5)


def test_atlas_at_another_resolution_is_resampled_nearest_neighbour(files):
    fine = np.repeat(np.repeat(np.repeat(_blocks(), 2, 0), 2, 1), 2, 2)  # 1 mm voxels, same blocks
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -0.5  # 1 mm voxel centres -0.5, 0.5, ...: each 2 mm voxel centre 2i lies in fine voxel 2i
    atlas = _save(nib.Nifti1Image(fine.astype(np.int16), affine), files["folder"] / "atlas_1mm.nii.gz")
    expected = parcel_timeseries(files["bold"], files["atlas"], n_parcels=4)
    np.testing.assert_allclose(parcel_timeseries(files["bold"], atlas, n_parcels=4), expected, atol=1e-5)


def test_confound_regression_removes_a_confound(files, tmp_path):
    time = np.arange(N_FRAMES) * T_R
    confound = 3.0 * np.sin(2 * np.pi * 0.045 * time + 1.0)  # in the band: the filter alone does not remove it
    bold = _save(_bold(extra=np.tile(confound, (4, 1))), tmp_path / "confounded.nii.gz")
    plain = parcel_timeseries(bold, files["atlas"], n_parcels=4)
    assert np.all(_correlations(plain, _filtered_truth()) < 0.6)
    table = pd.DataFrame({"motion": confound + 0.1 * np.random.default_rng(1).standard_normal(N_FRAMES)})
    table["motion_derivative1"] = table["motion"].diff()  # first row NaN, as fMRIPrep writes n/a
    table.to_csv(tmp_path / "confounds.tsv", sep="\t", index=False, na_rep="n/a")
    for confounds in (table, tmp_path / "confounds.tsv"):
        cleaned = parcel_timeseries(bold, files["atlas"], n_parcels=4, confounds=confounds)
        assert np.all(_correlations(cleaned, _filtered_truth()) > 0.95)
    with pytest.raises(ValueError, match=r"confounded\.nii\.gz.*one row per frame \(480\)"):
        parcel_timeseries(bold, files["atlas"], n_parcels=4, confounds=table.iloc[:-1])


def test_repetition_time_from_header_or_argument(files, tmp_path):
    no_tr = _save(_bold(t_r=0.0), tmp_path / "no_tr.nii.gz")
    with pytest.raises(ValueError, match=r"no_tr\.nii\.gz.*repetition time.*pass t_r"):
        parcel_timeseries(no_tr, files["atlas"], n_parcels=4)
    np.testing.assert_allclose(parcel_timeseries(no_tr, files["atlas"], t_r=T_R, n_parcels=4),
                               parcel_timeseries(files["bold"], files["atlas"], n_parcels=4), atol=1e-5)
    slow = _save(_bold(t_r=8.0), tmp_path / "slow.nii.gz")
    with pytest.raises(ValueError, match=r"slow\.nii\.gz.*Nyquist"):
        parcel_timeseries(slow, files["atlas"], n_parcels=4)


def _write_extracted(array: np.ndarray, path: Path) -> Path:
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".mat":
        scipy.io.savemat(path, {"ts": array})
    else:
        np.savetxt(path, array, delimiter="," if path.suffix == ".csv" else " ")
    return path


def test_extracted_series_every_format_and_orientation_agree(tmp_path):
    series = np.random.default_rng(2).standard_normal((6, 50)).astype(np.float32)
    outputs = [
        parcel_timeseries(_write_extracted(array, tmp_path / f"{name}{suffix}"), n_parcels=6)
        for suffix in (".npy", ".csv", ".txt", ".mat")
        for name, array in (("parcels_by_time", series), ("time_by_parcels", series.T))
    ]
    for output in outputs:
        np.testing.assert_allclose(output, series, rtol=1e-6)
        assert output.dtype == np.float32


def test_extracted_series_cleaned_only_on_request(tmp_path):
    series = 50.0 + np.random.default_rng(3).standard_normal((6, 300))
    path = _write_extracted(series, tmp_path / "raw.npy")
    np.testing.assert_allclose(parcel_timeseries(path, n_parcels=6), series.astype(np.float32))
    cleaned = parcel_timeseries(path, n_parcels=6, clean_extracted=True, t_r=T_R)
    np.testing.assert_allclose(cleaned.std(1, ddof=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match=r"raw\.npy.*needs t_r"):
        parcel_timeseries(path, n_parcels=6, clean_extracted=True)


def test_mat_file_with_several_variables_needs_a_name(tmp_path):
    series = np.ones((6, 20))
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"ts": series, "other": series.T})
    with pytest.raises(ValueError, match=r"two\.mat.*\['other', 'ts'\].*mat_variable"):
        parcel_timeseries(path, n_parcels=6)
    np.testing.assert_array_equal(parcel_timeseries(path, n_parcels=6, mat_variable="other"), series)


@pytest.mark.parametrize(
    ("make", "name", "message"),
    [
        (lambda: np.zeros((5, 50)), "wrong_count.npy", r"one axis of length n_parcels=6, got shape \(5, 50\)"),
        (lambda: np.zeros((6, 6)), "square.npy", r"6 x 6 array is ambiguous"),
        (lambda: np.zeros((6, 50, 2)), "cube.npy", r"expected a 2-D numeric array"),
        (lambda: np.full((6, 50), np.nan), "nan.npy", r"300 values are NaN"),
    ],
)
def test_bad_extracted_input_names_the_file(tmp_path, make, name, message):
    path = _write_extracted(make(), tmp_path / name)
    with pytest.raises(ValueError, match=rf"{name.replace('.', r'.')}.*{message}"):
        parcel_timeseries(path, n_parcels=6)


def test_bad_nifti_input_names_the_file(files, tmp_path):
    volume = _save(nib.Nifti1Image(np.ones((10, 10, 10), np.float32), AFFINE_2MM), tmp_path / "3d.nii.gz")
    with pytest.raises(ValueError, match=r"3d\.nii\.gz.*expected a 4-D fMRI image"):
        parcel_timeseries(volume, files["atlas"], n_parcels=4)
    data = _bold().get_fdata(dtype=np.float32)
    data[0, 0, 0, 3] = np.nan
    nan = _save(nib.Nifti1Image(data, AFFINE_2MM), tmp_path / "nan.nii.gz")
    with pytest.raises(ValueError, match=r"nan\.nii\.gz.*1 voxel values are NaN"):
        parcel_timeseries(nan, files["atlas"], n_parcels=4, t_r=T_R)
    with pytest.raises(ValueError, match=r"bold\.nii\.gz.*needs a label atlas"):
        parcel_timeseries(files["bold"], n_parcels=4)
    with pytest.raises(ValueError, match=r"labels must be integers 1..n_parcels=3"):
        parcel_timeseries(files["bold"], files["atlas"], n_parcels=3)
    atlas_4d = _save(nib.Nifti1Image(_blocks()[..., None].repeat(2, 3), AFFINE_2MM), tmp_path / "atlas4d.nii.gz")
    with pytest.raises(ValueError, match=r"bold\.nii\.gz: parcel extraction with the atlas .*atlas4d"):
        parcel_timeseries(files["bold"], atlas_4d, n_parcels=4)
    with pytest.raises(FileNotFoundError, match="atlas not found"):
        parcel_timeseries(files["bold"], tmp_path / "no_atlas.nii.gz", n_parcels=4)
    text = tmp_path / "bold.json"
    text.write_text("{}")
    with pytest.raises(ValueError, match=r"bold\.json.*unknown fMRI file type"):
        parcel_timeseries(text)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        parcel_timeseries(tmp_path / "missing.nii.gz", files["atlas"])


def _short_run(path: Path, frames: int = 20, t_r: float = 3.0) -> Path:
    """A real-length short run: ``frames`` frames at TR ``t_r``, four noisy blocks."""
    data = 100.0 + np.random.default_rng(5).standard_normal((10, 10, 10, frames))
    image = nib.Nifti1Image(data.astype(np.float32), AFFINE_2MM)
    image.header.set_zooms((2.0, 2.0, 2.0, t_r))
    image.header.set_xyzt_units("mm", "sec")
    return _save(image, path)


def test_short_run_is_refused_in_frames_and_seconds_before_filtering(files, tmp_path):
    """20 frames at TR 3 s: the default band-pass needs 34 frames (102 s); said before scipy's padlen error."""
    path = _short_run(tmp_path / "short.nii.gz")
    with pytest.raises(ValueError) as error:
        parcel_timeseries(path, files["atlas"], n_parcels=4)
    message = str(error.value)
    assert message.startswith(f"{path}: the run has 20 frames (60 s at TR 3 s); the 0.008-0.08 Hz band-pass filter")
    assert "needs at least 34 frames (102 s at this TR)" in message and "short_runs='skip_band_pass'" in message
    assert "padlen" not in message
    extracted = tmp_path / "short.npy"
    np.save(extracted, np.random.default_rng(6).standard_normal((4, 20)))
    with pytest.raises(ValueError, match=r"short\.npy: the run has 20 frames \(16 s at TR 0\.8 s\).*34 frames \(27\.2"):
        parcel_timeseries(extracted, n_parcels=4, clean_extracted=True, t_r=0.8)


def test_short_run_kept_unfiltered_with_a_warning_on_request(files, tmp_path):
    path = _short_run(tmp_path / "short.nii.gz")
    with pytest.warns(UserWarning, match=r"short\.nii\.gz: the run has 20 frames.*not filtered"):
        series = preprocess(path, files["atlas"], n_parcels=4, frames=20, short_runs="skip_band_pass")
    expected = parcel_timeseries(path, files["atlas"], n_parcels=4, high_pass=None, low_pass=None)
    np.testing.assert_allclose(series, expected, atol=1e-5)  # detrended and z-scored, not filtered
    with pytest.raises(ValueError, match="short_runs must be one of"):
        FmriParams(short_runs="pad")


@pytest.mark.parametrize(("high_pass", "low_pass", "needed"), [(0.008, 0.08, 34), (0.008, None, 19), (None, 0.08, 19),
                                                               (None, None, 1)])
def test_minimum_frames_is_exactly_what_the_filter_needs(high_pass, low_pass, needed):
    assert minimum_frames(3.0, high_pass, low_pass) == needed
    if needed > 1:  # one frame fewer fails inside scipy, that many passes
        signals = np.random.default_rng(7).standard_normal((needed, 3))
        clean(signals, detrend=True, high_pass=high_pass, low_pass=low_pass, t_r=3.0)
        with pytest.raises(ValueError, match="padlen"):
            clean(signals[:-1], detrend=True, high_pass=high_pass, low_pass=low_pass, t_r=3.0)


def test_header_declaring_a_huge_run_is_refused_before_reading(files, tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4, 4), np.float32), AFFINE_2MM)
    image.header.set_data_shape((3000, 3000, 3000, 500))
    huge = tmp_path / "huge.nii"
    huge.write_bytes(image.header.binaryblock + bytes(4) + bytes(1024))
    with pytest.raises(ValueError, match=r"huge\.nii: the header declares shape 3000 x 3000 x 3000 x 500"):
        parcel_timeseries(huge, files["atlas"], n_parcels=4)


def test_preprocess_keeps_the_first_frames(files):
    full = parcel_timeseries(files["bold"], files["atlas"], n_parcels=4)
    cropped = preprocess(files["bold"], files["atlas"], n_parcels=4, frames=200)
    assert cropped.shape == (4, 200) and cropped.flags.c_contiguous
    np.testing.assert_array_equal(cropped, full[:, :200])
    with pytest.raises(ValueError, match=rf"bold\.nii\.gz.*has {N_FRAMES} frames, fewer than the 500"):
        preprocess(files["bold"], files["atlas"], n_parcels=4, frames=500)


def test_fingerprint_records_parameters_and_atlas(files, tmp_path):
    record = fingerprint(atlas_path=files["atlas"], n_parcels=4, frames=200)
    assert record["pipeline"] == "fmri_parcels"
    assert record["params"] == {**FmriParams(n_parcels=4, frames=200).__dict__, "confound_columns": None}
    assert record["output"]["shape"] == [4, 200]
    other = _save(nib.Nifti1Image((5 - _blocks()).astype(np.int16), AFFINE_2MM), tmp_path / "atlas.nii.gz")
    assert fingerprint(atlas_path=other, n_parcels=4)["atlas"]["sha256"] != record["atlas"]["sha256"]
    assert fingerprint()["atlas"] is None


def test_params_are_validated():
    with pytest.raises(ValueError, match="high_pass < low_pass"):
        FmriParams(high_pass=0.1, low_pass=0.01)
    with pytest.raises(ValueError, match="t_r must be a positive"):
        FmriParams(t_r=0.0)


def test_cli_builds_a_cache_with_subject_splits(files, tmp_path):
    paths = [files["bold"], _save(_bold(seed=1), tmp_path / "b.nii.gz"), _save(_bold(seed=2), tmp_path / "c.nii")]
    manifest = pd.DataFrame({"id": ["s1_r1", "s1_r2", "s2_r1"], "path": [str(p) for p in paths],
                             "subject": ["s1", "s1", "s2"], "age": [40.0, 40.0, 80.0], "site": ["A", "A", "B"]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    output = tmp_path / "cache"
    main(["--manifest", str(tmp_path / "manifest.csv"), "--output", str(output), "--atlas", str(files["atlas"]),
          "--frames", "200", "--n_parcels", "4"])
    cached = pd.read_csv(output / "manifest.csv")
    assert cached["id"].tolist() == manifest["id"].tolist()
    assert {"subject", "age", "site", "split", "index"} <= set(cached.columns)
    assert cached.groupby("subject")["split"].nunique().max() == 1
    first = cached.iloc[0]
    stored = np.load(output / f"{first['split']}.npy", mmap_mode="r")[first["index"]]
    np.testing.assert_allclose(stored, preprocess(paths[0], files["atlas"], n_parcels=4, frames=200), atol=1e-6)


def test_subject_splits_keep_a_given_split_column():
    table = pd.DataFrame({"id": list("abcd"), "path": list("abcd"), "subject": ["x", "x", "y", "z"],
                          "age": [1.0, 1.0, 2.0, 3.0]})
    split = assign_subject_splits(table, seed=0)["split"]
    assert split[0] == split[1]
    given = table.assign(split=["train", "test", "val", "train"])
    pd.testing.assert_frame_equal(assign_subject_splits(given), given)




def test_monai_random_crop_cuts_contiguous_time_windows():
    """The training window crop the module docstring recommends: RandSpatialCrop over [parcels, T]."""
    series = torch.arange(3 * 50, dtype=torch.float32).reshape(3, 50)
    crop = RandSpatialCrop(roi_size=[16], random_size=False)
    crop.set_random_state(seed=0)
    starts = set()
    for _ in range(10):
        window = crop(series)
        assert window.shape == (3, 16)
        start = int(window[0, 0])
        starts.add(start)
        np.testing.assert_array_equal(np.asarray(window), series[:, start:start + 16].numpy())
    assert len(starts) > 1
