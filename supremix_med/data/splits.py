"""Seeded train/val/test splits, stratified by a continuous target.

Regression targets (age, ...) are stratified through quantile bins: every bin receives each split in
proportion to its size, so the three splits cover the same target range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["SPLITS", "assign_splits", "check_fractions", "select_splits"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")


def select_splits(split: str | Sequence[str]) -> list[str]:
    """``"all"`` -> every split; a name or a list of names -> those, checked."""
    names = list(SPLITS) if split == "all" else [split] if isinstance(split, str) else list(split)
    unknown = [s for s in names if s not in SPLITS]
    if unknown or not names:
        raise ValueError(f"split must be 'all', one of {SPLITS} or a list of them, got {split!r}.")
    return names


def check_fractions(fractions: Sequence[float]) -> np.ndarray:
    """Return ``fractions`` as a float array of 3 non-negative values summing to 1, or raise ``ValueError``."""
    values = np.asarray(fractions, dtype=float)
    if values.shape != (len(SPLITS),) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"split fractions must be {len(SPLITS)} non-negative numbers for {SPLITS}, "
                         f"got {tuple(fractions)}.")
    if not np.isclose(values.sum(), 1.0, atol=1e-6):
        raise ValueError(f"split fractions for {SPLITS} must sum to 1, got {tuple(fractions)} "
                         f"(sum {values.sum():.6g}).")
    return values


def _split_counts(n: int, fractions: np.ndarray) -> np.ndarray:
    """Split ``n`` samples into integer counts proportional to ``fractions`` (largest remainder rounding)."""
    exact = fractions * n
    counts = np.floor(exact).astype(int)
    shortfall = n - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:shortfall]] += 1
    return counts


def _strata(target: pd.Series, n_bins: int) -> np.ndarray:
    """Quantile bin (0 .. n_bins-1) of every sample; samples with a missing target form one extra bin."""
    values = pd.to_numeric(target, errors="coerce")
    ranks = values.rank(method="first")
    n_valid = int(values.notna().sum())
    bins = pd.cut(ranks, bins=min(n_bins, max(n_valid, 1)), labels=False) if n_valid else ranks
    return bins.fillna(n_bins).to_numpy(dtype=int)


def assign_splits(
    df: pd.DataFrame,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    stratify: str | None = "age",
    n_bins: int = 10,
) -> pd.Series:
    """Assign every row of ``df`` to ``"train"``, ``"val"`` or ``"test"``, seeded and stratified.

    The global split sizes are exactly ``fractions * len(df)`` after largest-remainder rounding. Rows are
    ordered by stratum (equal-count quantile bins of ``df[stratify]``; rows with a missing target form their
    own last stratum) and randomly inside a stratum; the split labels are then laid out evenly along that
    order (each split's k-th label at position ~(k + u) / count, u a random phase), so every stratum holds
    each split in proportion to its size, up to one sample.

    Args:
        df: one row per sample.
        fractions: fractions of (train, val, test); non-negative, summing to 1.
        seed: seed of the random order; the same seed and rows give the same splits.
        stratify: column of ``df`` holding the continuous target to stratify by, or ``None`` for a purely
            random split.
        n_bins: number of quantile bins of the target (fewer when there are fewer samples).

    Returns:
        a string Series with the same index as ``df``.

    Raises:
        ValueError: bad ``fractions`` or ``n_bins``, or ``stratify`` not a column of ``df``.
    """
    shares = check_fractions(fractions)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    if stratify is not None and stratify not in df.columns:
        raise ValueError(f"cannot stratify the splits by {stratify!r}: no such column (columns: "
                         f"{list(df.columns)}); pass stratify=None for a random split.")
    n = len(df)
    if n == 0:
        return pd.Series([], index=df.index, name="split", dtype=str)
    rng = np.random.default_rng(seed)
    strata = _strata(df[stratify], n_bins) if stratify is not None else np.zeros(n, dtype=int)
    order = np.lexsort((rng.random(n), strata))

    counts = _split_counts(n, shares)
    split_of_label = np.repeat(np.arange(len(SPLITS)), counts)
    position_of_label = np.concatenate([(np.arange(c) + rng.random()) / c for c in counts if c > 0])
    labels_in_order = split_of_label[np.argsort(position_of_label, kind="stable")]

    assigned = np.empty(n, dtype=object)
    assigned[order] = np.asarray(SPLITS, dtype=object)[labels_in_order]
    return pd.Series(assigned, index=df.index, name="split")
