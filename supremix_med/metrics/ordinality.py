"""Ordinality of a representation: do feature distances follow label distances? Plus its 2-D picture.

The score is the Spearman correlation, over pairs of samples (i, j), between the distance of their features
``d(f_i, f_j)`` and the distance of their labels ``|y_i - y_j|`` (Euclidean over targets when there are
several). 1 means the features keep the labels' order of distances exactly, 0 means they ignore it. It makes
the claim of contrastive regression methods (continuous, ordered representations) measurable on any set.

Pairs: all ``N (N - 1) / 2`` distinct pairs when that is at most ``max_pairs``; otherwise ``max_pairs`` pairs
drawn uniformly at random with replacement from the distinct pairs (i uniform, j uniform among the others) by
``numpy.random.default_rng(seed)``. The sampling adds an error of order ``1 / sqrt(max_pairs)`` (about 0.002
at the default 200,000) to the score of the N samples, well below differences worth reporting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .regression import as_vector, spearman_rho

__all__ = ["ordinality_pairs", "pair_indices", "ordinality_spearman", "embed_2d", "EMBEDDINGS", "MAX_PAIRS"]

#: Default cap on the number of pairs scored.
MAX_PAIRS = 200_000
#: Choices of :func:`embed_2d`.
EMBEDDINGS = ("pca", "umap", "auto")
#: Pairs whose feature differences are held at once (memory: this many x F floats).
_PAIR_BLOCK = 8192


def ordinality_pairs(n: int, max_pairs: int = MAX_PAIRS) -> int:
    """How many pairs :func:`ordinality_spearman` scores for ``n`` samples: ``min(n (n - 1) / 2, max_pairs)``."""
    return min(n * (n - 1) // 2, max_pairs)


def pair_indices(n: int, max_pairs: int = MAX_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The pairs scored for ``n`` samples (see the module docstring): two int64 arrays [P] with ``i != j``."""
    if n < 2:
        raise ValueError(f"ordinality needs at least 2 samples, got {n}.")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}.")
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return i.astype(np.int64), j.astype(np.int64)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    return i, j + (j >= i)  # j uniform over the n - 1 samples other than i


def _as_matrix(values: Any, name: str) -> np.ndarray:
    """[N] or [N, D] (numpy / torch / sequence) -> float64 [N, D]."""
    try:
        return as_vector(values, name)[:, None]
    except ValueError:
        if hasattr(values, "detach"):  # a torch tensor, of any dtype numpy may not read (bfloat16)
            values = values.detach().cpu().double()
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2:
            raise ValueError(f"{name} must have shape [N] or [N, D], got {array.shape}.") from None
        return array


def _pair_distances(x: np.ndarray, i: np.ndarray, j: np.ndarray, distance: str) -> np.ndarray:
    """Distances of rows ``x[i]`` and ``x[j]``: [P], computed in blocks of pairs."""
    if distance == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    out = np.empty(i.size)
    for start in range(0, i.size, _PAIR_BLOCK):
        a, b = x[i[start:start + _PAIR_BLOCK]], x[j[start:start + _PAIR_BLOCK]]
        if distance == "cosine":
            out[start:start + _PAIR_BLOCK] = 1.0 - np.einsum("pd,pd->p", a, b)
        else:
            out[start:start + _PAIR_BLOCK] = np.linalg.norm(a - b, axis=1)
    return out


def ordinality_spearman(features: Any, labels: Any, max_pairs: int = MAX_PAIRS, seed: int = 0,
                        distance: str = "euclidean") -> float:
    """Spearman correlation between pairwise feature distance and pairwise label distance.

    Args:
        features: [N, F] (or [N]) features, e.g. an encoder's outputs.
        labels: [N] or [N, T] labels (T targets: Euclidean label distance).
        max_pairs: cap on the number of pairs (see the module docstring for how they are drawn).
        seed: seeds the pair sampling (used only when pairs are sampled).
        distance: ``"euclidean"`` or ``"cosine"`` (1 - cosine similarity) between feature vectors.

    Returns:
        The correlation in [-1, 1]; nan when every pair has the same feature distance or the same label distance
        (e.g. all labels equal), or when the inputs hold NaN.

    Raises:
        ValueError: fewer than 2 samples, ``features`` and ``labels`` of different lengths, an unknown
            ``distance``, or a bad shape.
    """
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}.")
    x, y = _as_matrix(features, "features"), _as_matrix(labels, "labels")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features and labels must describe the same samples, got {x.shape[0]} and {y.shape[0]}.")
    i, j = pair_indices(x.shape[0], max_pairs, seed)
    return spearman_rho(_pair_distances(x, i, j, distance), _pair_distances(y, i, j, "euclidean"))


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def embed_2d(features: Any, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D embedding of features [N, F] for plotting: ``(coordinates [N, 2], method used)``.

    Args:
        features: [N, F] (or [N]) features, N >= 2.
        method: ``"pca"`` (``sklearn.decomposition.PCA``, the default: deterministic and fast), ``"umap"``
            (``umap.UMAP``; needs the ``umap-learn`` package) or ``"auto"`` (UMAP when ``umap-learn`` is
            installed, else PCA).
        seed: ``random_state`` of the embedding.

    With a single feature (F = 1) the second coordinate is 0.
    """
    if method not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {method!r}.")
    x = _as_matrix(features, "features")
    if x.shape[0] < 2:
        raise ValueError(f"a 2-D embedding needs at least 2 samples, got {x.shape[0]}.")
    if method == "auto":
        method = "umap" if _umap_available() else "pca"
    if method == "umap":
        if not _umap_available():
            raise ImportError("embedding 'umap' needs the umap-learn package (pip install umap-learn); "
                              "use 'pca' or 'auto'.")
        import umap

        neighbours = min(15, x.shape[0] - 1)
        return umap.UMAP(n_components=2, n_neighbors=max(2, neighbours), random_state=seed).fit_transform(x), "umap"
    from sklearn.decomposition import PCA

    components = min(2, x.shape[1], x.shape[0])
    coordinates = PCA(n_components=components, random_state=seed).fit_transform(x)
    if components < 2:
        coordinates = np.hstack([coordinates, np.zeros((x.shape[0], 2 - components))])
    return coordinates, "pca"
