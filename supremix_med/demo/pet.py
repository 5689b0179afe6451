"""Embedded demo cohort: synthetic FDG brain PET in MNI space, written as DICOM series with SUV tags.

Real PET cohorts cannot ship with the project, so the demo generates FDG-like scans from nilearn's MNI152
2009 grey- and white-matter probability maps (2 mm, shipped with nilearn, no download). Each subject is a
DICOM PET series (Modality PT, ``Units`` BQML, ``DecayCorrection`` START) whose values are activity
concentrations in Bq/ml, with weight, dose, half-life and times set consistently, so reading it back
exercises the whole DICOM path of :mod:`preprocessing.pet` (slice order, per-slice rescale, SUV factor).

Layout written by :func:`generate_cohort`::

    <output_dir>/cohort.json          generator parameters (seed, age range, model version)
    <output_dir>/manifest.csv         id, path (the subject's series folder, relative to output_dir), age, sex
    <output_dir>/sub-0000/pet/*.dcm   one single-frame DICOM file per slice

Grid. Scans are stored on a 4 mm RAS grid in MNI millimetres (39 x 48 x 41 voxels, first voxel centre
(-76, -112, -76) mm, covering the MNI brain): clinical PET reconstructions use 2-4 mm voxels, the scanner
resolution is ~6 mm FWHM, and 4 mm keeps a subject at ~150 kB (int16, 41 files) and its generation fast.
The PET pipeline resamples it onto its 2 mm grid.

Uptake model (SUV, body weight). Grey matter ``9 * (1 - 0.004 * (A - 40) * r(y))`` with the regional profile
``r(y)`` rising linearly from 0.5 at the occipital pole to 1.5 at the frontal pole (FDG uptake declines
with age most in frontal cortex; Kalpouzos et al. 2009), female +3 %; white matter 3.2, CSF 0.6, all times
a global subject gain (log-normal, 10 %: SUV varies with body composition and glucose, which SUVR removes).
Age ``A`` is uniform in ``age_range``; sex M/F with probability 1/2. Noise: Gaussian, 40 % of the local
value on the 2 mm maps, then everything is blurred to 6 mm FWHM (scanner resolution; the blur leaves ~4 %
correlated noise) and sampled onto the 4 mm grid.

Acquisition: weight N(75, 12) kg clipped to [45, 120], dose 3.7 MBq/kg, F-18 (half-life 6586.2 s),
injection at 08:00 + U(0, 8 h) on day ``index`` after 2024-01-01, series start 60 + N(0, 5) min later
(``RadiopharmaceuticalStartDateTime``, ``SeriesDate/Time`` = ``AcquisitionDate/Time``). Activity =
SUV / factor with factor = weight_g / (dose * 2^(-delay / half-life)), stored per slice as int16 with its
own ``RescaleSlope``.

Every subject's random stream is ``numpy.random.default_rng([seed, index])`` and its UIDs derive from
``(seed, index)``, so files do not depend on the number of workers or subjects and are byte-identical for
the same seed. A subject is written into a temporary folder renamed into place when complete, so an
interrupted run resumes.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid
from scipy import ndimage

from supremix_med.demo.generation import check_cohort_request, cohort_main, write_missing
from supremix_med.io import check_generator_record

__all__ = ["F18_HALF_LIFE_S", "GRID_AFFINE", "GRID_SHAPE", "generate_cohort", "pet_header", "synthesize_suv",
           "write_pet_series"]

GRID_SHAPE = (39, 48, 41)
"""Voxel grid of the stored scans (4 mm, MNI)."""
GRID_AFFINE = np.array([[4.0, 0, 0, -76.0], [0, 4.0, 0, -112.0], [0, 0, 4.0, -76.0], [0, 0, 0, 1.0]])
"""Voxel-to-MNI (RAS+ mm) affine of the stored scans."""
F18_HALF_LIFE_S = 6586.2
MODEL_VERSION = 1
COHORT_NAME = "cohort.json"
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("id", "path", "age", "sex")
SERIES_FOLDER = "pet"
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Uptake model (SUV) and acquisition, see the module docstring.
GM_SUV, WM_SUV, CSF_SUV = 9.0, 3.2, 0.6
GM_DECLINE_PER_YEAR, DECLINE_AGE_ORIGIN = 0.004, 40.0
FEMALE_GM_GAIN, GAIN_SD = 1.03, 0.10
NOISE_FRACTION, RESOLUTION_FWHM_MM = 0.4, 6.0
WEIGHT_KG_MEAN, WEIGHT_KG_SD, WEIGHT_KG_RANGE = 75.0, 12.0, (45.0, 120.0)
DOSE_BQ_PER_KG = 3.7e6
UPTAKE_MIN, UPTAKE_SD_MIN = 60.0, 5.0
FIRST_DAY = datetime(2024, 1, 1, 8, 0, 0)
_MAX_STORED = np.iinfo(np.int16).max


@functools.lru_cache(maxsize=1)
def _tissue_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's 2 mm MNI152 GM, WM and CSF probabilities, each voxel's y coordinate (mm), and their affine."""
    from nilearn import datasets  # slow import, needed once per process

    gm_image = datasets.load_mni152_gm_template(resolution=2)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=2).dataobj) > 0
    gm = np.clip(gm_image.get_fdata(dtype=np.float32), 0, 1) * mask
    wm = np.clip(datasets.load_mni152_wm_template(resolution=2).get_fdata(dtype=np.float32), 0, 1) * mask
    csf = np.clip(1.0 - gm - wm, 0, 1) * mask
    j = np.arange(gm.shape[1], dtype=np.float32)
    y_mm = (gm_image.affine[1, 1] * j + gm_image.affine[1, 3])[None, :, None]
    return gm, wm, csf, np.broadcast_to(y_mm, gm.shape), gm_image.affine


def synthesize_suv(rng: np.random.Generator, age: float, sex: str) -> np.ndarray:
    """One subject's FDG SUV image on ``GRID_SHAPE`` (float32), per the module docstring's model."""
    gm, wm, csf, y_mm, affine = _tissue_maps()
    profile = 0.5 + (y_mm - y_mm.min()) / (y_mm.max() - y_mm.min())  # 0.5 occipital .. 1.5 frontal
    gm_suv = GM_SUV * (1.0 - GM_DECLINE_PER_YEAR * (age - DECLINE_AGE_ORIGIN) * profile)
    gm_suv = gm_suv * (FEMALE_GM_GAIN if sex == "F" else 1.0)
    suv = rng.lognormal(0.0, GAIN_SD) * (gm_suv * gm + WM_SUV * wm + CSF_SUV * csf)
    suv = suv * (1.0 + NOISE_FRACTION * rng.standard_normal(suv.shape, dtype=np.float32))
    sigma_voxels = RESOLUTION_FWHM_MM / (2.0 * np.sqrt(2.0 * np.log(2.0))) / affine[0, 0]
    suv = ndimage.gaussian_filter(suv, sigma_voxels, truncate=3.0)
    grid_to_maps = np.linalg.inv(affine) @ GRID_AFFINE
    return ndimage.affine_transform(
        suv, grid_to_maps[:3, :3], grid_to_maps[:3, 3], output_shape=GRID_SHAPE, order=1
    ).astype(np.float32)


def pet_header(
    weight_kg: float,
    dose_bq: float,
    injection: datetime,
    series_start: datetime,
    half_life_s: float = F18_HALF_LIFE_S,
    decay_correction: str = "START",
) -> pydicom.Dataset:
    """The series-level tags of a PET series that ``preprocessing.pet.suv_factor`` reads.

    Sets Modality PT, Units BQML, DecayCorrection, PatientWeight (kg), SeriesDate/Time and
    AcquisitionDate/Time (``series_start``, with microseconds), and RadiopharmaceuticalInformationSequence[0]
    with RadionuclideTotalDose (Bq), RadionuclideHalfLife (s) and RadiopharmaceuticalStartDateTime/Time.
    """
    header = pydicom.Dataset()
    header.Modality = "PT"
    header.Units = "BQML"
    header.DecayCorrection = decay_correction
    header.PatientWeight = f"{weight_kg:.2f}"
    header.SeriesDate = header.AcquisitionDate = series_start.strftime("%Y%m%d")
    header.SeriesTime = header.AcquisitionTime = series_start.strftime("%H%M%S.%f")
    drug = pydicom.Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadionuclideTotalDose = f"{dose_bq:.6g}"
    drug.RadionuclideHalfLife = f"{half_life_s}"
    drug.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f")
    drug.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S.%f")
    header.RadiopharmaceuticalInformationSequence = [drug]
    return header


def write_pet_series(
    folder: str | os.PathLike,
    activity: np.ndarray,
    affine: np.ndarray,
    header: pydicom.Dataset,
    series_uid: str,
    instance_numbers: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write a volume as a single-frame DICOM PET series, one file per slice along its third axis.

    Each slice is stored as int16 with its own ``RescaleSlope`` (its maximum |value| maps to 32767) and
    ``RescaleIntercept`` 0; geometry tags are in DICOM's LPS+ frame.

    Args:
        folder: output folder (created).
        activity: float array (I, J, K) in the header's ``Units``; I runs along a row, J down a column.
        affine: (4, 4) voxel-to-world RAS+ mm affine of ``activity``.
        header: series-level tags (e.g. ``pet_header``), copied into every slice.
        series_uid: the ``SeriesInstanceUID``; slice ``SOPInstanceUID`` values derive from it.
        instance_numbers: ``InstanceNumber`` of each slice (default 1..K).
        file_names: file name of each slice (default ``slice_000.dcm``...).

    Returns:
        the written paths, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_slices = activity.shape[2]
    instance_numbers = range(1, n_slices + 1) if instance_numbers is None else instance_numbers
    file_names = [f"slice_{k:03d}.dcm" for k in range(n_slices)] if file_names is None else file_names
    lps = LPS_FROM_RAS @ np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ds = copy.deepcopy(header)  # one dataset, its slice-level tags replaced before each file is written
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = PositronEmissionTomographyImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID = series_uid
    paths = []
    for k in range(n_slices):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.InstanceNumber = int(instance_numbers[k])
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*lps[:3, 0] / spacing[0], *lps[:3, 1] / spacing[1])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in lps[:3, :3] @ [0.0, 0.0, k] + lps[:3, 3]]
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]  # between rows, between columns
        ds.SliceThickness = f"{spacing[2]:.4f}"
        _set_pixels(ds, np.asarray(activity[:, :, k], dtype=np.float64).T)
        path = folder / file_names[k]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _set_pixels(ds: pydicom.Dataset, values: np.ndarray) -> None:
    """Store a (Rows, Columns) slice as int16 with its own RescaleSlope (intercept 0)."""
    peak = float(np.abs(values).max())
    slope = peak / _MAX_STORED if peak > 0 else 1.0
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope = f"{slope:.10g}"
    ds.RescaleIntercept = "0"
    ds.PixelData = np.rint(values / float(ds.RescaleSlope)).astype("<i2").tobytes()


# ------------------------------------------------------------------------------------------------ cohort
def _subject_id(index: int) -> str:
    return f"sub-{index:04d}"


def _subject_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _draw_covariates(rng: np.random.Generator, age_range: tuple[float, float]) -> tuple[float, str]:
    """Age (uniform, 0.1 year resolution) and sex (M/F, p = 1/2)."""
    age = round(float(rng.uniform(*age_range)), 1)
    return age, ("F", "M")[int(rng.integers(2))]


def _acquisition(rng: np.random.Generator, index: int) -> tuple[float, float, datetime, datetime]:
    """Weight (kg), dose (Bq), injection and series start of subject ``index``."""
    weight = float(np.clip(rng.normal(WEIGHT_KG_MEAN, WEIGHT_KG_SD), *WEIGHT_KG_RANGE))
    injection = FIRST_DAY + timedelta(days=index, seconds=float(rng.uniform(0.0, 8 * 3600.0)))
    uptake = timedelta(minutes=float(UPTAKE_MIN + rng.normal(0.0, UPTAKE_SD_MIN)))
    return weight, DOSE_BQ_PER_KG * weight, injection, injection + uptake


def _generate_subject(output_dir: Path, seed: int, index: int, age_range: tuple[float, float]) -> None:
    """Synthesize subject ``index`` and write its series folder (built in a temporary folder, then renamed)."""
    rng = _subject_rng(seed, index)
    age, sex = _draw_covariates(rng, age_range)
    weight, dose, injection, start = _acquisition(rng, index)
    suv = synthesize_suv(rng, age, sex)
    delay_s = (start - injection).total_seconds()
    factor = weight * 1000.0 / (dose * 2.0 ** (-delay_s / F18_HALF_LIFE_S))  # g/Bq: SUV = activity * factor
    header = pet_header(weight, dose, injection, start)
    header.PatientID = _subject_id(index)
    header.PatientSex = sex
    header.PatientAge = f"{int(age):03d}Y"
    header.StudyInstanceUID = generate_uid(entropy_srcs=[str(seed), str(index), "study"])
    subject = output_dir / _subject_id(index)
    subject.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SERIES_FOLDER}.", dir=subject))
    try:
        series_uid = generate_uid(entropy_srcs=[str(seed), str(index), "series"])
        write_pet_series(staging, suv / factor, GRID_AFFINE, header, series_uid)
        os.replace(staging, subject / SERIES_FOLDER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def generate_cohort(
    output_dir: str | Path,
    n_subjects: int = 50,
    seed: int = 0,
    age_range: tuple[float, float] = (20.0, 80.0),
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (or complete) the synthetic FDG PET cohort under ``output_dir``.

    Subject ``i`` depends only on ``(seed, i, age_range)``; a larger ``n_subjects`` extends a smaller cohort
    and subjects already written are kept.

    Args:
        output_dir: cohort folder, created if needed.
        n_subjects: number of subjects.
        seed: cohort seed.
        age_range: (youngest, oldest) age in years; ages are uniform in it.
        workers: number of processes.
        progress: show a tqdm progress bar.

    Returns:
        The manifest, also written to ``<output_dir>/manifest.csv``: ``id`` (str), ``path`` (str, the series
        folder relative to ``output_dir``), ``age`` (float, years), ``sex`` ("F"/"M").

    Raises:
        ValueError: a non-positive ``n_subjects`` or ``workers``, an empty ``age_range``, or an ``output_dir``
            holding a cohort generated with another seed, age range or model version.
    """
    age_range = check_cohort_request(n_subjects, workers, age_range)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(
        output_dir / COHORT_NAME, {"model": "demo_pet", "model_version": MODEL_VERSION, "seed": int(seed),
                     "age_range": list(age_range)}
    )
    rows = []
    for index in range(n_subjects):
        age, sex = _draw_covariates(_subject_rng(seed, index), age_range)
        rows.append({"id": _subject_id(index), "path": f"{_subject_id(index)}/{SERIES_FOLDER}", "age": age, "sex": sex})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))

    write = functools.partial(_generate_subject, output_dir, seed, age_range=age_range)
    # the maps are loaded before a pool starts: forked workers inherit them instead of loading them again
    write_missing(manifest, output_dir, Path.is_dir, write, output_dir / MANIFEST_NAME, workers, progress,
                  desc="demo PET cohort", prepare=_tissue_maps)
    return manifest


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.pet --output DIR [--n_subjects N] [--seed S] [--workers W]``."""
    return cohort_main(generate_cohort, __doc__.splitlines()[0], 50, argv, age_range=(20.0, 80.0))


if __name__ == "__main__":
    main()
