"""Label-distribution smoothing (LDS) for imbalanced regression (Yang et al., ICML 2021, arXiv 2102.09554).

With labels binned on a grid of width ``bin_width`` (bin ``k`` holds ``k * bin_width <= y < (k + 1) *
bin_width``), n_k the number of training labels in bin k and w a symmetric kernel window of odd size
2h + 1 (max 1, see :func:`kernel_window`), the effective label density is the smoothed histogram

    d_k = sum_{j=-h..h} w_j * n_{k+j}      (bins outside the training range count as empty)

and a sample with label y in bin k(y) gets the loss weight

    weight(y) = min(s * d_{k(y)} ** -p, clip_max),   p = 1 ("inverse") or 1/2 ("sqrt_inverse"),

with the scale s chosen so that the mean weight over the training samples is exactly 1 (with ``clip_max``,
s solves mean(min(s * d ** -p, clip_max)) = 1, which needs ``clip_max >= 1``).

Differences from the authors' code, all deliberate: the Gaussian window is exactly exp(-x^2 / 2 sigma^2)
(their window is a ``gaussian_filter1d`` of a delta, whose reflected tails change the values when
4 sigma > h); ``sqrt_inverse`` takes the square root of the smoothed density (theirs smooths the square
roots of the counts); and instead of their clipping of the counts to [5, 1000] for ``inverse`` the weights
may be capped by ``clip_max``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from monai.utils import LossReduction
from numpy.typing import ArrayLike
from scipy.ndimage import convolve1d
from scipy.signal import windows
from torch.nn.modules.loss import _Loss

from supremix_med.metrics.regression import as_vector

__all__ = ["KERNELS", "REWEIGHTS", "kernel_window", "LDSWeights", "lds_weights", "WeightedL1Loss", "LDSL1Loss"]

KERNELS = ("gaussian", "triangular", "laplace")
REWEIGHTS = {"inverse": 1.0, "sqrt_inverse": 0.5}


def _is_positive(value: Any) -> bool:
    """True for a finite real number > 0 (not a bool)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def kernel_window(kernel: str, kernel_size: int, sigma: float) -> np.ndarray:
    """Symmetric smoothing window over ``kernel_size`` neighbouring bins, normalised so its maximum is 1.

    With h = (kernel_size - 1) / 2 and x = -h..h (in bins):

    - ``gaussian``: exp(-x^2 / (2 sigma^2))
    - ``triangular``: 1 - |x| / (h + 1) (``sigma`` is not used)
    - ``laplace``: exp(-|x| / sigma)

    Args:
        kernel: one of :data:`KERNELS`.
        kernel_size: odd number of bins >= 1 (1 gives the window [1], i.e. no smoothing).
        sigma: kernel width in bins, > 0.

    Returns:
        [kernel_size] float64 window, symmetric, with its maximum 1 at the centre.

    Raises:
        ValueError: unknown kernel, even or non-positive ``kernel_size``, non-positive ``sigma``.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, Integral) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1 (bins), got {kernel_size!r}.")
    if not _is_positive(sigma):
        raise ValueError(f"sigma must be a finite number > 0 (bins), got {sigma!r}.")
    if kernel == "gaussian":
        return windows.gaussian(kernel_size, std=sigma)
    if kernel == "triangular":
        return windows.triang(kernel_size)
    return windows.exponential(kernel_size, tau=sigma)


def _as_labels(labels: ArrayLike, name: str) -> np.ndarray:
    """Return ``labels`` ([N] or [N, 1], array-like or tensor) as a finite, non-empty float64 [N] array."""
    values = as_vector(labels, name)
    if values.size == 0:
        raise ValueError(f"{name} must not be empty.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contain NaN or Inf values ({int((~np.isfinite(values)).sum())} of {values.size}).")
    return values


def _mean_one_scale(raw: np.ndarray, clip_max: float | None) -> float:
    """Scale s with mean(min(s * raw, clip_max)) == 1 over the (positive) raw weights ``raw``.

    Without a cap s = N / sum(raw). With one, samples whose scaled weight exceeds the cap are pinned to it
    and s is re-solved on the others until no new sample exceeds it (water filling; each round only adds
    pinned samples, and s only grows, so it ends in at most N rounds).
    """
    if clip_max is None:
        return raw.size / raw.sum()
    pinned = np.zeros(raw.size, dtype=bool)
    while True:
        if pinned.all():  # only reachable through rounding when clip_max == 1: every weight is the cap
            return clip_max / raw.min()
        scale = (raw.size - clip_max * pinned.sum()) / raw[~pinned].sum()
        newly = ~pinned & (scale * raw > clip_max)
        if not newly.any():
            return scale
        pinned |= newly


class LDSWeights:
    """Label-distribution-smoothing weights: fit the smoothed label density once, look up any label's weight.

    See the module docstring for the formulas. Labels outside the fitted bins take the density of the
    nearest edge bin (as the authors' code clamps labels to its last bin). A bin inside the range that the
    kernel does not reach from any training label (a gap wider than the kernel's half width) has density 0;
    it is floored at the smallest positive smoothed density, so such labels weigh at least as much as any
    training label.

    Args:
        bin_width: width of a label bin, in label units (> 0).
        kernel: ``gaussian``, ``triangular`` or ``laplace`` (see :func:`kernel_window`).
        kernel_size: odd window size in bins.
        sigma: kernel width in bins.
        reweight: ``inverse`` (1 / density) or ``sqrt_inverse`` (1 / sqrt(density)).
        clip_max: optional cap on a weight (>= 1; the mean over the training samples stays 1).

    Attributes (after :meth:`fit`):
        first_bin: index k of the first bin (bin k starts at k * bin_width).
        density: [K] smoothed density d_k of bins first_bin .. first_bin + K - 1, in (kernel-weighted)
            samples.
        scale: s in the weight formula.

    Example::

        lds = LDSWeights(bin_width=1.0, kernel="gaussian", kernel_size=5, sigma=2.0).fit(train_ages)
        weights = lds(batch_ages)  # tensor in, tensor out (same device); mean over the training set is 1
    """

    def __init__(self, bin_width: float = 1.0, kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0,
                 reweight: str = "inverse", clip_max: float | None = None) -> None:
        if not _is_positive(bin_width):
            raise ValueError(f"bin_width must be a finite number > 0 (label units), got {bin_width!r}.")
        if reweight not in REWEIGHTS:
            raise ValueError(f"reweight must be one of {tuple(REWEIGHTS)}, got {reweight!r}.")
        if clip_max is not None and not (_is_positive(clip_max) and clip_max >= 1):
            raise ValueError(f"clip_max must be None or a number >= 1 (the mean weight is 1), got {clip_max!r}.")
        self.window = kernel_window(kernel, kernel_size, sigma)
        self.bin_width = float(bin_width)
        self.kernel, self.kernel_size, self.sigma = kernel, int(kernel_size), float(sigma)
        self.reweight = reweight
        self.clip_max = None if clip_max is None else float(clip_max)
        self.first_bin: int | None = None
        self.density: np.ndarray | None = None
        self.scale: float | None = None

    def _bins(self, labels: np.ndarray) -> np.ndarray:
        """Bin index floor(y / bin_width) of each label, as int64."""
        return np.floor(labels / self.bin_width).astype(np.int64)

    def fit(self, train_labels: ArrayLike) -> LDSWeights:
        """Histogram ``train_labels`` ([N] or [N, 1]), smooth it and fix the scale; return ``self``.

        Raises:
            ValueError: empty, non-finite or wrongly shaped labels.
        """
        bins = self._bins(_as_labels(train_labels, "train_labels"))
        self.first_bin = int(bins.min())
        counts = np.bincount(bins - self.first_bin).astype(np.float64)
        self.density = convolve1d(counts, self.window, mode="constant", cval=0.0)
        self.scale = float(_mean_one_scale(self._unscaled_weights(bins), self.clip_max))
        return self

    def _check_fitted(self) -> None:
        if self.density is None:
            raise ValueError("LDSWeights is not fitted: call fit(train_labels) or build it with from_dict().")

    def _bin_density(self, bins: np.ndarray) -> np.ndarray:
        """Smoothed density of bin indices (clamped to the fitted bins, floored at the smallest positive)."""
        index = np.clip(bins - self.first_bin, 0, self.density.size - 1)
        return np.maximum(self.density[index], self.density[self.density > 0].min())

    def _unscaled_weights(self, bins: np.ndarray) -> np.ndarray:
        """d ** -p of each bin index (the weights before scaling and capping)."""
        return self._bin_density(bins) ** -REWEIGHTS[self.reweight]

    def density_of(self, labels: ArrayLike) -> np.ndarray:
        """Effective (smoothed) density d_k(y) of each label, [N] float64, in kernel-weighted samples."""
        self._check_fitted()
        return self._bin_density(self._bins(_as_labels(labels, "labels")))

    def __call__(self, labels: ArrayLike) -> np.ndarray | torch.Tensor:
        """Weights of ``labels`` ([N] or [N, 1]): a float32 tensor on the same device for a tensor, else float64.

        Returns:
            [N] weights; the mean over the training labels is 1.
        """
        self._check_fitted()
        weights = self.scale * self._unscaled_weights(self._bins(_as_labels(labels, "labels")))
        if self.clip_max is not None:
            weights = np.minimum(weights, self.clip_max)
        if isinstance(labels, torch.Tensor):
            return torch.as_tensor(weights, dtype=torch.float32, device=labels.device)
        return weights

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings and fitted state (for a checkpoint or a bundle's output folder)."""
        self._check_fitted()
        return {"bin_width": self.bin_width, "kernel": self.kernel, "kernel_size": self.kernel_size,
                "sigma": self.sigma, "reweight": self.reweight, "clip_max": self.clip_max,
                "first_bin": self.first_bin, "density": self.density.tolist(), "scale": self.scale}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LDSWeights:
        """Rebuild a fitted :class:`LDSWeights` from :meth:`to_dict` output.

        Raises:
            ValueError: a key is missing or the density is not a non-empty list of non-negative numbers with
                at least one positive.
        """
        missing = {"bin_width", "kernel", "kernel_size", "sigma", "reweight", "clip_max", "first_bin", "density",
                   "scale"} - set(state)
        if missing:
            raise ValueError(f"LDSWeights.from_dict: missing keys {sorted(missing)}.")
        density = np.asarray(state["density"], dtype=np.float64)
        if density.ndim != 1 or not np.isfinite(density).all() or (density < 0).any() or not (density > 0).any():
            raise ValueError("LDSWeights.from_dict: density must be a list of finite non-negative numbers, not all 0.")
        lds = cls(state["bin_width"], state["kernel"], state["kernel_size"], state["sigma"], state["reweight"],
                  state["clip_max"])
        lds.first_bin, lds.density, lds.scale = int(state["first_bin"]), density, float(state["scale"])
        return lds


def lds_weights(train_labels: ArrayLike, labels: ArrayLike | None = None, bin_width: float = 1.0,
                kernel: str = "gaussian", kernel_size: int = 5, sigma: float = 2.0, reweight: str = "inverse",
                clip_max: float | None = None) -> np.ndarray:
    """LDS weights of ``labels`` (default: of ``train_labels`` themselves) from the density of ``train_labels``.

    One-call form of ``LDSWeights(...).fit(train_labels)(labels)``; arguments as in :class:`LDSWeights`.

    Returns:
        [N] float64 weights (mean 1 over ``train_labels``).
    """
    lds = LDSWeights(bin_width, kernel, kernel_size, sigma, reweight, clip_max).fit(train_labels)
    return np.asarray(lds(train_labels if labels is None else labels))


class WeightedL1Loss(_Loss):
    """Per-sample weighted L1 loss, weight * |input - target| (e.g. with LDS weights).

    Args:
        reduction: ``"mean"`` (mean over all elements, as the authors' code; with weights of mean 1 over the
            training set it is on the scale of the L1 loss), ``"sum"`` or ``"none"`` (elementwise).

    Without weights it equals ``torch.nn.L1Loss`` with the same reduction, so it is a drop-in replacement.
    """

    def __init__(self, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: [B, ...] predictions.
            target: targets of the same shape as ``input``.
            weight: optional [B] per-sample weights (broadcast over the other dimensions) or a tensor of the
                shape of ``input``; no gradient flows into it.

        Returns:
            0-dim tensor for ``mean``/``sum``, [B, ...] for ``none``.

        Raises:
            ValueError: ``target`` or ``weight`` has an incompatible shape.
        """
        if input.shape != target.shape:
            raise ValueError(f"WeightedL1Loss: target shape {tuple(target.shape)} differs from input shape "
                             f"{tuple(input.shape)}.")
        loss = (input - target).abs()
        if weight is not None:
            if weight.dim() == 1 and weight.shape[0] == input.shape[0]:
                weight = weight.reshape(-1, *([1] * (input.dim() - 1)))
            elif weight.shape != input.shape:
                raise ValueError(f"WeightedL1Loss: weight must have shape [{input.shape[0]}] or "
                                 f"{tuple(input.shape)}, got {tuple(weight.shape)}.")
            loss = loss * weight.detach().to(loss.dtype)
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss


class LDSL1Loss(WeightedL1Loss):
    """L1 loss weighted by the LDS weight of each sample's target: weight(target) * |input - target|.

    The weights are a function of the label, so the loss needs nothing beyond ``(input, target)`` and drops in
    for ``torch.nn.L1Loss`` in a trainer. The weight of every fitted bin is tabulated once (a buffer) and
    looked up on the target's device, so no batch leaves the GPU.

    Args:
        lds: fitted :class:`LDSWeights` (targets are binned and clamped to its fitted bins as there).
        reduction: as in :class:`WeightedL1Loss`.

    Raises:
        ValueError: ``lds`` is not fitted.
    """

    def __init__(self, lds: LDSWeights, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction)
        lds._check_fitted()
        centres = (lds.first_bin + np.arange(lds.density.size) + 0.5) * lds.bin_width
        self.register_buffer("bin_weights", torch.as_tensor(lds(centres), dtype=torch.float32))
        self.first_bin, self.bin_width = lds.first_bin, lds.bin_width

    def weights(self, target: torch.Tensor) -> torch.Tensor:
        """LDS weights [B] (float32, on the target's device) of targets [B] or [B, 1] in label units."""
        if target.dim() > 2 or (target.dim() == 2 and target.shape[1] != 1):
            raise ValueError(f"LDSL1Loss: LDS weighs one target per sample, expected targets [B] or [B, 1], "
                             f"got {tuple(target.shape)}.")
        table = self.bin_weights.to(target.device)
        index = torch.floor(target.detach().reshape(-1).double() / self.bin_width).long() - self.first_bin
        return table[index.clamp(0, table.numel() - 1)]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted L1 of predictions ``input`` and targets ``target`` (both [B] or [B, 1], label units); the
        reduction as in :class:`WeightedL1Loss`."""
        return super().forward(input, target, self.weights(target))
