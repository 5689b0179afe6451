"""Projection radiographs (DICOM CR/DX, PNG, JPEG) -> one (1, size, size) float32 tensor (default 512 x 512).

``preprocess`` is the only implementation of this pipeline: the cache writer and inference both call it.

Steps (``XRayParams`` holds every setting; ``fingerprint`` records them). A file whose name ends in
``.png``, ``.jpg`` or ``.jpeg`` is read with Pillow; any other file is read as DICOM with pydicom.

DICOM, each transform its own step with pydicom 3's pixel helpers:

1. **Read** (``pydicom.dcmread``) and check: pixel data present, one frame (``NumberOfFrames`` <= 1), one
   sample per pixel, ``PhotometricInterpretation`` MONOCHROME1 or MONOCHROME2, at least one row and column.
2. **Stored values** ``ds.pixel_array`` (decoded by ``pydicom.pixels``): a (rows, columns) array.
3. **Modality LUT** ``pydicom.pixels.apply_modality_lut``: Rescale Slope/Intercept or the Modality LUT
   Sequence, giving the modality's values (e.g. log exposure for CR/DX). NaN or infinite values are refused.
4. **VOI LUT** ``pydicom.pixels.apply_voi_lut`` (``prefer_lut=True``): the VOI LUT Sequence if there is one,
   otherwise the window (Window Center/Width, with the VOI LUT Function). When the file offers several
   VOI LUTs or windows, the **first** (``index=0``) is used: DICOM lists the preferred view first. The output
   range ``[low, high]`` of the step is

   - VOI LUT Sequence: the smallest and largest entry of the table;
   - window: the range pydicom maps the window onto (the stored-value range, through the rescale), read
     from pydicom itself by windowing the extreme inputs -inf and +inf;
   - neither present: the image's own minimum and maximum (the full dynamic range is kept).
5. **MONOCHROME1 inversion** ``x -> low + high - x`` inside the output range, so that higher values mean
   brighter (denser) tissue for every input, as in MONOCHROME2.

PNG/JPEG: Pillow reads the image; 16-bit greyscale (modes ``I;16*``) keeps its values with the output range
``[0, 65535]``, every other mode (8-bit grey, RGB, palette, ...) is converted to 8-bit grey (``"L"``, ITU-R
601 luma) with the output range ``[0, 255]``. Photographs of films are taken to be MONOCHROME2-like.

Both then go through:

6. **Scale** to [0, 1] by the output range: ``(x - low) / (high - low)``. A constant image is refused.
7. **Resize** with MONAI ``Resize(size, size_mode="longest")``: the longer side becomes ``size`` pixels and the
   aspect ratio is kept (bilinear interpolation, Gaussian anti-aliasing when shrinking).
8. **Normalise** (``normalize``): ``"zscore"`` (default) subtracts the mean and divides by the standard
   deviation of the resized image (all of its pixels, before padding), which removes the exposure and contrast
   differences between sites; ``"unit"`` keeps the [0, 1] scale of step 6.
9. **Pad** with MONAI ``SpatialPad`` to ``size x size``, the content centred (``method="symmetric"``; an odd
   margin puts the extra pixel after the content). The padding is black: it holds the value that 0 (the
   bottom of the output range) has after step 8, i.e. ``-mean / std`` for ``"zscore"`` and 0 for ``"unit"``,
   reported as ``pad_value`` in the QC dict.

Axis order: rows (top to bottom) then columns (left to right), as displayed; no flips.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pandas as pd
import PIL
import pydicom
import torch
from monai.transforms import Resize, SpatialPad
from PIL import Image
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from preprocessing._common import (
    add_cache_arguments,
    build_cache_from_cli,
    cache_parser,
    left_out_rows,
    library_versions,
    load_cli_manifest,
    run_cli,
)
from supremix_med.data.manifest import validate_manifest

__all__ = [
    "BUNDLE",
    "PIPELINE",
    "QC_FIELDS",
    "VERSION",
    "XRayParams",
    "build_rsna_manifest",
    "fingerprint",
    "load_xray",
    "main",
    "preprocess",
    "preprocess_with_qc",
]

PIPELINE = "xray"
#: The bundle this module's caches feed: the manifest's target (``--target``; bone age in months) must lie in
#: its ``plausible_range``.
BUNDLE = "xray_boneage"
VERSION = "1.0.0"
NORMALIZATIONS = ("zscore", "unit")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: QC record entries reported per scan by inference (``supremix_med.inference``), with a failed scan's value.
QC_FIELDS = {"format": "", "modality": "", "photometric_interpretation": "", "inverted": False, "voi": ""}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B")
_Stepped = tuple[np.ndarray, tuple[float, float], str]  # (image, output range (low, high), what was done)


@dataclass(frozen=True)
class XRayParams:
    """Every setting of the X-ray pipeline (see the module docstring for what each step does).

    Args:
        size: side of the square output, pixels.
        normalize: ``"zscore"`` (within the image) or ``"unit"`` ([0, 1] by the output range).
        interpolation: MONAI ``Resize`` mode (``"bilinear"``, ``"area"``, ``"bicubic"``, ``"nearest"``).
        anti_aliasing: Gaussian smoothing before shrinking (MONAI ``Resize(anti_aliasing=...)``).
    """

    size: int = 512
    normalize: str = "zscore"
    interpolation: str = "bilinear"
    anti_aliasing: bool = True

    def __post_init__(self) -> None:
        if int(self.size) != self.size or self.size < 8:
            raise ValueError(f"size must be an integer of at least 8 pixels, got {self.size!r}.")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}.")
        if self.interpolation not in ("bilinear", "area", "bicubic", "nearest"):
            raise ValueError(
                f"interpolation must be 'bilinear', 'area', 'bicubic' or 'nearest', got {self.interpolation!r}."
            )


# ------------------------------------------------------------------------------------------------- DICOM
def _read_dicom(path: Path) -> pydicom.Dataset:
    """Step 1: read a DICOM file and check it holds one greyscale frame."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise ValueError(f"{path}: not a DICOM file ({error}); PNG/JPEG files need a .png/.jpg/.jpeg name.") from error
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise ValueError(f"{path}: corrupt DICOM file ({type(error).__name__}: {error}).") from error
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise ValueError(f"{path}: the DICOM file has no pixel data (modality {ds.get('Modality', 'unknown')}).")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ValueError(f"{path}: expected a single-frame radiograph, got a multi-frame image with {frames} frames.")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in _MONOCHROME or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"{path}: expected a greyscale image (MONOCHROME1/MONOCHROME2, 1 sample per pixel), got "
                         f"PhotometricInterpretation {photometric!r} with {ds.get('SamplesPerPixel')} samples per "
                         "pixel.")
    if not int(ds.get("Rows") or 0) or not int(ds.get("Columns") or 0):
        raise ValueError(f"{path}: empty image ({ds.get('Rows')} rows x {ds.get('Columns')} columns).")
    return ds


def _stored_values(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Step 2: the decoded stored values, (rows, columns)."""
    try:
        pixels = ds.pixel_array
    except Exception as error:  # decoders raise many types on truncated or unsupported data
        raise ValueError(f"{path}: cannot decode the pixel data ({type(error).__name__}: {error}).") from error
    if pixels.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D (rows, columns) image, got pixel data of shape {pixels.shape}.")
    return pixels


def _modality_values(pixels: np.ndarray, ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Step 3: the Modality LUT (rescale or LUT sequence); refuses NaN/inf."""
    values = apply_modality_lut(pixels, ds)
    bad = np.count_nonzero(~np.isfinite(values)) if np.issubdtype(values.dtype, np.floating) else 0
    if bad:
        raise ValueError(f"{path}: {bad} of {values.size} pixels are NaN or infinite after the modality LUT.")
    return values


def _voi(values: np.ndarray, ds: pydicom.Dataset, path: Path) -> _Stepped:
    """Step 4: the first VOI LUT or window; returns (image, output range, description)."""
    lut = ds.VOILUTSequence[0] if ds.get("VOILUTSequence") else None
    try:
        if lut is not None and "LUTDescriptor" in lut and "LUTData" in lut:
            return _voi_lut(values, ds, lut)
        if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
            return _window(values, ds)
    except (ValueError, NotImplementedError, AttributeError) as error:  # e.g. a width < 1, a 12-bit LUT
        raise ValueError(f"{path}: cannot apply the VOI LUT/window ({error}).") from error
    return values, (float(values.min()), float(values.max())), "none (full range of the modality values)"


def _voi_lut(values: np.ndarray, ds: pydicom.Dataset, lut: pydicom.Dataset) -> _Stepped:
    """The first item of the VOI LUT Sequence; the output range is the table's smallest to largest entry."""
    if np.issubdtype(values.dtype, np.floating) and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # a LUT is indexed by integers (an identity rescale gives floats)
    count, first_mapped = lut.LUTDescriptor[0] or 2**16, lut.LUTDescriptor[1]
    table = apply_voi_lut(np.arange(first_mapped, first_mapped + count), ds, index=0)
    described = f"VOI LUT Sequence item 1 of {len(ds.VOILUTSequence)} ({count} entries)"
    return apply_voi_lut(values, ds, index=0), (float(table.min()), float(table.max())), described


def _window(values: np.ndarray, ds: pydicom.Dataset) -> _Stepped:
    """The first window; the output range is pydicom's, read by windowing the extreme inputs -inf and +inf."""
    low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, index=0)
    n = len(ds.WindowCenter) if ds["WindowCenter"].VM > 1 else 1
    function = ds.get("VOILUTFunction", "LINEAR")
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    described = f"window centre {centre:g} width {width:g} ({function}, window 1 of {n})"
    return apply_voi_lut(values, ds, index=0), (float(low), float(high)), described


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DICOM number."""
    return float(value[0] if isinstance(value, MultiValue) else value)


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[list[float] | None, str | None]:
    """(row, column) spacing in mm and the attribute it came from (Pixel Spacing, else Imager Pixel Spacing)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(keyword):
            return [float(v) for v in ds.get(keyword)], keyword
    return None, None


def _modality_lut_description(ds: pydicom.Dataset) -> str:
    """What step 3 applied, as ``apply_modality_lut`` decides it (the LUT sequence wins over a rescale)."""
    if ds.get("ModalityLUTSequence"):
        return "Modality LUT Sequence"
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        return f"rescale slope {float(ds.RescaleSlope):g} intercept {float(ds.RescaleIntercept):g}"
    return "none"


def _load_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float], dict[str, Any]]:
    """Steps 1-5 for a DICOM file: (image with higher = brighter, its output range, QC entries)."""
    ds = _read_dicom(path)
    pixels = _stored_values(ds, path)
    values = _modality_values(pixels, ds, path)
    image, (low, high), voi = _voi(values, ds, path)
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    image = (low + high) - image if inverted else image
    spacing, spacing_source = _pixel_spacing(ds)
    qc = {
        "format": "DICOM",
        "modality": ds.get("Modality"),
        "photometric_interpretation": ds.PhotometricInterpretation,
        "inverted": inverted,
        "modality_lut": _modality_lut_description(ds),
        "voi": voi,
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": spacing_source,
    }
    return image, (low, high), qc


# --------------------------------------------------------------------------------------------- PNG/JPEG
def _load_picture(path: Path) -> tuple[np.ndarray, tuple[float, float], dict[str, Any]]:
    """A PNG/JPEG as greyscale: (image, output range, QC entries)."""
    try:
        with Image.open(path) as picture:
            picture.load()
            mode, kind, frames = picture.mode, picture.format, getattr(picture, "n_frames", 1)
            if frames > 1:
                raise ValueError(f"{path}: expected a single image, got {frames} frames.")
            if mode in _SIXTEEN_BIT_MODES:
                image, value_range = np.asarray(picture, dtype=np.float64), (0.0, 65535.0)
            else:
                image, value_range = np.asarray(picture.convert("L"), dtype=np.float64), (0.0, 255.0)
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({error}).") from error
    qc = {
        "format": kind,
        "modality": None,
        "photometric_interpretation": f"Pillow mode {mode}",
        "inverted": False,
        "modality_lut": "none",
        "voi": "none (file values)",
        "pixel_spacing_mm": None,
        "pixel_spacing_source": None,
    }
    return image, value_range, qc


# ------------------------------------------------------------------------------------------------ public
def load_xray(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a radiograph and bring it to [0, 1] with higher = brighter (steps 1-6 of the module docstring).

    Args:
        path: DICOM file, or a ``.png``/``.jpg``/``.jpeg`` image.

    Returns:
        (image, qc): float64 array of shape (rows, columns) in [0, 1], and the QC entries of the steps
        (``format``, ``modality``, ``photometric_interpretation``, ``inverted``, ``modality_lut``, ``voi``,
        ``output_range``, ``original_shape``, ``pixel_spacing_mm`` (row, column; None if absent) and
        ``pixel_spacing_source``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a DICOM/PNG/JPEG file, corrupt, no pixel data, several frames, colour DICOM, empty,
            NaN/inf values, or a constant image. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"radiograph not found: {path}")
    load = _load_picture if path.suffix.lower() in IMAGE_SUFFIXES else _load_dicom
    image, (low, high), qc = load(path)
    if image.size == 0:
        raise ValueError(f"{path}: empty image (shape {image.shape}).")
    if high <= low or image.min() == image.max():
        raise ValueError(f"{path}: the image is constant (every pixel {image.flat[0]:g}); it holds no anatomy.")
    qc.update(output_range=[low, high], original_shape=list(image.shape))
    return (image - low) / (high - low), qc


def preprocess_with_qc(path: str | os.PathLike, **params: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Preprocess a radiograph and report how (see the module docstring for the steps).

    Args:
        path: DICOM file, or a ``.png``/``.jpg``/``.jpeg`` image.
        **params: ``XRayParams`` fields.

    Returns:
        (image, qc): float32 array of shape (1, size, size), and a JSON-serialisable dict: ``path``, the
        entries of :func:`load_xray`, ``resized_shape`` (content size before padding), ``normalize``,
        ``mean``/``std`` (of the [0, 1] image, used by ``"zscore"``) and ``pad_value``.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_xray`.
    """
    config = XRayParams(**params)
    image, qc = load_xray(path)
    resize = Resize(config.size, size_mode="longest", mode=config.interpolation, anti_aliasing=config.anti_aliasing)
    resized = monai.utils.convert_to_numpy(resize(torch.as_tensor(image[None], dtype=torch.float32)))
    mean, std = float(resized.mean()), float(resized.std())
    if config.normalize == "zscore":
        if std == 0:
            raise ValueError(f"{path}: the resized image is constant; cannot normalise.")
        resized, pad_value = (resized - mean) / std, -mean / std
    else:
        pad_value = 0.0
    pad = SpatialPad((config.size, config.size), method="symmetric", mode="constant", value=pad_value)
    output = monai.utils.convert_to_numpy(pad(torch.as_tensor(resized)), dtype=np.float32)
    qc = {"path": str(path), **qc, "resized_shape": list(resized.shape[1:]), "normalize": config.normalize,
          "mean": mean, "std": std, "pad_value": pad_value}
    return output, qc


def preprocess(path: str | os.PathLike, **params: Any) -> np.ndarray:
    """Preprocess a radiograph to a float32 array of shape (1, size, size) (see :func:`preprocess_with_qc`)."""
    return preprocess_with_qc(path, **params)[0]


def fingerprint(**params: Any) -> dict[str, Any]:
    """Everything that determines :func:`preprocess`'s output, as a JSON-ready dict.

    Args:
        **params: ``XRayParams`` fields; the rest take their defaults.

    Returns:
        ``{"pipeline", "version", "params", "decisions", "libraries", "output"}``; ``output`` gives the shape
        (1, size, size), dtype and axis order.
    """
    config = XRayParams(**params)
    record = {
        "pipeline": PIPELINE,
        "version": VERSION,
        "params": asdict(config),
        "decisions": {
            "voi": "first VOI LUT Sequence item, else first window, else full range",
            "monochrome1": "inverted within the VOI output range",
            "pad": "symmetric, black",
        },
        "libraries": library_versions("pydicom", "Pillow", "monai", "torch", "numpy"),
        "output": {"shape": [1, config.size, config.size], "dtype": "float32", "axes": "channel, row, column"},
    }
    return json.loads(json.dumps(record))


# ------------------------------------------------------------------------------------------------- RSNA
def build_rsna_manifest(image_dir: str | os.PathLike, csv: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Manifest of the RSNA Pediatric Bone Age layout: ``<image_dir>/<id>.png`` and a CSV ``id,boneage,male``.

    Args:
        image_dir: folder of the PNG images, one per ``id``.
        csv: table with the columns ``id``, ``boneage`` (months) and ``male`` (True/False).

    Returns:
        ``(manifest, left_out)``: the validated manifest with columns ``id`` (str), ``path`` (absolute),
        ``boneage`` (float, months) and ``sex`` ("M"/"F"), in the CSV's row order, and one row (``id, reason``)
        per row of the CSV without an image and per image without a row, which the manifest leaves out.

    Raises:
        FileNotFoundError: ``image_dir`` or ``csv`` does not exist.
        ValueError: a column is missing, ``boneage`` is not a number, ``male`` is not a boolean, or no row
            has an image.
    """
    image_dir, csv = Path(image_dir), Path(csv)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"RSNA image folder not found: {image_dir}")
    table = pd.read_csv(csv, dtype={"id": str})
    missing = [c for c in ("id", "boneage", "male") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: missing column(s) {missing}; expected id,boneage,male, found {list(table.columns)}.")
    boneage = pd.to_numeric(table["boneage"], errors="coerce")
    if boneage.isna().any():
        bad = table["boneage"][boneage.isna()].iloc[0]
        raise ValueError(f"{csv}: 'boneage' must be a number of months; got {bad!r}.")
    male = table["male"].astype(str).str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
    if male.isna().any():
        raise ValueError(f"{csv}: 'male' must be True or False; got {table['male'][male.isna()].iloc[0]!r}.")
    paths = {p.stem: p.resolve() for p in image_dir.glob("*.png")}
    manifest = pd.DataFrame({"id": table["id"].str.strip(), "boneage": boneage.astype(float),
                             "sex": male.map({True: "M", False: "F"})})
    manifest.insert(1, "path", manifest["id"].map(lambda i: str(paths[i]) if i in paths else None))
    left_out = pd.concat([
        left_out_rows(manifest["id"][manifest["path"].isna()], f"no image <id>.png in {image_dir}"),
        left_out_rows(set(paths) - set(manifest["id"]), f"an image in {image_dir} without a row"),
    ], ignore_index=True)
    manifest = manifest.dropna(subset=["path"])
    if manifest.empty:
        raise ValueError(f"{csv}: no row has an image <id>.png in {image_dir}.")
    return validate_manifest(manifest, source=str(csv)), left_out


# --------------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = cache_parser(
        "python -m preprocessing.xray",
        "Preprocess the radiographs of a manifest (columns id,path,<target>[,sex,site,split]) into a cache, or of "
        "the RSNA bone-age layout (--rsna_images DIR --rsna_csv CSV).",
        alternative=("--rsna_images", "RSNA bone-age folder of <id>.png (needs --rsna_csv)"),
    )
    parser.add_argument("--rsna_csv", type=Path, help="RSNA bone-age table with columns id,boneage,male")
    parser.add_argument("--size", type=int, default=512, help="side of the square output in pixels (default 512)")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="zscore", help="intensity normalisation")
    parser.add_argument("--target", default=None,
                        help="target column the splits are stratified by (default 'age'; 'boneage' with --rsna_images)")
    return add_cache_arguments(parser)


def _build(args: argparse.Namespace) -> None:
    """Cache the manifest or the RSNA layout; for the latter, ``excluded.csv`` in the cache lists what it left out."""
    if (args.rsna_images is None) != (args.rsna_csv is None):
        raise ValueError("--rsna_images and --rsna_csv go together: give both.")
    if args.manifest is not None:
        target = args.target or "age"
        manifest, left_out, source = load_cli_manifest(args.manifest, target), None, None
    else:
        (manifest, left_out), target = build_rsna_manifest(args.rsna_images, args.rsna_csv), args.target or "boneage"
        source = args.rsna_csv
    if target not in manifest.columns:
        raise ValueError(f"the manifest has no target column {target!r} (columns: {list(manifest.columns)}); "
                         "choose it with --target.")
    params = {"size": args.size, "normalize": args.normalize}
    build_cache_from_cli(manifest, args, preprocess_with_qc, fingerprint, params, "radiographs", bundle=BUNDLE,
                         target=target, source=source, left_out=left_out, sample_shape=(1, args.size, args.size))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m preprocessing.xray``: build the cache (:func:`_build`); a refused input ends in one line, status 2."""
    run_cli(_parser(), argv, _build)


if __name__ == "__main__":
    main()
