"""Feature-distribution smoothing (FDS) for imbalanced regression (Yang et al., ICML 2021, arXiv 2102.09554).

Labels fall into K buckets of width ``bin_width`` starting at ``bucket_start``: bucket
b(y) = clamp(floor((y - bucket_start) / bin_width), 0, K - 1), so labels below or above the range join the
first or last bucket. FDS keeps, per bucket b and feature dimension, running statistics of the encoder's
features z [B, D]:

- **running stats** (updated at each epoch end from all of that epoch's training features): with the
  epoch's bucket mean m and variance v (unbiased; 0 for a single sample),
  mu_b <- (1 - f) m + f mu_b and sigma2_b <- (1 - f) v + f sigma2_b, where f = ``momentum`` (or, with
  ``momentum=None``, the cumulative-average factor 1 - n_epoch / n_tracked); a bucket's first observation
  is taken as is (f = 0).
- **last-epoch stats**: a frozen copy of the running stats, taken by :meth:`FDS.update_last_epoch_stats`.
- **smoothed stats**: the last-epoch stats convolved over neighbouring buckets with the kernel of
  :func:`~supremix_med.imbalance.lds.kernel_window` normalised to sum 1, mirror-padded at both ends (the
  authors' ``F.pad(mode="reflect")``). Only buckets that have been observed contribute: smoothed =
  conv(observed * stat) / conv(observed), which equals the plain convolution when every bucket is observed.

During training (``epoch >= start_smooth``) :meth:`FDS.smooth` re-colours each feature with the moments of
its bucket b, elementwise per dimension:

    z' = (z - mu_b) * sqrt(clip(smoothed_sigma2_b / sigma2_b, lo, hi)) + smoothed_mu_b

with (lo, hi) = ``var_ratio_clip`` (the authors' (0.1, 10)). Dimensions whose frozen variance is 0 and
buckets not observed before the freeze are left unchanged. Gradients flow through z; the statistics are
buffers (saved in the state dict, no gradient).

Call protocol, as in the authors' training loop: train epoch e (the model calls ``smooth`` on its features),
then at the end of epoch e call ``update_last_epoch_stats(e)`` and ``update_running_stats(features, labels,
e)`` with the features of the whole training set (concatenated, gathered from every rank when distributed).
``update_last_epoch_stats`` acts once per epoch and only after ``start_update``, so epoch e + 1 calibrates
with the statistics of the features seen up to epoch e - 1. Epochs count from 0, as in the authors' code.

In a training loop the features need not be kept: the model calls :meth:`FDS.collect` (per-bucket sums of
count, features and squared features) next to :meth:`FDS.smooth`, and the epoch end becomes
``update_last_epoch_stats(e)`` + ``update_running_stats_from_sums(pop_collected() summed over ranks, e)``.
:class:`~supremix_med.networks.ContrastiveRegressor` and
:class:`~supremix_med.engines.FDSUpdateHandler` do exactly this.

Differences from the authors' code, all deliberate: unobserved buckets neither enter the smoothing (theirs
mix their initial mean 0 / variance 1 into their neighbours) nor are calibrated; labels outside the bucket
range always join the edge buckets; a bucket's first observation is not blended with the initial values.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import convolve1d
from torch import nn

from .lds import kernel_window

__all__ = ["FDS"]


class FDS(nn.Module):
    """Feature-distribution smoothing of [B, D] features by label bucket (see the module docstring).

    Args:
        feature_dim: D, the feature size.
        bucket_num: K, the number of label buckets.
        bucket_start: label value (label units) at the lower edge of bucket 0.
        bin_width: bucket width in label units (> 0).
        kernel: ``gaussian``, ``triangular`` or ``laplace``.
        kernel_size: odd smoothing window in buckets (1: no smoothing).
        sigma: kernel width in buckets.
        momentum: weight of the old running stats in the per-epoch update, in [0, 1); ``None`` for a
            cumulative average.
        start_update: first epoch whose features update the running stats.
        start_smooth: first epoch in which :meth:`smooth` calibrates features.
        var_ratio_clip: (lo, hi) clip of the variance ratio, or ``None`` for no clip.

    Buffers (all in the state dict): ``running_mean``/``running_var`` [K, D], ``num_samples_tracked`` [K],
    ``last_mean``/``last_var``/``smoothed_mean``/``smoothed_var`` [K, D], ``last_observed`` [K] bool and
    ``epoch`` (the last frozen epoch; starts at ``start_update``).

    Attributes (not in the state dict): ``current_epoch``, the training epoch a model passes to :meth:`smooth`
    (set by :class:`~supremix_med.engines.FDSUpdateHandler` at each epoch start; 0 until then).

    Example::

        fds = FDS(feature_dim=512, bucket_num=100, bucket_start=0.0, bin_width=1.0)
        z = fds.smooth(encoder(x), ages, epoch)  # in the model's forward, before the regression head
    """

    def __init__(self, feature_dim: int, bucket_num: int, bucket_start: float = 0.0, bin_width: float = 1.0,
                 kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0, momentum: float | None = 0.9,
                 start_update: int = 0, start_smooth: int = 1,
                 var_ratio_clip: tuple[float, float] | None = (0.1, 10.0)) -> None:
        super().__init__()
        if not all(isinstance(n, int) and n >= 1 for n in (feature_dim, bucket_num)):
            raise ValueError(f"FDS: feature_dim and bucket_num must be integers >= 1, got {feature_dim!r} and "
                             f"{bucket_num!r}.")
        if not bin_width > 0:
            raise ValueError(f"FDS: bin_width must be > 0 (label units), got {bin_width!r}.")
        if momentum is not None and not 0 <= momentum < 1:
            raise ValueError(f"FDS: momentum must be None or in [0, 1), got {momentum!r}.")
        if var_ratio_clip is not None and not 0 < var_ratio_clip[0] <= var_ratio_clip[1]:
            raise ValueError(f"FDS: var_ratio_clip must be None or (lo, hi) with 0 < lo <= hi, got {var_ratio_clip!r}.")
        window = kernel_window(kernel, kernel_size, sigma)
        self.window = window / window.sum()
        self.feature_dim, self.bucket_num = feature_dim, bucket_num
        self.bucket_start, self.bin_width = float(bucket_start), float(bin_width)
        self.momentum, self.var_ratio_clip = momentum, var_ratio_clip
        self.start_update, self.start_smooth = start_update, start_smooth
        shape = (bucket_num, feature_dim)
        for prefix in ("running", "last", "smoothed"):
            self.register_buffer(f"{prefix}_mean", torch.zeros(shape))
            self.register_buffer(f"{prefix}_var", torch.ones(shape))
        self.register_buffer("num_samples_tracked", torch.zeros(bucket_num))
        self.register_buffer("last_observed", torch.zeros(bucket_num, dtype=torch.bool))
        self.register_buffer("epoch", torch.tensor(start_update, dtype=torch.long))
        self.current_epoch = 0
        self._collected: torch.Tensor | None = None

    def buckets(self, labels: torch.Tensor) -> torch.Tensor:
        """Bucket index [B] (int64, in 0..K-1) of labels [B] or [B, 1] (label units)."""
        index = torch.floor((labels.reshape(-1).double() - self.bucket_start) / self.bin_width)
        return index.clamp(0, self.bucket_num - 1).long()

    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"FDS: features must have shape [B, {self.feature_dim}], got {tuple(features.shape)}.")
        if tuple(labels.shape) not in ((features.shape[0],), (features.shape[0], 1)):
            raise ValueError(f"FDS: expected labels of shape [{features.shape[0]}] or [{features.shape[0]}, 1], "
                             f"got {tuple(labels.shape)}.")
        if not torch.isfinite(labels).all():
            raise ValueError("FDS: labels contain NaN or Inf values.")

    def _bucket_sums(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-bucket sums [K, 1 + 2D] (float64, on the features' device) of features [B, D] and labels [B]:
        column 0 the sample count, columns 1..D the sum of the features, columns D+1..2D the sum of their squares.
        """
        self._check(features, labels)
        feats = features.detach().double()
        index = self.buckets(labels).to(feats.device)
        values = torch.cat([torch.ones_like(feats[:, :1]), feats, feats.square()], dim=1)
        return torch.zeros(self.bucket_num, values.shape[1], dtype=torch.float64, device=feats.device).index_add_(
            0, index, values)

    @torch.no_grad()
    def update_running_stats(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """Fold one epoch's training features [N, D] and labels [N] into the running stats (ignored before
        ``start_update``). Call once per epoch with the whole epoch's features.

        Raises:
            ValueError: wrong shapes, non-finite labels.
        """
        self.update_running_stats_from_sums(self._bucket_sums(features, labels), epoch)

    @torch.no_grad()
    def update_running_stats_from_sums(self, sums: torch.Tensor, epoch: int) -> None:
        """:meth:`update_running_stats` from one epoch's per-bucket sums [K, 1 + 2D] (count, sum of features,
        sum of squared features; e.g. :meth:`pop_collected`, summed over ranks). The moments are computed in
        float64 as var = (sum of squares - count * mean^2) / (count - 1).

        Raises:
            ValueError: ``sums`` does not have shape [K, 1 + 2D].
        """
        if tuple(sums.shape) != (self.bucket_num, 1 + 2 * self.feature_dim):
            raise ValueError(f"FDS: expected per-bucket sums of shape [{self.bucket_num}, {1 + 2 * self.feature_dim}], "
                             f"got {tuple(sums.shape)}.")
        if epoch < self.start_update:
            return
        sums = sums.to(self.running_mean.device, torch.float64)
        count, total, squares = sums[:, 0], sums[:, 1:1 + self.feature_dim], sums[:, 1 + self.feature_dim:]
        mean = total / count.clamp_min(1)[:, None]
        # unbiased; a single sample gives 0 (rounding can leave a tiny negative residual, hence the clamp)
        var = (squares - count[:, None] * mean.square()).clamp_min(0) / (count - 1).clamp_min(1)[:, None]

        seen = count > 0
        tracked = self.num_samples_tracked.double() + count
        if self.momentum is None:
            factor = 1 - count / tracked.clamp_min(1)
        else:
            factor = torch.full_like(count, self.momentum)
        factor = torch.where(self.num_samples_tracked > 0, factor, 0.0)[:, None]
        new_mean = (1 - factor) * mean + factor * self.running_mean.double()
        new_var = (1 - factor) * var + factor * self.running_var.double()
        self.running_mean[seen] = new_mean[seen].to(self.running_mean.dtype)
        self.running_var[seen] = new_var[seen].to(self.running_var.dtype)
        self.num_samples_tracked.copy_(tracked.to(self.num_samples_tracked.dtype))

    @torch.no_grad()
    def collect(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a training batch (features [B, D], labels [B] or [B, 1]; detached) to this epoch's per-bucket
        sums. They live on the features' device, outside the state dict (so DDP's buffer broadcast leaves
        each rank's own sums alone), until :meth:`pop_collected`.

        Raises:
            ValueError: wrong shapes, non-finite labels.
        """
        sums = self._bucket_sums(features, labels)
        self._collected = sums if self._collected is None else self._collected + sums.to(self._collected.device)

    def pop_collected(self) -> torch.Tensor:
        """This epoch's per-bucket sums [K, 1 + 2D] from :meth:`collect` (zeros if nothing was collected, on the
        device of the buffers), and start a new collection."""
        sums, self._collected = self._collected, None
        if sums is None:
            sums = torch.zeros(self.bucket_num, 1 + 2 * self.feature_dim, dtype=torch.float64,
                               device=self.running_mean.device)
        return sums

    def _smooth_buckets(self, stat: torch.Tensor, observed: np.ndarray) -> torch.Tensor:
        """Kernel average [K, D] of ``stat`` over neighbouring observed buckets (unobserved rows kept)."""
        values = stat.detach().cpu().double().numpy() * observed[:, None]
        weight = convolve1d(observed.astype(np.float64), self.window, mode="mirror")
        smoothed = convolve1d(values, self.window, axis=0, mode="mirror") / np.maximum(weight, 1e-12)[:, None]
        result = torch.from_numpy(smoothed).to(stat)
        return torch.where(torch.from_numpy(observed).to(stat.device)[:, None], result, stat)

    @torch.no_grad()
    def update_last_epoch_stats(self, epoch: int) -> None:
        """Freeze the running stats and smooth them over buckets, once per epoch after ``start_update``."""
        if epoch <= int(self.epoch):
            return
        self.epoch.fill_(epoch)
        observed = (self.num_samples_tracked > 0).cpu().numpy()
        self.last_mean.copy_(self.running_mean)
        self.last_var.copy_(self.running_var)
        self.last_observed.copy_(torch.from_numpy(observed))
        self.smoothed_mean.copy_(self._smooth_buckets(self.running_mean, observed))
        self.smoothed_var.copy_(self._smooth_buckets(self.running_var, observed))

    def smooth(self, features: torch.Tensor, labels: torch.Tensor, epoch: int) -> torch.Tensor:
        """Calibrate features [B, D] with their bucket's frozen and smoothed moments (formula in the module
        docstring); returns ``features`` unchanged in eval mode or before ``start_smooth``.

        Args:
            features: [B, D] encoder features (any float dtype; the result has the same dtype).
            labels: [B] or [B, 1] labels (label units).
            epoch: current training epoch.

        Raises:
            ValueError: wrong shapes, non-finite labels.
        """
        self._check(features, labels)
        if not self.training or epoch < self.start_smooth:
            return features
        index = self.buckets(labels).to(features.device)
        dtype = torch.promote_types(features.dtype, torch.float32)
        mean, var = self.last_mean[index].to(dtype), self.last_var[index].to(dtype)
        ratio = self.smoothed_var[index].to(dtype) / var.clamp_min(torch.finfo(dtype).tiny)
        if self.var_ratio_clip is not None:
            ratio = ratio.clamp(*self.var_ratio_clip)
        calibrated = (features.to(dtype) - mean) * ratio.sqrt() + self.smoothed_mean[index].to(dtype)
        calibrate = (var > 0) & self.last_observed[index][:, None]
        return torch.where(calibrate, calibrated.to(features.dtype), features)
