"""Random augmentation of whole batches on their own device, with parameters drawn per sample.

The bundles augment in the DataLoader workers, one sample at a time, with MONAI dictionary transforms
(``RandAffined``, ``RandFlipd``, ``RandScaleIntensityd``). For 100^3 volumes two views per sample cost tens of
milliseconds of CPU each (about 70-140 ms per sample on one core of the development machine), which can starve a
GPU. The classes here do the same on a batch [B, C, *S] already on the device: one ``affine_grid`` +
``grid_sample`` per 16 samples for the random affines, one ``where`` for the flips, one multiply for the
intensity scales.

Each transform draws its parameters from the distributions of its MONAI counterpart (same ranges and
probability, same affine convention: rotation, shear, translation then scale about the image centre, in voxels);
:meth:`~BatchRandomTransform.randomize` returns them and :meth:`~BatchRandomTransform.apply` applies given
parameters, so a test can check a batch against MONAI's array transform sample by sample. The random stream is a
torch CPU generator per transform, not MONAI's numpy ``RandomState``: the same seed gives other draws than the
loader path, but the same draws on every device.

Any leading axes are treated as samples: views [B, V, C, *S] (see
:class:`~supremix_med.engines.ContrastiveBatch`) get independent parameters per view, as
:func:`~supremix_med.engines.multi_view_transform` gives in the loader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.transforms import (
    RandAffine, RandAffined, RandFlip, RandFlipd, RandScaleIntensity, RandScaleIntensityd, RandShiftIntensity,
    RandShiftIntensityd,
)

__all__ = ["BatchRandomTransform", "BatchRandAffine", "BatchRandFlip", "BatchRandScaleIntensity",
           "BatchRandShiftIntensity", "BatchAugmentation"]

Params = dict[str, torch.Tensor]
_MODES = ("bilinear", "nearest")
_PADDING_MODES = ("zeros", "border", "reflection")
#: samples resampled per ``grid_sample`` call: bounds the sampling grid at 16 x 3 x 4 bytes per voxel
#: (192 MB for 100^3 volumes) whatever the batch size.
AFFINE_CHUNK = 16


def _ranges(value: Any, name: str) -> list[tuple[float, float]]:
    """MONAI's range convention: an entry ``x`` means U(-x, x), a pair ``(lo, hi)`` U(lo, hi); ``None`` skips."""
    if value is None:
        return []
    entries = [value] if isinstance(value, (int, float)) else list(value)
    ranges = []
    for entry in entries:
        if entry is None:
            continue
        if isinstance(entry, (int, float)):
            ranges.append((-float(entry), float(entry)))
        elif len(entry) == 2:
            ranges.append((float(entry[0]), float(entry[1])))
        else:
            raise ValueError(f"{name}: each entry must be a number x (range [-x, x]) or a pair (lo, hi), got "
                             f"{entry!r}.")
    return ranges


def _check_probability(prob: float, owner: str) -> float:
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"{owner}: prob must be in [0, 1], got {prob}.")
    return float(prob)


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory and a non-blocking copy on CUDA (no synchronisation)."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


class BatchRandomTransform(ABC):
    """A random transform of images [*, C, *S] with ``spatial_dims`` spatial axes, one draw per sample.

    The parameters are drawn on the host (a few numbers per sample, from the transform's own CPU generator, so
    a seed gives the same draws on every device) and reach the device in one non-blocking copy per transform
    and batch; the images never leave their device.

    Args:
        prob: probability that a sample is transformed (drawn per sample).
        spatial_dims: number of spatial axes S (2 or 3 for the affine, any for the others).
        seed: seed of the transform's generator; ``None`` seeds it from torch's global generator at first use, so
            ``monai.utils.set_determinism`` (per rank in the multi-GPU configs) fixes it.
    """

    def __init__(self, prob: float, spatial_dims: int, seed: int | None = None) -> None:
        if spatial_dims < 1:
            raise ValueError(f"{type(self).__name__}: spatial_dims must be >= 1, got {spatial_dims}.")
        self.prob = _check_probability(prob, type(self).__name__)
        self.spatial_dims = spatial_dims
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None) -> BatchRandomTransform:
        """Re-seed (``None``: from torch's global generator at next use) and return ``self``."""
        self.seed = seed
        self._generator: torch.Generator | None = None
        return self

    def _uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """U[0, 1) float64 draws on the host from this transform's generator."""
        if self._generator is None:
            seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
            self._generator = torch.Generator().manual_seed(seed)
        return torch.rand(shape, generator=self._generator, dtype=torch.float64)

    def _between(self, n: int, ranges: list[tuple[float, float]]) -> torch.Tensor:
        """[n, len(ranges)] float64 draws on the host, column k uniform in ``ranges[k]``."""
        low, high = torch.tensor(ranges, dtype=torch.float64).reshape(-1, 2).T
        return low + (high - low) * self._uniform((n, len(ranges)))

    def _samples(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [*, C, *S] as [N, C, *S] (a view when possible)."""
        if images.dim() < self.spatial_dims + 2:
            raise ValueError(f"{type(self).__name__}: expected images [*, C, {self.spatial_dims} spatial axes], got "
                             f"shape {tuple(images.shape)}.")
        return images.reshape(-1, *images.shape[-self.spatial_dims - 1:])

    def randomize(self, n: int) -> Params:
        """Host parameters for ``n`` samples: at least ``"applied"`` [n] (bool)."""
        return {"applied": self._uniform((n,)) < self.prob, **self._draw(n)}

    @abstractmethod
    def _draw(self, n: int) -> Params:
        """The transform's own parameters for ``n`` samples."""

    @abstractmethod
    def _transform(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Transform every sample of [N, C, *S] with its parameters (``applied`` is handled by :meth:`apply`)."""

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Images [*, C, *S] transformed where ``params["applied"]``, unchanged (bit for bit) elsewhere."""
        flat = self._samples(images)
        applied = to_device(params["applied"], flat.device).reshape(-1, *[1] * (flat.dim() - 1))
        return torch.where(applied, self._transform(flat, params), flat).reshape(images.shape)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Draw parameters for every sample of ``images`` [*, C, *S] and apply them."""
        return self.apply(images, self.randomize(self._samples(images).shape[0]))


class BatchRandAffine(BatchRandomTransform):
    """Random rotation, shear, translation and scaling about the image centre, per sample (``RandAffine``).

    Ranges follow MONAI's convention (``x``: U(-x, x); ``(lo, hi)``: U(lo, hi); one entry per parameter):
    ``rotate_range`` in radians (3-D: about the first, second then third axis, intrinsic, MONAI's default
    ``"XYZ"``), ``shear_range`` the 2 (2-D) or 6 (3-D) shear coefficients, ``translate_range`` in voxels,
    ``scale_range`` added to 1. The output voxel at centred coordinates ``c`` samples the input at
    ``A c`` with ``A = R @ Sh @ T @ S``, exactly as ``monai.transforms.Affine``; ``mode`` and ``padding_mode``
    are ``grid_sample``'s (``align_corners=False``, as MONAI). Output size = input size.
    """

    def __init__(self, prob: float = 0.1, rotate_range: Any = None, shear_range: Any = None,
                 translate_range: Any = None, scale_range: Any = None, mode: str = "bilinear",
                 padding_mode: str = "reflection", spatial_dims: int = 3, seed: int | None = None) -> None:
        super().__init__(prob, spatial_dims, seed)
        if spatial_dims not in (2, 3):
            raise ValueError(f"BatchRandAffine: spatial_dims must be 2 or 3, got {spatial_dims}.")
        if mode not in _MODES or padding_mode not in _PADDING_MODES:
            raise ValueError(f"BatchRandAffine: mode must be one of {_MODES} and padding_mode one of "
                             f"{_PADDING_MODES}, got {mode!r} and {padding_mode!r}.")
        shears = 2 if spatial_dims == 2 else 6
        self.ranges = {
            "rotate": _ranges(rotate_range, "rotate_range")[: 1 if spatial_dims == 2 else 3],
            "shear": _ranges(shear_range, "shear_range")[:shears],
            "translate": _ranges(translate_range, "translate_range")[:spatial_dims],
            "scale": _ranges(scale_range, "scale_range")[:spatial_dims],
        }
        self.mode = mode
        self.padding_mode = padding_mode

    def _draw(self, n: int) -> Params:
        params = {name: self._between(n, ranges) for name, ranges in self.ranges.items()}
        params["scale"] = params["scale"] + 1.0
        return params

    def matrices(self, params: Params) -> torch.Tensor:
        """The affines [N, d + 1, d + 1] (float64, centred voxel coordinates) of host parameters."""
        d = self.spatial_dims
        n = params["applied"].shape[0]
        eye = torch.eye(d + 1, dtype=torch.float64).repeat(n, 1, 1)
        affine = eye.clone()
        for angle, axes in zip(params["rotate"].unbind(1), ([(1, 2), (2, 0), (0, 1)] if d == 3 else [(0, 1)])):
            affine = affine @ _rotation(angle, axes, eye)
        shear = eye.clone()
        for coefficient, (row, col) in zip(params["shear"].unbind(1), _shear_entries(d)):
            elementary = eye.clone()
            elementary[:, row, col] = coefficient
            shear = elementary @ shear  # pre-multiplied: the first coefficient acts first, as MONAI composes it
        translate = eye.clone()
        translate[:, : params["translate"].shape[1], d] = params["translate"]
        scale = torch.ones(n, d + 1, dtype=torch.float64)
        scale[:, : params["scale"].shape[1]] = params["scale"]
        return affine @ shear @ translate @ torch.diag_embed(scale)

    def _transform(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        theta = _normalised_theta(self.matrices(params), images.shape[2:]).to(images.dtype)
        theta = to_device(theta, images.device)
        parts = []
        for start in range(0, images.shape[0], AFFINE_CHUNK):
            chunk = images[start:start + AFFINE_CHUNK]
            grid = F.affine_grid(theta[start:start + AFFINE_CHUNK], list(chunk.shape), align_corners=False)
            parts.append(F.grid_sample(chunk, grid, mode=self.mode, padding_mode=self.padding_mode,
                                       align_corners=False))
        return torch.cat(parts)


def _rotation(angle: torch.Tensor, axes: tuple[int, int], eye: torch.Tensor) -> torch.Tensor:
    """Rotations by ``angle`` [N] in the plane ``axes`` (MONAI's sign convention), from ``eye`` [N, d+1, d+1]."""
    first, second = axes
    rotation = eye.clone()
    cos, sin = angle.cos(), angle.sin()
    rotation[:, first, first], rotation[:, first, second] = cos, -sin
    rotation[:, second, first], rotation[:, second, second] = sin, cos
    return rotation


def _shear_entries(d: int) -> list[tuple[int, int]]:
    """Matrix entries of MONAI's shear coefficients, in coefficient order."""
    return [(0, 1), (1, 0)] if d == 2 else [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def _normalised_theta(affine: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``affine_grid``'s theta [N, d, d + 1] for affines in centred voxel coordinates.

    ``affine_grid`` (``align_corners=False``) works in coordinates ``u = 2 c / n`` per axis, listed last axis
    first; so theta = P N A N^-1 P with N = diag(2 / n) and P the axis reversal.
    """
    d = len(spatial_shape)
    size = torch.tensor([max(2, s) for s in spatial_shape], dtype=affine.dtype)
    linear = affine[:, :d, :d] * (2.0 / size)[:, None] * (size / 2.0)[None, :]
    shift = affine[:, :d, d] * (2.0 / size)
    reverse = list(range(d - 1, -1, -1))
    return torch.cat([linear[:, reverse][:, :, reverse], shift[:, reverse, None]], dim=2)


class BatchRandFlip(BatchRandomTransform):
    """Flip the ``spatial_axis`` axes (``None``: all spatial axes) of a sample with probability ``prob``
    (``RandFlip``); negative axes count from the last."""

    def __init__(self, prob: float = 0.1, spatial_axis: int | Sequence[int] | None = None, spatial_dims: int = 3,
                 seed: int | None = None) -> None:
        super().__init__(prob, spatial_dims, seed)
        axes = range(spatial_dims) if spatial_axis is None else (
            [spatial_axis] if isinstance(spatial_axis, int) else list(spatial_axis))
        if any(not -spatial_dims <= a < spatial_dims for a in axes):
            raise ValueError(f"BatchRandFlip: spatial_axis {spatial_axis!r} out of range for {spatial_dims} axes.")
        self.dims = [a + 2 if a >= 0 else a for a in axes]

    def _draw(self, n: int) -> Params:
        return {}

    def _transform(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return images.flip(self.dims)


class _BatchRandIntensity(BatchRandomTransform):
    """An intensity change by a value drawn per sample from ``value_range`` (MONAI's convention)."""

    def __init__(self, value_range: Any, prob: float, spatial_dims: int, seed: int | None) -> None:
        super().__init__(prob, spatial_dims, seed)
        low, high = _ranges([value_range], type(self).__name__)[0]
        self.low, self.high = min(low, high), max(low, high)

    def _draw(self, n: int) -> Params:
        return {"value": self._between(n, [(self.low, self.high)])[:, 0]}

    def _values(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """[N, 1, 1, ...] values on the images' device, broadcasting over each sample's channels and voxels."""
        return to_device(params["value"].to(images.dtype), images.device).reshape(-1, *[1] * (images.dim() - 1))


class BatchRandScaleIntensity(_BatchRandIntensity):
    """``image * (1 + factor)``, factor ~ U(-factors, factors) or U(*factors) (``RandScaleIntensity``)."""

    def __init__(self, factors: float | Sequence[float], prob: float = 0.1, spatial_dims: int = 3,
                 seed: int | None = None) -> None:
        super().__init__(factors, prob, spatial_dims, seed)

    def _transform(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return images * (1 + self._values(images, params))


class BatchRandShiftIntensity(_BatchRandIntensity):
    """``image + offset``, offset ~ U(-offsets, offsets) or U(*offsets) (``RandShiftIntensity``)."""

    def __init__(self, offsets: float | Sequence[float], prob: float = 0.1, spatial_dims: int = 3,
                 seed: int | None = None) -> None:
        super().__init__(offsets, prob, spatial_dims, seed)

    def _transform(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return images + self._values(images, params)


def _inner(transform: Any, dictionary: type, attribute: str) -> tuple[Any, float]:
    """The array transform inside a MONAI dictionary transform (or the transform itself) and the probability
    that a sample is transformed (the dictionary's ``prob`` times the array transform's)."""
    inner = getattr(transform, attribute) if isinstance(transform, dictionary) else transform
    return inner, float(transform.prob) * (float(inner.prob) if inner is not transform else 1.0)


def _from_monai(transform: Any, spatial_dims: int) -> BatchRandomTransform:
    """The batch counterpart of one MONAI random transform (array or dictionary form)."""
    name = type(transform).__name__
    if isinstance(transform, (RandAffined, RandAffine)):
        inner, prob = _inner(transform, RandAffined, "rand_affine")
        if inner.spatial_size is not None:
            raise ValueError(f"{name}: spatial_size={inner.spatial_size} changes the image size; the batch affine "
                             f"keeps it. Crop or resize in the loader instead.")
        mode, padding = (transform.mode[0], transform.padding_mode[0]) if inner is not transform else (
            transform.mode, transform.padding_mode)
        grid = inner.rand_affine_grid
        return BatchRandAffine(prob, grid.rotate_range, grid.shear_range, grid.translate_range, grid.scale_range,
                               mode=str(mode), padding_mode=str(padding), spatial_dims=spatial_dims)
    if isinstance(transform, (RandFlipd, RandFlip)):
        return BatchRandFlip(float(transform.prob), transform.flipper.spatial_axis, spatial_dims)
    if isinstance(transform, (RandScaleIntensityd, RandScaleIntensity, RandShiftIntensityd, RandShiftIntensity)):
        scale = isinstance(transform, (RandScaleIntensityd, RandScaleIntensity))
        inner, prob = _inner(transform, RandScaleIntensityd, "scaler") if scale else _inner(
            transform, RandShiftIntensityd, "shifter")
        if inner.channel_wise:
            raise ValueError(f"{name}: channel_wise=True has no batch counterpart; keep it in the loader.")
        if scale:
            return BatchRandScaleIntensity(inner.factors, prob, spatial_dims)
        return BatchRandShiftIntensity(inner.offsets, prob, spatial_dims)
    raise ValueError(f"{name} has no batch counterpart (supported: RandAffine(d), RandFlip(d), "
                     f"RandScaleIntensity(d), RandShiftIntensity(d)); keep it in the loader's transforms.")


class BatchAugmentation:
    """Batch transforms applied in order to images [*, C, *S] on their device (a batch ``Compose``).

    Args:
        transforms: :class:`BatchRandomTransform` instances.
        seed: when given, transform ``k`` is seeded ``seed + k``; ``None`` keeps their own seeds.

    Example (a bundle moving its ``augmentation`` list from the loader to the device)::

        "device_augmentation": "$supremix_med.engines.BatchAugmentation.from_monai(@augmentation, spatial_dims=3)"
    """

    def __init__(self, transforms: Sequence[BatchRandomTransform], seed: int | None = None) -> None:
        self.transforms = list(transforms)
        if seed is not None:
            self.set_random_state(seed)

    @classmethod
    def from_monai(cls, transforms: Sequence[Any], spatial_dims: int = 3, seed: int | None = None) -> BatchAugmentation:
        """The batch counterparts of MONAI random transforms (``RandAffine(d)``, ``RandFlip(d)``,
        ``RandScaleIntensity(d)``, ``RandShiftIntensity(d)``) with their ranges and probabilities.

        Raises:
            ValueError: a transform has no batch counterpart, or changes the image size.
        """
        return cls([_from_monai(t, spatial_dims) for t in transforms], seed)

    def set_random_state(self, seed: int | None) -> BatchAugmentation:
        """Seed transform ``k`` with ``seed + k`` (``None``: from torch's global generator at next use)."""
        for k, transform in enumerate(self.transforms):
            transform.set_random_state(None if seed is None else seed + k)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            images = transform(images)
        return images

    def __len__(self) -> int:
        return len(self.transforms)
