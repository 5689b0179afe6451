"""T1-weighted MRI -> one (1, 100, 100, 100) float32 tensor on a fixed 2 mm MNI152 grid.

``preprocess`` is the only implementation of this pipeline: the cache writer and inference both call it.

Steps (``T1Params`` holds every setting; ``fingerprint`` records them):

1. **Load** ``.nii``/``.nii.gz`` with nibabel and validate it (``load_t1``): a header declaring at most
   ``MAX_VOXELS`` (2**28) voxels, checked before reading; readable, 3-D (a 4-D image with one volume is
   accepted), at least 8 voxels per axis, voxel sizes in [0.1, 10] mm, finite, not constant.
   Failures raise ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file.
2. **Anti-alias**: Gaussian smoothing along each input axis with
   ``sigma = sqrt(max(spacing_mm**2 - voxel_mm**2, 0)) / (2 * sqrt(2 * ln 2))`` (``scipy.ndimage``), i.e.
   the blur that brings a voxel of width ``voxel_mm`` to a resolution (FWHM) of ``spacing_mm``. Every input
   resolution thus ends with the same effective resolution; 2 mm or coarser axes are not smoothed.
3. **Decide whether to register** (``register`` = ``"auto"``, ``"always"`` or ``"never"``; the decision
   and its reason are returned in the QC dict). ``"auto"`` keeps a scan unregistered only if
   (a) its header is MNI-like: axis-aligned, isotropic 1 mm or 2 mm voxels, field of view containing the
   MNI152 brain, and (b) its content agrees: the similarity (below) with the template is at least
   ``mni_similarity_threshold``. Otherwise the scan is registered (rigid then affine, Mattes MI, see
   ``preprocessing.registration``) to the MNI152 template on the output grid.
4. **Resample** the input once, with trilinear interpolation (``sitk.Resample``), onto the output grid:
   ``shape`` voxels of ``spacing_mm`` in RAS+ orientation, centred on ``centre_mm``. Orientation,
   voxel-size change and crop/pad thus happen in one step with one interpolation, through the registration
   transform when there is one. Voxels outside the input's field of view are 0.
5. **Brain mask**: every scan on the MNI grid -- registered, or kept as it is because it already is in
   MNI space -- gets the same mask: voxels outside nilearn's MNI152 brain mask (dilated by
   ``brain_mask_dilation_mm``, default 0: the mask itself) are set to 0. A skull-stripped head and the
   same head with its skull on thus give the same input: the skull, scalp and neck lie outside the mask
   (a dilation lets more cortex of imperfectly registered scans in, and with it the skull of heads that
   have one). A scan that cannot be placed in MNI space (``register="never"`` with a non-MNI header) is
   not masked: its QC says so (``brain_masked`` False, named in ``register_decision``).
6. **Normalise** (robust z-score) with statistics from inside the brain only: from the brain's core, the
   MNI152 brain mask eroded by ``normalisation_margin_mm`` (8 mm), which neither a skull nor the edge of a
   brain misaligned with the template by a few mm can reach. The foreground F is the core's voxels
   brighter than ``foreground_fraction`` times their 99.5th percentile; the mean and standard deviation
   of F's intensities clipped to its ``clip_percentiles`` z-score every voxel of the masked region above
   the same threshold, after clipping at F's upper percentile (the threshold bounds the lower end, so the
   darker grey matter and CSF partial volumes of the cortex, rarer in the core, keep their contrast); the
   others are 0. An unmasked scan uses the whole grid as its core.

Skull. The mask removes a skull only where the brain fits the template's mask: a brain larger than the
template or shifted by a few mm (affine registration leaves such differences) has skull, dura or CSF
inside the mask's edge, which a skull-stripped scan of the same head has not. ``non_brain_fraction`` in
the QC dict names heads with tissue around the brain: the fraction of the voxels 8 to 20 mm outside the
brain mask (skull and scalp; farther than a brain misaligned by a few mm reaches) brighter than the
foreground threshold. It is 0 to 0.007 for the skull-stripped demo cohort, whose brains differ from the
template by up to ~5 mm, and 0.12 to 0.76 for the synthetic skulls of the tests (``NON_BRAIN_LIMIT`` = 0.05
is the suggested QC limit). For skull-on data, skull-strip the scans before this pipeline (e.g. SynthStrip
or HD-BET) for the same inputs as skull-stripped training data.

Output grid. The default centre (0, -17, 5) mm is the centre of the bounding box of the MNI152 brain mask
(x -72..72, y -107..73, z -72..82 mm), so voxel centres span x -99..99, y -116..82, z -94..104 mm and the
whole brain fits with margins of 27, 9 and 22 mm (13, 4 and 11 voxels) on each side. Relative to UK
Biobank's ``T1_brain_to_MNI`` (FSL 1 mm grid, 182 x 218 x 182, voxel centres x -91..90, y -126..91,
z -72..109 mm) this pads about 4 voxels left and right, crops 5 voxels posterior (y < -116) and 4.5
anterior (y > 82), pads 11 voxels inferior and crops 2.5 superior (z > 104) -- regions without brain.
An unregistered scan that is not in MNI space (``register="never"``) gets the same grid centred on the
centre of its own field of view instead.

Similarity (``registration_similarity`` in the QC dict, higher is better): Pearson correlation, inside the
(undilated) MNI152 brain mask, between the resampled scan (before masking and normalisation) and the
template processed the same way. It is 1.0 for the template itself and falls fast with misalignment: the
template moved by 2 / 5 / 10 mm scores about 0.84 / 0.55 / 0.33, rotated by 5 / 10 degrees 0.69 / 0.53,
scaled by 10 % 0.55. The default ``mni_similarity_threshold`` of 0.5 therefore accepts as "already in MNI
space" scans aligned to within roughly 5 mm and 10 degrees, which anatomy differences and imperfect
registrations (the project's synthetic cohort scores 0.59-0.67 unregistered, 0.86-0.90 after our affine
registration) must be allowed, while an unregistered scanner image scores far lower. It has not been
calibrated on real UK Biobank images; for data known to be in MNI space use ``register="never"``.
For an unregistered non-MNI scan the similarity compares the scan-centred array with the template voxel by
voxel, so a low value flags a scan that is not where the model expects the brain.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk

from preprocessing.registration import (
    RegistrationParams,
    image_from_array,
    mni152_template,
    normalised_cross_correlation,
    register_affine,
)
from preprocessing._common import (
    add_cache_arguments,
    build_cache_from_cli,
    cache_parser,
    library_versions,
    load_cli_manifest,
    load_nifti,
    one_line,
    read_voxels,
    run_cli,
)

__all__ = ["BUNDLE", "MAX_VOXELS", "NON_BRAIN_LIMIT", "PIPELINE", "QC_FIELDS", "RUN_PARAMS", "VERSION", "T1Params",
           "antialiased_image", "dicom_series", "field_of_view_centre", "fingerprint", "grid_origin", "load_t1", "main",
           "preprocess", "preprocess_with_qc", "read_dicom_series", "resample_to_grid"]

PIPELINE = "t1"
#: The bundle this module's caches feed: the manifest's ``age`` (years) must lie in its ``plausible_range``.
BUNDLE = "ukb_brainage"
VERSION = "2.0.0"  # 2.0.0: brain mask without dilation; z-score statistics from the brain's core only
REGISTER_MODES = ("auto", "always", "never")
#: QC record entries reported per scan by inference (``supremix_med.inference``), with a failed scan's value.
QC_FIELDS = {"registered": False, "register_decision": "", "registration_similarity": math.nan,
             "brain_masked": False, "non_brain_fraction": math.nan}
#: Suggested QC limit of ``non_brain_fraction``: above it the scan is a head with tissue around the brain
#: (skull on), not a skull-stripped brain (see the module docstring, "Skull").
NON_BRAIN_LIMIT = 0.05
#: Parameters chosen per run, not compared between a model's cache and inference: ``"auto"`` keeps MNI-space
#: scans as they are and registers the others, which is what training did to every scan.
RUN_PARAMS = ("register",)
#: Largest scan ``load_t1`` reads, in voxels declared by the header: 2**28 (268 million, 1 GiB as float32;
#: a 0.4 mm isotropic whole head is 640^3 = 262 million). A larger header is refused before reading.
MAX_VOXELS = 2**28
_MIN_VOXELS_PER_AXIS = 8
_SURROUNDINGS_MM = (8.0, 20.0)  # band around the brain mask where non_brain_fraction looks
_VOXEL_SIZE_RANGE_MM = (0.1, 10.0)
_MNI_VOXEL_SIZES_MM = (1.0, 2.0)
_SERIES_DESCRIPTION, _MODALITY = "0008|103e", "0008|0060"  # DICOM tags (group|element) as GDCM names them
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class T1Params:
    """Every setting of the T1 pipeline (see the module docstring for what each step does).

    Args:
        spacing_mm: output voxel size (isotropic), mm.
        shape: output grid size in voxels (x, y, z).
        centre_mm: world (MNI, RAS+) coordinate of the output grid's centre, mm.
        register: ``"auto"``, ``"always"`` or ``"never"``.
        antialias: Gaussian anti-aliasing of finer-than-``spacing_mm`` inputs before resampling.
        brain_mask_dilation_mm: dilation of the MNI152 brain mask outside which voxels are set to 0, mm.
        registration_mask_dilation_mm: dilation of the brain mask that confines the registration metric, mm.
        normalisation_margin_mm: erosion of the brain mask giving the core the z-score statistics come from, mm.
        mni_similarity_threshold: minimum similarity for ``"auto"`` to accept a scan as already in MNI space.
        foreground_fraction: foreground threshold as a fraction of the brain core's 99.5th percentile.
        clip_percentiles: (low, high) percentiles of the core's foreground clipping it for the z-score
            statistics; the output is clipped at the high one.
        registration: settings of the affine registration.
    """

    spacing_mm: float = 2.0
    shape: tuple[int, int, int] = (100, 100, 100)
    centre_mm: tuple[float, float, float] = (0.0, -17.0, 5.0)
    register: str = "auto"
    antialias: bool = True
    brain_mask_dilation_mm: float = 0.0
    registration_mask_dilation_mm: float = 4.0
    normalisation_margin_mm: float = 8.0
    mni_similarity_threshold: float = 0.5
    foreground_fraction: float = 0.05
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    registration: RegistrationParams = field(default_factory=RegistrationParams)

    def __post_init__(self) -> None:
        for name in ("shape", "centre_mm", "clip_percentiles"):  # accept lists, e.g. from JSON
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.registration, dict):
            object.__setattr__(self, "registration", RegistrationParams(**self.registration))
        if self.register not in REGISTER_MODES:
            raise ValueError(f"register must be one of {REGISTER_MODES}, got {self.register!r}.")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}.")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive voxel counts, got {self.shape}.")
        if len(self.centre_mm) != 3:
            raise ValueError(f"centre_mm must be an (x, y, z) coordinate, got {self.centre_mm}.")
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got {self.clip_percentiles}.")
        margins = {name: getattr(self, name) for name in ("brain_mask_dilation_mm", "registration_mask_dilation_mm",
                                                          "normalisation_margin_mm")}
        if min(margins.values()) < 0:
            raise ValueError(f"mask dilations and margins must be >= 0 mm, got {margins}.")
        if not 0.0 <= self.foreground_fraction < 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1), got {self.foreground_fraction}.")


#: Default QC limits ``{QC field: (low, high)}`` (``supremix_med.data.qc``), applied by training and inference alike:
#: a scan whose similarity with the template stays below the default ``mni_similarity_threshold`` after
#: preprocessing is not where the model expects the brain (a failed registration), and one with tissue beyond
#: ``NON_BRAIN_LIMIT`` outside the brain mask still has its skull (or a brain the template mask does not fit).
QC_LIMITS = {"registration_similarity": (T1Params.mni_similarity_threshold, None),
             "non_brain_fraction": (None, NON_BRAIN_LIMIT)}


# ----------------------------------------------------------------------------------------------- loading
def load_t1(path: str | os.PathLike, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a 3-D T1 scan: a NIfTI file, or a folder holding a DICOM series.

    Args:
        path: NIfTI file (``.nii`` or ``.nii.gz``), or a folder of DICOM files (:func:`read_dicom_series`).
        series_uid: the ``SeriesInstanceUID`` to read from a DICOM folder holding several series (ignored for
            NIfTI).

    Returns:
        (data, affine): float32 voxel array of shape (I, J, K) and its (4, 4) voxel-to-RAS+ mm affine.

    Raises:
        FileNotFoundError: the file or folder does not exist.
        ValueError: unreadable or corrupt file, a header declaring more than ``MAX_VOXELS`` voxels, not 3-D,
            fewer than 8 voxels along an axis, voxel sizes outside [0.1, 10] mm, NaN/Inf voxels, or a constant
            image; for a folder, see :func:`read_dicom_series`. The message names the file or folder.
    """
    return _load(Path(path), series_uid)[:2]


def _load(path: Path, series_uid: str | None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """:func:`load_t1`, and the SeriesInstanceUID read (None for NIfTI)."""
    if path.is_dir():
        series = dicom_series(path)
        uid = _chosen_series(path, series, series_uid)
        data, affine = _read_series(path, uid, series[uid])
    elif path.is_file():
        uid, (data, affine) = None, _read_nifti(path)
    else:
        raise FileNotFoundError(f"T1 scan not found: {path}")
    return (*_validated(data, affine, path), uid)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = load_nifti(path, MAX_VOXELS)
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = image.slicer[..., 0]
    if len(image.shape) != 3:
        raise ValueError(f"{path}: expected a 3-D image (or 4-D with one volume), got shape {image.shape}.")
    return read_voxels(image, path), image.affine


def _validated(data: np.ndarray, affine: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)`` after the checks of :func:`load_t1` (the message names ``path``)."""
    shape = data.shape
    if min(shape) < _MIN_VOXELS_PER_AXIS:
        raise ValueError(
            f"{path}: expected at least {_MIN_VOXELS_PER_AXIS} voxels along every axis of a 3-D volume, "
            f"got shape {shape} (a 2-D slice or a single slab?)."
        )
    voxel_sizes = np.linalg.norm(affine[:3, :3], axis=0)
    low, high = _VOXEL_SIZE_RANGE_MM
    if not (np.all(np.isfinite(affine)) and np.all((voxel_sizes >= low) & (voxel_sizes <= high))):
        raise ValueError(
            f"{path}: voxel sizes must lie in [{low}, {high}] mm, got {np.round(voxel_sizes, 4).tolist()} "
            "(check the header's pixdim/sform)."
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6 * np.prod(voxel_sizes):
        raise ValueError(f"{path}: the voxel-to-world affine is singular:\n{affine}")
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise ValueError(f"{path}: {bad} of {data.size} voxels are NaN or infinite.")
    if data.min() == data.max():
        raise ValueError(f"{path}: the image is constant (every voxel is {data.flat[0]}); it holds no anatomy.")
    return data, affine


def _dicom_tag(reader: sitk.ImageFileReader, tag: str) -> str:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _series_header(files: Sequence[str]) -> sitk.ImageFileReader:
    """The header of a series' first file (no pixels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    return reader


def dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """The DICOM series directly in ``folder`` (not its subfolders), read by GDCM through SimpleITK's
    ``ImageSeriesReader``: ``{SeriesInstanceUID: slice files in the order GDCM sorts them (by position)}``;
    empty when the folder holds no DICOM image."""
    folder = str(folder)
    return {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)}


def _describe_series(series: dict[str, list[str]]) -> str:
    """``UID ('description', N slices)`` of every series, ``; ``-joined."""
    described = []
    for uid, files in series.items():
        description = _dicom_tag(_series_header(files), _SERIES_DESCRIPTION)
        described.append(f"{uid} ({description!r}, {len(files)} slice{'s' * (len(files) != 1)})")
    return "; ".join(described)


def _chosen_series(folder: Path, series: dict[str, list[str]], series_uid: str | None) -> str:
    """The UID of the series to read: the folder's only one, or ``series_uid`` (refusals: see ``read_dicom_series``)."""
    if not series:
        raise ValueError(f"{folder}: no DICOM image files directly in this folder (expected one T1 series).")
    if series_uid is None and len(series) > 1:
        raise ValueError(f"{folder}: holds {len(series)} DICOM series; choose one by its SeriesInstanceUID "
                         f"(series_uid; supremix-med predict --series UID): {_describe_series(series)}.")
    uid = series_uid if series_uid is not None else next(iter(series))
    if uid not in series:
        raise ValueError(f"{folder}: no series with SeriesInstanceUID {uid}; found {_describe_series(series)}.")
    return uid


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One MR series of a DICOM folder as a voxel array and its RAS+ affine (SimpleITK's ``ImageSeriesReader``,
    GDCM: slices sorted by position, each rescaled by its RescaleSlope/Intercept).

    Args:
        folder: a folder directly holding the DICOM files of the series (other files are ignored).
        series_uid: which series to read when the folder holds several.

    Returns:
        (data, affine): float32 array (I, J, K) = (column, row, slice) and its (4, 4) voxel-to-RAS+ mm affine
        (DICOM's LPS patient coordinates with the first two axes negated), as :func:`load_t1` returns a NIfTI's.

    Raises:
        ValueError: no DICOM image in the folder; several series and no (or an absent) ``series_uid`` (the
            message lists each series' UID, description and slice count); a Modality other than MR; a series
            larger than ``MAX_VOXELS``; slices GDCM cannot read as one volume.
    """
    folder = Path(folder)
    series = dicom_series(folder)
    uid = _chosen_series(folder, series, series_uid)
    return _read_series(folder, uid, series[uid])


def _read_series(folder: Path, uid: str, files: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The slices ``files`` of series ``uid`` as :func:`read_dicom_series` returns them."""
    header = _series_header(files)
    modality = _dicom_tag(header, _MODALITY)
    if modality not in ("", "MR"):
        raise ValueError(f"{folder}: series {uid} has Modality {modality}; a T1 scan is an MR series.")
    rows_columns = int(np.prod(header.GetSize()[:2]))
    if rows_columns * len(files) > MAX_VOXELS:
        raise ValueError(f"{folder}: series {uid} has {len(files)} slices of {rows_columns} pixels, more than the "
                         f"{MAX_VOXELS:.3g} voxels this reader accepts.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ValueError(f"{folder}: series {uid} cannot be read as one volume ({one_line(error)}).") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{folder}: series {uid} is not a 3-D grey-level volume (dimension "
                         f"{image.GetDimension()}, {image.GetNumberOfComponentsPerPixel()} components per pixel).")
    data = sitk.GetArrayFromImage(image).astype(np.float32, copy=False).T  # (z, y, x) -> (I, J, K)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = lps_to_ras @ np.asarray(image.GetOrigin(), dtype=float)
    return data, affine


# ------------------------------------------------------------------------------------------------- grids
def grid_origin(params: T1Params, centre_mm: Sequence[float]) -> np.ndarray:
    """World coordinate (mm) of the first output voxel's centre for a grid centred on ``centre_mm``."""
    half_extent = (np.asarray(params.shape) - 1) / 2.0 * params.spacing_mm
    return np.asarray(centre_mm, dtype=float) - half_extent


def resample_to_grid(image: sitk.Image, params: T1Params, origin: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    """Trilinear resampling of ``image`` onto the output grid; returns an (X, Y, Z) float32 array."""
    resampled = sitk.Resample(
        image,
        [int(n) for n in params.shape],
        transform,
        sitk.sitkLinear,
        origin.tolist(),
        [float(params.spacing_mm)] * 3,
        np.eye(3).ravel().tolist(),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled).T


def antialiased_image(data: np.ndarray, affine: np.ndarray, params: T1Params) -> sitk.Image:
    """The scan as a RAS+ SimpleITK image, Gaussian-smoothed to a ``spacing_mm`` resolution if asked."""
    if params.antialias:
        voxel_mm = np.linalg.norm(affine[:3, :3], axis=0)
        sigma_voxels = np.sqrt(np.maximum(params.spacing_mm**2 - voxel_mm**2, 0.0)) / _FWHM_PER_SIGMA / voxel_mm
        # filter the (K, J, I) view: C-contiguous for nibabel's Fortran-ordered arrays, so neither the filter
        # nor SimpleITK (which stores z, y, x) needs a copy
        data = ndi.gaussian_filter(data.T, sigma_voxels[::-1], truncate=3.0).T
    return image_from_array(data, affine)


@dataclass(frozen=True)
class _Template:
    """The MNI152 template prepared like a scan, on the MNI-centred output grid (arrays are (X, Y, Z))."""

    origin: np.ndarray  # world coordinate of the first voxel centre, mm
    image: sitk.Image  # template on the grid: the registration's fixed image
    array: np.ndarray  # the same as an array
    brain: np.ndarray  # bool brain mask: the similarity region
    core: np.ndarray  # bool brain mask eroded by normalisation_margin_mm: the normalisation statistics' region
    region: np.ndarray  # bool brain mask dilated by brain_mask_dilation_mm: the voxels kept in MNI space
    surroundings: np.ndarray  # bool band 8-20 mm outside the brain mask: where non_brain_fraction looks
    metric_mask: sitk.Image  # uint8 mask dilated by registration_mask_dilation_mm, confining the registration metric


@functools.lru_cache(maxsize=4)
def _template_on_grid(params: T1Params) -> _Template:
    """The template anti-aliased and resampled like a scan, and its brain masks, on the MNI-centred grid."""
    data, mask, affine = mni152_template()
    origin = grid_origin(params, params.centre_mm)
    identity = sitk.Transform()
    array = resample_to_grid(antialiased_image(data, affine, params), params, origin, identity)
    brain = resample_to_grid(image_from_array(mask, affine), params, origin, identity) >= 0.5
    region, metric, near, far = (
        ndi.binary_dilation(brain, _ball(dilation_mm / params.spacing_mm))
        for dilation_mm in (params.brain_mask_dilation_mm, params.registration_mask_dilation_mm, *_SURROUNDINGS_MM)
    )
    core = ndi.binary_erosion(brain, _ball(params.normalisation_margin_mm / params.spacing_mm))
    if np.count_nonzero(core) < 1000:
        raise ValueError(f"normalisation_margin_mm={params.normalisation_margin_mm} leaves {np.count_nonzero(core)} "
                         "voxels of the brain mask; choose a smaller margin.")
    image, metric_mask = (_on_grid(volume, params, origin) for volume in (array, metric.astype(np.uint8)))
    return _Template(origin=origin, image=image, array=array, brain=brain, core=core, region=region,
                     surroundings=far & ~near, metric_mask=metric_mask)


def _ball(radius_voxels: float) -> np.ndarray:
    """Boolean ball structuring element of the given radius (voxels)."""
    r = int(math.floor(radius_voxels))
    offsets = np.arange(-r, r + 1)
    x, y, z = np.meshgrid(offsets, offsets, offsets, indexing="ij")
    return x**2 + y**2 + z**2 <= radius_voxels**2


def _on_grid(volume: np.ndarray, params: T1Params, origin: np.ndarray) -> sitk.Image:
    """An (X, Y, Z) array on the output grid as a RAS+ SimpleITK image (keeps the array's pixel type)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.T))
    image.SetOrigin(origin.tolist())
    image.SetSpacing([float(params.spacing_mm)] * 3)
    return image


# ---------------------------------------------------------------------------------------------- decision
def _mni_header_problem(affine: np.ndarray, shape: Sequence[int]) -> str | None:
    """Why the header is not that of an MNI152 grid, or None if it looks like one."""
    voxel_mm = np.linalg.norm(affine[:3, :3], axis=0)
    direction = affine[:3, :3] / voxel_mm
    if not np.allclose(np.abs(direction), np.round(np.abs(direction)), atol=1e-3):
        return "axes are oblique to the world axes"
    if not any(np.allclose(voxel_mm, size, rtol=0.01) for size in _MNI_VOXEL_SIZES_MM):
        return f"voxel size {np.round(voxel_mm, 3).tolist()} mm is not isotropic 1 or 2 mm"
    corners = nib.affines.apply_affine(affine, np.array([[0, 0, 0], np.asarray(shape) - 1]))
    low, high = corners.min(axis=0) - voxel_mm / 2, corners.max(axis=0) + voxel_mm / 2
    brain_low, brain_high = _mni_brain_box_mm()
    if np.any(low > brain_low + 2.0) or np.any(high < brain_high - 2.0):
        return f"field of view {np.round(low).tolist()}..{np.round(high).tolist()} mm does not contain the MNI brain"
    return None


@functools.lru_cache(maxsize=1)
def _mni_brain_box_mm() -> tuple[np.ndarray, np.ndarray]:
    """World bounding box (low, high corners, mm) of the MNI152 brain mask's voxel centres."""
    _, mask, affine = mni152_template()
    world = nib.affines.apply_affine(affine, np.argwhere(mask))
    return world.min(axis=0), world.max(axis=0)


def _decide(
    params: T1Params, header_problem: str | None, image: sitk.Image, template: _Template
) -> tuple[bool, str, np.ndarray | None]:
    """Whether to register, why, and the MNI-grid volume when the content check already computed it."""
    if params.register == "always":
        return True, "register='always' -> registered", None
    if params.register == "never":
        grid = "MNI-like header: MNI-centred grid" if header_problem is None else f"{header_problem}: scan-centred grid"
        return False, f"register='never' -> not registered ({grid})", None
    if header_problem is not None:
        return True, f"auto: header is not an MNI152 grid ({header_problem}) -> registered", None
    volume = resample_to_grid(image, params, template.origin, sitk.Transform())
    similarity = normalised_cross_correlation(volume, template.array, template.brain)
    threshold = params.mni_similarity_threshold
    if similarity >= threshold:
        return False, f"auto: MNI-like header and similarity {similarity:.3f} >= {threshold} -> not registered", volume
    return True, f"auto: MNI-like header but similarity {similarity:.3f} < {threshold} -> registered", None


def field_of_view_centre(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinate (mm) of the centre of a scan's voxel grid."""
    return nib.affines.apply_affine(affine, (np.asarray(shape) - 1) / 2.0)


# --------------------------------------------------------------------------------------------- normalise
def _foreground_threshold(volume: np.ndarray, core: np.ndarray, params: T1Params) -> float:
    """Intensity above which a voxel is foreground: ``foreground_fraction`` of the core's 99.5th percentile."""
    return float(params.foreground_fraction * np.percentile(volume[core], 99.5))


def _normalise(volume: np.ndarray, core: np.ndarray | None, region: np.ndarray | None, params: T1Params,
               path: Path) -> np.ndarray:
    """Robust z-score with statistics from the brain core's foreground (see module docstring), applied in ``region``.

    Args:
        volume: (X, Y, Z) resampled scan.
        core: bool (X, Y, Z) mask the statistics come from; None: the whole grid.
        region: bool (X, Y, Z) mask of the voxels kept (the brain mask or a dilation of it); None: the whole grid.

    Returns:
        float32 (X, Y, Z): z-scored foreground voxels of ``region``, 0 elsewhere.
    """
    everywhere = np.ones(volume.shape, dtype=bool)
    core = everywhere if core is None else core
    region = everywhere if region is None else region
    threshold = _foreground_threshold(volume, core, params)
    statistics = core & (volume > threshold)
    if np.count_nonzero(statistics) < 2:
        raise ValueError(f"{path}: no foreground left on the output grid (is the scan empty in the brain region?).")
    low, high = np.percentile(volume[statistics], params.clip_percentiles)
    values = np.clip(volume[statistics], low, high)
    mean, std = values.mean(), values.std()
    if std == 0:
        raise ValueError(f"{path}: the foreground has constant intensity after clipping; cannot normalise.")
    kept = region & (volume > threshold)
    output = np.zeros(volume.shape, dtype=np.float32)
    output[kept] = (np.minimum(volume[kept], high) - mean) / std  # the threshold bounds the low end
    return output


# ------------------------------------------------------------------------------------------------ public
def preprocess_with_qc(
    path: str | os.PathLike, register: str = "auto", series_uid: str | None = None, **params: Any
) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess a T1 scan and report how (see the module docstring for the steps).

    Args:
        path: NIfTI file, or a folder holding a DICOM series (see ``load_t1``).
        register: ``"auto"``, ``"always"`` or ``"never"``.
        series_uid: the series to read from a DICOM folder holding several (a choice of input, not of
            processing: the fingerprint does not record it).
        **params: any other ``T1Params`` field.

    Returns:
        (image, qc): float32 array of shape (1, *shape) (default (1, 100, 100, 100)), RAS+ axis order, and
        a JSON-serialisable dict with ``registered``, ``register_decision``, ``registration_similarity``
        (see module docstring), ``brain_masked`` (whether the MNI152 brain mask was applied: False only for
        a scan left outside MNI space), ``non_brain_fraction`` (tissue around the brain, see "Skull"; None
        when not masked), ``mutual_information`` (registered scans), ``transform_mni_to_scan``
        (4 x 4, RAS+ mm, registered scans), ``space`` ("MNI152" or "scanner"), ``input_shape``,
        ``input_spacing_mm``, ``input_orientation`` (nibabel axis codes), ``orientation`` ("RAS") and
        ``series_uid`` (the DICOM series read; None for NIfTI).

    Raises:
        FileNotFoundError, ValueError: see ``load_t1``.
    """
    config = T1Params(register=register, **params)
    path = Path(path)
    data, affine, read_uid = _load(path, series_uid)
    template = _template_on_grid(config)
    image = antialiased_image(data, affine, config)
    header_problem = _mni_header_problem(affine, data.shape)
    registered, decision, volume = _decide(config, header_problem, image, template)

    transform, mutual_information = sitk.AffineTransform(3), None
    if registered:
        result = register_affine(template.image, image, template.metric_mask, config.registration)
        transform, mutual_information = result.transform, result.mutual_information
    in_mni = registered or header_problem is None
    if volume is None:
        origin = template.origin if in_mni else grid_origin(config, field_of_view_centre(affine, data.shape))
        volume = resample_to_grid(image, config, origin, transform)
    similarity = normalised_cross_correlation(volume, template.array, template.brain)
    output = _normalise(volume, template.core if in_mni else None, template.region if in_mni else None, config, path)
    non_brain = None
    if in_mni:
        non_brain = float(np.mean(volume[template.surroundings] > _foreground_threshold(volume, template.core, config)))

    qc = {
        "path": str(path),
        "registered": registered,
        "register_decision": decision if in_mni else f"{decision}; no brain mask (not in MNI space)",
        "brain_masked": in_mni,
        "non_brain_fraction": non_brain,
        "registration_similarity": similarity,
        "mutual_information": mutual_information,
        "transform_mni_to_scan": _transform_matrix(transform).tolist() if registered else None,
        "space": "MNI152" if in_mni else "scanner",
        "input_shape": list(data.shape),
        "input_spacing_mm": np.linalg.norm(affine[:3, :3], axis=0).round(6).tolist(),
        "input_orientation": "".join(nib.aff2axcodes(affine)),
        "orientation": "RAS",
        "series_uid": read_uid,
    }
    return output[None], qc


def _transform_matrix(transform: sitk.AffineTransform) -> np.ndarray:
    """(4, 4) homogeneous matrix of a centred SimpleITK affine transform: y = A (x - c) + c + t."""
    matrix = np.eye(4)
    linear = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.asarray(transform.GetTranslation()) + centre - linear @ centre
    return matrix


def preprocess(path: str | os.PathLike, register: str = "auto", series_uid: str | None = None,
               **params: Any) -> np.ndarray:
    """Preprocess a T1 scan to a float32 array of shape (1, 100, 100, 100) (see ``preprocess_with_qc``)."""
    return preprocess_with_qc(path, register=register, series_uid=series_uid, **params)[0]


def fingerprint(series_uid: str | None = None, **params: Any) -> dict[str, Any]:
    """Everything that determines ``preprocess``'s output, as a JSON-ready dict.

    Args:
        series_uid: accepted (``preprocess``'s parameters are the fingerprint's) and not recorded: which series of
            a DICOM folder is read picks the input, not how it is processed, so NIfTI and DICOM inputs share one
            fingerprint.
        **params: ``T1Params`` fields (``register`` included); the rest take their defaults.

    Returns:
        ``{"pipeline", "version", "params", "libraries", "output"}``; ``output`` gives the shape
        (1, *shape), dtype, spacing, orientation, space and the world coordinates (mm) of the first and last
        voxel centres. Lists replace tuples, so the dict equals itself after a JSON round trip.
    """
    config = T1Params(**params)
    origin = grid_origin(config, config.centre_mm)
    last = origin + (np.asarray(config.shape) - 1) * config.spacing_mm
    record = {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": asdict(config),
        "libraries": library_versions("nibabel", "SimpleITK", "nilearn", "numpy", "scipy"),
        "output": {
            "shape": [1, *config.shape],
            "dtype": "float32",
            "spacing_mm": config.spacing_mm,
            "orientation": "RAS",
            "space": "MNI152 ICBM 2009 (nilearn template)",
            "first_voxel_centre_mm": origin.tolist(),
            "last_voxel_centre_mm": last.tolist(),
        },
    }
    return json.loads(json.dumps(record))


# --------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = cache_parser(
        "python -m preprocessing.t1",
        "Preprocess the T1 scans of a manifest (columns id,path[,age,sex,site,split]) into a cache.",
    )
    parser.add_argument("--register", choices=REGISTER_MODES, default="auto", help="registration to MNI152")
    return add_cache_arguments(parser)


def _build(args: argparse.Namespace) -> None:
    build_cache_from_cli(load_cli_manifest(args.manifest), args, preprocess_with_qc, fingerprint, {"register": args.register},
                         "scans", bundle=BUNDLE)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m preprocessing.t1``: build the cache (:func:`_build`); a refused input ends in one line, status 2."""
    run_cli(_parser(), argv, _build)


if __name__ == "__main__":
    main()
