"""SupReMix's Mix-pos terms at scale: per anchor, the log-sum-exp, sum and count of its Mix-pos logits.

For an anchor ``i`` with label ``y`` the Mix-pos mixtures mix a row ``j`` below it
(``y - window <= y_j < y - tol``) with a row ``k`` above it (``y + tol < y_k <= y + window``):
``m = a z_j + (1 - a) z_k`` with ``a = (y_k - y) / (y_k - y_j)``. Its logit is ``<z_i, m> / tau`` (divided by
``||m||`` when mixtures are normalised), i.e. ``c_low s_ij + c_high s_ik``: the coefficients ``c`` depend
only on the anchor's label and on ``(j, k)``, the similarities ``s`` only on the anchor and on ``j`` or ``k``.

Layout. With the contrasts sorted by label, an anchor's ``j`` and ``k`` are two runs of sorted columns (its
*windows*, ``Wb`` and ``Wa`` rows long), the same for every anchor with that label (a *group*). A group's
anchors go in *chunks* of ``g`` anchors (the last chunk padded by repeating an anchor); a chunk's logits
[g, Wb, Wa] are a broadcast product of its anchors' similarities [g, Wb] and [g, Wa] with the group's
coefficients [Wb, Wa], so coefficients are computed once per group and copied once per chunk, never per
anchor. Chunks, in label order, go in *blocks* padded to the block's widest windows; padded entries get a
huge negative logit (so ``exp`` of them is exactly 0) instead of a mask. A block grows while adding the
next chunk pads less than a new block would cost (MIX_POS_BLOCK_OVERHEAD terms' worth of work per device).
The mixtures' norms need ``<z_j, z_k>``: a batched product of the group's rows, O(U Wb Wa D) per block.

Synchronisation. The sizes of everything come from one device-to-host transfer (three integers per
anchor: does its label start a group, and its two window lengths). The host plans chunks and blocks with
numpy and sends the plan back in one copy (pinned and non-blocking on CUDA); from there on the blocks run
without waiting for the device.

Block sizing. A block holds at most ``block_terms`` padded (anchor, pair) terms: MIX_POS_BLOCK_PAIRS on the
CPU; on CUDA MIX_POS_CUDA_MEMORY_FRACTION of the memory available when the loss runs (free device memory
plus what PyTorch's caching allocator holds unused), capped at MIX_POS_CUDA_MEMORY_CAP bytes, divided by
the bytes of the MIX_POS_BLOCK_TENSORS term-sized tensors alive at a block's peak. Each block keeps its
logits (one term-sized tensor) for the backward pass; when all blocks' logits would exceed the budget
(CPU: MIX_POS_RECOMPUTE_PAIRS terms; CUDA: the budget's bytes) blocks are recomputed in the backward pass
instead (activation checkpointing), so peak memory stays about one block beyond the O(N M) of the rest.

Sampling (``max_pairs = K``). An anchor with more than K pairs gets K pairs drawn independently and
uniformly (with replacement) from its ``Q`` pairs: a uniform pair of a rectangle of rows x columns is a
uniform row and an independent uniform column. Its sum of logits is ``Q / K`` times the sampled sum and its
log-sum-exp ``log(Q / K)`` plus the sampled one (Horvitz-Thompson), and its count stays ``Q``: the sum, and
the sum of exponentials (the Mix-pos part of the denominator), are unbiased estimates of the full ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["mix_pos_terms", "mix_pos_coefficients", "mixture_inverse_norm", "draw_mix_pos_pairs", "plan_mix_pos",
           "MixPosPlan"]

#: Smallest mixture norm a normalised mixture is divided by (the mixture of two opposite unit vectors
#: with equal coefficients is the zero vector).
MIXTURE_NORM_EPS = 1e-6
#: CPU: padded (anchor, pair) terms per block.
MIX_POS_BLOCK_PAIRS = 1 << 18
#: CPU: beyond this many padded terms in all, blocks are recomputed in the backward pass.
MIX_POS_RECOMPUTE_PAIRS = 1 << 23
#: CUDA: share of the available device memory (free + cached unused) the Mix-pos blocks may use.
MIX_POS_CUDA_MEMORY_FRACTION = 0.5
#: CUDA: upper bound of that budget, in bytes: on a large device the Mix-pos blocks' peak stays near it.
MIX_POS_CUDA_MEMORY_CAP = 8 << 30
#: Term-sized tensors alive at once at a block's peak (its logits, their gradient, two temporaries).
MIX_POS_BLOCK_TENSORS = 4
#: What one more block costs, in padded terms' worth of work: its ~60 more operators take about 0.5 ms of a
#: CPU core (~30 k terms at ~16 ns each) and about 0.3 ms of kernel launches on a GPU (~10 M terms at the
#: memory bandwidth of an H100). A block grows while that is cheaper than starting a new one.
MIX_POS_BLOCK_OVERHEAD = {"cpu": 1 << 15, "cuda": 1 << 23}
#: Cost of copying a chunk's coefficients (forward and backward), in anchors' worth of terms.
MIX_POS_CHUNK_COST = 0.5


@dataclass
class Block:
    """A run of chunks computed together: chunks ``[chunks[0], chunks[1])`` of groups ``[groups[0], groups[1])``,
    padded to ``below`` x ``above`` pairs."""

    chunks: tuple[int, int]
    groups: tuple[int, int]
    below: int
    above: int


@dataclass
class MixPosPlan:
    """Host-side plan of the Mix-pos computation (positions are in the label-sorted order of the anchors).

    Attributes:
        chunk_size: g, anchors per chunk.
        group_first: [G] position of the first anchor of every group computed exactly.
        chunk_group: [C] group of every chunk (C >= G).
        slots: [C * g] position of the anchor in every chunk slot (padding slots repeat an anchor).
        sampled: [S] positions of the anchors whose pairs are sampled.
        source: [N] for every anchor, its value's index in ``(slot values, sampled values, 0)``.
        blocks: the blocks, covering the chunks in order.
        padded_terms: padded (anchor, pair) terms of all blocks.
    """

    chunk_size: int
    group_first: np.ndarray
    chunk_group: np.ndarray
    slots: np.ndarray
    sampled: np.ndarray
    source: np.ndarray
    blocks: list[Block]
    padded_terms: int


def _chunk_size(sizes: np.ndarray, pairs: np.ndarray, block_terms: int) -> int:
    """Anchors per chunk minimising padded terms plus chunk copies; a chunk fits a block when it can.

    Args:
        sizes: [G] anchors per group; pairs: [G] Mix-pos pairs per anchor of the group.
        block_terms: padded terms per block.
    """
    if sizes.size == 0:
        return 1
    limit = max(1, min(int(sizes.max()), block_terms // int(pairs.max())))
    candidates = np.unique(np.minimum(limit, 1 << np.arange(limit.bit_length() + 1)))  # 1, 2, 4, ..., limit
    chunks = -(-sizes[None, :] // candidates[:, None])  # [candidates, G]
    cost = (chunks * (candidates[:, None] + MIX_POS_CHUNK_COST) * pairs[None, :]).sum(1)
    return int(candidates[np.argmin(cost)])


def _blocks(chunk_group: np.ndarray, below: np.ndarray, above: np.ndarray, chunk_size: int, block_terms: int,
            block_overhead: int) -> list[Block]:
    """Greedy runs of chunks within ``block_terms`` padded terms. A chunk joins the current block unless the
    block's padded terms would grow by more than the chunk alone plus ``block_overhead`` would cost.

    Args:
        chunk_group: [C] group of each chunk.
        below, above: [G] window lengths of each group.
    """
    groups, below, above = chunk_group.tolist(), below.tolist(), above.tolist()
    blocks, start, widest_below, widest_above = [], 0, 0, 0
    for chunk, group in enumerate(groups):
        new_below, new_above = max(widest_below, below[group]), max(widest_above, above[group])
        padded = (chunk - start + 1) * chunk_size * new_below * new_above
        growth = padded - (chunk - start) * chunk_size * widest_below * widest_above
        alone = chunk_size * below[group] * above[group] + block_overhead
        if chunk > start and (padded > block_terms or growth > alone):
            blocks.append(Block((start, chunk), (groups[start], groups[chunk - 1] + 1), widest_below, widest_above))
            start, new_below, new_above = chunk, below[group], above[group]
        widest_below, widest_above = new_below, new_above
    if groups:
        blocks.append(Block((start, len(groups)), (groups[start], groups[-1] + 1), widest_below, widest_above))
    return blocks


def plan_mix_pos(new_label: np.ndarray, num_below: np.ndarray, num_above: np.ndarray, block_terms: int,
                 block_overhead: int = 0, max_pairs: int | None = None) -> MixPosPlan:
    """Plan chunks, blocks and sampled anchors from the label-sorted anchors' windows.

    Args:
        new_label: [N] bool, the anchor's label differs from the previous anchor's (True for the first).
        num_below, num_above: [N] lengths of each anchor's windows (pairs = their product).
        block_terms: padded (anchor, pair) terms per block.
        block_overhead: the cost of one more block, in padded terms (see :func:`_blocks`).
        max_pairs: anchors with more pairs than this are sampled (None: none is).
    """
    num = new_label.shape[0]
    all_first = np.flatnonzero(new_label)
    all_size = np.diff(all_first, append=num)
    pairs = num_below[all_first] * num_above[all_first]
    sampled_group = pairs > max_pairs if max_pairs is not None else np.zeros(all_first.shape, dtype=bool)
    exact = (pairs > 0) & ~sampled_group
    first, size = all_first[exact], all_size[exact]
    below, above = num_below[first], num_above[first]
    chunk_size = _chunk_size(size, below * above, block_terms)
    per_group = -(-size // chunk_size)
    chunk_group = np.repeat(np.arange(first.size), per_group)
    rank = np.arange(chunk_group.size) - np.repeat(np.cumsum(per_group) - per_group, per_group)
    offset = rank[:, None] * chunk_size + np.arange(chunk_size)  # [C, g] anchor's rank in its group
    group_size = size[chunk_group][:, None]
    real_slot = offset < group_size
    slots = (first[chunk_group][:, None] + np.minimum(offset, group_size - 1)).ravel()
    sampled = np.flatnonzero(np.repeat(sampled_group, all_size))
    source = np.full(num, slots.size + sampled.size)
    source[slots[real_slot.ravel()]] = np.flatnonzero(real_slot.ravel())
    source[sampled] = slots.size + np.arange(sampled.size)
    blocks = _blocks(chunk_group, below, above, chunk_size, block_terms, block_overhead)
    padded = sum((b.chunks[1] - b.chunks[0]) * chunk_size * b.below * b.above for b in blocks)
    return MixPosPlan(chunk_size, first, chunk_group, slots, sampled, source, blocks, padded)


def _memory_budget(device: torch.device, itemsize: int) -> tuple[int, int]:
    """(padded terms per block, padded terms whose logits may be kept for the backward pass)."""
    if device.type != "cuda":
        return MIX_POS_BLOCK_PAIRS, MIX_POS_RECOMPUTE_PAIRS
    free, _ = torch.cuda.mem_get_info(device)
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    budget = min(MIX_POS_CUDA_MEMORY_FRACTION * (free + unused), MIX_POS_CUDA_MEMORY_CAP)
    return max(1, int(budget // (itemsize * MIX_POS_BLOCK_TENSORS))), int(budget // itemsize)


def _to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """Int64 host arrays as device tensors, in one copy (pinned and non-blocking on CUDA: no sync)."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays]))
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    return list(flat.to(device).split([np.asarray(a).size for a in arrays]))


def mixture_inverse_norm(share: torch.Tensor, cross_sim: torch.Tensor) -> torch.Tensor:
    """``1 / ||share u + (1 - share) v||`` for unit ``u, v`` with ``<u, v> = cross_sim``, the norm clamped away
    from 0: ``||.||^2 = 1 - 2 share (1 - share) (1 - cross_sim)``. ``share = 0`` (or 1) gives 1."""
    squared = 1 - 2 * share * (1 - share) * (1 - cross_sim)
    return squared.clamp_min(MIXTURE_NORM_EPS**2).rsqrt()


def mix_pos_coefficients(label: torch.Tensor, label_low: torch.Tensor, label_high: torch.Tensor,
                         cross_sim: torch.Tensor | None, valid: torch.Tensor | None,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients ``(c_low, c_high)`` of the logit ``c_low s_low + c_high s_high`` of Mix-pos mixtures.

    All arguments broadcast to the shape of the result; ``valid`` entries (None: all) get the mixture of the
    rows labelled ``label_low`` and ``label_high`` whose label interpolates to ``label``, the others 0.

    Args:
        label: the anchors' labels.
        label_low, label_high: labels of the rows mixed (below and above ``label``).
        cross_sim: ``<z_low, z_high>`` of the rows mixed, to normalise the mixtures (None: not normalised).
        valid: which entries are real pairs (None: all).
        temperature: tau.
    """
    share = (label_high - label) / (label_high - label_low)  # the lower row's share a
    low, high = share, 1 - share
    if valid is not None:  # labels carry no gradient: padding never reaches the backward pass
        low, high = torch.where(valid, low, 0.0), torch.where(valid, high, 0.0)
    if cross_sim is None:
        return low / temperature, high / temperature
    scale = mixture_inverse_norm(low, cross_sim) / temperature
    return low * scale, high * scale


def _mix_pos_block(sim_low: torch.Tensor, sim_high: torch.Tensor, norm_z: torch.Tensor | None,
                   rows_low: torch.Tensor, rows_high: torch.Tensor, chunk_group: torch.Tensor,
                   labels: torch.Tensor, label_low: torch.Tensor, label_high: torch.Tensor,
                   low_pad: torch.Tensor, high_pad: torch.Tensor, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix-pos log-sum-exp and logit sum of every slot of a block of C chunks of g anchors over U groups.

    Args:
        sim_low: [C, g, Wb] similarities of each slot's anchor to its group's lower rows; sim_high: [C, g, Wa]
            to its upper rows; 1 at padding rows.
        norm_z: [M, D] unit rows, for the mixtures' norms (None: mixtures are not normalised).
        rows_low: [U, Wb], rows_high: [U, Wa] the groups' lower and upper rows (indices into ``norm_z``).
        chunk_group: [C] each chunk's group (0 .. U - 1).
        labels: [U] the groups' labels; label_low: [U, Wb], label_high: [U, Wa] those of their rows.
        low_pad: [U, Wb], high_pad: [U, Wa] 0 at real rows, a huge negative number at padding rows.
        temperature: tau.

    Returns:
        ``(lse, total)``, each [C * g].
    """
    valid = (low_pad == 0)[:, :, None] & (high_pad == 0)[:, None, :]
    cross_sim = None
    if norm_z is not None:  # index_select: its backward is an index_add (no sort, unlike indexing's)
        z_low = norm_z.index_select(0, rows_low.flatten()).view(*rows_low.shape, -1)
        z_high = norm_z.index_select(0, rows_high.flatten()).view(*rows_high.shape, -1)
        cross_sim = torch.bmm(z_low, z_high.transpose(1, 2))
    coef_low, coef_high = mix_pos_coefficients(labels[:, None, None], label_low[:, :, None],
                                               label_high[:, None, :], cross_sim, valid, temperature)
    total = (torch.bmm(sim_low, coef_low.sum(2).index_select(0, chunk_group)[:, :, None])
             + torch.bmm(sim_high, coef_high.sum(1).index_select(0, chunk_group)[:, :, None]))
    # Padding: a padded row j has s_low = 1 and c_low = pad (c_high = 0), a padded column k has s_high = 1
    # and c_high = pad (c_low = 0): the logit is pad or 2 pad, and exp(logit - lse) is exactly 0.
    coef_low = (coef_low + low_pad[:, :, None]).index_select(0, chunk_group)[:, None]
    coef_high = (coef_high + high_pad[:, None, :]).index_select(0, chunk_group)[:, None]
    logits = (sim_high[:, :, None, :] * coef_high).addcmul_(sim_low[:, :, :, None], coef_low)  # [C, g, Wb, Wa]
    return torch.logsumexp(logits, dim=(2, 3)).flatten(), total.flatten()


def draw_mix_pos_pairs(num_below: torch.Tensor, num_above: torch.Tensor, draws: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform pairs of each anchor's windows, drawn independently with replacement.

    Args:
        num_below, num_above: [S] window lengths (each >= 1).
        draws: K, pairs per anchor.
        generator: random generator (None: torch's global one for the device).

    Returns:
        ``(low, high)`` [S, K] offsets into the windows: ``low`` uniform in ``0 .. num_below - 1`` and
        ``high`` independently uniform in ``0 .. num_above - 1``, i.e. a uniform pair of the rectangle.
    """
    uniform = torch.rand((2, num_below.shape[0], draws), dtype=torch.float64, device=num_below.device,
                         generator=generator)  # float64: floor(u * n) is uniform to within n / 2**53
    low = (uniform[0] * num_below[:, None]).long().clamp_max(num_below[:, None] - 1)
    high = (uniform[1] * num_above[:, None]).long().clamp_max(num_above[:, None] - 1)
    return low, high


@dataclass
class _Windows:
    """Label-sorted anchors and their windows among the label-sorted contrasts, each [N] (on the device)."""

    order: torch.Tensor  # anchor indices in label order
    labels: torch.Tensor
    below_start: torch.Tensor
    num_below: torch.Tensor
    above_start: torch.Tensor
    num_above: torch.Tensor

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(label, below_start, num_below, above_start, num_above) at label-sorted ``positions``."""
        return tuple(t[positions] for t in (self.labels, self.below_start, self.num_below, self.above_start,
                                            self.num_above))


def _windows(anchor_labels: torch.Tensor, sorted_labels: torch.Tensor, window: float,
             tolerance: float) -> _Windows:
    """Each anchor's windows: sorted contrasts ``y_a - y`` in ``[-window, -tol)`` and ``(tol, window]``."""
    order = torch.argsort(anchor_labels, stable=True)
    labels = anchor_labels[order]
    offsets = sorted_labels[None, :] - labels[:, None]  # [N, M], non-decreasing along each row
    below_start = (offsets < -window).sum(1)
    num_below = ((offsets < -tolerance).sum(1) - below_start).clamp_min(0)
    above_start = (offsets <= tolerance).sum(1)
    num_above = ((offsets <= window).sum(1) - above_start).clamp_min(0)
    return _Windows(order, labels, below_start, num_below, above_start, num_above)


def _exact_terms(plan: MixPosPlan, windows: _Windows, group_first: torch.Tensor, chunk_group: torch.Tensor,
                 slots: torch.Tensor, mix_sim: torch.Tensor, norm_z: torch.Tensor | None, order: torch.Tensor,
                 sorted_labels: torch.Tensor, temperature: float, recompute: bool) -> list[torch.Tensor]:
    """Log-sum-exps and sums [C * g] of every chunk slot, block by block (see the module docstring).

    The index bookkeeping is done once for all groups, padded to the widest windows of all (G x W values),
    and every block takes views of it; the similarities are gathered once (one scatter in backward).
    """
    if not plan.blocks:
        return [mix_sim.new_zeros(0)] * 2
    num_contrasts = mix_sim.shape[1]
    labels, below_start, num_below, above_start, num_above = windows.at(group_first)
    widest_below = max(b.below for b in plan.blocks)
    widest_above = max(b.above for b in plan.blocks)
    low = (below_start[:, None] + torch.arange(widest_below, device=mix_sim.device))  # [G, Wb] sorted positions
    high = (above_start[:, None] + torch.arange(widest_above, device=mix_sim.device))
    pad = torch.finfo(mix_sim.dtype).min / 8
    low_pad = (low >= (below_start + num_below)[:, None]).to(mix_sim.dtype) * pad  # 0 at real rows
    high_pad = (high >= (above_start + num_above)[:, None]).to(mix_sim.dtype) * pad
    low, high = low.clamp_max(num_contrasts - 1), high.clamp_max(num_contrasts - 1)
    rows_low, rows_high = order[low], order[high]
    slot_rows = windows.order[slots].view(-1, plan.chunk_size, 1) * num_contrasts  # [C, g, 1]
    flat = mix_sim.reshape(-1)
    sims_low = flat[slot_rows + rows_low[chunk_group][:, None]].masked_fill(low_pad[chunk_group][:, None] != 0, 1.0)
    sims_high = flat[slot_rows + rows_high[chunk_group][:, None]].masked_fill(high_pad[chunk_group][:, None] != 0,
                                                                               1.0)
    chunks = [b.chunks[1] - b.chunks[0] for b in plan.blocks]
    parts = []
    for block, sim_low, sim_high in zip(plan.blocks, sims_low.split(chunks), sims_high.split(chunks)):
        (g0, g1), (c0, c1), wb, wa = block.groups, block.chunks, block.below, block.above
        args = (sim_low[:, :, :wb], sim_high[:, :, :wa], norm_z, rows_low[g0:g1, :wb], rows_high[g0:g1, :wa],
                chunk_group[c0:c1] - g0, labels[g0:g1], sorted_labels[low[g0:g1, :wb]],
                sorted_labels[high[g0:g1, :wa]], low_pad[g0:g1, :wb], high_pad[g0:g1, :wa], temperature)
        if recompute:  # the block draws nothing random: no RNG state to keep
            parts.append(checkpoint(_mix_pos_block, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            parts.append(_mix_pos_block(*args))
    return [torch.cat(p) for p in zip(*parts)]


def _sampled_terms(positions: torch.Tensor, windows: _Windows, draws: int, mix_sim: torch.Tensor,
                   norm_gram: torch.Tensor | None, order: torch.Tensor, sorted_labels: torch.Tensor,
                   temperature: float) -> list[torch.Tensor]:
    """Estimated log-sum-exps and sums [S] of the anchors at label-sorted ``positions`` from ``draws`` pairs."""
    labels, below_start, num_below, above_start, num_above = windows.at(positions)
    low_offset, high_offset = draw_mix_pos_pairs(num_below, num_above, draws)
    low, high = below_start[:, None] + low_offset, above_start[:, None] + high_offset
    rows_low, rows_high = order[low], order[high]
    anchors = windows.order[positions][:, None]
    cross_sim = norm_gram[rows_low, rows_high] if norm_gram is not None else None
    coef_low, coef_high = mix_pos_coefficients(labels[:, None], sorted_labels[low], sorted_labels[high],
                                               cross_sim, None, temperature)
    logits = mix_sim[anchors, rows_low] * coef_low + mix_sim[anchors, rows_high] * coef_high  # [S, K]
    scale = (num_below * num_above).to(logits.dtype) / draws  # Q / K
    return [torch.logsumexp(logits, dim=1) + scale.log(), logits.sum(1) * scale]


def mix_pos_terms(mix_sim: torch.Tensor, norm_z: torch.Tensor, norm_gram: torch.Tensor | None,
                  anchor_labels: torch.Tensor, contrast_labels: torch.Tensor, *, window: float,
                  label_tolerance: float, temperature: float, normalize: bool, max_pairs: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-anchor log-sum-exp (unweighted), sum and count of the Mix-pos logits, each [N].

    Args:
        mix_sim: [N, M] anchor-contrast similarities (the mixtures' side).
        norm_z: [M, D] unit contrast rows, for the mixtures' norms.
        norm_gram: [M, M] ``norm_z @ norm_z.T`` when already at hand (one process), else None (built when
            sampling needs it).
        anchor_labels: [N]; contrast_labels: [M].
        window, label_tolerance, temperature: as in :class:`SupReMixLoss`.
        normalize: divide each mixture by its norm.
        max_pairs: K, sample K pairs for anchors with more (None: every pair of every anchor).

    Returns:
        ``(lse, total, count)``: count [N] long is the number of Mix-pos pairs (all of them, sampled or not);
        lse and total are 0 where count is 0 (for sampled anchors they are the estimates described in the
        module docstring).
    """
    order = torch.argsort(contrast_labels, stable=True)
    sorted_labels = contrast_labels[order]
    windows = _windows(anchor_labels, sorted_labels, window, label_tolerance)
    pairs = windows.num_below * windows.num_above
    count = torch.empty_like(pairs).index_put_((windows.order,), pairs)
    new_label = torch.ones_like(windows.labels, dtype=torch.bool)
    new_label[1:] = windows.labels[1:] != windows.labels[:-1]
    host = torch.stack((new_label.long(), windows.num_below, windows.num_above)).cpu().numpy()  # the one sync
    block_terms, keep_terms = _memory_budget(mix_sim.device, mix_sim.element_size())
    overhead = MIX_POS_BLOCK_OVERHEAD["cuda" if mix_sim.device.type == "cuda" else "cpu"]
    plan = plan_mix_pos(host[0].astype(bool), host[1], host[2], block_terms, overhead, max_pairs)
    group_first, chunk_group, slots, sampled, source = _to_device(
        mix_sim.device, plan.group_first, plan.chunk_group, plan.slots, plan.sampled, plan.source)
    recompute = torch.is_grad_enabled() and plan.padded_terms > keep_terms
    exact = _exact_terms(plan, windows, group_first, chunk_group, slots, mix_sim, norm_z if normalize else None,
                         order, sorted_labels, temperature, recompute)
    if plan.sampled.size:
        if normalize and norm_gram is None:
            norm_gram = norm_z @ norm_z.T
        drawn = _sampled_terms(sampled, windows, max_pairs, mix_sim, norm_gram if normalize else None, order,
                               sorted_labels, temperature)
    else:
        drawn = [mix_sim.new_zeros(0)] * 2
    anchor_source = torch.empty_like(source).index_put_((windows.order,), source)
    zero = mix_sim.new_zeros(1)
    lse, total = (torch.cat((e, d, zero))[anchor_source] for e, d in zip(exact, drawn))
    return lse, total, count
