"""Embedded demo cohort: synthetic hand radiographs with a bone-age target (months).

Paediatric hand radiographs (e.g. the RSNA Pediatric Bone Age challenge) cannot ship with the project, so the
demo draws stand-ins in the RSNA layout: one 8-bit greyscale PNG per child, 256 rows x 208 columns (portrait,
so the preprocessing's aspect-preserving resize and padding are exercised), and a manifest.

Layout written by :func:`generate_cohort`::

    <output_dir>/cohort.json        generator parameters (seed, bone-age range, model version)
    <output_dir>/manifest.csv       id, path (relative to output_dir), boneage (months), sex ("F"/"M")
    <output_dir>/xr-0000.png        one image per child

Model (a cartoon of skeletal maturation, not anatomy): a left hand, fingers up, drawn as capsules (segments
with round ends) in "hand units" (1 unit is about 1 mm of an adult hand) and placed on the pixel grid at
1.1 pixel per unit times the hand's size. Every long bone (radius, ulna, five metacarpals, fourteen phalanges)
is a shaft plus an epiphysis at its proximal end separated by a growth plate. With bone age ``B`` (months):

- size: the hand scales by ``0.5 + 0.5 * min(B / 200, 1) ** 0.8`` (half the adult size at birth);
- epiphyses grow from 15 % to 100 % of the shaft's radius over the first 120 months;
- growth plates (gaps of 3 units) narrow over the 60 months before fusion and close at 180 months in girls,
  204 months in boys (bone age at fusion);
- the eight carpal bones ossify in turn (onsets 2, 3, 30, 42, 54, 60, 66 and 110 months), each growing to
  full size over 48 months;
- bone density rises from 0.55 to 0.90 of full brightness over 0-216 months.

Variation that is not bone age, so that the target is learnable but not trivial: hand size N(0, 6 %), finger
spread N(0, 3 deg) per ray, hand rotation N(0, 6 deg) and shift N(0, 6 px) (clipped at 2 SD), soft-tissue
thickness N(0, 15 %), exposure gain U(0.8, 1.1) and offset U(0, 0.06), Gaussian blur (sigma 0.8 px) and
Gaussian noise (SD 0.02 of full brightness). Bone ages are uniform in ``boneage_range``; sex is F/M with
probability 1/2.

Every child's random stream is ``numpy.random.default_rng([seed, index])``, so images do not depend on the
number of children and are byte-identical for the same seed.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from supremix_med.demo.generation import (
    add_cohort_arguments, cohort_options, map_indices, truncated_normal, write_table,
)
from supremix_med.io import atomic_write, check_generator_record

__all__ = ["IMAGE_SHAPE", "generate_cohort", "synthesize_hand"]

IMAGE_SHAPE = (256, 208)
"""(rows, columns) of every image."""
MANIFEST_NAME = "manifest.csv"
COHORT_NAME = "cohort.json"
MODEL_VERSION = 1
MANIFEST_COLUMNS = ("id", "path", "boneage", "sex")

PIXELS_PER_UNIT = 1.1
WRIST_PIXEL = (196.0, 104.0)  # (row, column) of the wrist centre before the random shift
FUSION_MONTHS = {"F": 180.0, "M": 204.0}
PLATE_UNITS, PLATE_CLOSING_MONTHS = 3.0, 60.0
CARPAL_ONSETS_MONTHS = (2.0, 3.0, 30.0, 42.0, 54.0, 60.0, 66.0, 110.0)
CARPAL_GROWTH_MONTHS = 48.0
# Carpal centres (x right, y up, hand units from the wrist) and full radii.
CARPALS = ((-2.0, 12.0, 6.0), (8.0, 12.0, 5.5), (14.0, 5.0, 4.5), (4.0, 4.0, 5.0),
           (-12.0, 10.0, 4.5), (-7.0, 17.0, 4.0), (-10.0, 3.0, 5.0), (17.0, 1.0, 3.0))
# Rays from thumb to little finger: base (x, y), direction (degrees from vertical, + towards the little
# finger), bone lengths from proximal to distal (metacarpal, phalanges) and shaft radius.
RAYS = (
    ((-20.0, 18.0), -38.0, (30.0, 22.0, 18.0), 4.0),
    ((-9.0, 24.0), -8.0, (45.0, 28.0, 17.0, 14.0), 3.6),
    ((0.0, 25.0), -1.0, (43.0, 30.0, 19.0, 15.0), 3.8),
    ((9.0, 23.0), 6.0, (40.0, 28.0, 18.0, 14.0), 3.5),
    ((17.0, 19.0), 13.0, (37.0, 22.0, 13.0, 13.0), 3.1),
)
FOREARM = (((-10.0, -60.0), (-9.0, -4.0), 6.5), ((11.0, -60.0), (10.0, -2.0), 5.0))  # radius, ulna
JOINT_UNITS = 3.0
PALM_RADIUS = 27.0  # the palm's soft tissue: a capsule from the wrist (0, 0) to (0, 28)
SOFT_TISSUE_MARGIN = 5.0  # soft tissue reaches this far beyond the bones (hand units, before jitter)
BACKGROUND, SOFT_TISSUE = 0.04, 0.22
NOISE_SD, BLUR_SIGMA = 0.02, 0.8


def _capsule(rows: np.ndarray, cols: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float) -> np.ndarray:
    """Anti-aliased mask (values in [0, 1]) of a capsule between two pixel points (row, column)."""
    axis = end - start
    length2 = max(float(axis @ axis), 1e-9)
    t = np.clip(((rows - start[0]) * axis[0] + (cols - start[1]) * axis[1]) / length2, 0.0, 1.0)
    distance = np.hypot(rows - (start[0] + t * axis[0]), cols - (start[1] + t * axis[1]))
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


class _Canvas:
    """Hand units -> pixels (rotation, scale, shift) and accumulation of the bone and soft-tissue masks."""

    def __init__(self, scale: float, rotation_deg: float, shift: np.ndarray, soft_margin: float) -> None:
        self.rows, self.cols = np.indices(IMAGE_SHAPE, dtype=np.float32)
        self.scale, self.soft_margin = scale * PIXELS_PER_UNIT, soft_margin
        angle = np.deg2rad(rotation_deg)
        # hand x (right) -> +column, hand y (up) -> -row, then a rotation in the image plane
        self.matrix = np.array([[-np.sin(angle), -np.cos(angle)], [np.cos(angle), -np.sin(angle)]]) * self.scale
        self.origin = np.asarray(WRIST_PIXEL) + shift
        self.bone = np.zeros(IMAGE_SHAPE, np.float32)
        self.soft = np.zeros(IMAGE_SHAPE, np.float32)

    def pixel(self, point: np.ndarray) -> np.ndarray:
        return self.origin + self.matrix @ point

    def bone_capsule(self, start: np.ndarray, end: np.ndarray, radius: float, soft: bool = True) -> None:
        """Add a bone (and, if ``soft``, the soft tissue around it) between two points in hand units."""
        a, b = self.pixel(start), self.pixel(end)
        self._paint(self.bone, a, b, radius * self.scale)
        if soft:
            self._paint(self.soft, a, b, (radius + self.soft_margin) * self.scale)

    def soft_capsule(self, start: np.ndarray, end: np.ndarray, radius: float) -> None:
        """Add soft tissue (no bone) between two points in hand units."""
        self._paint(self.soft, self.pixel(start), self.pixel(end), radius * self.scale)

    def _paint(self, mask: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> None:
        """``mask = max(mask, capsule)``, evaluated only on the capsule's bounding box."""
        low = np.maximum(np.floor(np.minimum(a, b) - radius - 1), 0).astype(int)
        high = np.minimum(np.ceil(np.maximum(a, b) + radius + 2), IMAGE_SHAPE).astype(int)
        if np.any(high <= low):
            return
        box = (slice(low[0], high[0]), slice(low[1], high[1]))
        np.maximum(mask[box], _capsule(self.rows[box], self.cols[box], a, b, radius), out=mask[box])


def _long_bone(canvas: _Canvas, start: np.ndarray, direction: np.ndarray, length: float, radius: float,
               epiphysis: float, plate: float) -> np.ndarray:
    """Draw epiphysis, growth plate and shaft from ``start`` along ``direction``; return the distal end."""
    epiphysis_radius = radius * epiphysis
    centre = start + direction * epiphysis_radius
    canvas.bone_capsule(centre, centre, epiphysis_radius)
    shaft_start = start + direction * (2.0 * epiphysis_radius + plate + radius)
    end = start + direction * length
    canvas.bone_capsule(shaft_start, end - direction * radius, radius)
    return end


def synthesize_hand(rng: np.random.Generator, boneage: float, sex: str) -> np.ndarray:
    """Draw one hand radiograph of the given bone age (months) and sex ("F"/"M").

    Returns:
        float32 array of shape ``IMAGE_SHAPE`` (rows, columns), brighter = denser, roughly in [0, 1].
    """
    growth = 0.5 + 0.5 * min(boneage / 200.0, 1.0) ** 0.8
    epiphysis = 0.15 + 0.85 * min(boneage / 120.0, 1.0)
    plate = PLATE_UNITS * float(np.clip((FUSION_MONTHS[sex] - boneage) / PLATE_CLOSING_MONTHS, 0.0, 1.0))
    density = 0.55 + 0.35 * min(boneage / 216.0, 1.0)
    canvas = _Canvas(
        scale=growth * (1.0 + truncated_normal(rng, 0.06)),
        rotation_deg=truncated_normal(rng, 6.0),
        shift=truncated_normal(rng, 6.0, 2),
        soft_margin=SOFT_TISSUE_MARGIN * (1.0 + truncated_normal(rng, 0.15)),
    )
    for elbow, wrist, radius in FOREARM:  # radius and ulna: the epiphysis is at the wrist end
        elbow, wrist = np.asarray(elbow), np.asarray(wrist)
        length = float(np.linalg.norm(elbow - wrist))
        _long_bone(canvas, wrist, (elbow - wrist) / length, length, radius, epiphysis, plate)
    for onset, (x, y, radius) in zip(CARPAL_ONSETS_MONTHS, CARPALS):
        size = float(np.clip((boneage - onset) / CARPAL_GROWTH_MONTHS, 0.0, 1.0))
        if size > 0:
            canvas.bone_capsule(np.array([x, y]), np.array([x, y]), radius * size, soft=False)
    canvas.soft_capsule(np.array([0.0, 0.0]), np.array([0.0, 28.0]), PALM_RADIUS)
    for base, angle, lengths, radius in RAYS:
        theta = np.deg2rad(angle + truncated_normal(rng, 3.0))
        direction = np.array([np.sin(theta), np.cos(theta)])
        point = np.asarray(base)
        for length in lengths:
            point = _long_bone(canvas, point, direction, length, radius, epiphysis, plate) + direction * JOINT_UNITS
            radius *= 0.85
    image = BACKGROUND + SOFT_TISSUE * canvas.soft + (density - SOFT_TISSUE) * canvas.bone * (canvas.soft > 0)
    image = ndimage.gaussian_filter(image, BLUR_SIGMA)
    image = image * rng.uniform(0.8, 1.1) + rng.uniform(0.0, 0.06)
    return (image + rng.normal(0.0, NOISE_SD, IMAGE_SHAPE)).astype(np.float32)


def _child_id(index: int) -> str:
    return f"xr-{index:04d}"


def _child_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _draw_covariates(rng: np.random.Generator, boneage_range: tuple[float, float]) -> tuple[float, str]:
    """Bone age (uniform, 0.1 month resolution) and sex (F/M, p = 1/2)."""
    return round(float(rng.uniform(*boneage_range)), 1), ("F", "M")[int(rng.integers(2))]


def _write_png(image: np.ndarray, path: Path) -> None:
    """Write a [0, 1] image as an 8-bit greyscale PNG, atomically."""
    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    atomic_write(path, lambda temporary: Image.fromarray(pixels, mode="L").save(temporary, format="PNG"))


def _generate_child(output_dir: Path, seed: int, index: int, boneage_range: tuple[float, float]) -> dict[str, object]:
    """Write the radiograph of child ``index`` unless it exists; return its manifest row."""
    rng = _child_rng(seed, index)
    boneage, sex = _draw_covariates(rng, boneage_range)
    path = f"{_child_id(index)}.png"
    if not (output_dir / path).exists():
        _write_png(synthesize_hand(rng, boneage, sex), output_dir / path)
    return {"id": _child_id(index), "path": path, "boneage": boneage, "sex": sex}


def generate_cohort(
    output_dir: str | Path,
    n_subjects: int = 400,
    seed: int = 0,
    boneage_range: tuple[float, float] = (12.0, 216.0),
    progress: bool = False,
) -> pd.DataFrame:
    """Generate (or complete) the synthetic hand-radiograph cohort under ``output_dir``.

    Child ``i`` depends only on ``(seed, i, boneage_range)``: a larger ``n_subjects`` extends a smaller cohort
    and images already present are kept (they are only ever written whole), so an interrupted run resumes.
    About 30 ms per image on one core.

    Args:
        output_dir: cohort folder, created if needed.
        n_subjects: number of children.
        seed: cohort seed.
        boneage_range: (youngest, oldest) bone age in months; bone ages are uniform in it.
        progress: show a tqdm progress bar.

    Returns:
        The manifest, also written to ``<output_dir>/manifest.csv``: ``id`` (str), ``path`` (str, relative to
        ``output_dir``), ``boneage`` (float, months), ``sex`` ("F"/"M").

    Raises:
        ValueError: a non-positive ``n_subjects``, an empty ``boneage_range``, or an ``output_dir`` holding a
            cohort generated with another seed, bone-age range or model version.
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    boneage_range = (float(boneage_range[0]), float(boneage_range[1]))
    if not 0.0 <= boneage_range[0] < boneage_range[1]:
        raise ValueError(f"boneage_range must be (youngest, oldest) months with 0 <= youngest < oldest, "
                         f"got {boneage_range}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(
        output_dir / COHORT_NAME, {"model_version": MODEL_VERSION, "seed": int(seed), "boneage_range": list(boneage_range)}
    )
    write = functools.partial(_generate_child, output_dir, seed, boneage_range=boneage_range)
    rows = map_indices(write, range(n_subjects), progress=progress, desc="demo X-ray cohort", unit="image")
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    write_table(manifest, output_dir / MANIFEST_NAME)
    return manifest


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.xray --output DIR [--n_subjects N] [--seed S]``."""
    parser = add_cohort_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), 400, workers=False)
    parser.add_argument("--boneage_min", type=float, default=12.0, help="months")
    parser.add_argument("--boneage_max", type=float, default=216.0, help="months")
    args = parser.parse_args(argv)
    return generate_cohort(args.output, boneage_range=(args.boneage_min, args.boneage_max), **cohort_options(args))


if __name__ == "__main__":
    main()
