"""MixSupCon: supervised contrastive learning on input-level mixup, adapted to continuous labels.

Mixup happens on the inputs, before the encoder: :func:`mixup_batch` mixes every sample with a random
partner, x~ = lam * x_b + (1 - lam) * x_perm(b) with lam ~ Beta(alpha, alpha) per sample, and gives the
mixed label y~ = lam * y_b + (1 - lam) * y_perm(b). The encoder's projections of the mixed inputs and the
mixed labels then go to :class:`MixSupConLoss`.

With z the L2-normalised features (N = B * V rows, view-major, labels repeated per view),
s_ia = <z_i, z_a> / tau and soft positives from label similarity over the other rows a != i,

    q_ij = exp(-|y_i - y_j| / sigma) / sum_{a != i} exp(-|y_i - y_a| / sigma)
    L_i  = -sum_{j != i} q_ij log( exp(s_ij) / sum_{a != i} exp(s_ia) )

and the loss is the mean of L_i over all anchors (all ranks' rows in distributed mode).

Adaptation to continuous labels: the discrete version weights the positives of a mixed sample by its mixing
coefficients (lam for the class of x_b, 1 - lam for that of its partner). With continuous labels the mixed
label y~ already is the target the mixture stands for, so the similarity of mixed labels gives the
weights, and every pair is partly positive: q_ij is a target distribution over the batch that decays with
label distance at the scale ``sigma`` (label units), instead of a 0/1 class mask.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Beta

from ._utils import anchor_mean, is_distributed, prepare_contrast_batch
from .supcon import check_positive, masked_logsumexp, pair_masks, similarities

__all__ = ["MixSupConLoss", "mix_with_partners", "mixup_batch", "mixup_partners"]


def _sample_beta(alpha: float, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``size`` draws of Beta(alpha, alpha) on the CPU, from ``generator`` when one is given.

    ``torch.distributions`` has no generator argument: a seed drawn from ``generator`` seeds the CPU default
    generator inside ``fork_rng``, which restores the global state afterwards.
    """
    beta = Beta(torch.tensor(alpha), torch.tensor(alpha))
    if generator is None:
        return beta.sample((size,))
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return beta.sample((size,))


def mixup_batch(inputs: torch.Tensor, labels: torch.Tensor, alpha: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix every sample with a random partner: input-level mixup for :class:`MixSupConLoss`.

    Args:
        inputs: [B, ...] floating-point inputs (e.g. views [B, V, C, *S]; all of a sample's entries get the
            same partner and coefficient).
        labels: [B] or [B, 1] real-valued labels.
        alpha: concentration of the symmetric Beta(alpha, alpha) the coefficients are drawn from.
        generator: optional CPU generator for reproducible coefficients and partners; the global RNG
            state is left untouched when one is given.

    Returns:
        ``(mixed_inputs [B, ...], mixed_labels [B])`` with mixed_inputs[b] = lam_b * inputs[b] +
        (1 - lam_b) * inputs[perm[b]] and the same combination of the labels, lam_b ~ Beta(alpha, alpha)
        and perm a random permutation (a sample may draw itself, leaving it unchanged).

    Raises:
        ValueError: non-floating or empty inputs, labels not [B] / [B, 1] or not finite, bad ``alpha``.
    """
    alpha = check_positive(alpha, "alpha", "mixup_batch")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() == 0 \
            or inputs.shape[0] == 0:
        raise ValueError(f"mixup_batch: inputs must be a non-empty floating-point tensor [B, ...], got "
                         f"{getattr(inputs, 'dtype', type(inputs).__name__)} of shape "
                         f"{tuple(getattr(inputs, 'shape', ()))}.")
    batch = inputs.shape[0]
    if not isinstance(labels, torch.Tensor) or labels.shape not in ((batch,), (batch, 1)):
        raise ValueError(f"mixup_batch: expected labels of shape [{batch}] or [{batch}, 1], got "
                         f"{tuple(getattr(labels, 'shape', ()))}.")
    if not torch.isfinite(labels).all():
        raise ValueError("mixup_batch: labels contain NaN or Inf values.")
    labels = labels.reshape(batch)
    labels = labels if labels.is_floating_point() else labels.float()

    lam, perm = mixup_partners(batch, alpha, generator)
    return mix_with_partners(inputs, lam, perm), mix_with_partners(labels, lam, perm)


def mixup_partners(batch: int, alpha: float = 1.0,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup coefficients lam [B] ~ Beta(alpha, alpha) and partners perm [B] (a random permutation), on the CPU.

    ``generator`` (a CPU generator) makes both reproducible without touching the global RNG state.
    """
    alpha = check_positive(alpha, "alpha", "mixup_partners")
    lam = _sample_beta(alpha, batch, generator)
    perm = torch.randperm(batch, generator=generator, device="cpu" if generator is None else generator.device)
    return lam, perm


def mix_with_partners(values: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``lam[b] * values[b] + (1 - lam[b]) * values[perm[b]]`` for floating ``values`` [B, ...] (any device)."""
    lam = lam.to(device=values.device, dtype=values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return lam * values + (1 - lam) * values[perm.to(values.device)]


class MixSupConLoss(nn.Module):
    """Supervised contrastive loss with soft, label-similarity positives for mixed-up inputs.

    See the module docstring for the formula and the adaptation to continuous labels.

    Args:
        temperature: tau > 0 dividing the cosine similarities.
        sigma: scale (label units) of the label-similarity kernel exp(-|dy| / sigma).
        mixup_alpha: concentration of Beta(alpha, alpha) for :func:`mixup_batch`; kept here so the
            training engine reads it as ``loss.mixup_alpha``. The loss itself does not use it.

    Example::

        mixed, mixed_labels = mixup_batch(views, ages, alpha=loss.mixup_alpha)  # before the encoder
        value = loss(projections_of_mixed, mixed_labels)  # [B, V, D], [B]
    """

    def __init__(self, *, temperature: float = 0.5, sigma: float = 1.0, mixup_alpha: float = 1.0) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", name)
        self.sigma = check_positive(sigma, "sigma", name)
        self.mixup_alpha = check_positive(mixup_alpha, "mixup_alpha", name)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: [B, D] or [B, V, D] projections of the mixed inputs (normalised here); half precision
                is upcast to float32, float64 stays float64.
            labels: [B] or [B, 1] mixed labels.

        Returns:
            0-dim tensor: the mean of L_i over all anchors; 0, attached to the graph, for a single row.

        Raises:
            ValueError: see :func:`~supremix_med.losses._utils.prepare_contrast_batch`.
        """
        distributed = is_distributed()
        batch = prepare_contrast_batch(features, labels, "MixSupConLoss", distributed=distributed)
        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            _, sim = similarities(batch.contrasts, batch.offset, len(batch.anchors))
            logits = sim / self.temperature
            contrast, _ = pair_masks(batch.anchor_labels, batch.contrast_labels, batch.offset, 0.0)
            valid = contrast.any(dim=1)
            log_kernel = -(batch.anchor_labels[:, None] - batch.contrast_labels[None, :]).abs().detach() / self.sigma
            # a row with no other contrast (a single row in all) keeps its own entry: softmax stays finite
            targets = log_kernel.masked_fill(~contrast & valid[:, None], float("-inf")).softmax(dim=1)
            anchor_losses = masked_logsumexp(logits, contrast) - (targets * logits).sum(dim=1)
            return anchor_mean(anchor_losses, valid, distributed=distributed)
