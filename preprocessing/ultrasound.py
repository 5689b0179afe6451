"""Echocardiography clips -> one (1, T, H, W) float32 tensor (default (1, 32, 112, 112)).

``preprocess`` is the only implementation of this pipeline: the cache writer and inference both call it.

Inputs (``load_clip`` picks the reader from the file name):

- **Video** (``.avi``, ``.mp4``, ``.mov``, ``.mkv``, ``.webm``; e.g. EchoNet-Dynamic's ``Videos/*.avi``), read
  with PyAV (``av``, FFmpeg bundled in its wheel) as 8-bit grey: FFmpeg's converter takes the Y (luma) of YUV
  streams, expanded to full range, and the BT.601 luminance of RGB ones. The frame rate is the stream's average
  rate.
- **DICOM** (any other name): multi-frame ultrasound or secondary capture read with pydicom. Pixel data in any
  transfer syntax that pydicom's installed decoders handle (uncompressed, RLE, and JPEG baseline through
  Pillow here; JPEG 2000 / JPEG-LS / lossless JPEG need ``pylibjpeg`` plug-ins or GDCM and otherwise fail with a
  ``ValueError`` naming the missing decoder). The pixels are decoded in their stored colour space
  (``Decoder.as_array(ds, as_rgb=False)``, which also reports that space), one named step each:
  ``YBR_FULL`` / ``YBR_FULL_422`` give their Y channel, which is the luminance of step 1. (pydicom 3's default
  ``Dataset.pixel_array`` converts YBR to RGB, clipping out-of-gamut colours to [0, 255]; Y recomputed from
  that RGB differs by up to 6 grey levels on dark, chroma-noisy pixels of pydicom's US example.)
  ``RGB`` gives the luminance; ``PALETTE COLOR`` is mapped to RGB with ``pydicom.pixels.apply_color_lut``;
  ``MONOCHROME2`` is used as stored and ``MONOCHROME1`` negated (the normalisation below makes the offset of a
  proper inversion, like any linear modality rescale, irrelevant). The frame rate comes from, in order,
  ``FrameTime`` (0018,1063, ms), ``FrameTimeVector`` (0018,1065, ms), ``CineRate`` (0018,0040, frames/s) and
  ``RecommendedDisplayFrameRate`` (0008,2144, frames/s); see ``dicom_frame_rate``.

Steps (``UltrasoundParams`` holds every setting; ``fingerprint`` records them):

1. **Grey scale**: RGB frames become luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, the Y of
   DICOM's YBR_FULL), kept as float32 in the source's units. A clip needs at least 2 frames; a single frame, a
   clip without frames, NaN/inf pixels or a constant clip raise ``ValueError`` naming the file.
2. **Sector mask** (``sector_mask``): ``None`` keeps the whole frame; ``"auto"`` takes the pixels whose
   standard deviation over time exceeds ``mask_threshold`` times the 99th percentile of those deviations
   (the moving speckle of the imaging sector; static text, labels and the black surround do not vary), keeps
   their largest connected region (``scipy.ndimage.label``) and returns its convex hull (``scipy.spatial``,
   filled with Pillow):
   dark, nearly still parts of the sector (blood pools, shadows) are inside the hull, and the fan of a phased
   or linear probe is convex (a curvilinear probe's fan gains the thin black sliver above its inner arc). A
   path names a mask image (any Pillow format, non-zero = inside) of the frames' size. The mask is found on
   (or checked against) the whole clip. Pixels outside the mask are set to 0 and the
   frames are cropped to the mask's bounding box.
3. **Temporal window** (``duration_s``): ``None`` uses the whole clip; a number uses its first ``duration_s``
   seconds (``round(duration_s * fps)`` frames; needs the frame rate, and a clip at least that long), so every
   output frame spans the same time whatever the clip's length.
4. **Anti-alias, square and resize**: every axis that shrinks by a factor ``f > 1`` is first smoothed with a
   Gaussian of ``sigma = (f - 1) / 2`` samples (MONAI ``Resize``'s anti-aliasing width), with edge-replicating
   borders (``scipy.ndimage.gaussian_filter``; MONAI's own anti-aliasing pads with zeros, which darkens the
   first and last frames of a clip by about 10 %). The frames are then zero-padded (centred) to a square with
   MONAI ``SpatialPad``, keeping the aspect ratio, and the (T, H, W) clip is resampled to
   (``frames``, ``size``, ``size``) in one step with MONAI ``Resize`` (trilinear): output frame ``i`` samples
   the window at ``(i + 0.5) * T / frames - 0.5``, uniformly spread over it. The mask follows (nearest
   neighbour). 112 x 112 is the EchoNet-Dynamic convention.
5. **Normalise**: z-score over all output pixels inside the (resized) mask of all frames:
   ``(x - mean) / std``, and exactly 0 outside the mask.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
import pydicom
import torch
from monai.transforms import Resize, SpatialPad
from monai.transforms.utils import generate_spatial_bounding_box
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from preprocessing._common import (
    add_cache_arguments,
    build_cache_from_cli,
    cache_parser,
    library_versions,
    load_cli_manifest,
    run_cli,
)
from supremix_med.io import file_sha256

__all__ = [
    "BUNDLE",
    "PIPELINE",
    "QC_FIELDS",
    "VERSION",
    "VIDEO_SUFFIXES",
    "Clip",
    "UltrasoundParams",
    "build_echonet_manifest",
    "dicom_frame_rate",
    "fingerprint",
    "load_clip",
    "luminance",
    "main",
    "preprocess",
    "preprocess_with_qc",
    "sector_mask",
]

PIPELINE = "ultrasound"
#: The bundle this module's caches feed: the manifest's target (``--target``, EF in %) must lie in its
#: ``plausible_range``.
BUNDLE = "us_ejection_fraction"
VERSION = "1.0.0"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights of (R, G, B): the Y of DICOM's YBR_FULL."""
_MIN_FRAMES = 2
_ECHONET_SPLITS = {"TRAIN": "train", "VAL": "val", "TEST": "test"}
#: QC record entries reported per scan by inference (``supremix_med.inference``), with a failed clip's value.
QC_FIELDS = {"colour": "", "input_frames": 0, "fps": float("nan"), "fps_source": "", "window_s": float("nan"),
             "mask_fraction": float("nan")}


@dataclass(frozen=True)
class UltrasoundParams:
    """Every setting of the ultrasound pipeline (see the module docstring for what each step does).

    Args:
        frames: output frames T.
        size: output frame height and width, pixels.
        duration_s: seconds from the clip's start resampled to ``frames``; ``None``: the whole clip.
        sector_mask: ``None``, ``"auto"`` or the path of a mask image.
        mask_threshold: ``"auto"`` mask threshold, as a fraction of the 99th percentile of the per-pixel
            temporal standard deviations.
    """

    frames: int = 32
    size: int = 112
    duration_s: float | None = None
    sector_mask: str | None = None
    mask_threshold: float = 0.02

    def __post_init__(self) -> None:
        if isinstance(self.sector_mask, os.PathLike):
            object.__setattr__(self, "sector_mask", str(self.sector_mask))
        if self.frames < 1 or self.size < 1:
            raise ValueError(f"frames and size must be positive, got frames={self.frames}, size={self.size}.")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be positive or None, got {self.duration_s}.")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}.")
        if self.sector_mask not in (None, "auto") and not Path(self.sector_mask).is_file():
            raise ValueError(f"sector_mask must be None, 'auto' or a mask image file; {self.sector_mask} is not "
                             "a file.")


@dataclass(frozen=True)
class Clip:
    """A decoded clip.

    Attributes:
        frames: float32 luminance, shape (T, H, W), in the source's grey levels.
        fps: frame rate (frames/s), or ``None`` when the file does not say.
        fps_source: where the frame rate came from (a DICOM keyword or ``"container"``), or ``None``.
        colour: the source's colour model: the DICOM PhotometricInterpretation (e.g. ``"YBR_FULL_422"``) or
            ``"video <pixel format>"`` (e.g. ``"video yuv420p"``).
    """

    frames: np.ndarray
    fps: float | None
    fps_source: str | None
    colour: str


# ----------------------------------------------------------------------------------------------- loading
def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luminance of RGB pixels: (..., 3) -> (...) float32, same units as the input."""
    return rgb.astype(np.float32) @ LUMA_WEIGHTS


def dicom_frame_rate(ds: pydicom.Dataset) -> tuple[float | None, str | None]:
    """Frame rate of a multi-frame DICOM, frames/s, and the attribute it came from (``(None, None)`` if none).

    ``FrameTime`` (ms per frame) first, then the mean interval of ``FrameTimeVector`` (ms, its first entry is 0),
    then ``CineRate`` and ``RecommendedDisplayFrameRate`` (frames/s). Missing, empty or non-positive values are
    skipped.
    """
    frame_time = ds.get("FrameTime")
    if frame_time and float(frame_time) > 0:
        return 1000.0 / float(frame_time), "FrameTime"
    intervals = np.atleast_1d(np.asarray(ds.get("FrameTimeVector") or [0.0], dtype=float))[1:]
    if intervals.size and intervals.mean() > 0:
        return 1000.0 / float(intervals.mean()), "FrameTimeVector"
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ds.get(keyword)
        if rate and float(rate) > 0:
            return float(rate), keyword
    return None, None


def _dicom_grey(pixels: np.ndarray, colour: str, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """(T, H, W[, 3]) pixels in colour space ``colour`` -> (T, H, W) float32 luminance."""
    if colour in ("YBR_FULL", "YBR_FULL_422"):
        return pixels[..., 0].astype(np.float32)
    if colour == "RGB":
        return luminance(pixels)
    if colour == "PALETTE COLOR":
        return luminance(apply_color_lut(pixels, ds))
    if colour == "MONOCHROME2":
        return pixels.astype(np.float32)
    if colour == "MONOCHROME1":
        return -pixels.astype(np.float32)
    raise ValueError(f"{path}: unsupported PhotometricInterpretation {colour!r} of the decoded pixels.")


def _read_dicom(path: Path) -> Clip:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError) as error:
        raise ValueError(f"{path}: cannot be read as DICOM ({error}).") from error
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{path}: the DICOM file has no pixel data.")
    declared = ds.get("NumberOfFrames")
    n_frames = 1 if declared in (None, "") else int(declared)
    if n_frames < _MIN_FRAMES:
        raise ValueError(f"{path}: a clip needs at least {_MIN_FRAMES} frames, the DICOM file has {n_frames} "
                         f"(NumberOfFrames).")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        pixels, decoded = get_decoder(syntax).as_array(ds, as_rgb=False)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: the pixel data ({getattr(syntax, 'name', syntax)}) cannot be decoded "
                         f"({error}).") from error
    fps, source = dicom_frame_rate(ds)
    grey = _dicom_grey(pixels, str(decoded["photometric_interpretation"]), ds, path)
    return Clip(grey, fps, source, str(ds.get("PhotometricInterpretation", "MONOCHROME2")))


def _read_video(path: Path) -> Clip:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: the file has no video stream.")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            colour = f"video {stream.codec_context.pix_fmt}"
            frames = [frame.to_ndarray(format="gray") for frame in container.decode(stream)]
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot be decoded as a video ({error}).") from error
    if len(frames) < _MIN_FRAMES:
        raise ValueError(f"{path}: a clip needs at least {_MIN_FRAMES} frames, the video has {len(frames)}.")
    fps = float(rate) if rate else None
    return Clip(np.stack(frames).astype(np.float32), fps, "container" if fps else None, colour)


def load_clip(path: str | os.PathLike) -> Clip:
    """Read and validate an ultrasound clip (a video file by suffix, see ``VIDEO_SUFFIXES``, else DICOM).

    Returns:
        the clip as grey-scale frames of shape (T, H, W), T >= 2, with its frame rate.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unreadable, corrupt or undecodable file, fewer than 2 frames, NaN/inf pixels, or a constant
            clip. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ultrasound clip not found: {path}")
    clip = _read_video(path) if path.suffix.lower() in VIDEO_SUFFIXES else _read_dicom(path)
    bad = int(np.count_nonzero(~np.isfinite(clip.frames)))
    if bad:
        raise ValueError(f"{path}: {bad} of {clip.frames.size} pixels are NaN or infinite.")
    if clip.frames.min() == clip.frames.max():
        raise ValueError(f"{path}: every pixel of every frame is {clip.frames.flat[0]}; the clip holds no image.")
    return clip


# -------------------------------------------------------------------------------------------------- mask
def sector_mask(frames: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """The imaging sector of a clip: where it moves over time (see step 2 of the module docstring).

    Args:
        frames: (T, H, W) grey-scale clip.
        threshold: fraction of the 99th percentile of the per-pixel temporal standard deviations.

    Returns:
        bool array (H, W): the convex hull of the largest connected region of varying pixels (the region itself
        when it is too thin for a hull). Empty when no pixel varies.
    """
    deviation = frames.std(axis=0)
    varying = deviation > threshold * np.percentile(deviation, 99)
    labels, count = ndimage.label(varying)
    if count == 0:
        return varying
    largest = labels == 1 + int(np.argmax(ndimage.sum_labels(varying, labels, np.arange(1, count + 1))))
    points = np.argwhere(largest)
    try:
        corners = points[ConvexHull(points).vertices]  # (row, column), in order around the hull
    except QhullError:  # fewer than 3 pixels, or all on one line
        return largest
    hull = Image.new("1", largest.shape[::-1])
    ImageDraw.Draw(hull).polygon([(int(c), int(r)) for r, c in corners], fill=1, outline=1)
    return np.array(hull)  # a writable copy


def _read_mask_image(path: Path, shape: tuple[int, int], clip_path: Path) -> np.ndarray:
    """A mask image as a bool (H, W) array (non-zero = inside); it must have the frames' ``shape``."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path}: cannot be read as a mask image ({error}).") from error
    if mask.shape != shape:
        raise ValueError(f"{clip_path}: the sector mask {path} is {mask.shape[0]} x {mask.shape[1]} pixels, the "
                         f"frames are {shape[0]} x {shape[1]}.")
    return mask


def _mask_for(frames: np.ndarray, config: UltrasoundParams, path: Path) -> np.ndarray | None:
    """The (H, W) bool sector mask that ``config.sector_mask`` asks for, or ``None``; an empty mask is an error."""
    if config.sector_mask is None:
        return None
    if config.sector_mask == "auto":
        mask = sector_mask(frames, config.mask_threshold)
    else:
        mask = _read_mask_image(Path(config.sector_mask), frames.shape[1:], path)
    if not mask.any():
        raise ValueError(f"{path}: the sector mask ({config.sector_mask}) is empty"
                         + (": no pixel varies over time." if config.sector_mask == "auto" else "."))
    return mask


# ------------------------------------------------------------------------------------------------- steps
def _window(clip: Clip, config: UltrasoundParams, path: Path) -> tuple[np.ndarray, float | None]:
    """The frames of the temporal window, and its duration in seconds (``None`` without a frame rate)."""
    duration = clip.frames.shape[0] / clip.fps if clip.fps else None
    if config.duration_s is None:
        return clip.frames, duration
    if clip.fps is None:
        raise ValueError(f"{path}: duration_s={config.duration_s} needs the frame rate, which the file does not "
                         f"give; use duration_s=None (the whole clip).")
    count = round(config.duration_s * clip.fps)
    if count < _MIN_FRAMES or count > clip.frames.shape[0]:
        raise ValueError(f"{path}: duration_s={config.duration_s} s is {count} frames at {clip.fps:.4g} frames/s, "
                         f"the clip has {clip.frames.shape[0]} ({duration:.3g} s); the window must hold from 2 frames "
                         f"to the whole clip.")
    return clip.frames[:count], config.duration_s


def _resample(frames: np.ndarray, mask: np.ndarray, config: UltrasoundParams) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the mask's box, anti-alias, pad to a square and resize (see step 4 of the module docstring).

    Returns:
        the clip (frames, size, size) float32 and the mask (size, size) bool.
    """
    (top, left), (bottom, right) = generate_spatial_bounding_box(mask[None])
    region = mask[top:bottom, left:right]
    clip = frames[:, top:bottom, left:right] * region
    side = max(region.shape)
    factors = (clip.shape[0] / config.frames, side / config.size, side / config.size)
    clip = ndimage.gaussian_filter(clip, [max(f - 1.0, 0.0) / 2.0 for f in factors], mode="nearest")
    pad = SpatialPad((-1, side, side))
    clip = Resize((config.frames, config.size, config.size), mode="trilinear")(pad(torch.from_numpy(clip[None])))
    region = Resize((1, config.size, config.size), mode="nearest")(pad(torch.from_numpy(region[None, None] * 1.0)))
    return clip.numpy()[0], region.numpy()[0, 0] > 0.5


def _normalise(clip: np.ndarray, region: np.ndarray, path: Path) -> np.ndarray:
    """z-score over the pixels inside ``region`` (H, W) of every frame of ``clip`` (T, H, W); 0 outside."""
    values = clip[:, region]
    std = values.std()
    if not std > 0:
        raise ValueError(f"{path}: the clip is constant inside the {'sector' if not region.all() else 'frame'} "
                         f"after resampling; cannot normalise.")
    output = np.zeros(clip.shape, dtype=np.float32)
    output[:, region] = (values - values.mean()) / std
    return output


# ------------------------------------------------------------------------------------------------ public
def preprocess_with_qc(path: str | os.PathLike, **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess an ultrasound clip and report how (see the module docstring for the steps).

    Args:
        path: video or DICOM file.
        **params: ``UltrasoundParams`` fields.

    Returns:
        (clip, qc): float32 array of shape (1, frames, size, size) (default (1, 32, 112, 112)), z-scored inside
        the sector and 0 outside, and a JSON-serialisable dict with ``path``, ``colour``, ``input_frames``,
        ``input_shape`` ([H, W]), ``fps``, ``fps_source``, ``window_frames``, ``window_s`` (``None`` without a
        frame rate), ``output_fps`` (``frames / window_s``), ``sector_mask`` and ``mask_fraction`` (fraction
        of the input frame inside the mask).

    Raises:
        FileNotFoundError, ValueError: see ``load_clip``; also an empty sector mask, a mask image of another
            size, or a ``duration_s`` window the clip cannot fill.
    """
    config = UltrasoundParams(**params)
    path = Path(path)
    clip = load_clip(path)
    mask = _mask_for(clip.frames, config, path)
    frames, window_s = _window(clip, config, path)
    full = mask if mask is not None else np.ones(frames.shape[1:], dtype=bool)
    resized, region = _resample(frames, full, config)
    qc = {
        "path": str(path),
        "colour": clip.colour,
        "input_frames": int(clip.frames.shape[0]),
        "input_shape": list(clip.frames.shape[1:]),
        "fps": clip.fps,
        "fps_source": clip.fps_source,
        "window_frames": int(frames.shape[0]),
        "window_s": window_s,
        "output_fps": config.frames / window_s if window_s else None,
        "sector_mask": config.sector_mask,
        "mask_fraction": float(full.mean()),
    }
    return _normalise(resized, region, path)[None], qc


def preprocess(path: str | os.PathLike, **params: Any) -> np.ndarray:
    """Preprocess an ultrasound clip to float32 (1, frames, size, size) (see ``preprocess_with_qc``)."""
    return preprocess_with_qc(path, **params)[0]


def fingerprint(**params: Any) -> dict[str, Any]:
    """Everything that determines ``preprocess``'s output, as a JSON-ready dict.

    Args:
        **params: ``UltrasoundParams`` fields; the rest take their defaults.

    Returns:
        ``{"pipeline", "version", "params", "libraries", "output"}``; ``params`` adds ``sector_mask_sha256``
        (the mask image's content) when ``sector_mask`` is a path; ``output`` gives the shape
        (1, frames, size, size), dtype and normalisation.
    """
    config = UltrasoundParams(**params)
    recorded = asdict(config)
    if config.sector_mask not in (None, "auto"):
        recorded["sector_mask_sha256"] = file_sha256(config.sector_mask)
    record = {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": recorded,
        "libraries": library_versions("pydicom", "av", "monai", "torch", "numpy", "scipy"),
        "output": {
            "shape": [1, config.frames, config.size, config.size],
            "dtype": "float32",
            "axes": "channel, time, row, column",
            "normalisation": "z-score inside the sector mask over all frames, 0 outside",
        },
    }
    return json.loads(json.dumps(record))


# ----------------------------------------------------------------------------------------------- EchoNet
def build_echonet_manifest(root: str | os.PathLike) -> pd.DataFrame:
    """EchoNet-Dynamic layout (``root/FileList.csv`` + ``root/Videos/*.avi``) -> a manifest.

    ``FileList.csv`` needs the columns ``FileName`` (with or without ``.avi``), ``EF`` (%) and ``Split``
    (``TRAIN``/``VAL``/``TEST``, any case); ``EDV`` and ``ESV`` (ml) are carried along when present.

    Returns:
        columns ``id`` (the file name without suffix), ``path`` (absolute), ``ef``, ``split``
        (``train``/``val``/``test``)[, ``edv``, ``esv``], one row per listed video.

    Raises:
        FileNotFoundError: ``FileList.csv`` or a listed video is missing (the message counts and names them).
        ValueError: a required column is missing or a split is not TRAIN/VAL/TEST.
    """
    root = Path(root).expanduser().resolve()
    table = pd.read_csv(root / "FileList.csv", dtype={"FileName": str, "Split": str})
    missing = [c for c in ("FileName", "EF", "Split") if c not in table.columns]
    if missing:
        raise ValueError(f"{root / 'FileList.csv'}: missing column(s) {missing}; found {list(table.columns)}.")
    names = [n if Path(n).suffix else f"{n}.avi" for n in table["FileName"].str.strip()]
    splits = table["Split"].str.strip().str.upper().map(_ECHONET_SPLITS)
    if splits.isna().any():
        raise ValueError(f"{root / 'FileList.csv'}: Split must be TRAIN, VAL or TEST; got "
                         f"{table['Split'][splits.isna()].iloc[0]!r}.")
    paths = [root / "Videos" / name for name in names]
    absent = [p.name for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{root / 'Videos'}: {len(absent)} listed video(s) missing, e.g. {absent[:5]}.")
    manifest = pd.DataFrame({"id": [Path(n).stem for n in names], "path": [str(p) for p in paths],
                             "ef": table["EF"].astype(float), "split": splits})
    for column in ("EDV", "ESV"):
        if column in table.columns:
            manifest[column.lower()] = table[column].astype(float)
    return manifest


# --------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = cache_parser(
        "python -m preprocessing.ultrasound",
        "Preprocess the echo clips of a manifest (id,path[,ef,split]) or of an EchoNet-Dynamic folder into a cache.",
        alternative=("--echonet_root", "folder with FileList.csv and Videos/"),
    )
    parser.add_argument("--frames", type=int, default=32, help="output frames (default 32)")
    parser.add_argument("--size", type=int, default=112, help="output height and width, pixels (default 112)")
    parser.add_argument("--duration_s", type=float, default=None, help="window from the start, s (default: whole)")
    parser.add_argument("--sector_mask", default=None, help="'auto' or a mask image (default: none)")
    parser.add_argument("--target", default="ef", help="target column stratifying assigned splits (default ef)")
    return add_cache_arguments(parser)


def _build(args: argparse.Namespace) -> None:
    params = {"frames": args.frames, "size": args.size, "duration_s": args.duration_s,
              "sector_mask": args.sector_mask}
    if args.manifest:
        manifest, source = load_cli_manifest(args.manifest, args.target), None
    else:
        manifest, source = build_echonet_manifest(args.echonet_root), args.echonet_root / "FileList.csv"
    build_cache_from_cli(manifest, args, preprocess_with_qc, fingerprint, params, "clips", bundle=BUNDLE,
                         target=args.target, source=source)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m preprocessing.ultrasound``: build the cache (:func:`_build`); a refused input ends in one line, status 2."""
    run_cli(_parser(), argv, _build)


if __name__ == "__main__":
    main()
