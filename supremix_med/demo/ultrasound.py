"""Embedded demo cohort: synthetic echocardiography clips with a known ejection fraction, in EchoNet layout.

EchoNet-Dynamic cannot ship with the project, so the demo generates small stand-in clips laid out like it::

    <output_dir>/cohort.json          generator parameters (seed, model version)
    <output_dir>/FileList.csv         FileName (no suffix, as in EchoNet), EF (%), ESV, EDV (ml), FrameHeight,
                                      FrameWidth, FPS, NumberOfFrames, Split (TRAIN/VAL/TEST)
    <output_dir>/Videos/<id>.avi      one grey-scale clip each (FFV1, lossless), 64 x 64 pixels, 50 frames, 50 fps

``preprocessing.ultrasound.build_echonet_manifest(output_dir)`` turns it into a manifest.

Model of a clip (an apical view, 0.25 cm per pixel, so the image is 16 cm deep)
-------------------------------------------------------------------------------
- **Sector**: a fan with its apex just above the top edge, 80 degrees wide and 15.5 cm deep; exactly 0
  outside it (as in real echo), so the sector is what moves.
- **Left ventricle**: an elliptical blood pool (dark) with long semi-axis ``a`` along the beam and short
  semi-axis ``a / r`` (aspect ``r`` ~ U(1.8, 2.3)), tilted by N(0, 8 deg), centred near mid-depth. It is
  wrapped in myocardium (bright) of constant area (muscle is incompressible), so the wall thickens in systole.
  At end-diastole ``a = a_ED`` ~ U(14, 18) pixels (a 7-9 cm long ventricle).
- **Volumes**: single-plane area-length method, ``V = 0.85 A^2 / L`` (ml, with the pool's area ``A`` in cm^2
  and length ``L = 2 a`` in cm). With a fixed aspect, ``V`` grows as ``a^3`` (``A^1.5``), so the ejection
  fraction ``EF = 1 - ESV / EDV`` ~ U(15 %, 75 %) fixes end-systole at ``a_ES = a_ED (1 - EF)^(1/3)``, i.e.
  ``A_ES / A_ED = (1 - EF)^(2/3)``: the target is a function of the areas the network sees.
- **Beat**: heart rate ~ U(70, 110) per minute (at least 1.1 beats per clip, so every clip holds an end-diastole
  and an end-systole), random phase; ``a(t) = a_ED - (a_ED - a_ES) (1 - cos phase) / 2``.
- **Texture**: depth-attenuated tissue echo, multiplicative speckle (Rayleigh, smoothed over ~1.5 pixels, new
  every frame), per-clip gain (log-normal, 10 %). Shapes are rendered with 4 x 4 supersampling, so areas are
  sub-pixel exact; frames are rounded to 8 bits.

Clip ``i`` depends only on ``(seed, i)`` (random stream ``numpy.random.default_rng([seed, i])``): files are
byte-identical for the same seed, any number of workers, and any cohort size. Splits are drawn per clip
(70 / 15 / 15 %).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pandas as pd
from scipy import ndimage

from supremix_med.demo.generation import cohort_main, map_indices, write_table
from supremix_med.io import atomic_write, check_generator_record

__all__ = ["FPS", "N_FRAMES", "PIXEL_CM", "SIZE", "ClipGeometry", "draw_geometry", "generate_cohort",
           "synthesize_clip", "write_avi"]

SIZE = 64
"""Height and width of a clip, pixels."""
N_FRAMES = 50
FPS = 50.0
PIXEL_CM = 0.25
MODEL_VERSION = 1
FILE_LIST = "FileList.csv"
COHORT_RECORD = "cohort.json"
VIDEOS = "Videos"
COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split")
SPLIT_FRACTIONS = {"TRAIN": 0.70, "VAL": 0.15, "TEST": 0.15}

EF_RANGE = (0.15, 0.75)
ED_SEMI_AXIS_PX = (14.0, 18.0)
ASPECT_RANGE = (1.8, 2.3)
TILT_SD_DEG = 8.0
VENTRICLE_DEPTH_PX, CENTRE_SD_PX = 30.0, 1.5  # mean row of the ventricle's centre and its jitter
ED_WALL_PX = 2.5  # myocardial thickness at end-diastole along the short axis
HEART_RATE_BPM = (70.0, 110.0)
SECTOR_HALF_ANGLE_DEG, SECTOR_DEPTH_PX = 40.0, 62.0
APEX = (-2.0, (SIZE - 1) / 2)  # (row, column) of the probe, just above the image
TISSUE, MYOCARDIUM, BLOOD = 0.35, 0.85, 0.06  # echo brightness (fraction of full scale)
ATTENUATION_PX = 120.0
SPECKLE_SIGMA_PX, GAIN_SD = 0.6, 0.10
SUPERSAMPLING = 4
AREA_LENGTH = 0.85  # V = 0.85 A^2 / L


@dataclass(frozen=True)
class ClipGeometry:
    """What a clip shows.

    Attributes:
        ef: ejection fraction, fraction in [0, 1].
        ed_semi_axis_px: long semi-axis of the blood pool at end-diastole, pixels.
        aspect: long over short semi-axis.
        tilt_deg: rotation of the long axis from the beam direction, degrees.
        centre_px: (row, column) of the ventricle's centre.
        heart_rate_bpm: beats per minute.
        phase: cardiac phase of the first frame, radians (0 = end-diastole).
        gain: overall echo gain.
    """

    ef: float
    ed_semi_axis_px: float
    aspect: float
    tilt_deg: float
    centre_px: tuple[float, float]
    heart_rate_bpm: float
    phase: float
    gain: float

    @property
    def es_semi_axis_px(self) -> float:
        """Long semi-axis at end-systole: ``a_ED (1 - EF)^(1/3)``, pixels."""
        return self.ed_semi_axis_px * (1.0 - self.ef) ** (1.0 / 3.0)

    def volume_ml(self, semi_axis_px: float) -> float:
        """Area-length volume ``0.85 A^2 / L`` (ml) of the blood pool with long semi-axis ``semi_axis_px``."""
        a_cm = semi_axis_px * PIXEL_CM
        area_cm2 = math.pi * a_cm * a_cm / self.aspect
        return AREA_LENGTH * area_cm2**2 / (2.0 * a_cm)


def draw_geometry(rng: np.random.Generator) -> ClipGeometry:
    """Draw a clip's geometry (see the module docstring for the distributions)."""
    return ClipGeometry(
        ef=float(rng.uniform(*EF_RANGE)),
        ed_semi_axis_px=float(rng.uniform(*ED_SEMI_AXIS_PX)),
        aspect=float(rng.uniform(*ASPECT_RANGE)),
        tilt_deg=float(np.clip(rng.normal(0.0, TILT_SD_DEG), -2 * TILT_SD_DEG, 2 * TILT_SD_DEG)),
        centre_px=(float(VENTRICLE_DEPTH_PX + rng.normal(0.0, CENTRE_SD_PX)),
                   float(APEX[1] + rng.normal(0.0, CENTRE_SD_PX))),
        heart_rate_bpm=float(rng.uniform(*HEART_RATE_BPM)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        gain=float(rng.lognormal(0.0, GAIN_SD)),
    )


def _fine_grid() -> tuple[np.ndarray, np.ndarray]:
    """(row, column) coordinates of the supersampled pixel grid, each (SIZE * S, SIZE * S)."""
    offsets = (np.arange(SIZE * SUPERSAMPLING) + 0.5) / SUPERSAMPLING - 0.5
    return np.meshgrid(offsets, offsets, indexing="ij")


def _downsample(fine: np.ndarray) -> np.ndarray:
    """Average S x S blocks of the last two axes: (..., SIZE * S, SIZE * S) -> (..., SIZE, SIZE)."""
    shape = (*fine.shape[:-2], SIZE, SUPERSAMPLING, SIZE, SUPERSAMPLING)
    return fine.reshape(shape).mean(axis=(-3, -1))


def _semi_axes(geometry: ClipGeometry) -> np.ndarray:
    """Long semi-axis of the blood pool in every frame, pixels, (N_FRAMES,): ED at phase 0, ES at phase pi."""
    phase = geometry.phase + 2.0 * math.pi * geometry.heart_rate_bpm / 60.0 * np.arange(N_FRAMES) / FPS
    contraction = 0.5 * (1.0 - np.cos(phase))
    return geometry.ed_semi_axis_px - (geometry.ed_semi_axis_px - geometry.es_semi_axis_px) * contraction


def _ventricle(geometry: ClipGeometry, rows: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blood pool and myocardium of every frame on the fine grid: two bool arrays (N_FRAMES, *rows.shape)."""
    tilt = math.radians(geometry.tilt_deg)
    dr, dc = rows - geometry.centre_px[0], columns - geometry.centre_px[1]
    along, across = dr * math.cos(tilt) + dc * math.sin(tilt), -dr * math.sin(tilt) + dc * math.cos(tilt)
    semi_axes = _semi_axes(geometry)[:, None, None]
    radius2 = (along / semi_axes) ** 2 + (across * geometry.aspect / semi_axes) ** 2  # 1 on the pool's edge
    ed_long, ed_short = geometry.ed_semi_axis_px, geometry.ed_semi_axis_px / geometry.aspect
    muscle = math.pi * ((ed_long + ED_WALL_PX) * (ed_short + ED_WALL_PX) - ed_long * ed_short)  # pixels^2
    outer2 = 1.0 + muscle / (math.pi * semi_axes**2 / geometry.aspect)  # the wall keeps the muscle's area
    pool = radius2 <= 1.0
    return pool, ~pool & (radius2 <= outer2)


def synthesize_clip(rng: np.random.Generator | int) -> tuple[np.ndarray, np.ndarray, ClipGeometry]:
    """Synthesize one clip (see the module docstring for the model).

    Args:
        rng: random generator, or a seed for ``numpy.random.default_rng``; the generator is advanced.

    Returns:
        (frames, areas, geometry): uint8 frames (N_FRAMES, SIZE, SIZE); the blood pool's area in every frame,
        float (N_FRAMES,), cm^2 (sub-pixel exact, from the supersampled shapes); and the drawn geometry.
    """
    rng = np.random.default_rng(rng)
    geometry = draw_geometry(rng)
    rows, columns = _fine_grid()
    depth = np.hypot(rows - APEX[0], columns - APEX[1])
    angle = np.degrees(np.arctan2(columns - APEX[1], rows - APEX[0]))
    sector = (depth <= SECTOR_DEPTH_PX) & (np.abs(angle) <= SECTOR_HALF_ANGLE_DEG)
    pool, wall = _ventricle(geometry, rows, columns)
    echo = np.where(pool, BLOOD, np.where(wall, MYOCARDIUM, TISSUE)) * np.exp(-depth / ATTENUATION_PX) * sector
    speckle = rng.rayleigh(1.0, (N_FRAMES, SIZE, SIZE))
    speckle = ndimage.gaussian_filter(speckle, (0, SPECKLE_SIGMA_PX, SPECKLE_SIGMA_PX))
    image = geometry.gain * _downsample(echo) * speckle / speckle.mean()
    frames = np.clip(np.rint(255.0 * image), 0, 255).astype(np.uint8)
    areas = _downsample(pool.astype(np.float32)).sum(axis=(1, 2)) * PIXEL_CM**2
    return frames, areas, geometry


def write_avi(frames: np.ndarray, path: str | Path, fps: float = FPS) -> None:
    """Write uint8 grey-scale frames (T, H, W) as a lossless (FFV1) AVI with PyAV."""
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=round(fps))
        stream.height, stream.width = frames.shape[1:]
        stream.pix_fmt = "gray"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")))
        container.mux(stream.encode())


def _clip_id(index: int) -> str:
    return f"echo-{index:04d}"


def _split(rng: np.random.Generator) -> str:
    edges = np.cumsum(list(SPLIT_FRACTIONS.values()))
    return list(SPLIT_FRACTIONS)[int(np.searchsorted(edges, rng.uniform(), side="right"))]


def _row(seed: int, index: int) -> tuple[dict[str, object], np.ndarray]:
    """Synthesize clip ``index``: its FileList row and its frames."""
    rng = np.random.default_rng([seed, index])
    frames, _, geometry = synthesize_clip(rng)
    edv, esv = geometry.volume_ml(geometry.ed_semi_axis_px), geometry.volume_ml(geometry.es_semi_axis_px)
    row = {"FileName": _clip_id(index), "EF": round(100.0 * (edv - esv) / edv, 4), "ESV": round(esv, 4),
           "EDV": round(edv, 4), "FrameHeight": SIZE, "FrameWidth": SIZE, "FPS": FPS,
           "NumberOfFrames": N_FRAMES, "Split": _split(rng)}
    return row, frames


def _generate_clip(output_dir: Path, seed: int, index: int) -> dict[str, object]:
    """Write clip ``index`` unless it exists (files are only ever written whole); return its FileList row."""
    row, frames = _row(seed, index)
    path = output_dir / VIDEOS / f"{row['FileName']}.avi"
    if not path.exists():
        atomic_write(path, lambda temporary: write_avi(frames, temporary), suffix=".avi")
    return row


def generate_cohort(
    output_dir: str | Path, n_clips: int = 200, seed: int = 0, workers: int = 1, progress: bool = True
) -> pd.DataFrame:
    """Generate (or complete) the synthetic echo cohort under ``output_dir`` (see the module docstring).

    Clips already present are kept, so an interrupted run resumes and a larger ``n_clips`` extends a cohort.

    Args:
        output_dir: cohort folder, created if needed.
        n_clips: number of clips.
        seed: cohort seed.
        workers: number of processes.
        progress: show a tqdm progress bar.

    Returns:
        the FileList table, also written to ``<output_dir>/FileList.csv`` (columns ``COLUMNS``).

    Raises:
        ValueError: a non-positive ``n_clips`` or ``workers``, or an ``output_dir`` holding a cohort generated
            with another seed or model version.
    """
    if n_clips < 1 or workers < 1:
        raise ValueError(f"n_clips and workers must be >= 1, got n_clips={n_clips}, workers={workers}")
    output_dir = Path(output_dir)
    (output_dir / VIDEOS).mkdir(parents=True, exist_ok=True)
    check_generator_record(output_dir / COHORT_RECORD, {"model_version": MODEL_VERSION, "seed": int(seed),
                                                        "kind": "echo"})
    write = functools.partial(_generate_clip, output_dir, seed)
    rows = map_indices(write, range(n_clips), workers, progress, desc="demo echo cohort", unit="clip")
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    write_table(table, output_dir / FILE_LIST)
    return table


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Command line: ``python -m supremix_med.demo.ultrasound --output DIR [--n_clips N] [--seed S]``."""
    return cohort_main(generate_cohort, __doc__.splitlines()[0], 200, argv, n_name="n_clips")


if __name__ == "__main__":
    main()
