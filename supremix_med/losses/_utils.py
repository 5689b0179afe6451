"""Shared plumbing for the contrastive losses: input checks, view flattening, precision, distribution.

Every loss in this package takes ``features`` of shape [B, D] or [B, V, D] and ``labels`` of shape [B] or
[B, 1]. Rows are flattened view-major (row ``v * B + b`` holds view ``v`` of sample ``b``, as SupContrast
does) and labels are repeated per view, giving N = B * V anchors.

When ``torch.distributed`` is initialised, each rank's anchors contrast against the rows (and labels)
all-gathered from every rank, with gradient. A loss is then ``world_size * sum(local anchor losses) /
(number of valid anchors on all ranks)`` (or, for weighted anchors, the weighted sum over the sum of the
weights on all ranks): the mean of the per-rank values equals the single-process loss on
the concatenated batch, and DDP's gradient averaging gives exactly that loss's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["ContrastBatch", "prepare_contrast_batch", "anchor_mean", "is_distributed", "all_gather_rows"]


@dataclass
class ContrastBatch:
    """Flattened inputs of a contrastive loss.

    Attributes:
        anchors: [N, D] this process's rows (float32 or float64), view-major.
        anchor_labels: [N] labels of ``anchors``.
        contrasts: [M, D] rows every anchor contrasts against (M = N on one process; all ranks' rows,
            rank-major, when distributed).
        contrast_labels: [M] labels of ``contrasts``.
        offset: index of ``anchors[0]`` inside ``contrasts`` (so anchor ``i`` is contrast ``offset + i``).
    """

    anchors: torch.Tensor
    anchor_labels: torch.Tensor
    contrasts: torch.Tensor
    contrast_labels: torch.Tensor
    offset: int


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flatten(features: torch.Tensor, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and values; return view-major rows [B*V, D] and repeated labels [B*V]."""
    if not isinstance(features, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name}: features and labels must be torch tensors, got {type(features).__name__} "
                         f"and {type(labels).__name__}.")
    if features.dim() not in (2, 3):
        raise ValueError(f"{name}: features must have shape [B, D] or [B, V, D], got {tuple(features.shape)}.")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1:
        raise ValueError(f"{name}: labels must have shape [B] or [B, 1], got {tuple(labels.shape)}.")
    batch = features.shape[0]
    if labels.shape[0] != batch:
        raise ValueError(f"{name}: expected {batch} labels (one per sample in features "
                         f"{tuple(features.shape)}), got {labels.shape[0]}.")
    if batch == 0 or features.shape[-1] == 0:
        raise ValueError(f"{name}: features must be non-empty, got shape {tuple(features.shape)}.")
    labels = labels.to(features.device)
    # one device sync for both checks
    features_finite, labels_finite = torch.stack((torch.isfinite(features).all(),
                                                  torch.isfinite(labels).all())).tolist()
    if not features_finite:
        raise ValueError(f"{name}: features contain NaN or Inf values.")
    if not labels_finite:
        raise ValueError(f"{name}: labels contain NaN or Inf values.")
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    features = features.to(dtype)
    labels = labels.to(dtype)
    if features.dim() == 3:
        views = features.shape[1]
        features = features.transpose(0, 1).reshape(views * batch, features.shape[-1])
        labels = labels.repeat(views)
    return features, labels


class _GatherRows(torch.autograd.Function):
    """All-gather rows [n, ...] from every rank into [world * n, ...], rank-major, with gradient.

    Backward sums every rank's gradient w.r.t. the gathered rows and returns this rank's slice, so each
    rank's rows receive the gradient of the sum of all ranks' losses.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * rows
        return grad[start:start + rows]


def all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-gather rows of ``x`` [n, ...] from every rank (with gradient); return them and this rank's offset.

    Raises:
        ValueError: the ranks hold different numbers of rows.
    """
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"distributed contrastive losses need the same batch size on every rank, got "
                         f"{[int(s) for s in sizes]}; use drop_last=True in the DistributedSampler/loader.")
    return _GatherRows.apply(x), dist.get_rank() * x.shape[0]


def prepare_contrast_batch(features: torch.Tensor, labels: torch.Tensor, name: str,
                           distributed: bool | None = None) -> ContrastBatch:
    """Validate and flatten inputs, upcast half precision to float32, gather contrasts across ranks.

    Args:
        features: [B, D] or [B, V, D] embeddings (any float dtype; float16/bfloat16 become float32).
        labels: [B] or [B, 1] real-valued labels.
        name: the loss's name, used in error messages.
        distributed: gather across ranks; ``None`` means "when a multi-rank process group is running".

    Raises:
        ValueError: wrong dimensionality, label/feature count mismatch, empty or non-finite input.
    """
    anchors, anchor_labels = _flatten(features, labels, name)
    if distributed is None:
        distributed = is_distributed()
    if not distributed:
        return ContrastBatch(anchors, anchor_labels, anchors, anchor_labels, 0)
    contrasts, offset = all_gather_rows(anchors)
    contrast_labels, _ = all_gather_rows(anchor_labels.detach())
    return ContrastBatch(anchors, anchor_labels, contrasts, contrast_labels, offset)


def anchor_mean(anchor_losses: torch.Tensor, weights: torch.Tensor, distributed: bool | None = None
                ) -> torch.Tensor:
    """Weighted mean ``sum_i w_i L_i / sum_i w_i`` of per-anchor losses; 0 (attached) when every weight is 0.

    Args:
        anchor_losses: [N] loss of each local anchor (any value where the weight is 0).
        weights: [N] bool, the anchors that count (e.g. those with at least one positive; a plain mean over
            them), or non-negative float weights (0: the anchor does not count).
        distributed: as in :func:`prepare_contrast_batch`. When True the sum of the weights is summed over
            ranks and the result is scaled by the world size (see the module docstring).

    Returns:
        A 0-dim tensor.
    """
    if distributed is None:
        distributed = is_distributed()
    weights = weights.to(anchor_losses.dtype)  # a new tensor for bool weights, so the sum below is fresh
    total = torch.where(weights > 0, weights * anchor_losses, torch.zeros_like(anchor_losses)).sum()
    count = weights.sum()  # a new tensor: safe to reduce in place
    if distributed:
        dist.all_reduce(count)
        total = total * dist.get_world_size()
    return total / count.clamp_min(torch.finfo(count.dtype).tiny)
