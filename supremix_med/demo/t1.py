"""Embedded demo cohort: synthetic ageing T1 brains generated from the MNI152 2009 template.

UK Biobank images cannot ship with the project, so the demo generates a stand-in cohort whose files look
like UK Biobank's ``T1_brain_to_MNI.nii.gz``: a skull-stripped T1 on FSL's 1 mm MNI152 grid
(182 x 218 x 182 voxels, affine ``diag(-1, 1, 1)`` with origin (90, -126, -72) mm), stored as int16.
This is not the grid of nilearn's own 1 mm template (197 x 233 x 189, origin (-98, -134, -72) mm, RAS);
both are MNI152 space in mm, so the template is resampled onto UK Biobank's grid.

Layout written by :func:`generate_cohort`::

    <output_dir>/cohort.json                       generator parameters (seed, age range, model version)
    <output_dir>/manifest.csv                      id, path (relative to output_dir), age, sex, site
    <output_dir>/sub-0000/T1_brain_to_MNI.nii.gz   one folder per subject, as in UK Biobank

Model of ageing
---------------
Everything is computed on FSL's 2 mm MNI grid (91 x 109 x 91, :data:`WORK_AFFINE`) from nilearn's
MNI152 2009 template (T1 intensity, grey- and white-matter probability maps and brain mask, resampled
once from 1 mm with a 2 mm FWHM anti-aliasing filter). CSF is ``mask - GM - WM``. A least-squares fit
``T1 ~ c_csf*CSF + c_gm*GM + c_wm*WM`` inside the mask gives tissue intensities; its residual keeps the
template's texture (deep grey nuclei, cerebellum). CSF is split into *deep* CSF (ventricles and basal
cisterns: large CSF components deeper than 15 mm below the brain surface) and *superficial* CSF (sulci
and the space outside the brain), each with a signed distance map in mm.

A subject of chronological age ``A`` has a biological age ``B = A + N(0, 3.5 years)`` (the brain-age gap,
so the best achievable MAE is not zero). With ``t = (B - 42) / 40`` (clipped to [-0.5, 1.5]) the
atrophy follows the convex profile ``g(t) = (t + t**2) / 2`` (``g(0) = 0``, ``g(1) = 1``; atrophy
accelerates after 60, as reported in longitudinal studies):

- ventricles enlarge (deep CSF surface moves 3.5 mm * g(t) into tissue, subject offset N(0, 0.5 mm));
  ventricular volume roughly doubles over adult life (Walhovd et al. 2005; Fotenos et al. 2005);
- sulci widen and cortical grey matter thins (superficial CSF surface moves 1.5 mm * g(t) into tissue,
  subject offset N(0, 0.25 mm)) (Salat et al. 2004; Fjell et al. 2009). Both moves are sub-voxel
  through a sigmoid of width 0.75 mm on the distance maps; tissue lost becomes CSF;
- the grey/white T1 contrast falls by 20 % * g(t) (Salat et al. 2009; Westlye et al. 2009);
- periventricular white-matter T1 hypointensities (white-matter lesions) grow with g(t), with a
  log-normal subject load (de Leeuw et al. 2001);
- the whole brain shrinks by 0.2 % of its volume per year of biological age around the brain centre,
  the template's size being that of age 62 (Fotenos et al. 2005; Scahill et al. 2003).

Variation that is not age, so that age is learnable but not trivial: male brains are 2 % larger and
female brains 2 % smaller (linear), subject scaling N(0, 2 %) (isotropic) and N(0, 1 %) per axis: brain
size varies by ~3 % (SD, linear) for reasons other than age against ~0.8 % from the ageing shrink over the
age range, so head size is a weak age proxy; rotations N(0, 1 deg) and translations N(0, 1 mm) per axis,
the residual misalignment of images registered to MNI (all these affine draws are clipped at 2 SD); a
smooth random deformation (low-frequency cosine basis, RMS 1.5 mm);
per-subject intensity gain (log-normal, 10 %), contrast jitter (4 %) and a smooth multiplicative bias
field; three sites with their own gain, contrast, bias-field strength and Rician noise level. Ages are
uniform in ``age_range``; sex is M/F with probability 1/2; the site is uniform over :data:`SITES`.

Every subject's random stream is ``numpy.random.default_rng([seed, index])``, so images do not depend on
the number of workers or subjects and are byte-identical for the same seed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from supremix_med.demo.generation import check_cohort_request, cohort_main, truncated_normal, write_missing
from supremix_med.io import atomic_write, check_generator_record

__all__ = [
    "MNI_1MM_AFFINE",
    "MNI_1MM_SHAPE",
    "SITES",
    "WORK_AFFINE",
    "WORK_SHAPE",
    "generate_cohort",
    "synthesize_subject",
    "upsample_to_1mm",
]

MNI_1MM_SHAPE = (182, 218, 182)
"""Voxel grid of UK Biobank's ``T1_brain_to_MNI`` (FSL's MNI152_T1_1mm)."""
MNI_1MM_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 90.0], [0.0, 1.0, 0.0, -126.0], [0.0, 0.0, 1.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
"""Voxel-to-MNI-mm affine of the 1 mm output grid."""
WORK_SHAPE = (91, 109, 91)
"""Voxel grid of the 2 mm working space (FSL's MNI152_T1_2mm); voxel ``v`` is 1 mm voxel ``2 v``."""
WORK_AFFINE = np.array(
    [[-2.0, 0.0, 0.0, 90.0], [0.0, 2.0, 0.0, -126.0], [0.0, 0.0, 2.0, -72.0], [0.0, 0.0, 0.0, 1.0]]
)
"""Voxel-to-MNI-mm affine of the 2 mm working grid."""
WORK_SPACING_MM = 2.0

IMAGE_NAME = "T1_brain_to_MNI.nii.gz"
MANIFEST_NAME = "manifest.csv"
COHORT_NAME = "cohort.json"
MODEL_VERSION = 1
MANIFEST_COLUMNS = ("id", "path", "age", "sex", "site")

# Ageing model (see the module docstring for the literature behind each number).
AGE_ORIGIN, AGE_SPAN = 42.0, 40.0  # years: t = (B - 42) / 40
BRAIN_AGE_GAP_SD = 3.5  # years
DEEP_CSF_SHIFT_MM, DEEP_CSF_SHIFT_SD_MM = 3.5, 0.5
SUPERFICIAL_CSF_SHIFT_MM, SUPERFICIAL_CSF_SHIFT_SD_MM = 1.5, 0.25
CSF_EDGE_WIDTH_MM = 0.75
CONTRAST_LOSS = 0.20
LESION_LOAD, LESION_LENGTH_MM = 0.15, 4.0
VOLUME_LOSS_PER_YEAR, TEMPLATE_AGE = 0.002, 62.0  # the template has the brain volume of this age
DEEP_CSF_DEPTH_MM, DEEP_CSF_MIN_ML = 15.0, 5.0
# Variation that is not age.
SEX_SCALE = {"F": 0.98, "M": 1.02}
SCALE_SD, AXIS_SCALE_SD = 0.02, 0.01
ROTATION_SD_DEG, TRANSLATION_SD_MM = 1.0, 1.0  # residual misalignment of images registered to MNI
WARP_RMS_MM, WARP_FREQUENCIES = 1.5, 3
BIAS_FREQUENCIES = 2
GAIN_SD, CONTRAST_SD = 0.10, 0.04
INTENSITY_SCALE = 150.0  # output units per template unit (white matter ~ 130; int16 files ~1.7 MB)


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition differences of one site.

    Attributes:
        gain: multiplicative intensity gain.
        contrast: multiplier of the grey/white-matter contrast.
        bias_rms: RMS of the log bias field (a smooth multiplicative intensity non-uniformity).
        noise: Rician noise standard deviation as a fraction of the ``INTENSITY_SCALE * gain``.
    """

    gain: float
    contrast: float
    bias_rms: float
    noise: float


SITES: dict[str, SiteProfile] = {
    "siteA": SiteProfile(gain=1.00, contrast=1.00, bias_rms=0.08, noise=0.025),
    "siteB": SiteProfile(gain=1.10, contrast=0.92, bias_rms=0.12, noise=0.035),
    "siteC": SiteProfile(gain=0.90, contrast=1.06, bias_rms=0.06, noise=0.020),
}
"""The three acquisition sites of the demo cohort."""


@dataclass(frozen=True)
class _Template:
    """The MNI152 2009 template on the 2 mm working grid, with what the ageing model needs.

    All arrays have shape ``WORK_SHAPE``; distances are in mm (positive in tissue, negative in CSF).
    """

    mask: np.ndarray
    support: np.ndarray  # mask dilated by one voxel: where linear interpolation of the mask can be non-zero
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    residual: np.ndarray
    tissue_intensity: tuple[float, float, float]  # CSF, GM, WM in template units
    deep_distance: np.ndarray
    superficial_distance: np.ndarray
    centre: np.ndarray  # brain centroid, voxel coordinates


def _to_work_grid(image: nib.Nifti1Image) -> np.ndarray:
    """Resample a 1 mm template image onto the 2 mm working grid with a 2 mm FWHM anti-aliasing filter."""
    sigma = 2.0 / np.sqrt(8.0 * np.log(2.0))
    data = ndimage.gaussian_filter(image.get_fdata(dtype=np.float32), sigma=sigma, truncate=2.5)
    work_to_image = np.linalg.inv(image.affine) @ WORK_AFFINE
    return ndimage.affine_transform(
        data, work_to_image[:3, :3], work_to_image[:3, 3], output_shape=WORK_SHAPE, order=1
    )


def _signed_distance(region: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance (mm) to the boundary of ``region``: positive outside, negative inside."""
    outside = ndimage.distance_transform_edt(~region, sampling=WORK_SPACING_MM)
    inside = ndimage.distance_transform_edt(region, sampling=WORK_SPACING_MM)
    return (outside - inside).astype(np.float32)


def _deep_csf(csf: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Ventricles and basal cisterns: CSF components deeper than DEEP_CSF_DEPTH_MM, at least DEEP_CSF_MIN_ML."""
    depth = ndimage.distance_transform_edt(mask, sampling=WORK_SPACING_MM)
    labels, count = ndimage.label((csf > 0.5) & (depth > DEEP_CSF_DEPTH_MM))
    volumes_ml = ndimage.sum_labels(np.ones_like(labels), labels, np.arange(1, count + 1)) * WORK_SPACING_MM**3 / 1e3
    return np.isin(labels, 1 + np.flatnonzero(volumes_ml >= DEEP_CSF_MIN_ML))


@functools.lru_cache(maxsize=1)
def _load_template() -> _Template:
    """Load nilearn's MNI152 2009 template and tissue maps (offline) and derive the ageing-model maps."""
    from nilearn import datasets  # slow import (~2 s), only needed once per process

    t1 = _to_work_grid(datasets.load_mni152_template(resolution=1))
    gm = np.clip(_to_work_grid(datasets.load_mni152_gm_template(resolution=1)), 0.0, 1.0)
    wm = np.clip(_to_work_grid(datasets.load_mni152_wm_template(resolution=1)), 0.0, 1.0)
    mask = _to_work_grid(datasets.load_mni152_brain_mask(resolution=1)) > 0.5
    gm, wm = gm * mask, wm * mask
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask
    tissues = np.stack([csf[mask], gm[mask], wm[mask]], axis=1)
    intensity, *_ = np.linalg.lstsq(tissues, t1[mask], rcond=None)
    residual = np.zeros(WORK_SHAPE, np.float32)
    residual[mask] = t1[mask] - tissues @ intensity
    deep = _deep_csf(csf, mask)
    superficial = ~mask | ((csf > 0.5) & ~deep)
    return _Template(
        mask=mask,
        support=ndimage.binary_dilation(mask),
        gm=gm,
        wm=wm,
        csf=csf,
        residual=residual,
        tissue_intensity=tuple(float(c) for c in intensity),
        deep_distance=_signed_distance(deep),
        superficial_distance=_signed_distance(superficial),
        centre=np.array(ndimage.center_of_mass(mask)),
    )


def _atrophy_profile(biological_age: float) -> float:
    """Convex atrophy profile g(t) = (t + t^2) / 2 of t = (B - 42) / 40 clipped to [-0.5, 1.5]."""
    t = float(np.clip((biological_age - AGE_ORIGIN) / AGE_SPAN, -0.5, 1.5))
    return 0.5 * (t + t * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, written with tanh so large arguments do not overflow."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], rms: float, frequencies: int) -> np.ndarray:
    """Random low-frequency 3-D field: cosine basis functions (as in SPM's warps and bias fields).

    Uses the products of ``cos(pi * k * (i + 0.5) / n)`` along each axis for ``k < frequencies`` (the constant
    excluded), with independent normal coefficients scaled so the expected RMS over the grid is ``rms``.

    Returns:
        float32 array of ``shape``.
    """
    bases = [np.cos(np.pi * np.outer(np.arange(n) + 0.5, np.arange(frequencies)) / n) for n in shape]
    mean_squares = functools.reduce(np.multiply.outer, [np.mean(b**2, axis=0) for b in bases])
    coefficients = rng.standard_normal((frequencies,) * len(shape))
    coefficients.flat[0] = 0.0
    mean_squares.flat[0] = 0.0
    coefficients *= rms / np.sqrt(mean_squares.sum())
    return np.einsum("ijk,xi,yj,zk->xyz", coefficients, *bases, optimize=True).astype(np.float32)


def _template_space_image(
    template: _Template, rng: np.random.Generator, biological_age: float, site: SiteProfile
) -> np.ndarray:
    """The subject's T1 (template units) in template space: atrophy, contrast loss and lesions applied."""
    g = _atrophy_profile(biological_age)
    deep_shift = DEEP_CSF_SHIFT_MM * g + rng.normal(0.0, DEEP_CSF_SHIFT_SD_MM)
    superficial_shift = SUPERFICIAL_CSF_SHIFT_MM * g + rng.normal(0.0, SUPERFICIAL_CSF_SHIFT_SD_MM)
    # Fraction of the template's tissue kept after the CSF surfaces move by the shifts (sub-voxel, smooth).
    keep = (1.0 - _sigmoid((deep_shift - template.deep_distance) / CSF_EDGE_WIDTH_MM)) * (
        1.0 - _sigmoid((superficial_shift - template.superficial_distance) / CSF_EDGE_WIDTH_MM)
    )
    c_csf, c_gm, c_wm = template.tissue_intensity
    mid, half_contrast = 0.5 * (c_gm + c_wm), 0.5 * (c_wm - c_gm)
    half_contrast *= (1.0 - CONTRAST_LOSS * g) * site.contrast * np.exp(rng.normal(0.0, CONTRAST_SD))
    lesion_load = LESION_LOAD * max(g, 0.0) * rng.lognormal(0.0, 0.5)
    lesions = lesion_load * np.exp(-np.maximum(template.deep_distance - deep_shift, 0.0) / LESION_LENGTH_MM)
    tissue = (mid - half_contrast) * template.gm + (mid + half_contrast) * (1.0 - lesions) * template.wm
    csf = 1.0 - keep * (1.0 - template.csf)
    return (c_csf * csf + keep * (tissue + template.residual)) * template.mask


def _subject_to_template_coordinates(
    template: _Template, rng: np.random.Generator, biological_age: float, sex: str
) -> np.ndarray:
    """Template voxel coordinates sampled by each subject voxel: inverse affine jitter + smooth warp.

    Returns:
        float array of shape ``(3, *WORK_SHAPE)``.
    """
    volume_factor = 1.0 - VOLUME_LOSS_PER_YEAR * (biological_age - TEMPLATE_AGE)
    scale = SEX_SCALE[sex] * volume_factor ** (1.0 / 3.0) * (1.0 + truncated_normal(rng, SCALE_SD, 1)[0])
    scales = scale * (1.0 + truncated_normal(rng, AXIS_SCALE_SD, 3))
    rotation = Rotation.from_euler("xyz", truncated_normal(rng, ROTATION_SD_DEG, 3), degrees=True).as_matrix()
    translation = truncated_normal(rng, TRANSLATION_SD_MM, 3) / WORK_SPACING_MM
    inverse = np.linalg.inv(rotation @ np.diag(scales)).astype(np.float32)
    grid = np.indices(WORK_SHAPE, dtype=np.float32).reshape(3, -1)
    centre = template.centre.astype(np.float32)[:, None]
    coordinates = centre + inverse @ (grid - (centre + translation.astype(np.float32)[:, None]))
    warp = [_smooth_field(rng, WORK_SHAPE, WARP_RMS_MM / np.sqrt(3.0), WARP_FREQUENCIES) for _ in range(3)]
    return coordinates.reshape(3, *WORK_SHAPE) + np.stack(warp) / WORK_SPACING_MM


def _warp(template: _Template, image: np.ndarray, coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate ``image`` and the brain mask at ``coordinates`` (3, *WORK_SHAPE).

    Only voxels that land on the template's mask support are interpolated (about a third of the grid).

    Returns:
        the warped image (float32) and brain mask (bool), both of shape ``WORK_SHAPE``.
    """
    nearest = tuple(np.clip(np.rint(c).astype(np.intp), 0, n - 1) for c, n in zip(coordinates, WORK_SHAPE))
    inside = template.support[nearest]
    points = coordinates[:, inside]
    warped = np.zeros(WORK_SHAPE, np.float32)
    warped[inside] = ndimage.map_coordinates(image, points, order=1)
    mask = np.zeros(WORK_SHAPE, bool)
    mask[inside] = ndimage.map_coordinates(template.mask.astype(np.float32), points, order=1) > 0.5
    return warped, mask


def synthesize_subject(
    rng: np.random.Generator | int, age: float, sex: str = "F", site: str = "siteA"
) -> np.ndarray:
    """Synthesize one skull-stripped T1 brain of a given age on the 2 mm working grid.

    Args:
        rng: random generator, or an integer seed for ``numpy.random.default_rng``. The generator is advanced.
        age: chronological age in years; atrophy follows the biological age ``age + N(0, 3.5)``.
        sex: ``"F"`` or ``"M"``.
        site: a key of :data:`SITES`.

    Returns:
        float32 array of shape ``WORK_SHAPE`` (91, 109, 91) on :data:`WORK_AFFINE`, in scanner-like units
        (white matter ~ 130), exactly 0 outside the brain.

    Raises:
        ValueError: if ``sex`` or ``site`` is unknown.
    """
    if sex not in SEX_SCALE:
        raise ValueError(f"sex must be one of {sorted(SEX_SCALE)}, got {sex!r}")
    if site not in SITES:
        raise ValueError(f"site must be one of {sorted(SITES)}, got {site!r}")
    rng = np.random.default_rng(rng)
    profile = SITES[site]
    template = _load_template()
    biological_age = age + rng.normal(0.0, BRAIN_AGE_GAP_SD)
    image = _template_space_image(template, rng, biological_age, profile)
    coordinates = _subject_to_template_coordinates(template, rng, biological_age, sex)
    image, mask = _warp(template, image, coordinates)
    gain = INTENSITY_SCALE * profile.gain * rng.lognormal(0.0, GAIN_SD)
    bias = np.exp(_smooth_field(rng, WORK_SHAPE, profile.bias_rms, BIAS_FREQUENCIES))
    noise = rng.standard_normal((2, int(mask.sum())), dtype=np.float32) * (profile.noise * gain)
    brain = gain * image[mask] * bias[mask]
    output = np.zeros(WORK_SHAPE, np.float32)
    output[mask] = np.hypot(brain + noise[0], noise[1])  # Rician (magnitude) noise
    return output


def _double_along(image: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation to twice the samples along ``axis``: sample ``i`` of the result is ``image[i / 2]``."""
    source = np.moveaxis(image, axis, 0)
    result = np.empty((2 * source.shape[0], *source.shape[1:]), np.float32)
    result[0::2] = source
    result[1:-1:2] = 0.5 * (source[:-1] + source[1:])
    result[-1] = 0.5 * source[-1]  # half a voxel beyond the grid, towards the zero background
    return np.moveaxis(result, 0, axis)


def upsample_to_1mm(image: np.ndarray) -> np.ndarray:
    """Linearly interpolate a ``WORK_SHAPE`` image onto the 1 mm grid ``MNI_1MM_SHAPE`` (voxel ``i`` -> ``i / 2``).

    Args:
        image: array of shape ``WORK_SHAPE``.

    Returns:
        float32 array of shape ``MNI_1MM_SHAPE``; the last 1 mm plane of each axis lies half a 2 mm voxel
        beyond the working grid and interpolates towards 0 (background).
    """
    if image.shape != WORK_SHAPE:
        raise ValueError(f"expected an image of shape {WORK_SHAPE}, got {image.shape}")
    upsampled = image.astype(np.float32)
    for axis in range(3):  # separable; 10x faster than scipy.ndimage.zoom(order=1) on this grid
        upsampled = _double_along(upsampled, axis)
    return upsampled


def _subject_id(index: int) -> str:
    return f"sub-{index:04d}"


def _subject_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _draw_covariates(rng: np.random.Generator, age_range: tuple[float, float]) -> tuple[float, str, str]:
    """Age (uniform, 0.1 year resolution), sex (M/F, p = 1/2) and site (uniform over SITES)."""
    age = round(float(rng.uniform(*age_range)), 1)
    sex = ("F", "M")[int(rng.integers(2))]
    site = list(SITES)[int(rng.integers(len(SITES)))]
    return age, sex, site


def _write_nifti(data: np.ndarray, path: Path) -> None:
    """Write ``data`` (``MNI_1MM_SHAPE``) rounded to int16 as a NIfTI on the 1 mm MNI grid, atomically."""
    image = nib.Nifti1Image(np.clip(np.rint(data), 0, np.iinfo(np.int16).max).astype(np.int16), MNI_1MM_AFFINE)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(MNI_1MM_AFFINE, code="mni")
    image.set_qform(MNI_1MM_AFFINE, code="mni")
    atomic_write(path, lambda temporary: nib.save(image, temporary), suffix=".nii.gz")


def _generate_subject(output_dir: Path, seed: int, index: int, age_range: tuple[float, float]) -> None:
    """Synthesize subject ``index`` and write its 1 mm NIfTI (the covariates are redrawn from the same stream)."""
    rng = _subject_rng(seed, index)
    age, sex, site = _draw_covariates(rng, age_range)
    path = output_dir / _subject_id(index) / IMAGE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_nifti(upsample_to_1mm(synthesize_subject(rng, age, sex, site)), path)


def generate_cohort(
    output_dir: str | Path,
    n_subjects: int = 240,
    seed: int = 0,
    age_range: tuple[float, float] = (42.0, 82.0),
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (or complete) the synthetic ageing T1 cohort under ``output_dir``.

    Subject ``i`` depends only on ``(seed, i, age_range)``: the cohort is byte-identical for any ``workers``,
    and a larger ``n_subjects`` extends a smaller cohort. Image files already present are kept (they are
    only ever written whole, through a temporary file and ``os.replace``), so an interrupted run resumes.
    ``workers > 1`` runs a process pool with the platform's default start method; the template is loaded
    first, so forked workers share it (others load it once each, ~3 s).

    Args:
        output_dir: cohort folder, created if needed.
        n_subjects: number of subjects.
        seed: cohort seed.
        age_range: (youngest, oldest) age in years; ages are uniform in it.
        workers: number of processes.
        progress: show a tqdm progress bar.

    Returns:
        The manifest, also written to ``<output_dir>/manifest.csv``: one row per subject with ``id`` (str),
        ``path`` (str, relative to ``output_dir``), ``age`` (float, years), ``sex`` ("F"/"M"), ``site`` (str).

    Raises:
        ValueError: on a non-positive ``n_subjects`` or ``workers``, an empty ``age_range``, or an
            ``output_dir`` that holds a cohort generated with another seed, age range or model version.
    """
    age_range = check_cohort_request(n_subjects, workers, age_range)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(
        output_dir / COHORT_NAME, {"model_version": MODEL_VERSION, "seed": int(seed), "age_range": list(age_range)}
    )

    rows = []
    for index in range(n_subjects):
        age, sex, site = _draw_covariates(_subject_rng(seed, index), age_range)
        path = f"{_subject_id(index)}/{IMAGE_NAME}"
        rows.append({"id": _subject_id(index), "path": path, "age": age, "sex": sex, "site": site})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))

    write = functools.partial(_generate_subject, output_dir, seed, age_range=age_range)
    # the template is loaded before a pool starts: forked workers inherit it instead of loading it again
    write_missing(manifest, output_dir, Path.exists, write, output_dir / MANIFEST_NAME, workers, progress,
                  desc="demo T1 cohort", prepare=_load_template)
    return manifest


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.t1 --output DIR [--n_subjects N] [--seed S] [--workers W]``."""
    return cohort_main(generate_cohort, __doc__.splitlines()[0], 240, argv, age_range=(42.0, 82.0))


if __name__ == "__main__":
    main()
