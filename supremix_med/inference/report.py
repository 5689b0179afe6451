"""``report.html``: one self-contained page per prediction run that a person looks at.

The page (no external CSS, scripts, fonts or images: every picture is an inline base64 PNG) holds

- a summary: scans predicted, failed and flagged, and how the intervals were calibrated;
- the predicted-vs-target plot of the model's validation predictions (``validation_predictions.csv`` beside the
  model) with the new scans marked: with their intervals where the target is known, in a side panel where not;
- a table with one row per scan: id, target, prediction, gap, corrected gap, interval, flags, error, and a
  preview of the preprocessed input the network saw (:class:`PreviewSpec`): for volumes on an MNI152 grid (T1,
  PET) the axial, coronal and sagittal slices through the grid centre with the outline of nilearn's MNI152 brain
  mask resampled to that grid (a registration check at a glance); three frames of a clip (ultrasound); the image
  (X-ray, faces); the parcel x time matrix as a carpet plot (fMRI); no preview for a feature vector (tables).

:class:`InferenceReport` is the ignite handler that builds it during an inference run: it keeps a small preview
(uint8 slices of at most 96 pixels a side) of every scan as its batch passes, so nothing is preprocessed twice, and
renders the table :class:`~supremix_med.inference.PredictionWriter` wrote (the page only shows it).
:func:`render_report` builds the page from a predictions table and previews, for use outside an engine.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from scipy import ndimage

from supremix_med.io import atomic_write

from .flags import FLAGS, QC_FLAG
from .model_folder import StoredModel
from .uncertainty import ConformalInterval

__all__ = ["InferenceReport", "Preview", "PreviewSpec", "make_preview", "render_report", "template_brain_mask"]

logger = logging.getLogger(__name__)

_MAX_PIXELS = 96
_OUTLINE_RGB = (255, 140, 0)
_MNI_VIEWS = ("axial", "coronal", "sagittal")


# ------------------------------------------------------------------------------------------------- previews
@functools.lru_cache(maxsize=4)
def _mni_mask(first_voxel_centre_mm: tuple[float, ...], spacing_mm: float, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    affine = np.diag([spacing_mm] * 3 + [1.0])
    affine[:3, 3] = first_voxel_centre_mm
    mask = load_mni152_brain_mask(resolution=1)
    mask = nib.Nifti1Image(np.asarray(mask.dataobj, dtype=np.float32), mask.affine)
    with warnings.catch_warnings():  # linear then >= 0.5 on purpose: the T1 pipeline's brain mask is made so
        warnings.filterwarnings("ignore", "Resampling binary images", UserWarning)
        resampled = resample_img(mask, target_affine=affine, target_shape=shape, interpolation="linear",
                                 force_resample=True, copy_header=True)
    return np.asarray(resampled.dataobj) >= 0.5


def template_brain_mask(first_voxel_centre_mm: Sequence[float], spacing_mm: float, shape: Sequence[int]) -> np.ndarray:
    """nilearn's MNI152 brain mask (template > 0.2, 1 mm) resampled (trilinear, >= 0.5) to an RAS+ grid.

    Args:
        first_voxel_centre_mm: world coordinate (mm) of voxel (0, 0, 0); the grid's axes are the world axes.
        spacing_mm: isotropic voxel size.
        shape: (X, Y, Z) voxels.

    Returns:
        bool [X, Y, Z] (a cached array: do not modify).
    """
    return _mni_mask(tuple(float(c) for c in first_voxel_centre_mm), float(spacing_mm), tuple(int(n) for n in shape))


@dataclass(frozen=True)
class PreviewSpec:
    """How to preview a pipeline's preprocessed inputs.

    Attributes:
        kind: ``"orthogonal"`` (MNI-grid volume [1, X, Y, Z]: three slices and the template outline),
            ``"frames"`` ([C, T, H, W]: first, middle and last frame), ``"image"`` ([C, H, W]: the image; 3
            channels as colour), ``"matrix"`` ([rows, columns], e.g. parcels x time: a carpet plot) or ``"none"``.
        caption: what the previews show (for the page).
        mask: the template brain mask on the grid (``"orthogonal"`` only).
    """

    kind: str
    caption: str
    mask: np.ndarray | None = None

    @classmethod
    def from_fingerprint(cls, fingerprint: Mapping[str, Any] | None) -> PreviewSpec:
        """The preview of inputs described by a pipeline's fingerprint (``preprocessing.json``)."""
        output = dict((fingerprint or {}).get("output", {}))
        shape, axes = list(output.get("shape", [])), str(output.get("axes", ""))
        if (len(shape) == 4 and shape[0] == 1 and str(output.get("space", "")).startswith("MNI152")
                and "first_voxel_centre_mm" in output):
            mask = template_brain_mask(output["first_voxel_centre_mm"], output["spacing_mm"], shape[1:])
            return cls("orthogonal", "Axial, coronal and sagittal slices through the grid centre (neurological view: "
                       "the patient's right on the right); orange: outline of the MNI152 brain mask on the model's "
                       "grid. A brain that does not fill the outline was not registered well.", mask)
        if len(shape) == 4 and "time" in axes:
            return cls("frames", "First, middle and last frame of the preprocessed clip.")
        if len(shape) == 3 and "row" in axes:
            return cls("image", "The preprocessed image.")
        if len(shape) == 2:
            return cls("matrix", f"The preprocessed {' x '.join(output.get('axes', ['row', 'column']))} matrix "
                       "(carpet plot).")
        return cls("none", f"No preview: the model's inputs (shape {shape or 'unknown'}) are not images.")


@dataclass(frozen=True)
class Preview:
    """Small display panels of one input: uint8 [H, W] (grey) or [H, W, 3] (colour), with optional outlines."""

    panels: tuple[np.ndarray, ...]
    outlines: tuple[np.ndarray | None, ...]
    titles: tuple[str, ...]


def _shrink(panel: np.ndarray, max_pixels: int) -> np.ndarray:
    """Block means to at most ``max_pixels`` a side (aspect kept); [H, W] or [H, W, C]."""
    h, w = panel.shape[:2]
    factor = max(h, w) / max_pixels
    if factor <= 1:
        return panel
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    x = torch.as_tensor(np.ascontiguousarray(panel), dtype=torch.float32)
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    pooled = F.adaptive_avg_pool2d(x, size)
    return (pooled[0] if panel.ndim == 2 else pooled.permute(1, 2, 0)).numpy()


def _to_uint8(panels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Window all panels together to their 1st-99th percentile of non-zero values, as uint8; exact zeros (the
    background pipelines leave outside the brain or sector) stay black."""
    values = np.concatenate([p.ravel() for p in panels])
    values = values[np.isfinite(values) & (values != 0)]
    low, high = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
    span = high - low if high > low else 1.0
    return [np.where(p == 0, 0, np.clip((np.nan_to_num(p) - low) / span * 254 + 1, 1, 255)).astype(np.uint8)
            for p in panels]


def _mni_panels(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal, sagittal planes of an RAS (X, Y, Z) array through its centre, rows top = up/anterior."""
    cx, cy, cz = (n // 2 for n in volume.shape)
    return [volume[:, :, cz].T[::-1], volume[:, cy, :].T[::-1], volume[cx, :, :].T[::-1]]


def make_preview(image: Any, spec: PreviewSpec, max_pixels: int = _MAX_PIXELS) -> Preview | None:
    """The :class:`Preview` of one preprocessed input (None for ``spec.kind == "none"``).

    Raises:
        ValueError: the input's shape does not fit ``spec`` (the message gives both).
    """
    x = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    expected = {"orthogonal": 4, "frames": 4, "image": 3, "matrix": 2}.get(spec.kind)
    if expected is None:
        return None
    if x.ndim != expected:
        raise ValueError(f"make_preview: a {spec.kind!r} preview needs a {expected}-axis input, got shape {x.shape}.")
    outlines: list[np.ndarray | None] = [None, None, None]
    if spec.kind == "orthogonal":
        panels, titles = _mni_panels(x[0]), _MNI_VIEWS
        if spec.mask is not None and spec.mask.shape == x.shape[1:]:
            outlines = [_shrink(p.astype(np.float32), max_pixels) >= 0.5 for p in _mni_panels(spec.mask)]
            outlines = [o & ~ndimage.binary_erosion(o) for o in outlines]
    elif spec.kind == "frames":
        frames = [0, x.shape[1] // 2, x.shape[1] - 1]
        panels, titles = [x[0, t] for t in frames], tuple(f"frame {t + 1}" for t in frames)
    elif spec.kind == "image":
        panels, titles, outlines = [x.transpose(1, 2, 0) if x.shape[0] == 3 else x[0]], ("image",), [None]
    else:
        panels, titles, outlines = [x], ("matrix",), [None]
    panels = _to_uint8([_shrink(p, max_pixels) for p in panels])
    return Preview(tuple(panels), tuple(outlines), tuple(titles))


def _png(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a base64 PNG data URI."""
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _preview_png(preview: Preview, gap: int = 2) -> str:
    """All panels side by side (outlines painted), bottom-aligned on black, as a data URI."""
    rgbs = []
    for panel, outline in zip(preview.panels, preview.outlines):
        rgb = np.repeat(panel[..., None], 3, axis=2) if panel.ndim == 2 else panel.copy()
        if outline is not None and outline.shape == rgb.shape[:2]:
            rgb[outline] = _OUTLINE_RGB
        rgbs.append(rgb)
    height = max(r.shape[0] for r in rgbs)
    width = sum(r.shape[1] for r in rgbs) + gap * (len(rgbs) - 1)
    canvas, x = np.zeros((height, width, 3), np.uint8), 0
    for rgb in rgbs:
        canvas[height - rgb.shape[0]:, x:x + rgb.shape[1]] = rgb
        x += rgb.shape[1] + gap
    return _png(canvas)


# --------------------------------------------------------------------------------------------------- table
def _number(value: Any, digits: int = 1, signed: bool = False) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not math.isfinite(number) else f"{number:{'+' if signed else ''}.{digits}f}"


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else html.escape(str(value))


# ---------------------------------------------------------------------------------------------------- plot
def _plot_png(table: pd.DataFrame, validation: pd.DataFrame | None, target: str) -> str | None:
    """Predicted vs target: validation cloud, new scans with known target (with intervals), unknown-target ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred_col, low_col, high_col = f"predicted_{target}", f"predicted_{target}_low", f"predicted_{target}_high"
    pred = table[pred_col].to_numpy(float)
    truth = table[target].to_numpy(float) if target in table else np.full(len(table), np.nan)
    known, unknown = np.isfinite(pred) & np.isfinite(truth), np.isfinite(pred) & ~np.isfinite(truth)
    has_validation = validation is not None and len(validation) > 0
    if not (known.any() or unknown.any() or has_validation):
        return None
    flagged = table[QC_FLAG].fillna("").astype(bool).to_numpy() if QC_FLAG in table else np.zeros(len(table), bool)
    errors = None
    if low_col in table:
        low, high = table[low_col].to_numpy(float), table[high_col].to_numpy(float)
        errors = np.stack([pred - low, high - pred])
    fig, (ax, side) = plt.subplots(1, 2, figsize=(6.4, 4.2), sharey=True, gridspec_kw={"width_ratios": [5, 1]})
    values = [pred[np.isfinite(pred)], truth[np.isfinite(truth)]]
    if has_validation:
        ax.scatter(validation[target], validation[pred_col], s=8, c="0.7", label=f"validation (n={len(validation)})")
        values += [validation[target].to_numpy(float), validation[pred_col].to_numpy(float)]
    finite = np.concatenate(values)
    finite = finite[np.isfinite(finite)]
    lo, hi = float(finite.min()), float(finite.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
    for mask, axis, x, colour, name in ((known, ax, truth, "tab:blue", "new scans"),
                                        (unknown, side, np.zeros(len(table)), "tab:purple", "new scans")):
        for subset, marker, label in ((mask & ~flagged, "o", name), (mask & flagged, "X", f"{name}, flagged")):
            if subset.any():
                axis.errorbar(x[subset], pred[subset], yerr=None if errors is None else errors[:, subset],
                              fmt=marker, ms=5, color="tab:red" if marker == "X" else colour, ecolor="0.4",
                              elinewidth=0.8, capsize=2, label=f"{label} (n={int(subset.sum())})")
    ax.set_xlabel(f"{target} (known)")
    ax.set_ylabel(f"predicted {target}")
    ax.legend(loc="upper left", fontsize=7)
    side.set_xticks([])
    side.set_xlabel(f"{target}\nunknown")
    side.set_xlim(-1, 1)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------------- page
_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em} p.note{color:#555;font-size:.9em;max-width:60em}
table{border-collapse:collapse;font-size:.85em} th,td{border-bottom:1px solid #ddd;padding:3px 6px;text-align:left;
vertical-align:middle} th{background:#f3f3f3;position:sticky;top:0} td.num{text-align:right;font-variant-numeric:
tabular-nums} tr.flagged{background:#fff6d5} tr.failed{background:#fde2e2} td.flags,td.error{max-width:24em;
font-size:.9em} img.preview{height:72px;image-rendering:pixelated} .summary span{margin-right:1.5em}
"""


def _row(i: int, row: pd.Series, preview: str | None, target: str, gap_name: str) -> str:
    pred_col = f"predicted_{target}"
    interval = ""
    if f"{pred_col}_low" in row and math.isfinite(float(row[pred_col])):
        interval = f"{_number(row[f'{pred_col}_low'])} – {_number(row[f'{pred_col}_high'])}"
    flags = _text(row.get(QC_FLAG, ""))
    error = _text(row.get("error", ""))
    css = "failed" if error else "flagged" if flags else ""
    image = f'<img class="preview" alt="preview of {_text(row["id"])}" src="{preview}">' if preview else ""
    cells = [str(i + 1), _text(row["id"]), _number(row.get(target)), _number(row[pred_col]),
             _number(row.get(gap_name), signed=True), _number(row.get(f"{gap_name}_corrected"), signed=True), interval]
    numeric = "".join(f'<td class="num">{c}</td>' for c in cells[2:])
    return (f'<tr class="scan {css}" data-id="{_text(row["id"])}"><td class="num">{cells[0]}</td><td>{cells[1]}</td>'
            f'{numeric}<td class="flags">{flags}</td><td class="error">{error}</td><td>{image}</td></tr>')


def render_report(table: pd.DataFrame, previews: Mapping[str, Preview | None], spec: PreviewSpec,
                  validation: pd.DataFrame | None = None, calibration: ConformalInterval | None = None,
                  target: str = "age", gap_name: str | None = None, title: str = "Prediction report",
                  notes: Sequence[str] = ()) -> str:
    """The self-contained HTML page (see the module docstring).

    Args:
        table: the predictions table (:class:`~supremix_med.inference.PredictionWriter`), one row per scan.
        previews: ``{id: Preview}`` (missing or None: no preview, e.g. a failed scan).
        spec: how the previews were made (its caption is shown).
        validation: the model's ``validation_predictions.csv``, the plot's reference cloud.
        calibration: the interval used, described in the summary.
        target, gap_name: column names (gap default ``<target>_gap``).
        title: the page title; notes: extra sentences for the summary (e.g. what the model folder lacked).

    Returns:
        the page as a string.
    """
    gap_name = gap_name or f"{target}_gap"
    failed = table["error"].fillna("").astype(bool) if "error" in table else pd.Series(False, index=table.index)
    flagged = table[QC_FLAG].fillna("").astype(bool) if QC_FLAG in table else pd.Series(False, index=table.index)
    counts = {"scans": len(table), "predicted": int((~failed).sum()), "failed": int(failed.sum()),
              "flagged": int((flagged & ~failed).sum())}
    summary = [f"<span><b>{n}</b> {name}</span>" for name, n in counts.items()]
    sentences = list(notes)
    if calibration is not None:
        how = ("prediction +- a fixed half-width" if calibration.score == "absolute"
               else "prediction +- a multiple of its test-time-augmentation/ensemble spread")
        unbounded = "" if math.isfinite(calibration.quantile) else " (too few for this level: unbounded intervals)"
        sentences.append(f"Intervals: {100 * (1 - calibration.alpha):.0f} % split-conformal intervals ({how}), "
                         f"calibrated on {calibration.n} validation cases{unbounded}.")
    if QC_FLAG in table:
        sentences.append("Flags (a column each in predictions.csv): " + ", ".join(FLAGS) + ".")
    plot = _plot_png(table, validation, target)
    rows = "\n".join(_row(i, row, _preview_png(previews[str(row["id"])]) if previews.get(str(row["id"])) else None,
                          target, gap_name) for i, (_, row) in enumerate(table.iterrows()))
    header = ["#", "id", target, f"predicted {target}", "gap", "corrected gap", "interval", "flags", "error", "preview"]
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="note">{created}</p>',
        f'<p class="summary">{"".join(summary)}</p>',
        *(f'<p class="note">{html.escape(s)}</p>' for s in sentences),
        f'<img class="plot" alt="predicted versus {html.escape(target)}" src="{plot}">' if plot else "",
        f'<p class="note">Previews: {html.escape(spec.caption)}</p>',
        "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>",
        f"<tbody>\n{rows}\n</tbody></table>", "</body></html>",
    ])


# ------------------------------------------------------------------------------------------------- handler
class InferenceReport:
    """Ignite handler writing ``report.html`` from an inference run's predictions table.

    Attach it to the inference evaluator *after* the :class:`~supremix_med.inference.PredictionWriter` (handlers
    run in the order they were attached): at completion it renders the table the writer has just written (the
    writer owns the table: prediction, interval, gaps, QC, flags). Each iteration it keeps a small
    :class:`Preview` of every scan's input (``engine.state.batch[image_key]``), so nothing is preprocessed twice.

    Args:
        writer: the run's ``PredictionWriter`` (its ``target_name`` and ``gap_name`` name the columns).
        output_path: the HTML file to write.
        model: what the model folder(s) hold (:class:`~supremix_med.inference.StoredModel`): the validation
            cloud of the plot, the interval described, the notes on what is missing, the preprocessing fingerprint;
            None: none of it.
        fingerprint: the pipeline's fingerprint, which decides the previews; default the model's.
        title: the page title.
        image_key: batch key of the preprocessed input.
    """

    def __init__(self, writer: Any, output_path: str | os.PathLike, model: StoredModel | None = None,
                 fingerprint: Mapping[str, Any] | None = None, title: str = "Prediction report",
                 image_key: str = "image") -> None:
        self.writer, self.output_path, self.model = writer, Path(output_path), model
        self.title, self.image_key = title, image_key
        if fingerprint is None and model is not None:
            fingerprint = model.fingerprint
        self.spec = PreviewSpec.from_fingerprint(fingerprint)
        self.reset()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.previews: dict[str, Preview | None] = {}

    def collect(self, engine: Engine) -> None:
        """Keep each scan's preview (failed scans: none)."""
        batch = engine.state.batch
        ids = [str(i) for i in batch["id"]]
        errors = list(batch.get("error", [""] * len(ids)))
        for k, scan in enumerate(ids):
            if not errors[k]:
                self.previews[scan] = make_preview(batch[self.image_key][k], self.spec)

    def write(self, engine: Engine | None = None) -> str:
        """Write ``report.html``; return the page."""
        table = self.writer.table if self.writer.table is not None else self.writer.frame()
        model = self.model
        page = render_report(table, self.previews, self.spec, None if model is None else model.validation,
                             None if model is None else model.calibration, self.writer.target_name,
                             self.writer.gap_name, self.title, () if model is None else model.notes)
        atomic_write(self.output_path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
        logger.info("wrote the report of %d scans to %s", len(table), self.output_path)
        return page
