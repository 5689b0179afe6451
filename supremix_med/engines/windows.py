"""Fixed-length time windows for parcel time series: random windows to train, averaged windows to evaluate.

A cached fMRI run is a [C, T] series (C parcels as channels, T frames). Networks
such as ``resnet18_1d`` see windows of W frames:

- **Training** cuts one random contiguous window per sample and epoch. MONAI does this already: with the
  parcels as channels, time is the only spatial axis of a [C, T] item, so ::

      {"_target_": "RandSpatialCropd", "keys": "image", "roi_size": [W], "random_size": false}

  returns [C, W] starting at a uniformly drawn frame (its start changes every time the item is loaded), as a
  MetaTensor; ``{"_target_": "EnsureTyped", "keys": "image", "track_meta": false}`` after it drops the (spatial,
  meaningless here) metadata, so batches of views stack as plain tensors. In contrastive pre-training,
  ``multi_view_transform`` applies both once per view, so the views of a run are two windows of it. Every
  series must have at least W frames (a shorter one is returned whole and cannot be batched with the others);
  a cache built by ``preprocessing.fmri`` has ``frames`` >= W frames everywhere.
- **Evaluation** predicts every window that ``sliding_windows`` cuts from a series and
  averages them: :class:`WindowAveragingInferer` (the evaluators' ``inferer``), so a run gets one prediction.
- **Per subject**: :class:`SubjectAveragingCollector` (the evaluators' collector) averages the predictions of
  a subject's runs, so the test report writes metrics, ``predictions.csv`` and the bias correction per
  subject, not per run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.inferers import Inferer

from supremix_med.engines.reporting import PredictionCollector

__all__ = ["SubjectAveragingCollector", "WindowAveragingInferer", "sliding_windows"]

#: Largest spread (label units) allowed between the targets of one subject's runs.
TARGET_TOLERANCE = 1e-4


def sliding_windows(series: np.ndarray | torch.Tensor, length: int, stride: int) -> np.ndarray | torch.Tensor:
    """The windows of ``length`` frames that cover a series, to average a model's predictions over.

    Windows start at 0, stride, 2*stride, ... and, if that leaves frames uncovered at the end, one more window
    ends at the last frame (so every frame is in some window).

    Args:
        series: (C, T) array or tensor (parcels x frames).
        length: window length, frames (<= T).
        stride: frames between window starts (>= 1).

    Returns:
        (n_windows, C, length), the same type as ``series``.
    """
    if series.ndim != 2:
        raise ValueError(f"expected a (channels, frames) series, got shape {tuple(series.shape)}.")
    n_frames = series.shape[1]
    if not 1 <= length <= n_frames or stride < 1:
        raise ValueError(f"need 1 <= length <= T={n_frames} and stride >= 1, got length={length}, stride={stride}.")
    starts = list(range(0, n_frames - length + 1, stride))
    if starts[-1] != n_frames - length:
        starts.append(n_frames - length)
    windows = [series[:, s:s + length] for s in starts]
    return np.stack(windows) if isinstance(series, np.ndarray) else torch.stack(windows)


class WindowAveragingInferer(Inferer):
    """Predict a series as the mean of the predictions of its sliding windows.

    For inputs [B, C, T], the windows are those of ``sliding_windows(series, window,
    stride)`` (starts 0, stride, 2 * stride, ... plus one window ending at the last frame if frames are left
    over; identical for every sample of the batch). All B * n_windows windows go through ``network`` in
    batches of ``sw_batch_size`` (all at once by default), and the predictions are averaged over each
    sample's windows (``reduction``: mean, with equal weight per window).

    Args:
        window: window length W, frames (>= 1); the length the network was trained on.
        stride: frames between window starts (>= 1); default ``window`` (tiles that do not overlap).
        sw_batch_size: windows per network call; ``None`` runs all B * n_windows windows in one call.

    Example (a bundle's evaluator)::

        "inferer": {"_target_": "supremix_med.engines.WindowAveragingInferer", "window": 64, "stride": 32}
    """

    def __init__(self, window: int, stride: int | None = None, sw_batch_size: int | None = None) -> None:
        super().__init__()
        stride = window if stride is None else stride
        if window < 1 or stride < 1 or (sw_batch_size is not None and sw_batch_size < 1):
            raise ValueError(f"WindowAveragingInferer: window, stride and sw_batch_size must be >= 1, got "
                             f"window={window}, stride={stride}, sw_batch_size={sw_batch_size}.")
        self.window = int(window)
        self.stride = int(stride)
        self.sw_batch_size = sw_batch_size

    def windows(self, inputs: torch.Tensor) -> torch.Tensor:
        """Series [B, C, T] -> windows [B, n_windows, C, W] (copies), in order of their start frame.

        Raises:
            ValueError: ``inputs`` is not 3-D or has fewer than ``window`` frames.
        """
        if inputs.ndim != 3:
            raise ValueError(f"WindowAveragingInferer: expected series [B, C, T] (batch, parcels, frames), got "
                             f"shape {tuple(inputs.shape)}.")
        batch, channels, frames = inputs.shape
        if frames < self.window:
            raise ValueError(f"WindowAveragingInferer: the series have T={frames} frames, fewer than the window "
                             f"of {self.window} frames the network expects; use longer runs or a shorter window.")
        # each (sample, channel) row is a "channel" of sliding_windows: [n, B * C, W] -> [B, n, C, W]
        cut = sliding_windows(inputs.reshape(batch * channels, frames), self.window, self.stride)
        return cut.reshape(-1, batch, channels, self.window).transpose(0, 1)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        """Mean prediction over the windows of each series.

        Args:
            inputs: series [B, C, T] with T >= ``window``.
            network: maps windows [N, C, W] to predictions [N, *P] (e.g. [N, n_targets]).
            args, kwargs: passed on to ``network``.

        Returns:
            [B, *P]: per sample, the mean of its windows' predictions.
        """
        series = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        windows = self.windows(series)
        batch, n_windows = windows.shape[:2]
        flat = windows.reshape(batch * n_windows, *windows.shape[2:])
        step = flat.shape[0] if self.sw_batch_size is None else self.sw_batch_size
        predictions = torch.cat([network(flat[s:s + step], *args, **kwargs) for s in range(0, len(flat), step)])
        return predictions.reshape(batch, n_windows, *predictions.shape[1:]).mean(dim=1)


def _subject_names(values: Any) -> list[str]:
    """Subject ids of one batch as strings: a list of str, or a numeric tensor [B] / [B, 1] (100307.0 -> "100307")."""
    if isinstance(values, torch.Tensor):
        numbers = values.detach().cpu().double().reshape(-1).tolist()
        return ["" if np.isnan(v) else str(int(v)) if v.is_integer() else str(v) for v in numbers]
    return [str(v) for v in values]


class SubjectAveragingCollector(PredictionCollector):
    """:class:`PredictionCollector` whose :meth:`frame` has one row per subject: the mean over its runs.

    Each evaluation batch must carry the subject of every run under ``subject_key`` (for a
    ``CachedDataset``, pass ``covariates=["subject"]`` so the cache manifest's column comes with each item:
    strings, or a float tensor [B, 1] for numeric ids). A run whose subject is empty (missing in the manifest)
    counts as a subject of its own, named by its id. The runs of a subject must share one target.

    Args:
        subject_key: batch key of the subject ids.
        id_key: batch key of the run ids.
    """

    def __init__(self, subject_key: str = "subject", id_key: str = "id") -> None:
        super().__init__(id_key)
        self.subject_key = subject_key
        self._subjects: list[str] = []

    def reset(self, engine: Engine | None = None) -> None:
        super().reset(engine)
        self._subjects = []

    def collect(self, engine: Engine) -> None:
        """Append this iteration's predictions, targets, run ids and subjects.

        Raises:
            ValueError: the batch has no ``subject_key`` or a different number of subjects than predictions.
        """
        batch = engine.state.batch
        if self.subject_key not in batch:
            raise ValueError(f"SubjectAveragingCollector: the batch has no {self.subject_key!r} key (keys: "
                             f"{sorted(batch)}); load the dataset with covariates=[{self.subject_key!r}].")
        subjects = _subject_names(batch[self.subject_key])
        super().collect(engine)
        if len(self._subjects) + len(subjects) != len(self._ids):
            raise ValueError(f"SubjectAveragingCollector: the batch holds {len(subjects)} subjects for "
                             f"{len(self._ids) - len(self._subjects)} predictions.")
        self._subjects.extend(subjects)

    def run_frame(self, target_name: str = "age") -> pd.DataFrame:
        """One row per run: ``id, subject, <target_name>, predicted_<target_name>`` of the last epoch."""
        runs = super().frame(target_name)
        subjects = [s or i for s, i in zip(self._subjects, self._ids)]
        runs.insert(1, self.subject_key, subjects)
        return runs

    def frame(self, target_name: str = "age") -> pd.DataFrame:
        """One row per subject, in order of first appearance.

        Returns:
            ``<subject_key>, n_runs, <target_name>, predicted_<target_name>``: the subject's target and the
            mean of its runs' predictions.

        Raises:
            ValueError: the runs of a subject have targets further apart than ``TARGET_TOLERANCE``.
        """
        runs = self.run_frame(target_name).drop(columns="id")
        groups = runs.groupby(self.subject_key, sort=False)
        spread = groups[target_name].max() - groups[target_name].min()
        mixed = spread[spread > TARGET_TOLERANCE]
        if len(mixed):
            raise ValueError(f"SubjectAveragingCollector: the runs of subject(s) {list(mixed.index[:5])} have "
                             f"different {target_name!r} values (spread up to {mixed.max():.4g}); subject "
                             f"averaging needs one target per subject.")
        subjects = groups.agg(**{"n_runs": (target_name, "size"), target_name: (target_name, "first"),
                                 f"predicted_{target_name}": (f"predicted_{target_name}", "mean")})
        return subjects.reset_index()
