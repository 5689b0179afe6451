# Frozen copy of supremix_med/losses/supremix.py at commit c7452d6 (before the issue-10 rewrite), kept verbatim
# except for absolute imports: the oracle the rewritten loss is checked against at large N (float64, CPU).
# Do not edit; it is the "today" of the comparison.
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
Mix-pos mixtures. The loss is the mean of L_i over anchors with |P_i| > 0.

Mixtures are never built. Inner products are bilinear, so for ``m = a z_j + (1 - a) z_k``
``<z_i, m> = a s_ij + (1 - a) s_ik`` and ``||m||^2 = a^2 + (1 - a)^2 + 2 a (1 - a) s_jk``: every mixture logit
comes from the Gram matrix. Mix-neg costs O(N M) for M contrast rows; Mix-pos visits, per anchor, only the
pairs inside its label window (O(N W^2) for W rows per window), in blocks of bounded size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from supremix_med.losses._utils import anchor_mean, prepare_contrast_batch
from supremix_med.losses.supcon import check_label_range, check_positive, masked_logsumexp, pair_masks, similarities

__all__ = ["SupReMixLoss"]

#: Smallest mixture norm a normalised mixture is divided by (the mixture of two opposite unit vectors
#: with equal coefficients is the zero vector).
MIXTURE_NORM_EPS = 1e-6
#: Mix-pos (anchor, pair) terms per block. Anchors go in blocks of similar labels, so padding every window
#: of a block to its largest stays cheap.
MIX_POS_BLOCK_PAIRS = 1 << 18
#: Beyond this many Mix-pos terms in all, blocks are recomputed in the backward pass (activation
#: checkpointing), so peak memory stays O(N M + MIX_POS_BLOCK_PAIRS) instead of O(N W^2).
MIX_POS_RECOMPUTE_PAIRS = 1 << 23


def _pair(value: Sequence[float], name: str, owner: str) -> tuple[float, float]:
    """``value`` as two finite floats, else ValueError."""
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        pair = ()
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{owner}: {name} must be a pair of finite numbers, got {value!r}.")
    return pair


def _mixture_norm(coef: torch.Tensor, cross_sim: torch.Tensor) -> torch.Tensor:
    """``||coef * u + (1 - coef) * v||`` for unit ``u, v`` with ``<u, v> = cross_sim``, clamped away from 0."""
    squared = coef**2 + (1 - coef) ** 2 + 2 * coef * (1 - coef) * cross_sim
    return squared.clamp_min(MIXTURE_NORM_EPS**2).sqrt()


def _mix_pos_block(sim: torch.Tensor, gram: torch.Tensor, anchor_labels: torch.Tensor,
                   contrast_labels: torch.Tensor, below_start: torch.Tensor, num_below: torch.Tensor,
                   above_start: torch.Tensor, num_above: torch.Tensor, temperature: float,
                   normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix-pos log-sum-exp and logit sum of a run of anchors sorted by label, each with at least one pair.

    Contrasts come sorted by label, so the rows an anchor mixes are two runs of columns: below its label
    ``below_start .. below_start + num_below - 1`` and above it ``above_start .. above_start + num_above - 1``.
    Anchors with equal labels share their windows, so the coefficients and norms of the mixtures are
    computed once per distinct label, on blocks padded to the largest window of the run.

    Args:
        sim: [n, M] similarities of the anchors to the label-sorted contrasts (the mixtures' side).
        gram: [M, M] similarities among the label-sorted contrasts (for the mixtures' norms).
        anchor_labels: [n] non-decreasing labels of the anchors.
        contrast_labels: [M] non-decreasing labels of the contrasts.
        below_start, num_below, above_start, num_above: [n] each anchor's two runs of columns.
        temperature: tau.
        normalize: divide each mixture by its norm.

    Returns:
        ``(lse, total)`` [n] each: log-sum-exp and sum of every anchor's Mix-pos logits.
    """
    labels, inverse, counts = torch.unique_consecutive(anchor_labels, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # one anchor per distinct label
    widest_low, widest_high = torch.stack((num_below.max(), num_above.max())).tolist()  # one sync
    steps_low = torch.arange(widest_low, device=sim.device)
    steps_high = torch.arange(widest_high, device=sim.device)
    last = contrast_labels.shape[0] - 1
    low = (below_start[first, None] + steps_low).clamp_max(last)  # [U, Wb] columns of the lower rows
    high = (above_start[first, None] + steps_high).clamp_max(last)  # [U, Wa] columns of the upper rows
    valid = (steps_low < num_below[first, None])[:, :, None] & (steps_high < num_above[first, None])[:, None, :]
    label_low, label_high = contrast_labels[low][:, :, None], contrast_labels[high][:, None, :]
    # m = a z_low + (1 - a) z_high with a = (y_high - y) / (y_high - y_low); padding gets a = 0.
    coef = torch.where(valid, (label_high - labels[:, None, None]) / (label_high - label_low), 0.0)
    scale = 1 / temperature
    if normalize:
        scale = scale / _mixture_norm(coef, gram[low[:, :, None], high[:, None, :]])
    coef_low = torch.where(valid, coef * scale, 0.0)  # [U, Wb, Wa] logit = s_low c_low + s_high c_high
    coef_high = torch.where(valid, (1 - coef) * scale, 0.0)
    sim_low, sim_high = sim.gather(1, low[inverse]), sim.gather(1, high[inverse])
    logits = sim_low[:, :, None] * coef_low[inverse] + sim_high[:, None, :] * coef_high[inverse]
    lse = torch.logsumexp(logits.masked_fill(~valid[inverse], float("-inf")).flatten(1), dim=1)
    total = (sim_low * coef_low.sum(2)[inverse]).sum(1) + (sim_high * coef_high.sum(1)[inverse]).sum(1)
    return lse, total


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

    With ``mix_neg=mix_pos=distance_weight=False`` the loss equals :class:`SupConLoss`.

    Raises:
        ValueError: on invalid arguments.

    Example::

        loss = SupReMixLoss(temperature=0.5, window=5.0, label_range=(40.0, 90.0))
        value = loss(torch.randn(16, 2, 128), 40 + 50 * torch.rand(16))
    """

    def __init__(self, temperature: float = 0.5, window: float = 5.0, beta: Sequence[float] = (2.0, 8.0),
                 label_range: Sequence[float] | None = None, mix_neg: bool = True, mix_pos: bool = True,
                 distance_weight: bool = True, normalize_mixtures: bool = True, detach_mixtures: bool = False,
                 label_tolerance: float = 0.0) -> None:
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

    def _log_weight(self, distance: torch.Tensor) -> torch.Tensor | float:
        """``log w`` for label distances ``|y_i - y_c|`` (0 without distance weighting)."""
        if not self.distance_weight:
            return 0.0
        return torch.log1p(distance) - self._log_range

    def _mix_neg_lambda(self, given: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Check the given Mix-neg coefficients [N, M] or draw them from Beta(beta), shaped like ``like``."""
        if given is None:
            concentration = torch.tensor(self.beta, dtype=like.dtype, device=like.device)
            return torch.distributions.Beta(concentration[0], concentration[1]).sample(like.shape)
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
            inner = inner / _mixture_norm(lam, norm_sim)
        return masked_logsumexp(inner / self.temperature + self._log_weight((1 - lam) * distance), negative)

    def _mix_pos_terms(self, sim: torch.Tensor, gram: torch.Tensor, anchor_labels: torch.Tensor,
                       contrast_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-anchor log-sum-exp (unweighted), sum and count of the Mix-pos logits, each [N].

        Args:
            sim: [N, M] anchor-contrast similarities (the mixtures' side).
            gram: [M, M] contrast-contrast similarities (for the mixtures' norms).
            anchor_labels: [N]; contrast_labels: [M].
        """
        order = torch.argsort(contrast_labels, stable=True)
        sorted_labels = contrast_labels[order]
        offsets = sorted_labels[None, :] - anchor_labels[:, None]  # non-decreasing along each row
        below_start = (offsets < -self.window).sum(1)
        num_below = ((offsets < -self.label_tolerance).sum(1) - below_start).clamp_min(0)
        above_start = (offsets <= self.label_tolerance).sum(1)
        num_above = ((offsets <= self.window).sum(1) - above_start).clamp_min(0)
        counts = num_below * num_above
        lse = total = torch.zeros_like(anchor_labels)
        anchors = torch.nonzero(counts).squeeze(1)
        if anchors.numel() == 0:
            return lse, total, counts
        anchors = anchors[torch.argsort(anchor_labels[anchors], stable=True)]
        pairs_before = torch.cumsum(counts[anchors], 0) - counts[anchors]
        sizes = torch.unique_consecutive(pairs_before // MIX_POS_BLOCK_PAIRS, return_counts=True)[1].tolist()
        recompute = torch.is_grad_enabled() and int(counts.sum()) > MIX_POS_RECOMPUTE_PAIRS
        per_anchor = (sim[anchors][:, order], anchor_labels[anchors], below_start[anchors], num_below[anchors],
                      above_start[anchors], num_above[anchors])
        gram = gram[order][:, order]
        parts = []
        for rows, labels, *windows in zip(*(t.split(sizes) for t in per_anchor)):
            args = (rows, gram, labels, sorted_labels, *windows, self.temperature, self.normalize_mixtures)
            parts.append(checkpoint(_mix_pos_block, *args, use_reentrant=False) if recompute
                         else _mix_pos_block(*args))
        block_lse, block_total = (torch.cat(p) for p in zip(*parts))
        return lse.index_put((anchors,), block_lse), total.index_put((anchors,), block_total), counts

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
            0-dim float32 (float64 for float64 features) mean of the per-anchor losses over anchors with a
            positive (real or Mix-pos); 0 (attached to the graph) when none has.

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
                gram = z @ z.T if num_anchors != z.shape[0] else sim  # [M, M]: all ranks' rows
                gram = gram.detach() if self.detach_mixtures else gram
                mix_lse, mix_total, mix_count = self._mix_pos_terms(mix_sim, gram, batch.anchor_labels,
                                                                    batch.contrast_labels)
                lse_parts.append(mix_lse + self._log_weight(torch.zeros_like(mix_lse)))  # label y_i
                nonempty.append(mix_count > 0)
                positive_total = positive_total + mix_total
                num_positives = num_positives + mix_count
            lse = masked_logsumexp(torch.stack(lse_parts, dim=1), torch.stack(nonempty, dim=1))
            anchor_losses = lse - positive_total / num_positives.clamp_min(1)
            return anchor_mean(anchor_losses, num_positives > 0)
