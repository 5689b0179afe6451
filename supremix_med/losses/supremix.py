"""SupReMix: supervised contrastive regression with mixup pairs ("Mixup Your Own Pairs", arXiv 2309.16633).

Notation: N anchors (B samples x V views, flattened view-major, see ``_utils``), unit embeddings ``z``
(the loss L2-normalises its input), labels ``y``, cosine similarities ``s_ij = <z_i, z_j>``, temperature
``tau``. For anchor ``i``:

- real contrasts: every row ``a != i``; real positives: rows ``a != i`` with ``y_a == y_i``.
- Mix-neg (hard negatives): for every real negative ``k``, ``m = lam * z_i + (1 - lam) * z_k`` with
  ``lam ~ Beta(beta)`` drawn per (i, k) pair, labelled ``lam * y_i + (1 - lam) * y_k``.
- Mix-pos (hard positives): for every pair ``y_j < y_i < y_k`` with ``y_i - y_j <= window`` and
  ``y_k - y_i <= window``, ``m = a * z_j + (1 - a) * z_k`` with ``a = (y_k - y_i) / (y_k - y_j)``, labelled
  ``y_i`` (the mixture's label interpolates to the anchor's).
- weights ``w(y_i, y_c) = (1 + |y_i - y_c|) / R`` (R the label range) in the denominator only.

    L_i = -1/|P_i| * sum_{p in P_i} [ s_ip / tau - log sum_{c in C_i} w(y_i, y_c) exp(s_ic / tau) ]

with P_i the real positives and the Mix-pos mixtures, C_i every real row but ``i``, the Mix-neg and the
Mix-pos mixtures. Anchors with |P_i| = 0 are skipped. Two reductions of the L_i:

- ``anchor_mean`` (default): ``sum_i L_i / #{i : |P_i| > 0}``, SupCon's mean over anchors, in which every
  anchor counts once whatever its number of positives.
- ``label_balanced``: the paper's Eq. 6. With k_m the rows of label group m (its anchors, themselves
  included; with ``label_tolerance`` the rows within the tolerance of the anchor's label), Eq. 6 is
  ``sum_m 1/k_m sum_{i in m} sum_{p in P_i} l_ip = sum_i (|P_i| / k_m) L_i`` for the per-positive terms
  ``l_ip = log sum_c w exp(s_ic / tau) - s_ip / tau``. That sum grows with the batch (|P_i| grows with N,
  and the number of Mix-pos pairs as N^2 within a window), so the loss divides it by the sum of the same
  weights, ``sum_i |P_i| / k_m``: a weighted mean of the L_i, on the scale of ``anchor_mean``. The divisor
  depends on the labels only, so the gradient is Eq. 6's times a positive constant of the batch. Anchors
  with many positives (crowded labels, many Mix-pos pairs) weigh more than under ``anchor_mean``; anchors
  without positives weigh 0; a batch without any positive gives 0.

``anchor_mean`` stays the default: with every extension off it is exactly SupCon (the paper's ablation
baseline; ``label_balanced`` then weighs anchors by (k_m - 1) / k_m), it is what the project's results were
obtained with, and the paper does not argue for its weighting: Theorem 1's gradient ratio does not involve
an anchor's weight, and Lemma 1's lower bound is obtained anchor by anchor, so both hold for any positive
anchor weights.

Distributed (each rank's anchors against the rows gathered from all ranks): k_m and |P_i| count the
gathered rows, and the divisor (the number of anchors, or the sum of the weights) is summed over ranks, so
the mean of the ranks' values is the loss of the whole batch with either reduction (see ``_utils``).

Mixtures are never built. Inner products are bilinear, so for ``m = a z_j + (1 - a) z_k``
``<z_i, m> = a s_ij + (1 - a) s_ik`` and ``||m||^2 = a^2 + (1 - a)^2 + 2 a (1 - a) s_jk``: every mixture logit
comes from the Gram matrix. Mix-neg costs O(N M) for M contrast rows; Mix-pos visits, per anchor, only the
pairs inside its label window (O(N W^2) for W rows per window), in blocks sized from the memory available
(``_mix_pos``: the CPU keeps fixed bounded blocks, CUDA sizes them from the free device memory), with one
device-to-host transfer per call and none inside the loop over blocks.

Bounded Mix-pos (``max_mix_pos=K``). In crowded label windows |Mix-pos_i| = Q_i grows as W^2. With K set, an
anchor with Q_i > K uses K pairs drawn uniformly with replacement among its Q_i (others: all pairs, so
K >= max Q_i gives exactly the full loss). Exactly what changes for such an anchor:

- numerator: the Mix-pos sum of logits is replaced by Q_i/K times the sampled sum, an unbiased estimate;
  |P_i| stays R_i + Q_i (R_i real positives), so the mean over positives is unbiased too and real and
  Mix-pos positives keep their full-batch shares.
- denominator: the Mix-pos part ``sum exp(logit)`` is replaced by Q_i/K times the sampled sum, unbiased;
  but the loss takes its log, and E[log Z^] <= log E[Z^] = log Z (Jensen), so log-sum-exp, L_i and the loss
  are biased low, by about Var(Z^) / (2 Z^2): O(1/K), and small when the Mix-pos part is a small share of
  Z; so is the gradient. Every call draws afresh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._mix_pos import mix_pos_terms, mixture_inverse_norm
from ._utils import anchor_mean, prepare_contrast_batch
from .supcon import check_label_range, check_positive, masked_logsumexp, pair_masks, similarities

__all__ = ["SupReMixLoss", "REDUCTIONS"]

#: How the per-anchor losses become the loss (see :class:`SupReMixLoss`).
REDUCTIONS = ("anchor_mean", "label_balanced")

def _pair(value: Sequence[float], name: str, owner: str) -> tuple[float, float]:
    """``value`` as two finite floats, else ValueError."""
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{owner}: {name} must be a pair of finite numbers, got {value!r}.")
    return pair


class SupReMixLoss(nn.Module):
    """SupReMix loss: SupCon for regression with Mix-neg / Mix-pos mixtures and label-distance weights.

    Features are L2-normalised inside the loss (a no-op for unit vectors). Half-precision inputs and inputs
    produced under autocast are computed in float32; float64 stays float64. Under ``torch.distributed`` each
    rank's anchors contrast against (and mix) the rows gathered, with gradient, from all ranks; the mean of
    the ranks' values is the loss of the whole batch (see ``_utils``).

    Args:
        temperature: tau > 0 dividing the cosine similarities.
        window: gamma >= 0, the largest label distance (label units, inclusive) from the anchor of the two
            samples of a Mix-pos pair.
        beta: the two concentrations of the Beta distribution of the Mix-neg coefficient ``lam`` (the
            anchor's share of the mixture); (2, 8) gives mixtures mostly made of the negative.
        label_range: ``(low, high)`` of the labels; R = high - low normalises the distance weights
            (None: R = 1).
        mix_neg: add the Mix-neg mixtures (hard negatives) to the contrasts.
        mix_pos: add the Mix-pos mixtures (hard positives) to the positives and the contrasts.
        distance_weight: weight each denominator term by ``(1 + |y_i - y_c|) / R`` (False: all weights 1).
        normalize_mixtures: divide every mixture by its norm.
        detach_mixtures: mixtures are constants (no gradient through the rows mixed; the anchor's own side of
            each mixture logit keeps its gradient).
        label_tolerance: labels that differ by at most this much count as equal (0: exact equality); the
            Mix-pos and Mix-neg rows are those farther away.
        reduction: how the per-anchor losses L_i become the loss (module docstring):

            - ``"anchor_mean"`` (default): the mean of L_i over anchors with a positive (SupCon's form).
            - ``"label_balanced"``: the paper's Eq. 6, sum over label groups m of ``1 / k_m`` times the sum
              over the group's anchors of ``|P_i| L_i`` (the sum of the anchor's per-positive terms), divided
              by ``sum_m 1/k_m sum_{i in m} |P_i|`` so that it does not grow with the batch.
        max_mix_pos: K >= 1, estimate the Mix-pos terms of an anchor with more than K Mix-pos pairs from K
            pairs drawn uniformly (with replacement, torch's global RNG) among them (module docstring);
            None (default): every pair. Anchors with at most K pairs are computed exactly.

    With ``mix_neg=mix_pos=distance_weight=False`` and ``reduction="anchor_mean"`` the loss equals
    :class:`SupConLoss`.

    Raises:
        ValueError: on invalid arguments.

    Example::

        loss = SupReMixLoss(temperature=0.5, window=5.0, label_range=(40.0, 90.0))
        value = loss(torch.randn(16, 2, 128), 40 + 50 * torch.rand(16))
    """

    def __init__(self, temperature: float = 0.5, window: float = 5.0, beta: Sequence[float] = (2.0, 8.0),
                 label_range: Sequence[float] | None = None, mix_neg: bool = True, mix_pos: bool = True,
                 distance_weight: bool = True, normalize_mixtures: bool = True, detach_mixtures: bool = False,
                 label_tolerance: float = 0.0, reduction: str = "anchor_mean",
                 max_mix_pos: int | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", name)
        self.window = check_positive(window, "window", name, allow_zero=True)
        self.label_tolerance = check_positive(label_tolerance, "label_tolerance", name, allow_zero=True)
        self.beta = _pair(beta, "beta", name)
        if min(self.beta) <= 0:
            raise ValueError(f"{name}: beta must hold two finite Beta concentrations > 0, got {beta!r}.")
        self._log_range = 0.0  # log R
        if label_range is not None:
            low, high = check_label_range(label_range, name)
            self._log_range = math.log(high - low)
        self.label_range = label_range
        self.mix_neg = mix_neg
        self.mix_pos = mix_pos
        self.distance_weight = distance_weight
        self.normalize_mixtures = normalize_mixtures
        self.detach_mixtures = detach_mixtures
        if reduction not in REDUCTIONS:
            raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction
        if max_mix_pos is not None and (isinstance(max_mix_pos, bool) or not isinstance(max_mix_pos, int)
                                        or max_mix_pos < 1):
            raise ValueError(f"{name}: max_mix_pos must be None or an integer >= 1, got {max_mix_pos!r}.")
        self.max_mix_pos = max_mix_pos

    def _log_weight(self, distance: torch.Tensor) -> torch.Tensor | float:
        """``log w`` for label distances ``|y_i - y_c|`` (0 without distance weighting)."""
        if not self.distance_weight:
            return 0.0
        return torch.log1p(distance) - self._log_range

    def _mix_neg_lambda(self, given: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Check the given Mix-neg coefficients [N, M] or draw them from Beta(beta), shaped like ``like``."""
        if given is None:  # fills, not a host-to-device copy; beta was checked in __init__: no host sync
            first, second = (like.new_full((), value) for value in self.beta)
            return torch.distributions.Beta(first, second, validate_args=False).sample(like.shape)
        if not isinstance(given, torch.Tensor) or tuple(given.shape) != tuple(like.shape):
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            raise ValueError(f"{type(self).__name__}: mix_neg_lambda must be a tensor of shape "
                             f"[anchors, contrasts] = {tuple(like.shape)}, got {shape}.")
        if not ((given >= 0) & (given <= 1)).all():  # NaN fails both comparisons
            raise ValueError(f"{type(self).__name__}: mix_neg_lambda values must lie in [0, 1].")
        return given.to(dtype=like.dtype, device=like.device)

    def _mix_neg_lse(self, lam: torch.Tensor, mix_sim: torch.Tensor, norm_sim: torch.Tensor,
                     distance: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """Weighted log-sum-exp [N] over the Mix-neg mixtures ``lam z_i + (1 - lam) z_k`` of real negatives.

        Args:
            lam: [N, M] mixing coefficients.
            mix_sim: [N, M] ``<z_i, z_k>`` for the mixture side (constant rows when mixtures are detached).
            norm_sim: [N, M] ``<z_i, z_k>`` for the mixtures' norms.
            distance: [N, M] label distances ``|y_i - y_k|``.
            negative: [N, M] bool, the real negatives.
        """
        inner = lam + (1 - lam) * mix_sim
        if self.normalize_mixtures:
            inner = inner * mixture_inverse_norm(lam, norm_sim)
        return masked_logsumexp(inner / self.temperature + self._log_weight((1 - lam) * distance), negative)

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                mix_neg_lambda: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            features: [B, D] or [B, V, D] embeddings (V views; rows are flattened view-major, N = B * V).
            labels: [B] or [B, 1] real-valued labels.
            mix_neg_lambda: optional [N, M] Mix-neg coefficients ``lam[i, k]`` in [0, 1] for anchor ``i`` and
                contrast ``k`` (M = N on one process, the gathered row count when distributed; only entries
                of real negatives are used; ignored without ``mix_neg``). None draws them from Beta(beta)
                with torch's global RNG.

        Returns:
            0-dim float32 (float64 for float64 features): the per-anchor losses of the anchors with a
            positive (real or Mix-pos) reduced as ``reduction`` says; 0 (attached to the graph) when none
            has one.

        Raises:
            ValueError: on malformed or non-finite input or a malformed ``mix_neg_lambda``.
        """
        batch = prepare_contrast_batch(features, labels, type(self).__name__)
        with torch.autocast(device_type=batch.anchors.device.type, enabled=False):
            num_anchors = batch.anchors.shape[0]
            z, sim = similarities(batch.contrasts, batch.offset, num_anchors)
            mix_sim, norm_sim = sim, sim  # <z_i, row mixed> for mixture logits, and for mixture norms
            if self.detach_mixtures:  # the rows mixed are constants; the anchor's side keeps its gradient
                mix_sim = z[batch.offset:batch.offset + num_anchors] @ z.detach().T
                norm_sim = sim.detach()
            contrast, positive = pair_masks(batch.anchor_labels, batch.contrast_labels, batch.offset,
                                            self.label_tolerance)
            distance = (batch.contrast_labels[None, :] - batch.anchor_labels[:, None]).abs()
            logits = sim / self.temperature
            lse_parts = [masked_logsumexp(logits + self._log_weight(distance), contrast)]
            nonempty = [contrast.any(dim=1)]
            positive_total = torch.where(positive, logits, 0.0).sum(dim=1)
            num_positives = positive.sum(dim=1)
            if self.mix_neg:
                negative = contrast & ~positive
                lam = self._mix_neg_lambda(mix_neg_lambda, sim)
                lse_parts.append(self._mix_neg_lse(lam, mix_sim, norm_sim, distance, negative))
                nonempty.append(negative.any(dim=1))
            if self.mix_pos:
                mix_lse, mix_total, mix_count = mix_pos_terms(
                    mix_sim, z.detach() if self.detach_mixtures else z,
                    norm_sim if num_anchors == z.shape[0] else None,  # all rows' Gram matrix on one process
                    batch.anchor_labels, batch.contrast_labels, window=self.window,
                    label_tolerance=self.label_tolerance, temperature=self.temperature,
                    normalize=self.normalize_mixtures, max_pairs=self.max_mix_pos)
                lse_parts.append(mix_lse + self._log_weight(torch.zeros_like(mix_lse)))  # label y_i
                nonempty.append(mix_count > 0)
                positive_total = positive_total + mix_total
                num_positives = num_positives + mix_count
            lse = masked_logsumexp(torch.stack(lse_parts, dim=1), torch.stack(nonempty, dim=1))
            anchor_losses = lse - positive_total / num_positives.clamp_min(1)
            if self.reduction == "anchor_mean":
                return anchor_mean(anchor_losses, num_positives > 0)
            # Eq. 6: anchor i weighs |P_i| / k_m, k_m = the rows (all ranks) with its label, itself included
            group_size = positive.sum(dim=1) + 1
            return anchor_mean(anchor_losses, num_positives.to(lse.dtype) / group_size)
