"""ConR, the contrastive regulariser for deep imbalanced regression (Keramati et al., arXiv 2309.06651).

ConR looks for samples the regressor confuses: pairs whose labels differ but whose predictions agree. With
z the L2-normalised features (N = B * V rows, view-major, labels and predictions repeated per view),
s_ia = <z_i, z_a> / tau, and for anchor i over the other rows a != i:

    positives  P_i = {a : |y_i - y_a| <= window}
    negatives  N_i = {a : |y_i - y_a| >  window  and  |yhat_i - yhat_a| <= prediction_window}
    pushing weight  S_in = eta_i * exp(pushing_weight * |y_i - y_n| / R)
    L_i = -1/|P_i| sum_{p in P_i} log( exp(s_ip) / (sum_{p' in P_i} exp(s_ip') + sum_{n in N_i} S_in exp(s_in)) )

``eta_i`` is the anchor's pushing power (``anchor_weights``, e.g. inverse label density; 1 by default) and R
the label range (``label_range`` hi - lo, or 1), so S_in grows with the label distance of the negative as
the paper's f_S(eta_i, sim(y_i, y_n)) asks. Only anchors with at least one positive and one negative are
selected (the others contribute 0) and, as in the paper, the loss is the sum of L_i divided by the number
of all anchors N (all ranks' rows in distributed mode), so it shrinks as fewer samples are confused.

Two behaviours of the public ConR code are deliberately not reproduced:

1. its age-estimation loss overwrites the temperature argument with 0.07; here ``temperature`` is the
   one used;
2. it builds the positive term from ``exp(similarity * positive_mask)``, so every non-positive pair
   (the anchor itself, negatives, unrelated samples) adds exp(0) = 1 to the denominator; here only
   positives and weighted negatives enter it.
"""

from __future__ import annotations

import torch
from torch import nn

from ._utils import all_gather_rows, anchor_mean, is_distributed, prepare_contrast_batch
from .supcon import check_label_range, check_positive, masked_logsumexp, pair_masks, similarities

__all__ = ["ConRLoss"]


def _per_sample(values: torch.Tensor, batch: int, views: int, name: str) -> torch.Tensor:
    """Check a per-sample quantity ([B] or [B, 1], finite) and repeat it per view, view-major -> [B * V]."""
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"ConRLoss: {name} must be a torch tensor, got {type(values).__name__}.")
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() != 1 or values.shape[0] != batch:
        raise ValueError(f"ConRLoss: expected {name} of shape [{batch}] or [{batch}, 1] (one per sample), "
                         f"got {tuple(values.shape)}.")
    if not torch.isfinite(values).all():
        raise ValueError(f"ConRLoss: {name} contain NaN or Inf values.")
    return values.detach().repeat(views)


class ConRLoss(nn.Module):
    """ConR contrastive regulariser (see the module docstring for the formula).

    Args:
        temperature: tau > 0 dividing the cosine similarities.
        window: label distance (label units) up to which two samples are positives; beyond it they are
            negatives if their predictions are close.
        prediction_window: prediction distance (label units) up to which a dissimilar pair counts as
            confused, i.e. a negative.
        pushing_weight: rate of the exponential growth of the pushing weight with label distance / R; the
            default with ``label_range=None`` (R = 1) is the public code's 0.01 per label unit.
        label_range: (lo, hi) of the labels; R = hi - lo scales label distances in the pushing weight.

    Example::

        conr = ConRLoss(temperature=0.2, window=1.0)
        loss = l1_loss + conr(projections, ages, predicted_ages)  # [B, 2, D], [B], [B]
    """

    def __init__(self, *, temperature: float = 0.2, window: float = 1.0, prediction_window: float = 1.0,
                 pushing_weight: float = 0.01, label_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", name)
        self.window = check_positive(window, "window", name, allow_zero=True)
        self.prediction_window = check_positive(prediction_window, "prediction_window", name, allow_zero=True)
        self.pushing_weight = check_positive(pushing_weight, "pushing_weight", name, allow_zero=True)
        self.label_range = None if label_range is None else check_label_range(label_range, name)
        self._label_scale = 1.0 if self.label_range is None else self.label_range[1] - self.label_range[0]

    def forward(self, features: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                anchor_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the regulariser.

        Args:
            features: [B, D] or [B, V, D] embeddings (normalised here); half precision is upcast to float32,
                float64 stays float64.
            labels: [B] or [B, 1] real-valued targets.
            predictions: [B] or [B, 1] the regressor's outputs for the same samples (used for selection
                only, no gradient flows through them).
            anchor_weights: optional [B] or [B, 1] non-negative pushing power eta of each sample as an
                anchor (e.g. inverse label density); 1 when omitted.

        Returns:
            0-dim tensor; 0, attached to the graph, when no anchor has both a positive and a negative.

        Raises:
            ValueError: bad shapes, counts or values of any input.
        """
        distributed = is_distributed()
        batch = prepare_contrast_batch(features, labels, "ConRLoss", distributed=distributed)
        views = 1 if features.dim() == 2 else features.shape[1]
        preds = _per_sample(predictions, features.shape[0], views, "predictions").to(batch.anchors.dtype)
        contrast_preds = all_gather_rows(preds)[0] if distributed else preds
        eta = torch.ones_like(preds)
        if anchor_weights is not None:
            eta = _per_sample(anchor_weights, features.shape[0], views, "anchor_weights").to(preds.dtype)
            if (eta < 0).any():
                raise ValueError("ConRLoss: anchor_weights must be non-negative.")

        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            _, sim = similarities(batch.contrasts, batch.offset, len(batch.anchors))
            logits = sim / self.temperature
            contrast, positive = pair_masks(batch.anchor_labels, batch.contrast_labels, batch.offset, self.window)
            label_dist = (batch.anchor_labels[:, None] - batch.contrast_labels[None, :]).abs().detach()
            confused = (preds[:, None] - contrast_preds[None, :]).abs() <= self.prediction_window
            negative = contrast & ~positive & confused
            num_positives = positive.sum(dim=1)
            selected = (num_positives > 0) & negative.any(dim=1)

            # log of each contrast's weight in the denominator: 0 for positives, log S_in for negatives
            log_push = eta.log()[:, None] + self.pushing_weight * label_dist / self._label_scale
            terms = torch.where(negative, logits + log_push, logits)
            # only selected rows: an unselected one may hold nothing but -inf (eta = 0) and poison the gradient
            log_denominator = masked_logsumexp(terms, (positive | negative) & selected[:, None])
            positive_mean = torch.where(positive, logits, 0.0).sum(dim=1) / num_positives.clamp_min(1)
            anchor_losses = torch.where(selected, log_denominator - positive_mean, 0.0)
            # the paper's normalisation: every anchor counts in the mean, unselected ones with 0
            return anchor_mean(anchor_losses, torch.ones_like(selected), distributed=distributed)
