"""Supervised contrastive loss (SupCon) for real-valued labels, and the pieces SupReMix builds on.

For an anchor ``i`` among the N = B * V flattened rows (see ``_utils``), every other row ``a != i`` is a
contrast and the rows with the same label are its positives:

    L_i = -1/|P_i| * sum_{p in P_i} [ s_ip / tau - log sum_{a != i} exp(s_ia / tau) ]

with ``s`` the cosine similarity of the (internally L2-normalised) embeddings. The loss is the mean of L_i
over anchors with at least one positive; anchors without one are skipped, and a batch with none gives 0.
This is SupContrast's loss with labels compared for equality, which is SupReMix with every extension off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._utils import anchor_mean, prepare_contrast_batch

__all__ = ["SupConLoss", "masked_logsumexp", "similarities", "pair_masks", "check_positive", "check_label_range"]


def check_positive(value: float, name: str, owner: str, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is finite and > 0 (>= 0 with ``allow_zero``), else raise ValueError."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: {name} must be a finite number {bound}, got {value}.")
    return value


def check_label_range(value: Sequence[float], owner: str) -> tuple[float, float]:
    """``value`` as floats ``(lo, hi)`` if it is a pair of finite numbers with lo < hi, else ValueError."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{owner}: label_range must be a pair (lo, hi) of finite numbers with lo < hi, "
                         f"got {value!r}.")
    return lo, hi


def masked_logsumexp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log sum_j exp(logits[..., j])`` over the entries of the last dim where ``mask`` is True.

    Numerically stable (``torch.logsumexp``). Rows without any True entry get a finite placeholder instead
    of ``-inf`` so that no NaN gradient leaks out of them; callers must exclude those rows themselves.

    Args:
        logits: [..., K] values.
        mask: [..., K] bool, same shape as ``logits``.

    Returns:
        [...] the masked log-sum-exp of each row.
    """
    empty = ~mask.any(dim=-1, keepdim=True)
    masked = logits.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
    return torch.logsumexp(masked, dim=-1)


def similarities(contrasts: torch.Tensor, offset: int, num_anchors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalise the contrast rows and return them with the anchors' Gram rows.

    Args:
        contrasts: [M, D] every row anchors contrast against (the anchors are rows
            ``offset .. offset + num_anchors - 1`` of it).
        offset: index of the first anchor among the contrasts.
        num_anchors: N, the number of anchors.

    Returns:
        ``(z, sim)``: the unit rows [M, D] and ``sim[i, a] = <z_{offset + i}, z_a>`` [N, M].
    """
    z = F.normalize(contrasts, dim=1)
    return z, z[offset:offset + num_anchors] @ z.T


def pair_masks(anchor_labels: torch.Tensor, contrast_labels: torch.Tensor, offset: int,
               label_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Which contrasts are contrasts and which are positives of each anchor.

    Args:
        anchor_labels: [N] labels of the anchors.
        contrast_labels: [M] labels of the contrasts (anchor ``i`` is contrast ``offset + i``).
        offset: index of the first anchor among the contrasts.
        label_tolerance: two labels are equal when they differ by at most this much (label units).

    Returns:
        ``(contrast, positive)``, both [N, M] bool: ``contrast[i, a]`` is ``a != i``; ``positive[i, a]`` is
        ``a != i and |y_a - y_i| <= label_tolerance``.
    """
    rows = torch.arange(anchor_labels.shape[0], device=anchor_labels.device)[:, None] + offset
    cols = torch.arange(contrast_labels.shape[0], device=contrast_labels.device)[None, :]
    contrast = rows != cols
    positive = contrast & ((contrast_labels[None, :] - anchor_labels[:, None]).abs() <= label_tolerance)
    return contrast, positive


class SupConLoss(nn.Module):
    """Supervised contrastive loss with equal (real-valued) labels as positives.

    Features are L2-normalised inside the loss (a no-op for unit vectors). Half-precision inputs and inputs
    produced under autocast are computed in float32; float64 stays float64. Under ``torch.distributed`` each
    rank's anchors contrast against the rows gathered from all ranks (see ``_utils``).

    Args:
        temperature: tau > 0 dividing the cosine similarities.
        label_tolerance: labels that differ by at most this much count as equal (0: exact equality).

    Raises:
        ValueError: on a non-positive temperature or negative tolerance.

    Example::

        loss = SupConLoss(temperature=0.5)
        value = loss(torch.randn(8, 2, 128), torch.randint(0, 3, (8,)).float())
    """

    def __init__(self, temperature: float = 0.5, label_tolerance: float = 0.0) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", name)
        self.label_tolerance = check_positive(label_tolerance, "label_tolerance", name, allow_zero=True)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: [B, D] or [B, V, D] embeddings (V views; rows are flattened view-major).
            labels: [B] or [B, 1] real-valued labels.

        Returns:
            0-dim float32 (float64 for float64 features) mean of the per-anchor losses over anchors that
            have a positive; 0 (attached to the graph) when none has.

        Raises:
            ValueError: on malformed or non-finite input.
        """
        batch = prepare_contrast_batch(features, labels, type(self).__name__)
        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            _, sim = similarities(batch.contrasts, batch.offset, batch.anchors.shape[0])
            contrast, positive = pair_masks(batch.anchor_labels, batch.contrast_labels, batch.offset,
                                            self.label_tolerance)
            logits = sim / self.temperature
            num_positives = positive.sum(dim=1)
            positive_mean = torch.where(positive, logits, 0.0).sum(dim=1) / num_positives.clamp_min(1)
            anchor_losses = masked_logsumexp(logits, contrast) - positive_mean
            return anchor_mean(anchor_losses, num_positives > 0)
