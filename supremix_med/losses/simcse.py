"""Supervised SimCSE for scored sentence pairs (the STS-B baseline of the SupReMix paper).

SimCSE (Gao et al. 2021) pulls the two sentences of a related pair together and pushes every other sentence
of the batch away (in-batch InfoNCE). With graded similarity scores, a pair scoring above ``threshold``
(2 on STS-B's 0-5 scale) is related. Features hold both sentences' embeddings, ``[B, 2, D]``; flattened
view-major (row ``b`` is sentence 1 of pair ``b``, row ``B + b`` its sentence 2), every row ``i`` of a related
pair is an anchor whose positive is its partner ``p(i)``, and every other row is a contrast:

    L_i = -[ s_{i,p(i)} / tau - log sum_{a != i} exp(s_ia / tau) ]

with ``s`` the cosine similarity. Sentences of pairs at or below the threshold are contrasts (negatives) of
every anchor, including each other's, and anchors of none. The loss is the mean of ``L_i`` over the anchors;
a batch without a related pair gives 0. Under ``torch.distributed`` each rank's anchors contrast against the
rows gathered from all ranks (see ``_utils``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._utils import anchor_mean, prepare_contrast_batch
from .supcon import check_positive, masked_logsumexp, similarities

__all__ = ["SimCSELoss"]


class SimCSELoss(nn.Module):
    """In-batch InfoNCE over sentence pairs whose score is above ``threshold``.

    Features are L2-normalised inside the loss. Half-precision inputs and inputs produced under autocast are
    computed in float32; float64 stays float64.

    Args:
        temperature: tau > 0 dividing the cosine similarities (SimCSE uses 0.05).
        threshold: pairs scoring strictly above it are positives of each other (label units).

    Raises:
        ValueError: on a non-positive or non-finite temperature, or a non-finite threshold.

    Example::

        loss = SimCSELoss(temperature=0.05)
        value = loss(torch.randn(8, 2, 128), 5 * torch.rand(8))
    """

    def __init__(self, temperature: float = 0.05, threshold: float = 2.0) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", name)
        self.threshold = float(threshold)
        if not math.isfinite(self.threshold):
            raise ValueError(f"{name}: threshold must be a finite number, got {threshold}.")

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: [B, 2, D] embeddings of sentence 1 and sentence 2 of each pair.
            labels: [B] or [B, 1] pair scores.

        Returns:
            0-dim float32 (float64 for float64 features) mean of the per-anchor losses; 0 (attached to the
            graph) when no pair scores above the threshold.

        Raises:
            ValueError: features not [B, 2, D], or malformed or non-finite input.
        """
        name = type(self).__name__
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or features.shape[1] != 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"{name}: features must be [B, 2, D] (the two sentences of each pair), got {shape}.")
        batch = prepare_contrast_batch(features, labels, name)
        rows = batch.anchors.shape[0]
        pairs = rows // 2
        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            _, sim = similarities(batch.contrasts, batch.offset, rows)
            logits = sim / self.temperature
            anchor = torch.arange(rows, device=logits.device)
            partner = batch.offset + (anchor + pairs) % rows
            contrast = torch.ones_like(logits, dtype=torch.bool)
            contrast[anchor, batch.offset + anchor] = False
            anchor_losses = masked_logsumexp(logits, contrast) - logits[anchor, partner]
            return anchor_mean(anchor_losses, batch.anchor_labels > self.threshold)
