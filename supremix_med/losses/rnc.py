"""Rank-N-Contrast (RnC, also called SupCR; Zha et al., NeurIPS 2023).

RnC ranks the samples of a batch by their label distance to each anchor and contrasts them accordingly.
With raw (not normalised) features f and s_ij = -||f_i - f_j||_2 / t, for every anchor i and every
j != i (both over the N = B * V flattened rows, view-major, labels repeated per view):

    l_ij = -log( exp(s_ij) / sum_{a != i, |y_i - y_a| >= |y_i - y_j|} exp(s_ia) )

and the loss is the mean of l_ij over all N * (N - 1) ordered pairs. The denominator runs over every a
whose label is at least as far from y_i as y_j is, so samples tied with j (equal label distance) are
always all in it.

Cost: for each anchor the contrasts are sorted by label distance and the denominators are read off one
suffix log-sum-exp (``torch.logcumsumexp``), at the start of each tie group, so time is O(N^2 log N) and
memory O(N^2) -- not the O(N^3) of a per-pair mask.
"""

from __future__ import annotations

import torch
from torch import nn

from ._utils import anchor_mean, is_distributed, prepare_contrast_batch
from .supcon import check_positive, pair_masks

__all__ = ["RnCLoss", "pairwise_distances"]


def pairwise_distances(anchors: torch.Tensor, contrasts: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [N, M] between the rows of ``anchors`` [N, D] and ``contrasts`` [M, D].

    Uses the Gram form ``|a|^2 + |c|^2 - 2 a.c`` (one matmul, O(N*M) memory) on rows centred on the
    contrasts' mean (distances are translation invariant, and centring keeps the cancellation error small
    for features with a large common offset such as ReLU outputs). Squared distances are floored at
    ``eps * max squared norm`` before the square root: below that they are rounding noise, and the floor
    keeps the gradient of (near-)identical rows finite (zero) instead of NaN.
    """
    centre = contrasts.detach().mean(dim=0)
    anchors = anchors - centre
    contrasts = contrasts - centre
    sq_anchors = anchors.pow(2).sum(dim=1)
    sq_contrasts = contrasts.pow(2).sum(dim=1)
    sq_dist = sq_anchors[:, None] + sq_contrasts[None, :] - 2.0 * anchors @ contrasts.T
    finfo = torch.finfo(sq_dist.dtype)
    scale = torch.maximum(sq_anchors.detach().max(), sq_contrasts.detach().max())
    floor = (finfo.eps * scale).clamp_min(finfo.tiny)
    return torch.maximum(sq_dist, floor).sqrt()


class RnCLoss(nn.Module):
    """Rank-N-Contrast loss on raw features (see the module docstring for the formula).

    Args:
        temperature: t > 0 dividing the negative Euclidean distances (the paper's default is 2).

    Example::

        loss = RnCLoss(temperature=2.0)(features, labels)  # features [B, 2, D], labels [B]
    """

    def __init__(self, *, temperature: float = 2.0) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: [B, D] or [B, V, D] raw embeddings (not normalised); half precision is upcast to
                float32, float64 stays float64.
            labels: [B] or [B, 1] real-valued labels.

        Returns:
            0-dim tensor: the mean of l_ij over all ordered pairs (all local anchors x all gathered
            contrasts in distributed mode, normalised by the global pair count). 0, attached to the graph,
            when there is no pair (a single row).

        Raises:
            ValueError: see :func:`~supremix_med.losses._utils.prepare_contrast_batch`.
        """
        distributed = is_distributed()
        batch = prepare_contrast_batch(features, labels, "RnCLoss", distributed=distributed)
        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            logits = -pairwise_distances(batch.anchors, batch.contrasts) / self.temperature
            contrast, _ = pair_masks(batch.anchor_labels, batch.contrast_labels, batch.offset, 0.0)
            # the anchor itself sorts first (distance -1) and is then left out of every pair
            label_dist = (batch.anchor_labels[:, None] - batch.contrast_labels[None, :]).abs().detach()
            label_dist = label_dist.masked_fill(~contrast, -1.0)
            label_dist, order = label_dist.sort(dim=1)
            logits = logits.gather(1, order)
            suffix_lse = logits.flip(1).logcumsumexp(dim=1).flip(1)
            tie_start = torch.searchsorted(label_dist, label_dist, side="left")
            pair_losses = (suffix_lse.gather(1, tie_start) - logits)[:, 1:]
            num_pairs = pair_losses.shape[1]
            anchor_losses = pair_losses.sum(dim=1) / max(num_pairs, 1)
            valid = torch.full_like(anchor_losses, num_pairs > 0, dtype=torch.bool)
            return anchor_mean(anchor_losses, valid, distributed=distributed)
