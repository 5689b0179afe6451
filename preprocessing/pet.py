"""Brain PET (DICOM series or NIfTI) -> one (1, 100, 100, 100) float32 SUV or SUVR tensor on the T1 grid.

``preprocess`` is the only implementation of this pipeline: the cache writer and inference both call it.

Steps (``PETParams`` holds every setting; ``fingerprint`` records them):

1. **Load**.
   - A folder is read as one DICOM PET series (``read_dicom_series``): every file pydicom can parse is
     read; a folder with several ``SeriesInstanceUID`` raises ``ValueError`` naming them unless ``series_uid``
     picks one. Slices are ordered by their ``ImagePositionPatient`` projected on the slice normal
     ``cross(row, column)`` of ``ImageOrientationPatient`` (never by ``InstanceNumber``); all slices must share
     one orientation, pixel grid and slice spacing (within 1 % or 0.01 mm).
     Slices sharing a position are refused as two acquisitions in one series (with the counts); a DICOM
     file that cannot be parsed, or an image object without (complete) pixel data, is refused naming the file.
   - **Rescale** (``rescale_slice``): each slice's stored values go through its own modality LUT
     (``pydicom.pixels.apply_modality_lut``: ``RescaleSlope * stored + RescaleIntercept``), since PET
     vendors scale every slice separately. Both tags are required on every slice: without them the stored
     integers are not activity, so a missing tag is an error naming the file and the tag.
   - **SUV** (``suv_factor``): the activity concentration (Bq/ml, ``Units`` must be ``BQML``) is multiplied
     by the body-weight SUV factor of the series, computed from its first-acquired slice (earliest
     ``AcquisitionDate/Time``: the scan start when bed positions differ; see ``suv_factor`` for the rule).
   - **Geometry**: the voxel-to-world affine is built in DICOM's LPS+ patient frame from the first slice's
     position, the orientation cosines, ``PixelSpacing`` and the step between the first and last slice
     positions, then converted to RAS+ by ``diag(-1, -1, 1)``.
   - A file (``.nii``/``.nii.gz``) is read with ``preprocessing.t1.load_t1`` (same validation, header size
     limit ``preprocessing.t1.MAX_VOXELS`` included, as for the SUVR mask); its values
     are SUV (``nifti_units="SUV"``) or Bq/ml (``"BQML"``). A Bq/ml NIfTI carries no dose, weight or times,
     so it needs ``suvr_mask``: the SUVR is the same whatever the (unknown) SUV factor.
2. **Resample** onto the T1 pipeline's output grid with its own functions (``preprocessing.t1``): Gaussian
   anti-aliasing of finer-than-``spacing_mm`` axes, then one trilinear ``SimpleITK`` resampling onto
   ``shape`` voxels of ``spacing_mm`` in RAS+ centred on ``centre_mm`` (default 2 mm, 100^3, centre
   (0, -17, 5) mm: the MNI152 brain box). Voxels outside the scan's field of view are 0.
3. **SUVR** (optional, ``suvr_mask``): divide by the mean SUV inside a reference region given as a NIfTI
   mask or atlas in the same world space (``suvr_label`` selects one atlas label; without it every non-zero
   voxel is the region). The mask is resampled onto the output grid (trilinear, kept where >= 0.5).

Space. The PET must already be in MNI152 space (e.g. registered to the subject's T1 and warped with the
T1's transform to MNI): its world coordinates are taken as MNI millimetres. This module does not register
(an affine registration of a PET image to the T1 template is not meaningful: the contrasts differ and the
FDG uptake pattern changes with age and disease). ``grid="scan"`` instead centres the grid on the scan's
own field of view (the T1 pipeline's ``register="never"`` grid for a non-MNI scan), e.g. for tests.
Values are quantitative (SUV or SUVR) and are not z-scored; the cache's float16 holds them exactly enough.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut
from pydicom.valuerep import DA, DT, TM

from preprocessing.registration import image_from_array
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
from preprocessing.t1 import (
    MAX_VOXELS,
    T1Params,
    antialiased_image,
    field_of_view_centre,
    grid_origin,
    load_t1,
    resample_to_grid,
)

__all__ = [
    "BUNDLE",
    "PIPELINE",
    "QC_FIELDS",
    "RUN_PARAMS",
    "VERSION",
    "PETParams",
    "PETSeries",
    "fingerprint",
    "main",
    "preprocess",
    "preprocess_with_qc",
    "read_dicom_series",
    "rescale_slice",
    "suv_factor",
]

PIPELINE = "pet"
#: The bundle this module's caches feed: the manifest's ``age`` (years) must lie in its ``plausible_range``.
BUNDLE = "pet_brainage"
VERSION = "1.0.0"
NIFTI_UNITS = ("SUV", "BQML")
GRIDS = ("mni", "scan")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SPACING_TOLERANCE = (0.01, 0.01)  # relative, absolute (mm): slice gaps that count as equal
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Tags every PET slice must carry: the modality LUT from stored values to activity.
RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")
#: QC record entries reported per scan by inference (``supremix_med.inference``), with a failed scan's value.
QC_FIELDS = {"source": "", "series_uid": "", "slices": 0, "units": "", "suv_factor": float("nan"),
             "suvr_reference_mean": float("nan"), "output_units": ""}
#: Parameters chosen per run, not compared between a model's cache and inference (which series of a folder).
RUN_PARAMS = ("series_uid",)


@dataclass(frozen=True)
class PETParams:
    """Every setting of the PET pipeline (see the module docstring for what each step does).

    Args:
        spacing_mm: output voxel size (isotropic), mm.
        shape: output grid size in voxels (x, y, z).
        centre_mm: world (MNI, RAS+) coordinate of the output grid's centre, mm (``grid="mni"``).
        grid: ``"mni"`` (grid centred on ``centre_mm``) or ``"scan"`` (centred on the scan's field of view).
        antialias: Gaussian anti-aliasing of finer-than-``spacing_mm`` inputs before resampling.
        nifti_units: units of a NIfTI input, ``"SUV"`` or ``"BQML"`` (Bq/ml; needs ``suvr_mask``).
        series_uid: the ``SeriesInstanceUID`` to read from a DICOM folder holding several series.
        suvr_mask: NIfTI reference-region mask or atlas for SUVR; None gives SUV.
        suvr_label: atlas label of the reference region; None takes every non-zero voxel of ``suvr_mask``.
    """

    spacing_mm: float = 2.0
    shape: tuple[int, int, int] = (100, 100, 100)
    centre_mm: tuple[float, float, float] = (0.0, -17.0, 5.0)
    grid: str = "mni"
    antialias: bool = True
    nifti_units: str = "SUV"
    series_uid: str | None = None
    suvr_mask: str | None = None
    suvr_label: int | None = None

    def __post_init__(self) -> None:
        for name in ("shape", "centre_mm"):  # accept lists, e.g. from JSON
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.suvr_mask is not None:
            object.__setattr__(self, "suvr_mask", str(self.suvr_mask))
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}.")
        if self.nifti_units not in NIFTI_UNITS:
            raise ValueError(f"nifti_units must be one of {NIFTI_UNITS}, got {self.nifti_units!r}.")
        if self.suvr_label is not None and self.suvr_mask is None:
            raise ValueError(f"suvr_label={self.suvr_label} needs suvr_mask (the atlas it labels).")
        # the grid checks (spacing, shape, centre) are T1Params'
        self.t1_grid()

    def t1_grid(self) -> T1Params:
        """The T1 pipeline's parameters describing the same output grid and anti-aliasing."""
        return T1Params(
            spacing_mm=self.spacing_mm, shape=self.shape, centre_mm=self.centre_mm, antialias=self.antialias,
            register="never",
        )


# ------------------------------------------------------------------------------------------------ DICOM
@dataclass(frozen=True)
class PETSeries:
    """A DICOM PET series read by ``read_dicom_series``.

    Attributes:
        activity: float32 array (I, J, K) = (column, row, slice) of rescaled values in the series' ``Units``.
        affine: (4, 4) voxel-to-world RAS+ mm affine.
        slices: the slice datasets in volume order (pixel data included).
        series_uid: the ``SeriesInstanceUID``.
        slice_spacing_mm: distance between consecutive slice centres along the normal, mm.
    """

    activity: np.ndarray
    affine: np.ndarray
    slices: tuple[pydicom.Dataset, ...]
    series_uid: str
    slice_spacing_mm: float


def _read_slice(path: Path) -> pydicom.Dataset | None:
    """One DICOM file of a series folder; None for a file that is not DICOM or not an image (a DICOMDIR, a report).

    Raises:
        ValueError: a DICOM file that cannot be parsed, or an image object (its SOP class is an image storage
            class) without pixel data: a damaged or truncated file. The message names the file.
    """
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:  # no DICM preamble: not a DICOM file
        return None
    except Exception as error:  # pydicom's parse errors share no base class (struct.error, EOFError, ...)
        raise ValueError(f"{path}: damaged DICOM file ({type(error).__name__}: {error}); re-export it or remove it "
                         "from the series folder.") from error
    if "PixelData" in ds:
        return ds
    sop_class = ds.get("SOPClassUID") or getattr(ds.get("file_meta"), "MediaStorageSOPClassUID", None)
    if sop_class is not None and "Image Storage" in getattr(sop_class, "name", ""):
        raise ValueError(f"{path}: a {sop_class.name} object without pixel data: the file is truncated or damaged; "
                         "re-export it or remove it from the series folder.")
    return None


def _read_datasets(folder: Path) -> list[pydicom.Dataset]:
    """Every DICOM image file directly in ``folder`` (other files, DICOMDIR and non-image objects are ignored)."""
    datasets = [ds for ds in map(_read_slice, sorted(p for p in folder.iterdir() if p.is_file())) if ds is not None]
    if not datasets:
        raise ValueError(f"{folder}: no DICOM image files in this folder (expected one PET series).")
    return datasets


def _select_series(datasets: list[pydicom.Dataset], folder: Path, series_uid: str | None) -> list[pydicom.Dataset]:
    """The datasets of one series: the only one present, or ``series_uid``."""
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if series_uid is None:
        if len(uids) > 1:
            raise ValueError(
                f"{folder}: holds {len(uids)} series (SeriesInstanceUID {', '.join(uids)}); "
                "pass series_uid to pick one or give each series its own folder."
            )
        series_uid = uids[0]
    if series_uid not in uids:
        raise ValueError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {', '.join(uids)}.")
    return [ds for ds in datasets if str(ds.get("SeriesInstanceUID", "")) == series_uid]


def _common(datasets: Sequence[pydicom.Dataset], keyword: str, folder: Path) -> np.ndarray:
    """A numeric (multi-)value tag that every slice must have and share (to 1e-4)."""
    values = []
    for ds in datasets:
        if keyword not in ds:
            raise ValueError(f"{folder}: slice {ds.filename} has no {keyword}.")
        value = ds[keyword].value
        values.append([float(v) for v in (value if isinstance(value, Sequence) else [value])])
    first = values[0]
    differing = [v for v in values if len(v) != len(first) or not np.allclose(v, first, rtol=0.0, atol=1e-4)]
    if differing:
        raise ValueError(f"{folder}: slices differ in {keyword} ({first} and {differing[0]}); expected one volume.")
    return np.asarray(first)


def _missing_rescale(ds: pydicom.Dataset) -> list[str]:
    """The rescale tags a PET slice lacks (absent or empty)."""
    return [keyword for keyword in RESCALE_TAGS if ds.get(keyword) in (None, "")]


def rescale_slice(ds: pydicom.Dataset) -> np.ndarray:
    """One slice's stored values mapped to real values by its modality LUT (RescaleSlope/Intercept).

    PET slices must carry both tags: vendors scale every slice separately, and without them the stored
    integers are not activity (pydicom's LUT would silently return them unchanged).

    Returns:
        float32 array (Rows, Columns) in the series' ``Units``.

    Raises:
        ValueError: a rescale tag is missing, or the pixel data cannot be decoded (e.g. a truncated file); the
            message names the file.
    """
    source = _source(ds)
    missing = _missing_rescale(ds)
    if missing:
        raise ValueError(f"{source}: missing DICOM tag {' and '.join(missing)}; a PET slice needs RescaleSlope and "
                         "RescaleIntercept to turn stored values into activity. Re-export the series with them.")
    try:
        stored = ds.pixel_array
    except (ValueError, AttributeError, NotImplementedError, RuntimeError) as error:
        raise ValueError(f"{source}: cannot decode the pixel data ({error}); the file is truncated or damaged.") \
            from error
    return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)


def _check_rescale(datasets: Sequence[pydicom.Dataset], folder: Path) -> None:
    """Refuse a series in which any slice lacks RescaleSlope or RescaleIntercept, naming a file and the tag."""
    for keyword in RESCALE_TAGS:
        lacking = [ds for ds in datasets if keyword in _missing_rescale(ds)]
        if lacking:
            raise ValueError(
                f"{folder}: {len(lacking)} of {len(datasets)} slices have no DICOM tag {keyword} (e.g. "
                f"{_source(lacking[0])}); a PET slice needs RescaleSlope and RescaleIntercept to turn stored "
                "values into activity. Re-export the series with them."
            )


def _check_distinct_positions(datasets: Sequence[pydicom.Dataset], along_normal: np.ndarray, folder: Path) -> None:
    """Refuse slices sharing a position (two acquisitions in one series) or a single slice."""
    _, counts = np.unique(np.round(along_normal / _SPACING_TOLERANCE[1]), return_counts=True)
    if counts.max() > 1:
        times = {str(ds.get("AcquisitionTime", "")) for ds in datasets} - {""}
        hint = f", {len(times)} different AcquisitionTime values" if len(times) > 1 else ""
        raise ValueError(
            f"{folder}: duplicate slice positions: likely two scans in one series ({len(datasets)} slices at "
            f"{len(counts)} distinct positions, {'/'.join(map(str, np.unique(counts)))} slices per position{hint}). "
            "Give each acquisition its own folder."
        )
    if len(datasets) < 2:
        raise ValueError(f"{folder}: expected a volume of at least 2 slices, got {len(datasets)}.")


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> PETSeries:
    """Read one PET series from a folder: slices ordered by position, each rescaled, with its RAS+ affine.

    Raises:
        ValueError: no DICOM files, several series without ``series_uid``, a non-PET modality, slices
            missing or disagreeing in geometry tags, slices sharing positions (two acquisitions in one series),
            uneven slice spacing, or a slice without RescaleSlope/RescaleIntercept (these name the folder); a
            damaged or truncated file (names the file).
    """
    folder = Path(folder)
    datasets = _select_series(_read_datasets(folder), folder, series_uid)
    modalities = sorted({str(ds.get("Modality", "")) for ds in datasets})
    if modalities != ["PT"]:
        raise ValueError(f"{folder}: expected a PET series (Modality PT), got Modality {modalities}.")
    multi_frame = [ds.filename for ds in datasets if int(ds.get("NumberOfFrames") or 1) > 1]
    if multi_frame:
        raise ValueError(f"{folder}: multi-frame files ({multi_frame[0]}, ...) are not supported; expected one "
                         "file per slice.")
    orientation = _common(datasets, "ImageOrientationPatient", folder)
    row_spacing, column_spacing = _common(datasets, "PixelSpacing", folder)
    for keyword in ("Rows", "Columns"):
        _common(datasets, keyword, folder)
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    normal = np.cross(row_cosine, column_cosine)
    unplaced = [ds for ds in datasets if "ImagePositionPatient" not in ds]
    if unplaced:
        raise ValueError(f"{folder}: slice {_source(unplaced[0])} has no ImagePositionPatient.")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    _check_distinct_positions(datasets, positions @ normal, folder)
    _check_rescale(datasets, folder)
    order = np.argsort(positions @ normal, kind="stable")
    datasets, positions = [datasets[i] for i in order], positions[order]
    gaps = np.diff(positions @ normal)
    relative, absolute = _SPACING_TOLERANCE
    if np.ptp(gaps) > max(relative * gaps.mean(), absolute):
        raise ValueError(
            f"{folder}: slice spacing is not uniform (gaps {gaps.min():.4f}..{gaps.max():.4f} mm); "
            "a missing slice or a mixed series?"
        )
    lps = np.eye(4)
    lps[:3, 0] = row_cosine * column_spacing  # along a row: the column index I
    lps[:3, 1] = column_cosine * row_spacing  # down a column: the row index J
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(datasets) - 1)
    lps[:3, 3] = positions[0]
    activity = np.stack([rescale_slice(ds).T for ds in datasets], axis=-1)
    return PETSeries(
        activity=activity,
        affine=LPS_TO_RAS @ lps,
        slices=tuple(datasets),
        series_uid=str(datasets[0].SeriesInstanceUID),
        slice_spacing_mm=float(gaps.mean()),
    )


# -------------------------------------------------------------------------------------------------- SUV
_IN_DRUG = " (in RadiopharmaceuticalInformationSequence[0])"


def _source(ds: pydicom.Dataset) -> str:
    """The file a dataset was read from, for messages."""
    return str(getattr(ds, "filename", None) or "dataset")


def _tag(ds: pydicom.Dataset, keyword: str, source: str, where: str = "") -> Any:
    """A tag's value, or a ValueError naming the missing tag (``where``: the sequence holding it)."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise ValueError(f"{source}: missing DICOM tag {keyword}{where}, needed for SUV.")
    return value


def _positive(ds: pydicom.Dataset, keyword: str, source: str, where: str = "") -> float:
    value = float(_tag(ds, keyword, source, where))
    if not value > 0:
        raise ValueError(f"{source}: {keyword}{where} must be > 0, got {value}.")
    return value


def _parse(kind: type, value: str, keyword: str, source: str) -> Any:
    """A DICOM DA/TM/DT string parsed by pydicom, or a ValueError naming the tag."""
    try:
        return kind(value)
    except ValueError as error:
        raise ValueError(f"{source}: {keyword} {value!r} is not a valid DICOM {kind.__name__} ({error}).") from error


def _date_time(ds: pydicom.Dataset, date_keyword: str, time_keyword: str, source: str) -> datetime:
    """A DA tag + TM tag (fractional seconds allowed) as a naive datetime."""
    date = _parse(DA, _tag(ds, date_keyword, source), date_keyword, source)
    return datetime.combine(date, _parse(TM, _tag(ds, time_keyword, source), time_keyword, source))


def _injection_time(ds: pydicom.Dataset, drug: pydicom.Dataset, reference: datetime, source: str) -> datetime:
    """RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime on the day that precedes ``reference``."""
    if drug.get("RadiopharmaceuticalStartDateTime"):
        value = drug.RadiopharmaceuticalStartDateTime
        return _parse(DT, value, "RadiopharmaceuticalStartDateTime", source).replace(tzinfo=None)
    if not drug.get("RadiopharmaceuticalStartTime"):
        raise ValueError(
            f"{source}: missing DICOM tag RadiopharmaceuticalStartDateTime or RadiopharmaceuticalStartTime"
            f"{_IN_DRUG}, needed for SUV."
        )
    time = _parse(TM, drug.RadiopharmaceuticalStartTime, "RadiopharmaceuticalStartTime", source)
    injection = datetime.combine(reference.date(), time)
    # without a date, an injection "after" the scan started happened the day before (scan after midnight)
    return injection - timedelta(days=1) if injection > reference else injection


def _decay_reference_time(ds: pydicom.Dataset, source: str) -> datetime:
    """Series start: SeriesDate/Time, or AcquisitionDate/Time when that is earlier (see ``suv_factor``)."""
    series = _date_time(ds, "SeriesDate", "SeriesTime", source)
    if not ds.get("AcquisitionTime"):
        return series
    date_keyword = "AcquisitionDate" if ds.get("AcquisitionDate") else "SeriesDate"
    return min(series, _date_time(ds, date_keyword, "AcquisitionTime", source))


def suv_factor(ds: pydicom.Dataset) -> float:
    """Body-weight SUV factor of a PET slice: SUVbw = activity (Bq/ml) * factor, factor = weight_g / decayed dose.

    ``factor = PatientWeight * 1000 / (RadionuclideTotalDose * 2 ** (-dt / RadionuclideHalfLife))`` in g/Bq
    (SUV is then in g/ml, i.e. unitless for a tissue density of 1 g/ml), with the radiopharmaceutical tags
    read from ``RadiopharmaceuticalInformationSequence[0]`` and ``dt`` (s) the time from injection to the
    time the image is decay-corrected to:

    - ``DecayCorrection == "ADMIN"``: activity is decay-corrected to the administration time, ``dt = 0``
      (no time tag is read).
    - ``DecayCorrection == "START"``: activity is decay-corrected to the series start. Following the QIBA
      SUV guidance (vendor-neutral rule, Kinahan et al.), the start is ``SeriesDate/SeriesTime`` unless the
      slice's ``AcquisitionDate/AcquisitionTime`` is earlier -- the series time of some vendors' derived
      series is reset after the acquisition, and the acquisition of a static scan never starts after the
      series. The injection time is ``RadiopharmaceuticalStartDateTime`` when present; otherwise
      ``RadiopharmaceuticalStartTime`` on the date of the series start, or on the day before when that would put the
      injection after the series start (injection before and scan after midnight).
    - anything else (``NONE``: not decay-corrected, frame-by-frame decay needed) raises ``ValueError``.

    Args:
        ds: one slice of the series (pixel data not needed).

    Returns:
        the factor in g/Bq (ml per Bq for SUV in g/ml).

    Raises:
        ValueError: a required tag is missing (the message names it), ``Units`` is not ``BQML``, a weight,
            dose or half-life is not positive, the decay correction is unsupported, or the injection is after
            the decay reference time.
    """
    source = _source(ds)
    units = str(_tag(ds, "Units", source)).upper()
    if units != "BQML":
        raise ValueError(f"{source}: Units is {units!r}; SUV needs activity concentration in BQML (Bq/ml).")
    weight_g = 1000.0 * _positive(ds, "PatientWeight", source)
    sequence = _tag(ds, "RadiopharmaceuticalInformationSequence", source)
    if len(sequence) == 0:
        raise ValueError(f"{source}: missing DICOM tag RadiopharmaceuticalInformationSequence item, needed for SUV.")
    drug = sequence[0]
    dose_bq = _positive(drug, "RadionuclideTotalDose", source, _IN_DRUG)
    half_life_s = _positive(drug, "RadionuclideHalfLife", source, _IN_DRUG)
    correction = str(_tag(ds, "DecayCorrection", source)).upper()
    if correction == "ADMIN":
        return weight_g / dose_bq
    if correction != "START":
        raise ValueError(f"{source}: DecayCorrection {correction!r} is not supported for SUV (expected START or "
                         "ADMIN).")
    reference = _decay_reference_time(ds, source)
    injection = _injection_time(ds, drug, reference, source)
    delay_s = (reference - injection).total_seconds()
    if delay_s < 0:
        raise ValueError(f"{source}: the injection ({injection}) is after the series start ({reference}).")
    return weight_g / (dose_bq * 2.0 ** (-delay_s / half_life_s))


def _first_acquired(slices: Sequence[pydicom.Dataset]) -> pydicom.Dataset:
    """The slice with the earliest AcquisitionDate/Time (QIBA: the series' scan start; bed positions differ)."""
    def acquired(ds: pydicom.Dataset) -> tuple[str, str]:
        return str(ds.get("AcquisitionDate") or ds.get("SeriesDate") or ""), str(ds.get("AcquisitionTime") or "")

    timed = [ds for ds in slices if ds.get("AcquisitionTime")]
    return min(timed, key=acquired) if timed else slices[0]


# ------------------------------------------------------------------------------------------------- SUVR
@functools.lru_cache(maxsize=1)
def _reference_region(config: PETParams, origin: tuple[float, float, float]) -> np.ndarray:
    """The SUVR reference region on the output grid with first voxel centre ``origin`` (mm): bool (X, Y, Z),
    read-only. Cached per process, so the scans of an MNI grid read and resample the mask once, not per scan."""
    path = Path(config.suvr_mask)
    labels, affine = _read_mask(path)
    region = labels > 0 if config.suvr_label is None else labels == config.suvr_label
    on_grid = resample_to_grid(
        image_from_array(region.astype(np.float32), affine), config.t1_grid(), np.asarray(origin), sitk.Transform()
    )
    region = on_grid >= 0.5
    region.flags.writeable = False
    if not region.any():
        what = "mask" if config.suvr_label is None else f"label {config.suvr_label}"
        raise ValueError(f"{path}: the SUVR reference {what} is empty on the output grid.")
    return region


def _read_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels (I, J, K) of a mask/atlas NIfTI (rounded: a probability mask is cut at 0.5) and its affine."""
    if not path.is_file():
        raise FileNotFoundError(f"SUVR reference mask not found: {path}")
    image = load_nifti(path, MAX_VOXELS)
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D mask or atlas, got shape {image.shape}.")
    return np.rint(read_voxels(image, path)).astype(np.int64), image.affine


# ----------------------------------------------------------------------------------------------- public
def _load(path: Path, config: PETParams) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(SUV or activity volume (I, J, K), RAS+ affine, QC entries) of a DICOM folder or NIfTI file."""
    if not path.exists():
        raise FileNotFoundError(f"PET scan not found: {path}")
    if path.is_dir():
        series = read_dicom_series(path, config.series_uid)
        factor = suv_factor(_first_acquired(series.slices))
        qc = {
            "source": "dicom",
            "series_uid": series.series_uid,
            "slices": len(series.slices),
            "units": "BQML",
            "decay_correction": str(series.slices[0].DecayCorrection).upper(),
            "suv_factor": factor,
        }
        return series.activity * np.float32(factor), series.affine, qc
    if not path.name.endswith(_NIFTI_SUFFIXES):
        raise ValueError(f"{path}: expected a DICOM series folder or a .nii/.nii.gz file.")
    if config.nifti_units == "BQML" and config.suvr_mask is None:
        raise ValueError(f"{path}: a NIfTI in Bq/ml has no SUV factor; give suvr_mask (SUVR) or an SUV image.")
    data, affine = load_t1(path)
    qc = {"source": "nifti", "series_uid": None, "slices": int(data.shape[2]), "units": config.nifti_units,
          "decay_correction": None, "suv_factor": None}
    return data, affine, qc


def preprocess_with_qc(path: str | os.PathLike, **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess a PET scan and report how (see the module docstring for the steps).

    Args:
        path: DICOM series folder or NIfTI file.
        **params: any ``PETParams`` field.

    Returns:
        (image, qc): float32 array of shape (1, *shape) (default (1, 100, 100, 100)), RAS+ axis order, SUV
        (or SUVR with ``suvr_mask``); and a JSON-serialisable dict with ``source`` ("dicom"/"nifti"),
        ``series_uid``, ``slices``, ``units`` (of the input), ``decay_correction``, ``suv_factor`` (g/Bq,
        DICOM), ``input_shape``, ``input_spacing_mm``, ``input_orientation``, ``space``,
        ``suvr_reference_mean`` (mean SUV -- Bq/ml for a ``BQML`` NIfTI -- in the reference region, or None)
        and ``output_units`` ("SUV"/"SUVR").

    Raises:
        FileNotFoundError, ValueError: see ``read_dicom_series``, ``suv_factor`` and ``load_t1``; an empty
            reference region.
    """
    config = PETParams(**params)
    path = Path(path)
    data, affine, qc = _load(path, config)
    grid = config.t1_grid()
    centre = config.centre_mm if config.grid == "mni" else field_of_view_centre(affine, data.shape)
    origin = grid_origin(grid, centre)
    volume = resample_to_grid(antialiased_image(data, affine, grid), grid, origin, sitk.Transform())
    reference_mean = None
    if config.suvr_mask is not None:
        reference_mean = float(volume[_reference_region(config, tuple(origin.tolist()))].mean())
        if not reference_mean > 0:
            raise ValueError(f"{path}: mean uptake {reference_mean} in the SUVR reference region is not positive.")
        volume = volume / np.float32(reference_mean)
    qc.update(
        path=str(path),
        input_shape=list(data.shape),
        input_spacing_mm=np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        input_orientation="".join(nib.aff2axcodes(affine)),
        space="MNI152" if config.grid == "mni" else "scanner",
        suvr_reference_mean=reference_mean,
        output_units="SUV" if config.suvr_mask is None else "SUVR",
    )
    return volume.astype(np.float32)[None], qc


def preprocess(path: str | os.PathLike, **params: Any) -> np.ndarray:
    """Preprocess a PET scan to a float32 array of shape (1, 100, 100, 100) (see ``preprocess_with_qc``)."""
    return preprocess_with_qc(path, **params)[0]


def fingerprint(**params: Any) -> dict[str, Any]:
    """Everything that determines ``preprocess``'s output, as a JSON-ready dict.

    Args:
        **params: ``PETParams`` fields; the rest take their defaults.

    Returns:
        ``{"pipeline", "version", "params", "libraries", "output"}``; ``output`` gives the shape, dtype,
        spacing, orientation, space, units and the world coordinates (mm) of the first and last voxel
        centres (``grid="mni"``).
    """
    config = PETParams(**params)
    grid = config.t1_grid()
    origin = grid_origin(grid, config.centre_mm)
    record = {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": asdict(config),
        "libraries": library_versions("nibabel", "pydicom", "SimpleITK", "numpy", "scipy", "supremix-med"),
        "output": {
            "shape": [1, *config.shape],
            "dtype": "float32",
            "spacing_mm": config.spacing_mm,
            "orientation": "RAS",
            "space": "MNI152" if config.grid == "mni" else "scanner (grid centred on each scan)",
            "units": "SUV" if config.suvr_mask is None else "SUVR",
            "first_voxel_centre_mm": origin.tolist(),
            "last_voxel_centre_mm": (origin + (np.asarray(config.shape) - 1) * config.spacing_mm).tolist(),
        },
    }
    return json.loads(json.dumps(record))


# --------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = cache_parser(
        "python -m preprocessing.pet",
        "Preprocess the PET scans (DICOM folders or NIfTI) of a manifest (id,path[,age,...]) into a cache.",
    )
    parser.add_argument("--suvr_mask", type=Path, default=None, help="NIfTI reference-region mask/atlas (SUVR)")
    parser.add_argument("--suvr_label", type=int, default=None, help="atlas label of the reference region")
    parser.add_argument("--nifti_units", choices=NIFTI_UNITS, default="SUV", help="units of NIfTI inputs")
    return add_cache_arguments(parser)


def _build(args: argparse.Namespace) -> None:
    params = {
        "suvr_mask": None if args.suvr_mask is None else str(args.suvr_mask.resolve()),
        "suvr_label": args.suvr_label,
        "nifti_units": args.nifti_units,
    }
    build_cache_from_cli(load_cli_manifest(args.manifest), args, preprocess_with_qc, fingerprint, params, "scans",
                         bundle=BUNDLE)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m preprocessing.pet``: build the cache (:func:`_build`); a refused input ends in one line, status 2."""
    run_cli(_parser(), argv, _build)


if __name__ == "__main__":
    main()
