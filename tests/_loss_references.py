"""Slow, obviously-correct references for SupCon and SupReMix, written straight from the equations.

Every mixture vector is built explicitly, every anchor is its own loop iteration and the denominator is a
plain sum of exponentials. Only for tests (tiny batches, float64), with :func:`make_batch` and
:func:`random_batch` for their inputs.
Notation as in DESIGN.md "The loss":

    L_i = -1/|P_i| * sum_{p in P_i} [ z_i.p / tau - log sum_{c in C_i} w(y_i, y_c) exp(z_i.c / tau) ]
"""

from __future__ import annotations

import torch


def make_batch(kind: str, views: int, seed: int = 0, batch: int = 6, dim: int = 5,
               dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [B, (V,) D] (requiring grad), labels [B] and Mix-neg coefficients [N, N], N = B * V.

    ``integer`` labels lie in 0..4 (many ties); ``continuous`` labels are uniform in [0, 4) with two ties
    made by construction.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, dim) if views == 1 else (batch, views, dim)
    features = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_(True)
    if kind == "integer":
        labels = torch.randint(0, 5, (batch,), generator=gen).to(dtype)
    else:
        labels = 4 * torch.rand(batch, generator=gen, dtype=dtype)
        labels[batch // 2], labels[-1] = labels[0], labels[1]
    lam = torch.rand(batch * views, batch * views, generator=gen, dtype=dtype)
    return features, labels, lam


def random_batch(batch: int, views: int, labels: str, *, dim: int, classes: int, scale: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 features [B, (V,) D] (requiring grad) and labels [B] drawn from ``generator``.

    ``integer`` labels lie in 0..classes-1 (many ties); ``continuous`` labels are uniform in [0, scale).
    """
    shape = (batch, dim) if views == 1 else (batch, views, dim)
    features = torch.randn(shape, generator=generator, dtype=torch.float64)
    if labels == "integer":
        y = torch.randint(0, classes, (batch,), generator=generator).double()
    else:
        y = torch.rand(batch, generator=generator, dtype=torch.float64) * scale
    return features.requires_grad_(), y


def flatten_views(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """[B, D] or [B, V, D] -> unit rows [V*B, D] (row v*B + b is view v of sample b) and their labels."""
    labels = labels.reshape(-1)
    if features.dim() == 2:
        features = features[:, None, :]
    views = features.shape[1]
    rows = torch.cat([features[:, v, :] for v in range(views)], dim=0)
    rows = rows / rows.norm(dim=1, keepdim=True)
    return rows, [float(y) for y in labels] * views


def mixtures(z: torch.Tensor, pairs: list[tuple[int, int, float]], normalize: bool, detach: bool,
             eps: float = 1e-6) -> torch.Tensor:
    """The vectors coef * z[j] + (1 - coef) * z[k] for each (j, k, coef) -> [len(pairs), D], optionally divided
    by their norms and/or cut from the graph."""
    if not pairs:
        return z[:0]
    first, second, coef = zip(*pairs)
    coef = torch.tensor(coef, dtype=z.dtype)[:, None]
    m = coef * z[list(first)] + (1 - coef) * z[list(second)]
    if normalize:
        m = m / m.norm(dim=1, keepdim=True).clamp_min(eps)
    return m.detach() if detach else m


def reference_supremix(features: torch.Tensor, labels: torch.Tensor, mix_neg_lambda: torch.Tensor | None,
                       temperature: float = 0.5, window: float = 5.0,
                       label_range: tuple[float, float] | None = None, mix_neg: bool = True,
                       mix_pos: bool = True, distance_weight: bool = True, normalize_mixtures: bool = True,
                       detach_mixtures: bool = False, label_tolerance: float = 0.0,
                       reduction: str = "anchor_mean") -> torch.Tensor:
    """SupReMix loss by materialising every contrast and positive of every anchor.

    ``anchor_mean``: the mean over anchors with a positive of the mean of their per-positive terms
    ``l_ip = -log(exp(z_i.p / tau) / denominator_i)``. ``label_balanced``: the paper's Eq. 6,
    ``sum_m 1/k_m sum_{i in m} sum_{p in P_i} l_ip`` with k_m the rows labelled like anchor i (itself
    included; within the tolerance), divided by ``sum_i |P_i| / k_m``.
    """
    z, y = flatten_views(features, labels)
    n = len(y)
    scale = 1.0 if label_range is None else label_range[1] - label_range[0]
    tol = label_tolerance

    def weights(y_anchor: float, y_contrasts: list[float]) -> torch.Tensor:
        if not distance_weight:
            return torch.ones(len(y_contrasts), dtype=z.dtype)
        return torch.tensor([(1 + abs(y_anchor - y_c)) / scale for y_c in y_contrasts], dtype=z.dtype)

    anchor_losses, eq6_terms, eq6_weights = [], [], []
    for i in range(n):
        real = [a for a in range(n) if a != i]
        real_positives = [a for a in real if abs(y[a] - y[i]) <= tol]
        neg_pairs, neg_labels, pos_pairs = [], [], []
        if mix_neg:
            for k in real:
                if abs(y[k] - y[i]) > tol:
                    lam = float(mix_neg_lambda[i, k])
                    neg_pairs.append((i, k, lam))
                    neg_labels.append(lam * y[i] + (1 - lam) * y[k])
        if mix_pos:
            for j in range(n):
                for k in range(n):
                    # y_j < y_i < y_k (beyond the tolerance), both within the window.
                    if -window <= y[j] - y[i] < -tol and tol < y[k] - y[i] <= window:
                        pos_pairs.append((j, k, (y[k] - y[i]) / (y[k] - y[j])))
        mix_neg_vectors = mixtures(z, neg_pairs, normalize_mixtures, detach_mixtures)
        mix_pos_vectors = mixtures(z, pos_pairs, normalize_mixtures, detach_mixtures)
        positives = torch.cat([z[real_positives], mix_pos_vectors])
        if len(positives) == 0:
            continue
        contrasts = torch.cat([z[real], mix_neg_vectors, mix_pos_vectors])
        contrast_weights = weights(y[i], [y[a] for a in real] + neg_labels + [y[i]] * len(pos_pairs))
        denominator = (contrast_weights * torch.exp(contrasts @ z[i] / temperature)).sum()
        positive_terms = -(positives @ z[i] / temperature - torch.log(denominator))  # l_ip, one per positive
        anchor_losses.append(positive_terms.mean())
        group_size = sum(1 for a in range(n) if abs(y[a] - y[i]) <= tol)  # k_m, anchor i included
        eq6_terms.append(positive_terms.sum() / group_size)
        eq6_weights.append(len(positives) / group_size)
    if not anchor_losses:
        return (features * 0).sum()
    if reduction == "label_balanced":
        return torch.stack(eq6_terms).sum() / sum(eq6_weights)
    return torch.stack(anchor_losses).mean()


def reference_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SupCon for regression labels: equal labels are positives, every other row is a contrast."""
    z, y = flatten_views(features, labels)
    n = len(y)
    anchor_losses = []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if y[p] == y[i]]
        if not positives:
            continue
        denominator = sum(torch.exp(z[i] @ z[a] / temperature) for a in others)
        terms = [z[i] @ z[p] / temperature - torch.log(denominator) for p in positives]
        anchor_losses.append(-sum(terms) / len(terms))
    if not anchor_losses:
        return (features * 0).sum()
    return sum(anchor_losses) / len(anchor_losses)
