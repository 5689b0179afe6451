"""MONAI transforms for face images: loading, SimCLR-style augmentation and evaluation crops.

Images are float tensors [3, H, W] (RGB, rows first) in [0, 1] until the final ImageNet normalisation.

- :func:`face_load_transforms`: ``LoadImaged`` with the PIL reader, converted to RGB, channel-first, / 255.
- :func:`face_augmentation`: the SimCLR-style views of SupCR/RnC and SupReMix on AgeDB and IMDB-WIKI: random
  resized crop (area scale 0.2-1, aspect 3/4-4/3), horizontal flip (p 0.5), colour jitter (brightness,
  contrast, saturation 0.4, hue 0.1) with p 0.8, grey-scale with p 0.2, ImageNet normalisation.
- :func:`face_eval_transforms`: a centred square crop of 87.5 % of the shorter side resized to the output size
  (the same pixels as "resize the shorter side to 256, centre-crop 224"), ImageNet normalisation.

MONAI has no area-and-aspect random resized crop, colour jitter with hue and saturation, or random grey-scale,
so :class:`RandResizedCropd`, :class:`CenterResizedCropd`, :class:`RandColorJitterd` and :class:`RandGrayscaled`
are written here as MONAI transforms (they follow ``torchvision.transforms``' definitions). The random ones
draw from their own ``self.R``, so ``Compose.set_random_state`` makes them reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    EnsureTyped, LoadImaged, MapTransform, NormalizeIntensityd, RandFlipd, RandomizableTransform,
    ScaleIntensityRanged,
)
from PIL import Image

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "CenterResizedCropd", "RandColorJitterd", "RandGrayscaled", "RandResizedCropd",
    "face_augmentation", "face_eval_transforms", "face_load_transforms", "grayscale", "to_rgb",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel (R, G, B) mean of ImageNet images in [0, 1]."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel (R, G, B) standard deviation of ImageNet images in [0, 1]."""
LUMA_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B (PIL's ``convert("L")``)."""

Box = tuple[int, int, int, int]  # top, left, height, width in pixels


def to_rgb(image: Image.Image) -> Image.Image:
    """PIL converter of the face loader: any mode (grey-scale, palette, RGBA, CMYK) -> 8-bit RGB."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_image(image: torch.Tensor, name: str, rgb: bool = False) -> None:
    """Raise a ValueError naming transform ``name`` unless ``image`` is [C, H, W] (``rgb``: [3, H, W])."""
    if image.ndim != 3 or (rgb and image.shape[0] != 3):
        raise ValueError(f"{name} expects {'an RGB image [3, H, W]' if rgb else 'a 2-D image [C, H, W]'}, "
                         f"got shape {tuple(image.shape)}.")


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """Luma of an RGB image: [3, H, W] -> [1, H, W], ``0.299 R + 0.587 G + 0.114 B``."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=image.dtype, device=image.device).reshape(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True)


def _crop_resize(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` (top, left, height, width) of ``image`` [C, H, W] and resize it to [C, size, size].

    Bilinear interpolation with anti-aliasing when downsampling (``torch.nn.functional.interpolate``,
    ``antialias=True``: the filter of PIL's and torchvision's resize, ~10x faster than MONAI's ``Resize`` with
    its Gaussian pre-smoothing, which matters in data-loader workers feeding a GPU).
    """
    top, left, height, width = box
    crop = image[None, :, top:top + height, left:left + width]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


class RandResizedCropd(RandomizableTransform, MapTransform):
    """Crop a random region of random area and aspect ratio, then resize it to ``spatial_size`` (square).

    The region's area is ``U(scale) * H * W`` and its aspect ratio (width / height) is log-uniform in
    ``ratio``; up to 10 draws are tried for a region that fits, else the largest centred region with an aspect
    ratio in ``ratio`` is used (``torchvision.transforms.RandomResizedCrop``). Every key gets the same region.

    Args:
        keys: keys of the images [C, H, W] to crop.
        spatial_size: output height and width in pixels.
        scale: (min, max) fraction of the image area kept, 0 < min <= max <= 1.
        ratio: (min, max) aspect ratio (width / height) of the region, 0 < min <= max.
        allow_missing_keys: don't raise on a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}.")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {tuple(ratio)}.")
        self.scale = (float(scale[0]), float(scale[1]))
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.spatial_size = int(spatial_size)
        self.box: Box = (0, 0, 0, 0)

    def randomize(self, image_size: Sequence[int]) -> None:
        """Draw ``self.box`` (top, left, height, width) for an image of ``image_size`` (H, W)."""
        height, width = int(image_size[0]), int(image_size[1])
        area = height * width
        for _ in range(10):
            target_area = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                self.box = (int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w)
                return
        low, high = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        h, w = height, width
        if width / height < low:
            h = int(round(width / low))
        elif width / height > high:
            w = int(round(height * high))
        self.box = ((height - h) // 2, (width - w) // 2, h, w)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        _check_image(d[keys[0]], type(self).__name__)
        self.randomize(d[keys[0]].shape[1:])
        for key in keys:
            d[key] = _crop_resize(d[key], self.box, self.spatial_size)
        return d


class CenterResizedCropd(MapTransform):
    """Crop a centred square of ``crop_fraction`` times the shorter side and resize it to ``spatial_size``.

    With ``crop_fraction = 224 / 256`` this keeps the pixels of "resize the shorter side to 256, centre-crop
    224", the usual evaluation crop of ImageNet-style models, resampled once instead of twice.

    Args:
        keys: keys of the images [C, H, W].
        spatial_size: output height and width in pixels.
        crop_fraction: side of the square as a fraction of the shorter image side, in (0, 1].
        allow_missing_keys: don't raise on a missing key.
    """

    def __init__(self, keys: KeysCollection, spatial_size: int, crop_fraction: float = 0.875,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}.")
        self.crop_fraction = float(crop_fraction)
        self.spatial_size = int(spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            _check_image(d[key], type(self).__name__)
            height, width = int(d[key].shape[1]), int(d[key].shape[2])
            side = max(1, int(round(self.crop_fraction * min(height, width))))
            d[key] = _crop_resize(d[key], ((height - side) // 2, (width - side) // 2, side, side), self.spatial_size)
        return d


def _blend(image: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    """``factor * image + (1 - factor) * other``, clipped to [0, 1]."""
    return (factor * image + (1.0 - factor) * other).clamp(0.0, 1.0)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """RGB [3, H, W] in [0, 1] -> HSV [3, H, W] in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = image
    value, _ = image.max(dim=0)
    chroma = value - image.min(dim=0).values
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = chroma.clamp_min(1e-12)
    hue = torch.where(value == r, ((g - b) / safe) % 6.0,
                      torch.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = torch.where(chroma > 0, hue / 6.0, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value])


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """HSV [3, H, W] in [0, 1] -> RGB [3, H, W] in [0, 1]."""
    hue, saturation, value = image
    sector = hue * 6.0
    # channel c is value - chroma * clamp(min(k, 4 - k), 0, 1) with k = (n + sector) mod 6, n = 5, 3, 1 for R, G, B
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype, device=image.device).reshape(3, 1, 1)
    k = (offsets + sector) % 6.0
    return value - value * saturation * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _adjust_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of RGB ``image`` [3, H, W] by ``shift`` turns (in [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(image)
    hsv = torch.stack([(hsv[0] + shift) % 1.0, hsv[1], hsv[2]])
    return _hsv_to_rgb(hsv)


class RandColorJitterd(RandomizableTransform, MapTransform):
    """With probability ``prob``, change brightness, contrast, saturation and hue by random amounts, in random order.

    Each enabled adjustment draws a factor (``torchvision.transforms.ColorJitter``): brightness ``f`` in
    ``[max(0, 1 - brightness), 1 + brightness]`` scales the image; contrast ``f`` blends the image with the mean
    of its grey-scale, ``f * x + (1 - f) * mean``; saturation ``f`` blends it with its grey-scale image; hue
    ``h`` in ``[-hue, hue]`` rotates the hue by ``h`` turns. Results are clipped to [0, 1]. An amount of 0
    disables that adjustment. Every key gets the same factors and order.

    Args:
        keys: keys of the RGB images [3, H, W] in [0, 1].
        brightness, contrast, saturation: non-negative amounts.
        hue: amount in turns, in [0, 0.5].
        prob: probability of jittering an image.
        allow_missing_keys: don't raise on a missing key.
    """

    def __init__(
        self,
        keys: KeysCollection,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
        prob: float = 0.8,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=prob)
        amounts = {"brightness": brightness, "contrast": contrast, "saturation": saturation}
        negative = {k: v for k, v in amounts.items() if v < 0}
        if negative:
            raise ValueError(f"colour jitter amounts must be >= 0, got {negative}.")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] turns, got {hue}.")
        self.ranges = {k: (max(0.0, 1.0 - v), 1.0 + v) for k, v in amounts.items() if v > 0}
        if hue > 0:
            self.ranges["hue"] = (-hue, hue)
        self.factors: list[tuple[str, float]] = []

    def randomize(self, data: object = None) -> None:
        """Draw whether to jitter and, if so, ``self.factors``: (adjustment, factor) pairs in application order."""
        super().randomize(None)
        if not self._do_transform:
            self.factors = []
            return
        names = list(self.ranges)
        self.factors = [(names[i], float(self.R.uniform(*self.ranges[names[i]])))
                        for i in self.R.permutation(len(names))]

    def jitter(self, image: torch.Tensor) -> torch.Tensor:
        """Apply ``self.factors`` to one RGB image [3, H, W] in [0, 1]."""
        _check_image(image, type(self).__name__, rgb=True)
        for name, factor in self.factors:
            if name == "brightness":
                image = (image * factor).clamp(0.0, 1.0)
            elif name == "contrast":
                image = _blend(image, grayscale(image).mean(), factor)
            elif name == "saturation":
                image = _blend(image, grayscale(image), factor)
            else:
                image = _adjust_hue(image, factor)
        return image

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize()
        if self.factors:
            for key in self.key_iterator(d):
                d[key] = self.jitter(d[key])
        return d


class RandGrayscaled(RandomizableTransform, MapTransform):
    """With probability ``prob``, replace an RGB image [3, H, W] by its luma (:func:`grayscale`) in all 3 channels.

    Args:
        keys: keys of the RGB images.
        prob: probability of converting an image.
        allow_missing_keys: don't raise on a missing key.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.2, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=prob)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                _check_image(d[key], type(self).__name__, rgb=True)
                d[key] = grayscale(d[key]).expand(3, -1, -1).clone()
        return d


def face_load_transforms(keys: KeysCollection = "image") -> list[MapTransform]:
    """``{"image": path}`` -> RGB float32 tensor [3, H, W] in [0, 1].

    ``LoadImaged`` with the PIL reader (8-bit RGB through :func:`to_rgb`, rows first, channel-first), scaled
    by 1/255, as a plain ``torch.Tensor`` (the 2-D face transforms do not track MONAI metadata).
    """
    return [
        LoadImaged(keys, reader="PILReader", converter=to_rgb, reverse_indexing=False, image_only=True,
                   ensure_channel_first=True, dtype=np.float32),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
        EnsureTyped(keys, data_type="tensor", track_meta=False),
    ]


def _normalize(keys: KeysCollection) -> list[MapTransform]:
    """ImageNet normalisation, returning plain tensors (MONAI's flip and normalisation would return MetaTensors,
    whose per-view metadata does not collate consistently)."""
    return [NormalizeIntensityd(keys, subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True),
            EnsureTyped(keys, data_type="tensor", track_meta=False)]


def face_augmentation(
    image_size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    keys: KeysCollection = "image",
) -> list[MapTransform]:
    """The SimCLR-style training augmentation of a loaded face image [3, H, W] in [0, 1].

    Random resized crop to ``image_size`` (area ``scale``), horizontal flip (p 0.5), colour jitter
    0.4/0.4/0.4/0.1 (p 0.8), grey-scale (p 0.2), ImageNet normalisation: -> float32 [3, image_size, image_size].
    Use it as the ``augmentation`` of ``supremix_med.engines.multi_view_transform`` for contrastive views.
    """
    return [
        RandResizedCropd(keys, spatial_size=image_size, scale=scale),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandColorJitterd(keys, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, prob=0.8),
        RandGrayscaled(keys, prob=0.2),
        *_normalize(keys),
    ]


def face_eval_transforms(image_size: int = 224, crop_fraction: float = 0.875,
                         keys: KeysCollection = "image") -> list[MapTransform]:
    """The evaluation transform of a loaded face image: centred crop + resize (:class:`CenterResizedCropd`) and
    ImageNet normalisation: [3, H, W] in [0, 1] -> float32 [3, image_size, image_size]."""
    return [CenterResizedCropd(keys, spatial_size=image_size, crop_fraction=crop_fraction), *_normalize(keys)]
