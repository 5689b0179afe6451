"""Embedded demo data set: synthetic cartoon faces with an age target, in the DIR split format.

AgeDB and IMDB-WIKI images cannot ship with the project, so the demo draws stand-ins: one 96 x 96 RGB PNG per
subject and a DIR split CSV (``age,path,split``), the layout the ``agedb`` and ``imdb_wiki`` bundles read.

Layout written by :func:`generate_faces`::

    <output_dir>/cohort.json              generator parameters (seed, age range, model version)
    <output_dir>/faces.csv                age (integer years), path (relative to output_dir), split
    <output_dir>/images/face-00000.png    one image per subject

Model (a cartoon of facial ageing, not anatomy). A face is drawn in a "face frame" (pixels of a nominal head
of 44 x 58 pixels, ``u`` to the right, ``v`` down from the head centre) that is then rotated, scaled and
shifted onto the canvas. A subject of age ``A`` looks ``B = A + N(0, 3 years)`` old; with
``t = (B - 18) / 62`` (0 at 18, 1 at 80, clipped to [-0.1, 1.1]):

- wrinkles: forehead lines appear one by one, crow's feet, nasolabial folds, marionette lines and under-eye
  shadows darken with ``t ** 1.3`` times a subject wrinkle gain (log-normal, 25 %);
- skin: the texture (smoothed noise) roughens from 1.5 % to 5.5 % of full brightness; age spots appear
  after ``t = 0.4`` (Poisson count rising to ~8 at 80);
- hair: greys along a logistic curve of ``B`` centred on a subject onset N(50, 6) years (width 7 years),
  thins by up to 45 %, and in men the hairline recedes by up to 8 pixels;
- shape: the lower face widens by 10 % * ``t`` (jowls), the eyes narrow and the lips thin.

Variation that is not age, so that age is learnable but not trivial: sex (F with long hair at the sides, M with
a receding hairline), skin tone (uniform between a light and a dark palette colour), hair colour (black,
brown, blond or auburn), head size N(0, 6 %), rotation N(0, 7 deg) and shift N(0, 3 px) per axis (clipped at
2 SD), background colour and gradient, a side light U(-15 %, 15 %), exposure gain U(0.8, 1.15), colour cast
N(0, 4 %) per channel, Gaussian blur (sigma U(0.4, 1.0) px) and noise (SD 2 %).

Splits follow the DIR benchmarks: each subject is ``train`` with probability 0.7, ``val`` or ``test`` with
0.15 each. Training ages are imbalanced like AgeDB's (``18 + 62 * Beta(2, 3.2)``: most subjects 30-50, few
over 70); validation and test ages are uniform over the range (balanced), so few-shot ages are tested as
often as many-shot ones. Ages are whole years.

Every subject's random stream is ``numpy.random.default_rng([seed, index])``, so images do not depend on the
number of workers or subjects and are byte-identical for the same seed; a larger ``n_subjects`` extends a
smaller cohort, and an interrupted run resumes (images are written whole through a temporary file).
:func:`synthesize_face` makes the same number of draws from its stream at any age, so one stream drawn at two
ages shows the same person (pose, colours, lighting, noise) at those ages.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from supremix_med.demo.generation import check_cohort_request, cohort_main, truncated_normal, write_missing
from supremix_med.io import atomic_write, check_generator_record

__all__ = ["IMAGE_SIZE", "generate_faces", "synthesize_face"]

IMAGE_SIZE = 96
"""Height and width of every image in pixels."""
CSV_NAME = "faces.csv"
COHORT_NAME = "cohort.json"
MODEL_VERSION = 1
SPLIT_PROBABILITIES = {"train": 0.7, "val": 0.15, "test": 0.15}
TRAIN_AGE_BETA = (2.0, 3.2)

# Ageing model (see the module docstring).
APPARENT_AGE_SD = 3.0
AGE_ORIGIN, AGE_SPAN = 18.0, 62.0
GREY_ONSET, GREY_ONSET_SD, GREY_WIDTH = 50.0, 6.0, 7.0
HAIR_THINNING, HAIRLINE_RECESSION_PX = 0.45, 8.0
JOWL_WIDENING = 0.10
WRINKLE_GAIN_SD = 0.25
TEXTURE_BASE, TEXTURE_AGE = 0.015, 0.04
AGE_SPOT_ONSET, AGE_SPOT_RATE = 0.4, 25.0
# Face frame geometry (pixels).
HEAD_HALF_WIDTH, HEAD_HALF_HEIGHT = 22.0, 29.0
EYE_U, EYE_V = 9.0, -3.0
# Variation that is not age.
SKIN_LIGHT, SKIN_DARK = (0.96, 0.80, 0.69), (0.42, 0.28, 0.20)
HAIR_COLOURS = ((0.08, 0.06, 0.05), (0.32, 0.21, 0.13), (0.78, 0.64, 0.40), (0.48, 0.22, 0.11))
GREY_HAIR = (0.84, 0.84, 0.86)
SCALE_SD, ROTATION_SD_DEG, SHIFT_SD_PX = 0.06, 7.0, 3.0
NOISE_SD = 0.02


@dataclass(frozen=True)
class _Pose:
    """Placement of the face frame on the canvas: centre (row, column) in pixels, scale, rotation in radians."""

    centre: tuple[float, float]
    scale: float
    angle: float


def _face_frame(pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame coordinates (u right, v down, pixels of the nominal head) of every canvas pixel."""
    rows, columns = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    dy, dx = rows - pose.centre[0], columns - pose.centre[1]
    cos, sin = np.cos(pose.angle), np.sin(pose.angle)
    return (cos * dx + sin * dy) / pose.scale, (-sin * dx + cos * dy) / pose.scale


def _soft(x: np.ndarray, width: float = 0.7) -> np.ndarray:
    """Anti-aliased step: 0 for x << 0, 1 for x >> 0, over ``width`` pixels."""
    return 0.5 * (1.0 + np.tanh(x / width))


def _line(u: np.ndarray, v: np.ndarray, start: tuple[float, float], end: tuple[float, float],
          width: float = 0.6) -> np.ndarray:
    """Soft line profile exp(-(d / width)^2) of the distance d of each pixel to the segment start-end."""
    a, b = np.asarray(start, np.float32), np.asarray(end, np.float32)
    direction = b - a
    along = np.clip(((u - a[0]) * direction[0] + (v - a[1]) * direction[1]) / float(direction @ direction), 0.0, 1.0)
    distance2 = (u - a[0] - along * direction[0]) ** 2 + (v - a[1] - along * direction[1]) ** 2
    return np.exp(-distance2 / width**2)


def _paint(image: np.ndarray, alpha: np.ndarray, colour: Sequence[float] | np.ndarray) -> None:
    """Blend ``colour`` (RGB, or an [H, W, 3] array) over ``image`` [H, W, 3] with opacity ``alpha`` [H, W]."""
    image *= 1.0 - alpha[..., None]
    image += alpha[..., None] * np.asarray(colour, np.float32)


def _wrinkles(u: np.ndarray, v: np.ndarray, strength: float) -> np.ndarray:
    """Darkening [H, W] (fraction of brightness) of forehead lines, crow's feet and folds of ``strength`` in [0, 1+]."""
    shade = np.zeros_like(u)
    for k in range(4):  # forehead lines appear one by one as strength grows
        weight = np.clip(4.0 * strength - k, 0.0, 1.0)
        shade += 0.22 * weight * _line(u, v, (-11.0 + k, -11.0 - 2.3 * k), (11.0 - k, -11.0 - 2.3 * k))
    for side in (-1.0, 1.0):
        for angle in (-0.45, 0.0, 0.45):  # crow's feet
            start = (side * (EYE_U + 4.0), EYE_V)
            end = (start[0] + side * 4.5 * np.cos(angle), EYE_V + 4.5 * np.sin(angle))
            shade += 0.25 * strength * _line(u, v, start, end, 0.5)
        shade += 0.30 * strength * _line(u, v, (side * 4.0, 5.0), (side * 8.5, 14.5), 0.8)  # nasolabial fold
        shade += 0.22 * strength * _line(u, v, (side * 6.5, 14.5), (side * 7.5, 20.0), 0.6)  # marionette line
        shade += 0.16 * strength * _line(u, v, (side * (EYE_U - 3.0), 0.8), (side * (EYE_U + 3.0), 0.8), 1.0)
    return np.clip(shade, 0.0, 0.6)


def _head(u: np.ndarray, v: np.ndarray, t: float) -> np.ndarray:
    """Soft head mask [H, W]: an ellipse whose lower half widens with age (jowls)."""
    half_width = HEAD_HALF_WIDTH * (1.0 + JOWL_WIDENING * t * np.clip(v / HEAD_HALF_HEIGHT, 0.0, 1.0))
    radius = np.sqrt((u / half_width) ** 2 + (v / HEAD_HALF_HEIGHT) ** 2)
    return _soft((1.0 - radius) * HEAD_HALF_WIDTH)


def synthesize_face(rng: np.random.Generator, age: float, sex: str) -> np.ndarray:
    """Draw one face of ``age`` years and ``sex`` ("F"/"M") from ``rng`` (see the module docstring).

    Returns:
        uint8 array [IMAGE_SIZE, IMAGE_SIZE, 3] (RGB).
    """
    apparent = age + rng.normal(0.0, APPARENT_AGE_SD)
    t = float(np.clip((apparent - AGE_ORIGIN) / AGE_SPAN, -0.1, 1.1))
    skin = np.asarray(SKIN_LIGHT) + rng.uniform() * (np.asarray(SKIN_DARK) - np.asarray(SKIN_LIGHT))
    grey = 1.0 / (1.0 + np.exp(-(apparent - rng.normal(GREY_ONSET, GREY_ONSET_SD)) / GREY_WIDTH))
    hair = (1.0 - grey) * np.asarray(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]) + grey * np.asarray(GREY_HAIR)
    wrinkle = max(t, 0.0) ** 1.3 * float(rng.lognormal(0.0, WRINKLE_GAIN_SD))
    pose = _Pose(centre=tuple(IMAGE_SIZE / 2 + 2.0 + truncated_normal(rng, SHIFT_SD_PX, 2)),
                 scale=1.0 + float(truncated_normal(rng, SCALE_SD)),
                 angle=float(np.deg2rad(truncated_normal(rng, ROTATION_SD_DEG))))
    u, v = _face_frame(pose)
    spot_rng = np.random.default_rng(rng.integers(2**63))  # the spot count depends on age: its own stream

    # background: a random colour with a vertical gradient
    top, bottom = rng.uniform(0.15, 0.95, 3), rng.uniform(0.15, 0.95, 3)
    fraction = (np.arange(IMAGE_SIZE, dtype=np.float32) / (IMAGE_SIZE - 1))[:, None, None]
    image = np.broadcast_to((1.0 - fraction) * top + fraction * bottom, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    thinning = 1.0 - HAIR_THINNING * max(t, 0.0) ** 2
    strands = 1.0 + 0.06 * np.sin(1.7 * u + rng.uniform(0.0, 2.0 * np.pi))[..., None]
    if sex == "F":  # long hair behind the face
        behind = np.sqrt((u / (HEAD_HALF_WIDTH + 6.0)) ** 2 + ((v - 4.0) / (HEAD_HALF_HEIGHT + 4.0)) ** 2)
        _paint(image, thinning * _soft(1.0 - behind, 0.03) * _soft(24.0 - v), hair * strands)
    _paint(image, _soft(9.0 - np.abs(u)) * _soft(v - 18.0), 0.9 * skin)  # neck

    # the face: skin with texture, features, wrinkles and spots
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, u.shape), 0.7).astype(np.float32)
    face = np.broadcast_to(skin, (*u.shape, 3)).astype(np.float32) * (1.0 + (TEXTURE_BASE + TEXTURE_AGE * max(t, 0.0))
                                                                     * 2.0 * texture)[..., None]
    face *= 1.0 - _wrinkles(u, v, wrinkle)[..., None]
    spots = spot_rng.poisson(AGE_SPOT_RATE * max(t - AGE_SPOT_ONSET, 0.0) ** 1.5)
    for su, sv, radius in spot_rng.uniform((-15.0, -12.0, 0.8), (15.0, 18.0, 1.6), (spots, 3)):
        face *= 1.0 - 0.22 * np.exp(-((u - su) ** 2 + (v - sv) ** 2) / radius**2)[..., None] * np.array([0.8, 1.0, 1.2])
    eye_height = 1.9 - 0.6 * max(t, 0.0)
    for side in (-1.0, 1.0):
        _paint(face, _soft(1.0 - np.sqrt(((u - side * EYE_U) / 3.2) ** 2 + ((v - EYE_V) / eye_height) ** 2)),
               (0.12, 0.09, 0.08))
        _paint(face, 0.8 * _line(u, v, (side * (EYE_U - 4.0), EYE_V - 4.5), (side * (EYE_U + 4.0), EYE_V - 5.0), 0.9),
               0.7 * hair)
    face *= 1.0 - 0.18 * _line(u, v, (0.0, -1.0), (0.0, 7.0), 1.0)[..., None]  # nose ridge shadow
    lips = (0.62, 0.28, 0.28)
    _paint(face, _line(u, v, (-6.0, 13.0), (6.0, 13.0), 1.7 - 0.7 * max(t, 0.0)), lips)
    _paint(image, _head(u, v, t), face)

    # hair on top: a cap above the hairline, which recedes with age in men
    recession = HAIRLINE_RECESSION_PX * max(t, 0.0) if sex == "M" else 0.0
    hairline = -15.0 - recession + 0.02 * u**2
    cap = _soft(1.0 - np.sqrt((u / (HEAD_HALF_WIDTH + 3.0)) ** 2 + ((v + 2.0) / (HEAD_HALF_HEIGHT + 3.0)) ** 2), 0.03)
    _paint(image, thinning * cap * _soft(hairline - v), hair * strands)

    # acquisition: side light, exposure, colour cast, blur, noise
    light = 1.0 + rng.uniform(-0.15, 0.15) * np.clip(u / HEAD_HALF_WIDTH, -1.5, 1.5)
    image = image * (light[..., None] * rng.uniform(0.8, 1.15) * (1.0 + truncated_normal(rng, 0.04, 3)))
    image = ndimage.gaussian_filter(image, sigma=(rng.uniform(0.4, 1.0),) * 2 + (0.0,))
    image = image + rng.normal(0.0, NOISE_SD, image.shape)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _subject_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _image_path(index: int) -> str:
    return f"images/face-{index:05d}.png"


def _draw_subject(rng: np.random.Generator, age_range: tuple[float, float]) -> tuple[str, int, str]:
    """Split (train/val/test), age (whole years; imbalanced in train, uniform otherwise) and sex (F/M)."""
    split = str(rng.choice(list(SPLIT_PROBABILITIES), p=list(SPLIT_PROBABILITIES.values())))
    fraction = rng.beta(*TRAIN_AGE_BETA) if split == "train" else rng.uniform()
    age = int(round(age_range[0] + fraction * (age_range[1] - age_range[0])))
    sex = ("F", "M")[int(rng.integers(2))]
    return split, age, sex


def _generate_subject(output_dir: Path, seed: int, index: int, age_range: tuple[float, float]) -> None:
    """Draw subject ``index`` and write its PNG atomically (the split, age and sex are redrawn from its stream)."""
    rng = _subject_rng(seed, index)
    _, age, sex = _draw_subject(rng, age_range)
    pixels = synthesize_face(rng, age, sex)
    atomic_write(output_dir / _image_path(index), lambda temporary: Image.fromarray(pixels).save(temporary, "PNG"),
                 suffix=".png")


def generate_faces(
    output_dir: str | Path,
    n_subjects: int = 1500,
    seed: int = 0,
    age_range: tuple[float, float] = (18.0, 80.0),
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate (or complete) the synthetic face data set under ``output_dir``.

    Subject ``i`` depends only on ``(seed, i, age_range)``: the images are byte-identical for any ``workers``,
    and a larger ``n_subjects`` extends a smaller set. Images already present are kept (they are only ever
    written whole), so an interrupted run resumes.

    Args:
        output_dir: data set folder, created if needed.
        n_subjects: number of faces.
        seed: data set seed.
        age_range: (youngest, oldest) age in years.
        workers: number of processes.
        progress: show a tqdm progress bar.

    Returns:
        The split table, also written to ``<output_dir>/faces.csv``: ``age`` (int, years), ``path`` (str,
        relative to ``output_dir``), ``split`` ("train"/"val"/"test"), one row per subject in index order.

    Raises:
        ValueError: a non-positive ``n_subjects`` or ``workers``, an empty ``age_range``, or an ``output_dir``
            holding faces generated with another seed, age range or model version.
    """
    age_range = check_cohort_request(n_subjects, workers, age_range)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    check_generator_record(
        output_dir / COHORT_NAME, {"model_version": MODEL_VERSION, "seed": int(seed), "age_range": list(age_range)}
    )
    rows = []
    for index in range(n_subjects):
        split, age, _ = _draw_subject(_subject_rng(seed, index), age_range)
        rows.append({"age": age, "path": _image_path(index), "split": split})
    table = pd.DataFrame(rows, columns=["age", "path", "split"])
    write = functools.partial(_generate_subject, output_dir, seed, age_range=age_range)
    write_missing(table, output_dir, Path.exists, write, output_dir / CSV_NAME, workers, progress, desc="demo faces")
    return table


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.faces --output DIR [--n_subjects N] [--seed S] [--workers W]``."""
    return cohort_main(generate_faces, __doc__.splitlines()[0], 1500, argv, age_range=(18.0, 80.0))


if __name__ == "__main__":
    main()
