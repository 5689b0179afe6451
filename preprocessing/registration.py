"""Affine registration of a T1 scan to the MNI152 template with SimpleITK.

Coordinate convention: every SimpleITK image built here lives in **RAS+ world millimetres** (the NIfTI
convention nibabel uses), not in ITK's usual LPS+. ``image_from_array`` copies a NIfTI affine verbatim into
origin/spacing/direction, so the template, its mask and every scan share one world frame and transforms
map RAS points to RAS points. Do not mix these images with ones read by ``sitk.ReadImage`` (LPS+).

The MNI152 template is nilearn's ICBM 2009 symmetric template (skull-stripped, 1 mm, shipped with nilearn,
no download) and its brain mask ``template > 0.2`` (``nilearn.datasets.load_mni152_brain_mask``).

Registration (``register_affine``) runs two stages, each a three-level pyramid (shrink factors 4/2/1,
Gaussian smoothing 2/1/0 voxels) of regular-step gradient descent on Mattes mutual information, evaluated
on a random subset of the fixed image's voxels inside a fixed-image mask (50/20/5 % per level, fixed seed):

1. rigid (``Euler3DTransform``, 6 parameters) initialised by aligning the centres of mass
   (``CenteredTransformInitializer`` with ``MOMENTS``),
2. affine (``AffineTransform``, 12 parameters) starting from the rigid result.

The fixed-image mask confines the metric to the (dilated) template brain, so skull, neck and background in
the moving scan do not drive the alignment. The moving scan is first resampled on its own axes to voxels no
finer than the fixed image's (2 mm for the MNI grid), which makes the pyramid ~4x cheaper and loses
nothing the 2 mm fixed image could use. Registration runs single-threaded (ITK's global default thread
count is set to 1 for its duration, so it is not thread-safe): multi-threaded, the metric's sums vary with
thread scheduling, and on this workload threads cost more than they gain (parallelise over scans
instead). With the seeded sampling a scan gets exactly the same transform on every run and machine.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = [
    "RegistrationParams",
    "RegistrationResult",
    "image_from_array",
    "mni152_template",
    "normalised_cross_correlation",
    "register_affine",
]


@dataclass(frozen=True)
class RegistrationParams:
    """Settings of ``register_affine``.

    Args:
        histogram_bins: bins of the Mattes mutual-information joint histogram.
        sampling_fractions: per pyramid level, the fraction in (0, 1] of fixed-mask voxels sampled (randomly,
            once per level) to evaluate the metric.
        shrink_factors: per level, the down-sampling factor of the images, coarse to fine.
        smoothing_sigmas_voxels: per level, the Gaussian sigma in voxels of the shrunk images.
        iterations: maximum optimiser iterations per level and stage.
        learning_rate: initial step of the regular-step gradient descent; parameter scales come from the
            physical shift, so 2.0 means steps moving voxels by about 2 mm.
        min_step: the optimiser stops a level when its step (halved at each change of direction) falls below.
        seed: seed (>= 1) of the metric's voxel sampling, so a scan always gets the same transform (SimpleITK
            reads a seed of 0 as "seed from the wall clock", hence not allowed).
    """

    histogram_bins: int = 32
    sampling_fractions: tuple[float, ...] = (0.5, 0.2, 0.05)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas_voxels: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: int = 100
    learning_rate: float = 2.0
    min_step: float = 0.01
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("sampling_fractions", "shrink_factors", "smoothing_sigmas_voxels"):  # lists from JSON
            object.__setattr__(self, name, tuple(getattr(self, name)))
        levels = {len(self.sampling_fractions), len(self.shrink_factors), len(self.smoothing_sigmas_voxels)}
        if len(levels) != 1:
            raise ValueError(
                "sampling_fractions, shrink_factors and smoothing_sigmas_voxels need one entry per pyramid "
                f"level, got {self.sampling_fractions}, {self.shrink_factors} and {self.smoothing_sigmas_voxels}."
            )
        if not all(0.0 < fraction <= 1.0 for fraction in self.sampling_fractions):
            raise ValueError(f"sampling_fractions must lie in (0, 1], got {self.sampling_fractions}.")
        if self.seed < 1:
            raise ValueError(f"seed must be >= 1 (0 would seed from the wall clock), got {self.seed}.")


@dataclass(frozen=True)
class RegistrationResult:
    """Outcome of ``register_affine``.

    Attributes:
        transform: maps fixed (template) world points to moving (scan) world points, RAS+ mm; pass it to
            ``sitk.Resample`` to bring the scan onto the template grid.
        mutual_information: Mattes mutual information (nats) at the end of the affine stage, sign flipped
            from ITK's metric so that higher is better.
        iterations: optimiser iterations of the last pyramid level, per stage (rigid, affine).
        stop_conditions: the optimiser's stop description per stage.
    """

    transform: sitk.AffineTransform
    mutual_information: float
    iterations: tuple[int, int]
    stop_conditions: tuple[str, str]


def image_from_array(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """Wrap a NIfTI-style voxel array as a float32 SimpleITK image in RAS+ world mm.

    Args:
        data: array of shape (I, J, K) indexed like nibabel's ``dataobj`` (first axis fastest on disk).
        affine: (4, 4) voxel-to-world (RAS+ mm) matrix; shear is kept in the direction matrix.

    Returns:
        image with size (I, J, K), spacing the affine's column norms and direction the normalised columns.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T, dtype=np.float32))
    linear = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(np.asarray(affine, dtype=float)[:3, 3].tolist())
    image.SetDirection((linear / spacing).ravel().tolist())
    return image


@functools.lru_cache(maxsize=1)
def mni152_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nilearn's MNI152 2009 template and brain mask at 1 mm (cached; shipped with nilearn, no download).

    Returns:
        (template, mask, affine): float32 template of shape (197, 233, 189) with values in [0, 1], bool
        brain mask (template > 0.2) of that shape, and their (4, 4) voxel-to-MNI (RAS+ mm) affine.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template_img = load_mni152_template(resolution=1)
    mask = np.asarray(load_mni152_brain_mask(resolution=1).dataobj) > 0
    return template_img.get_fdata(dtype=np.float32), mask, template_img.affine


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` over the voxels where ``mask`` is true.

    Args:
        a, b: arrays of the same shape.
        mask: boolean array of that shape.

    Returns:
        correlation in [-1, 1] (higher is more similar); 0.0 when either image is constant in the mask.
    """
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def _registration_method(fixed_mask: sitk.Image, params: RegistrationParams) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=params.histogram_bins)
    method.SetMetricFixedMask(fixed_mask)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(params.sampling_fractions), params.seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=params.learning_rate,
        minStep=params.min_step,
        numberOfIterations=params.iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(params.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(params.smoothing_sigmas_voxels))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """Run ITK with one thread (the metric's histogram sums would otherwise depend on thread scheduling)."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _coarsened(image: sitk.Image, spacing_mm: Sequence[float]) -> sitk.Image:
    """``image`` resampled on its own axes to voxels at least ``spacing_mm`` wide, same field of view."""
    spacing = np.asarray(image.GetSpacing())
    coarse = np.maximum(spacing, np.asarray(spacing_mm))
    if np.allclose(coarse, spacing):
        return image
    size = np.ceil(np.asarray(image.GetSize()) * spacing / coarse).astype(int)
    # the first coarse voxel starts where the first fine voxel starts: its centre moves by half the growth
    origin = image.TransformContinuousIndexToPhysicalPoint(((coarse / spacing - 1.0) / 2.0).tolist())
    return sitk.Resample(
        image, size.tolist(), sitk.Transform(), sitk.sitkLinear, origin, coarse.tolist(), image.GetDirection(),
        0.0, sitk.sitkFloat32,
    )


def register_affine(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image,
    params: RegistrationParams | None = None,
) -> RegistrationResult:
    """Rigid then affine registration of ``moving`` to ``fixed`` by Mattes mutual information.

    Args:
        fixed: the reference (e.g. the MNI template on the output grid), float32.
        moving: the scan to align, float32, any orientation and voxel size (ideally anti-aliased to the
            fixed image's resolution, since it is coarsened to the fixed voxel size by interpolation).
        fixed_mask: uint8 mask on the fixed grid; only voxels inside it are sampled by the metric.
        params: optimisation settings; defaults to ``RegistrationParams()``.

    Returns:
        the fixed-to-moving affine transform and the final mutual information (see ``RegistrationResult``).
    """
    params = params or RegistrationParams()
    with _single_threaded():
        return _rigid_then_affine(fixed, _coarsened(moving, fixed.GetSpacing()), fixed_mask, params)


def _rigid_then_affine(
    fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image, params: RegistrationParams
) -> RegistrationResult:
    rigid = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    rigid_method = _registration_method(fixed_mask, params)
    rigid_method.SetInitialTransform(rigid, inPlace=True)
    rigid_method.Execute(fixed, moving)

    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine_method = _registration_method(fixed_mask, params)
    affine_method.SetInitialTransform(affine, inPlace=True)
    affine_method.Execute(fixed, moving)

    return RegistrationResult(
        transform=affine,
        mutual_information=-float(affine_method.GetMetricValue()),
        iterations=(rigid_method.GetOptimizerIteration(), affine_method.GetOptimizerIteration()),
        stop_conditions=(
            rigid_method.GetOptimizerStopConditionDescription(),
            affine_method.GetOptimizerStopConditionDescription(),
        ),
    )
