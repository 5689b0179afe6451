"""Resting-state fMRI -> one (n_parcels, frames) float32 array of parcel time series (default (400, 478)).

``preprocess`` is the only implementation of this pipeline: the cache writer and inference both call it.

Two kinds of input give the same kind of output, rows in parcel-label order 1..n_parcels, columns in time:

**A 4-D NIfTI in MNI space** (``.nii``/``.nii.gz``, e.g. HCP Aging's ``rfMRI_REST*_Atlas_MSMAll_hp0_clean``
volumes or fMRIPrep's ``space-MNI152NLin2009cAsym_desc-preproc_bold``), with a label atlas supplied by the user
(``atlas_path``: Schaefer 2018, 400 parcels, any resolution; 0 is background). The header's declared size
is checked before reading (at most ``MAX_VOXELS`` = 2**31 voxels for a run, 2**28 for the atlas).
nilearn's ``NiftiLabelsMasker`` resamples the atlas onto the scan's grid (nearest neighbour), averages the
voxels of each parcel and cleans each parcel series (``nilearn.signal.clean``), in this order:

1. linear detrending (``detrend``);
2. regression of the confounds (if a table is given: a TSV/CSV path or a DataFrame, one row per frame; its
   numeric columns, or ``confound_columns``, are used after filling missing values -- the first row of
   fMRIPrep's derivatives is ``n/a`` -- with the column mean); the confounds are filtered like the signal;
3. Butterworth band-pass ``high_pass``..``low_pass`` Hz (default 0.008-0.08 Hz), which needs the repetition
   time: ``t_r`` if given, else the header's ``pixdim[4]`` (in seconds; ms/us headers are converted). The
   forward-backward filter needs a minimum number of frames (``minimum_frames``: 34 for a band-pass, 19 for
   a high- or low-pass alone); a shorter run is refused before filtering, with that minimum in frames and
   seconds, or kept unfiltered with a warning when ``short_runs="skip_band_pass"``;
4. z-score per parcel (``standardize="zscore_sample"``: mean 0, sample standard deviation 1 over time).

A label of 1..n_parcels with no voxel in the scan's field of view (or absent from the atlas) gives a row of
zeros, and a ``UserWarning`` names the file and the labels, so the output shape never depends on the scan or
on nilearn's version (its masker drops such labels; we put every column back by its ``region_ids_``).

**Already-extracted series** (the CBIG / HCP pipelines' outputs): ``.npy``, ``.csv``/``.txt`` (comma- or
whitespace-separated numbers, no header) or ``.mat`` (MATLAB <= v7.2; the single 2-D numeric variable, or the
one named by ``mat_variable``), shaped [n_parcels, T] or [T, n_parcels]; the orientation is the axis of length
``n_parcels`` (a square array is refused as ambiguous). These series are taken as already cleaned: the
detrend/band-pass/z-score steps are NOT applied again unless ``clean_extracted=True`` (which then needs
``t_r``). ``atlas_path`` is not used.

``preprocess`` keeps the first ``frames`` frames (a shorter run is refused), so every sample of a cache has
the same shape. A recording can hold several runs per subject: the manifest's ``subject`` column is carried
into the cache, and ``main`` assigns the splits per subject (all runs of a subject share a split). The cache
stores float32 (extracted series may be in raw BOLD units, beyond float16's range). The command line takes
no confounds (the cache calls ``preprocess`` with a path only): give it denoised runs (e.g. HCP's ICA-FIX
``clean`` data) or call ``preprocess(path, atlas_path, confounds=...)`` yourself.

Windows. Training on fixed-length windows of a [parcels, T] sample uses MONAI's
``RandSpatialCrop(roi_size=[length], random_size=False)`` (or ``RandSpatialCropd``): with the parcels as
channels, time is its one spatial axis, so it cuts a random contiguous window of ``length`` frames.
Evaluation averages predictions over the windows that cover a series
(:func:`supremix_med.engines.windows.sliding_windows`).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import scipy
import scipy.io
import scipy.signal
from nilearn.maskers import NiftiLabelsMasker
from nilearn.signal import clean

from preprocessing._common import (
    add_cache_arguments,
    build_cache_from_cli,
    cache_parser,
    library_versions,
    load_cli_manifest,
    load_nifti,
    read_voxels,
    run_cli,
)
from supremix_med.data.splits import assign_splits
from supremix_med.io import file_sha256

__all__ = [
    "BUNDLE",
    "EXTRACTED_SUFFIXES",
    "MAX_VOXELS",
    "PIPELINE",
    "SHORT_RUNS",
    "VERSION",
    "FmriParams",
    "assign_subject_splits",
    "fingerprint",
    "main",
    "minimum_frames",
    "parcel_timeseries",
    "preprocess",
]

PIPELINE = "fmri_parcels"
#: The bundle this module's caches feed: the manifest's ``age`` (years) must lie in its ``plausible_range``.
BUNDLE = "hcp_aging"
VERSION = "1.0.0"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
EXTRACTED_SUFFIXES = (".npy", ".csv", ".txt", ".mat")
_SECONDS_PER_UNIT = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
#: Largest 4-D run read, in voxels (x * y * z * frames) declared by the header: 2**31 (8 GiB as float32; HCP
#: Aging's 2 mm runs hold 91 x 109 x 91 x 478 = 431 million). A larger header is refused before reading.
MAX_VOXELS = 2**31
#: Order of the Butterworth filter nilearn's cleaning applies (``nilearn.signal.butterworth``'s default).
BUTTERWORTH_ORDER = 5
#: What to do with a run shorter than the temporal filter needs (``FmriParams.short_runs``).
SHORT_RUNS = ("refuse", "skip_band_pass")
#: Largest label atlas read, in voxels (a 1 mm MNI atlas has 7 million).
MAX_ATLAS_VOXELS = 2**28

Confounds = str | os.PathLike | pd.DataFrame | None


@dataclass(frozen=True)
class FmriParams:
    """Every setting of the fMRI pipeline (see the module docstring for what each step does).

    Args:
        n_parcels: number of parcels, i.e. output rows (labels 1..n_parcels of the atlas).
        frames: number of frames ``preprocess`` keeps (from the start).
        t_r: repetition time, s; ``None`` reads it from the NIfTI header.
        detrend: remove a linear trend from each parcel series.
        high_pass: high-pass cut-off, Hz (``None``: none).
        low_pass: low-pass cut-off, Hz (``None``: none).
        standardize: nilearn's ``standardize`` (``"zscore_sample"``, ``"zscore"``, ``"psc"`` or ``False``).
        strategy: how the voxels of a parcel are combined (nilearn's ``strategy``: ``"mean"``, ``"median"``...).
        clean_extracted: apply detrend/band-pass/z-score to already-extracted series as well.
        mat_variable: variable of a ``.mat`` file to read (``None``: its only 2-D numeric variable).
        confound_columns: columns of a confounds table to regress (``None``: every numeric column).
        short_runs: a run with fewer frames than the temporal filter needs (:func:`minimum_frames`) is
            refused (``"refuse"``, naming the minimum in frames and seconds) or kept without the filter, with a
            warning (``"skip_band_pass"``).
    """

    n_parcels: int = 400
    frames: int = 478
    t_r: float | None = None
    detrend: bool = True
    high_pass: float | None = 0.008
    low_pass: float | None = 0.08
    standardize: str | bool = "zscore_sample"
    strategy: str = "mean"
    clean_extracted: bool = False
    mat_variable: str | None = None
    confound_columns: tuple[str, ...] | None = None
    short_runs: str = "refuse"

    def __post_init__(self) -> None:
        if self.short_runs not in SHORT_RUNS:
            raise ValueError(f"short_runs must be one of {SHORT_RUNS}, got {self.short_runs!r}.")
        if self.confound_columns is not None:  # accept lists, e.g. from JSON
            object.__setattr__(self, "confound_columns", tuple(self.confound_columns))
        if self.n_parcels < 1 or self.frames < 1:
            raise ValueError(f"n_parcels and frames must be positive, got {self.n_parcels} and {self.frames}.")
        if self.t_r is not None and not self.t_r > 0:
            raise ValueError(f"t_r must be a positive number of seconds, got {self.t_r}.")
        if self.high_pass is not None and self.low_pass is not None and not 0 < self.high_pass < self.low_pass:
            raise ValueError(f"need 0 < high_pass < low_pass (Hz), got {self.high_pass} and {self.low_pass}.")


# ---------------------------------------------------------------------------------------------- helpers
def _suffix(path: Path) -> str:
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def _repetition_time(image: nib.Nifti1Image, path: Path, t_r: float | None) -> float:
    """``t_r`` if given, else the header's pixdim[4] converted to seconds."""
    if t_r is not None:
        return float(t_r)
    zooms = image.header.get_zooms()
    value = float(zooms[3]) if len(zooms) > 3 else 0.0
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{path}: the header gives no repetition time (pixdim[4] = {value}); pass t_r (seconds).")
    unit = image.header.get_xyzt_units()[1]
    return value * _SECONDS_PER_UNIT.get(unit, 1.0)


def minimum_frames(t_r: float, high_pass: float | None, low_pass: float | None) -> int:
    """The fewest frames the temporal filter can process (1 when there is no filter).

    nilearn filters with a Butterworth filter of order ``BUTTERWORTH_ORDER`` in second-order sections,
    applied forward and backward (``scipy.signal.sosfiltfilt``), which extends each end of the series by
    ``padlen = 3 * (2 * n_sections + 1 - shared zeros)`` frames (scipy's documented default) and needs more
    frames than that: 34 for a band-pass, 19 for a high- or low-pass alone, whatever the TR (the TR sets
    only how many seconds that is).

    Args:
        t_r: repetition time, s.
        high_pass, low_pass: cut-offs in Hz (None: none), below the Nyquist frequency 1 / (2 t_r).
    """
    cut_offs = [f for f in (high_pass, low_pass) if f is not None]
    if not cut_offs:
        return 1
    kind = "band" if len(cut_offs) == 2 else ("high" if high_pass is not None else "low")
    sos = scipy.signal.butter(BUTTERWORTH_ORDER, cut_offs if kind == "band" else cut_offs[0], btype=kind,
                              output="sos", fs=1.0 / t_r)
    taps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * taps + 1


def _filter_name(config: FmriParams) -> str:
    """The temporal filter in words, e.g. "0.008-0.08 Hz band-pass"."""
    if config.high_pass is not None and config.low_pass is not None:
        return f"{config.high_pass:g}-{config.low_pass:g} Hz band-pass"
    if config.high_pass is not None:
        return f"{config.high_pass:g} Hz high-pass"
    return f"{config.low_pass:g} Hz low-pass"


def _temporal_filter(t_r: float, n_frames: int, config: FmriParams, path: Path) -> FmriParams:
    """The settings to clean this run with: ``config``, or without its filter for a short run when asked.

    Checks the cut-offs against the Nyquist frequency 1 / (2 t_r) and the run's length against
    :func:`minimum_frames`, before any filtering, so a short run gets a message in frames and seconds instead
    of scipy's "padlen" error.

    Raises:
        ValueError: a cut-off at or above Nyquist, or a run too short for the filter with
            ``short_runs="refuse"``; the message names the file.

    Warns:
        UserWarning: a run too short for the filter with ``short_runs="skip_band_pass"`` (it is not filtered).
    """
    nyquist = 0.5 / t_r
    highest = max(f for f in (config.high_pass, config.low_pass, 0.0) if f is not None)
    if highest >= nyquist:
        raise ValueError(f"{path}: with t_r = {t_r} s the Nyquist frequency is {nyquist:.4f} Hz, below the "
                         f"band-pass cut-off {highest} Hz; check t_r.")
    needed = minimum_frames(t_r, config.high_pass, config.low_pass)
    if n_frames >= needed:
        return config
    short = (f"{path}: the run has {n_frames} frames ({n_frames * t_r:g} s at TR {t_r:g} s); the "
             f"{_filter_name(config)} filter (Butterworth order {BUTTERWORTH_ORDER}, forward and backward) needs "
             f"at least {needed} frames ({needed * t_r:g} s at this TR)")
    if config.short_runs == "refuse":
        raise ValueError(f"{short}. Use a longer run, or set short_runs='skip_band_pass' (--short_runs "
                         "skip_band_pass) to keep such runs without the filter.")
    warnings.warn(f"{short}: not filtered (short_runs='skip_band_pass'), only detrended and standardised.",
                  stacklevel=3)
    return replace(config, high_pass=None, low_pass=None)


def _confound_matrix(confounds: Confounds, n_frames: int, config: FmriParams, path: Path) -> np.ndarray | None:
    """The confounds as a (T, n_confounds) float array (missing values -> column mean), or None."""
    if confounds is None:
        return None
    source = "the confounds table"
    if not isinstance(confounds, pd.DataFrame):
        source = str(confounds)
        sep = "\t" if str(confounds).lower().endswith(".tsv") else ","
        try:
            confounds = pd.read_csv(confounds, sep=sep, na_values=["n/a"])
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read confounds {source} ({error}).") from error
    if config.confound_columns is not None:
        missing = [c for c in config.confound_columns if c not in confounds.columns]
        if missing:
            raise ValueError(f"{path}: confound columns {missing} are not in {source} (columns: "
                             f"{list(confounds.columns)}).")
        confounds = confounds[list(config.confound_columns)]
    table = confounds.select_dtypes("number")
    if table.shape[1] == 0 or len(table) != n_frames:
        raise ValueError(f"{path}: {source} must have one row per frame ({n_frames}) and numeric columns; got "
                         f"{len(table)} rows and {table.shape[1]} numeric columns.")
    return table.fillna(table.mean()).fillna(0.0).to_numpy(dtype=np.float64)


# ----------------------------------------------------------------------------------------- 4-D NIfTI input
def _load_bold(path: Path) -> nib.Nifti1Image:
    """The 4-D image held in memory as float32 (read once), checked: size, 4-D, >= 2 frames, finite."""
    image = load_nifti(path, MAX_VOXELS)
    if len(image.shape) != 4 or image.shape[3] < 2:
        raise ValueError(f"{path}: expected a 4-D fMRI image (x, y, z, time) with at least 2 frames, got shape "
                         f"{image.shape}.")
    data = read_voxels(image, path)
    if not np.isfinite(np.sum(data, dtype=np.float64)):  # one pass, no full-size temporary
        raise ValueError(f"{path}: {int(np.count_nonzero(~np.isfinite(data)))} voxel values are NaN or infinite.")
    return type(image)(data, image.affine, image.header)


def _labels_in_order(signals: np.ndarray, region_ids: dict, n_parcels: int, path: Path) -> np.ndarray:
    """(n_parcels, T) array with the masker's column ``i`` at row ``region_ids[i] - 1``; missing rows are 0."""
    labels = {i: float(label) for i, label in region_ids.items() if i != "background"}
    outside = sorted(label for label in labels.values() if label != int(label) or not 1 <= label <= n_parcels)
    if outside:
        raise ValueError(f"atlas labels must be integers 1..n_parcels={n_parcels}, got {outside[:10]}; set "
                         f"n_parcels to the atlas' number of parcels.")
    rows = np.zeros((n_parcels, signals.shape[0]), dtype=np.float32)
    for column, label in labels.items():
        rows[int(label) - 1] = signals[:, column]
    absent = sorted(set(range(1, n_parcels + 1)) - {int(label) for label in labels.values()})
    if absent:
        warnings.warn(f"{path}: {len(absent)} of {n_parcels} parcels have no voxel in the field of view (or are "
                      f"not in the atlas) and are left as rows of zeros: labels {absent}.", stacklevel=3)
    return rows


def _nifti_timeseries(path: Path, atlas_path: str | os.PathLike | None, confounds: Confounds,
                      config: FmriParams) -> np.ndarray:
    if atlas_path is None:
        raise ValueError(f"{path}: a 4-D NIfTI needs a label atlas (atlas_path), e.g. Schaefer 2018 400 parcels.")
    if not Path(atlas_path).is_file():
        raise FileNotFoundError(f"atlas not found: {atlas_path}")
    atlas = load_nifti(atlas_path, MAX_ATLAS_VOXELS)
    image = _load_bold(path)
    t_r = _repetition_time(image, path, config.t_r)
    config = _temporal_filter(t_r, image.shape[3], config, path)
    masker = NiftiLabelsMasker(
        labels_img=atlas, detrend=config.detrend, high_pass=config.high_pass, low_pass=config.low_pass,
        t_r=t_r, standardize=config.standardize, strategy=config.strategy, resampling_target="data",
        dtype=np.float32, reports=False,
    )
    confound_matrix = _confound_matrix(confounds, image.shape[3], config, path)
    with warnings.catch_warnings():  # the labels lost to resampling are reported below, with the file name
        warnings.filterwarnings("ignore", message="After resampling the label image")
        try:
            signals = masker.fit_transform(image, confounds=confound_matrix)
        except (ValueError, TypeError) as error:  # e.g. a 4-D or empty atlas, or no label left in the scan
            raise ValueError(f"{path}: parcel extraction with the atlas {atlas_path} failed ({error}).") from error
    return _labels_in_order(signals, masker.region_ids_, config.n_parcels, path)


# ------------------------------------------------------------------------------------- extracted input
def _read_mat(path: Path, variable: str | None) -> np.ndarray:
    """The single 2-D numeric variable of a ``.mat`` file, or the one named ``variable``."""
    try:
        content = scipy.io.loadmat(path)
    except NotImplementedError as error:  # MATLAB v7.3 files are HDF5
        raise ValueError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7 or as .npy.") from error
    except (OSError, ValueError, scipy.io.matlab.MatReadError) as error:
        raise ValueError(f"{path}: cannot be read as a MATLAB file ({error}).") from error
    arrays = {k: v for k, v in content.items()
              if not k.startswith("__") and isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype.kind in "iuf"}
    if variable is not None:
        if variable not in arrays:
            raise ValueError(f"{path}: no 2-D numeric variable {variable!r}; found {sorted(arrays)}.")
        return arrays[variable]
    if len(arrays) != 1:
        raise ValueError(f"{path}: expected exactly one 2-D numeric variable, found {sorted(arrays)}; set "
                         f"mat_variable.")
    return next(iter(arrays.values()))


def _read_array(path: Path, suffix: str) -> np.ndarray:
    """A ``.npy`` array, or the numbers of a comma- or whitespace-separated text file."""
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with open(path, encoding="utf-8") as handle:
            delimiter = "," if "," in handle.readline() else None
        return np.loadtxt(path, delimiter=delimiter, ndmin=2)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as a numeric {suffix} array ({error}).") from error


def _read_extracted(path: Path, config: FmriParams) -> np.ndarray:
    """The stored array as (n_parcels, T) float32, checked: 2-D, finite, one axis of length n_parcels."""
    suffix = _suffix(path)
    array = _read_mat(path, config.mat_variable) if suffix == ".mat" else _read_array(path, suffix)
    n = config.n_parcels
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected a 2-D numeric array [n_parcels, T] or [T, n_parcels], got "
                         f"{array.dtype} {array.shape}.")
    if array.shape == (n, n):
        raise ValueError(f"{path}: a {n} x {n} array is ambiguous (which axis is time?); store [n_parcels, T].")
    if n not in array.shape:
        raise ValueError(f"{path}: expected one axis of length n_parcels={n}, got shape {array.shape}.")
    series = np.asarray(array if array.shape[0] == n else array.T, dtype=np.float32)
    if not np.isfinite(series).all():
        raise ValueError(f"{path}: {int(np.count_nonzero(~np.isfinite(series)))} values are NaN or infinite.")
    return series


def _clean_extracted(series: np.ndarray, confounds: Confounds, config: FmriParams, path: Path) -> np.ndarray:
    """Apply the masker's cleaning steps to an extracted (n_parcels, T) array (``clean_extracted=True``)."""
    if config.t_r is None:
        raise ValueError(f"{path}: cleaning extracted series (clean_extracted=True) needs t_r (seconds).")
    config = _temporal_filter(config.t_r, series.shape[1], config, path)
    cleaned = clean(series.T, detrend=config.detrend, standardize=config.standardize, high_pass=config.high_pass,
                    low_pass=config.low_pass, t_r=config.t_r,
                    confounds=_confound_matrix(confounds, series.shape[1], config, path))
    return np.ascontiguousarray(cleaned.T, dtype=np.float32)


# ------------------------------------------------------------------------------------------------ public
def parcel_timeseries(path: str | os.PathLike, atlas_path: str | os.PathLike | None = None,
                      t_r: float | None = None, confounds: Confounds = None, **params: Any) -> np.ndarray:
    """Parcel time series of one fMRI run (see the module docstring for the steps).

    Args:
        path: 4-D NIfTI (``.nii``/``.nii.gz``) in MNI space, or extracted series (``.npy``, ``.csv``, ``.txt``,
            ``.mat``).
        atlas_path: label image (integers 1..n_parcels, 0 background) in MNI space; needed for a NIfTI.
        t_r: repetition time, s (default: the NIfTI header's).
        confounds: a TSV/CSV path or a DataFrame, one row per frame, regressed out of the signal.
        **params: any other ``FmriParams`` field (``n_parcels``, ``clean_extracted``, ...).

    Returns:
        float32 array (n_parcels, T): row ``k`` is parcel label ``k + 1`` (zeros when it has no voxel).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown file type, an unreadable file, a NIfTI that is not 4-D or holds NaN/inf, no
            repetition time, a cut-off above Nyquist, atlas labels beyond n_parcels, an extracted array with no
            axis of length n_parcels (or a square one), or confounds of the wrong length. The message names
            the file.

    Warns:
        UserWarning: parcels without a voxel in the field of view (their rows are 0), naming file and labels.
    """
    config = FmriParams(t_r=t_r, **params)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fMRI file not found: {path}")
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _nifti_timeseries(path, atlas_path, confounds, config)
    if suffix not in EXTRACTED_SUFFIXES:
        raise ValueError(f"{path}: unknown fMRI file type {suffix!r}; expected one of "
                         f"{NIFTI_SUFFIXES + EXTRACTED_SUFFIXES}.")
    series = _read_extracted(path, config)
    return _clean_extracted(series, confounds, config, path) if config.clean_extracted else series


def preprocess(path: str | os.PathLike, atlas_path: str | os.PathLike | None = None, confounds: Confounds = None,
               **params: Any) -> np.ndarray:
    """Parcel time series cropped to a fixed length: the cache's and inference's entry point.

    Args:
        path, atlas_path, confounds: see ``parcel_timeseries``.
        **params: ``FmriParams`` fields (``t_r`` included).

    Returns:
        float32 array (n_parcels, frames), default (400, 478): the first ``frames`` frames.

    Raises:
        ValueError: see ``parcel_timeseries``; or the run has fewer than ``frames`` frames.
    """
    frames = FmriParams(**params).frames
    series = parcel_timeseries(path, atlas_path, confounds=confounds, **params)
    if series.shape[1] < frames:
        raise ValueError(f"{path}: the run has {series.shape[1]} frames, fewer than the {frames} kept (frames).")
    return np.ascontiguousarray(series[:, :frames])


def fingerprint(atlas_path: str | os.PathLike | None = None, **params: Any) -> dict[str, Any]:
    """Everything that determines ``preprocess``'s output, as a JSON-ready dict.

    Args:
        atlas_path: the label atlas (its SHA-256 is recorded, so a different atlas invalidates a cache).
        **params: ``FmriParams`` fields; the rest take their defaults.

    Returns:
        ``{"pipeline", "version", "params", "atlas", "libraries", "output"}``.
    """
    config = FmriParams(**params)
    atlas = None if atlas_path is None else {"name": Path(atlas_path).name, "sha256": file_sha256(atlas_path)}
    record = {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": asdict(config),
        "atlas": atlas,
        "libraries": library_versions("nilearn", "nibabel", "numpy", "scipy"),
        "output": {"shape": [config.n_parcels, config.frames], "dtype": "float32", "axes": ["parcel", "time"],
                   "rows": "atlas labels 1..n_parcels"},
    }
    return json.loads(json.dumps(record))



def assign_subject_splits(manifest: pd.DataFrame, seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15),
                          stratify: str | None = "age") -> pd.DataFrame:
    """The manifest with a ``split`` column in which all runs of a subject share one split.

    Subjects (the ``subject`` column, else each row) are split with ``assign_splits``, stratified by their
    first run's ``stratify`` value; a ``split`` column already present is kept.
    """
    if "split" in manifest.columns or "subject" not in manifest.columns:
        return manifest
    subjects = manifest.drop_duplicates("subject").sort_values("subject", kind="stable").set_index("subject")
    split = assign_splits(subjects, fractions, seed=seed, stratify=stratify if stratify in subjects else None)
    return manifest.assign(split=manifest["subject"].map(split))


# --------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = cache_parser(
        "python -m preprocessing.fmri",
        "Parcel time series of the fMRI runs of a manifest (columns id,path[,subject,age,sex,site,split]) into a "
        "cache; runs of one subject share a split.",
    )
    parser.add_argument("--atlas", type=Path, help="label atlas (NIfTI), needed for 4-D NIfTI runs")
    parser.add_argument("--frames", type=int, default=FmriParams.frames, help="frames kept per run (default 478)")
    parser.add_argument("--n_parcels", type=int, default=FmriParams.n_parcels, help="parcels (default 400)")
    parser.add_argument("--t_r", type=float, help="repetition time in s (default: the NIfTI header's)")
    parser.add_argument("--short_runs", choices=SHORT_RUNS, default="refuse",
                        help="a run too short for the band-pass: refuse it (default) or keep it unfiltered, warned")
    return add_cache_arguments(parser)


def _build(args: argparse.Namespace) -> None:
    params = {"atlas_path": args.atlas, "frames": args.frames, "n_parcels": args.n_parcels, "t_r": args.t_r,
              "short_runs": args.short_runs}
    build_cache_from_cli(
        assign_subject_splits(load_cli_manifest(args.manifest)), args, preprocess, fingerprint, params, "runs",
        bundle=BUNDLE, dtype="float32",  # extracted series may be raw BOLD units, beyond float16's range
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m preprocessing.fmri``: build the cache (:func:`_build`); a refused input ends in one line, status 2."""
    run_cli(_parser(), argv, _build)


if __name__ == "__main__":
    main()
