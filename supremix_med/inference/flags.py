"""Named QC flags of a predictions table, against what the model stored about its training data.

:func:`named_flags` reads a predictions table (the columns :class:`~supremix_med.inference.PredictionWriter`
writes) and a :class:`~supremix_med.inference.reference.TrainingReference`, and returns one boolean column per
flag of :data:`FLAGS` plus ``flags``, the raised flags' names with the numbers behind them. A scan that failed
(``error`` set) gets no flag: its error already says why it has no prediction.

- ``target_outside_training_range``: the known target (chronological age) outside the training targets' range:
  the model never saw such a subject, so the prediction is an extrapolation;
- ``prediction_outside_training_range``: the prediction outside that range;
- ``large_gap``: the gap (the bias-corrected one when the reference's gap statistics are of corrected gaps)
  more than ``k_sd`` standard deviations of the validation gaps from their mean;
- ``low_registration_similarity``: the pipeline's ``registration_similarity`` below ``min_similarity``;
- ``unlike_training_data``: an input feature (:data:`~supremix_med.inference.reference.FEATURES`) more than
  ``z_limit`` robust standard deviations from the training inputs' median.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .reference import FEATURES, TrainingReference

__all__ = ["FLAGS", "named_flags"]

FLAGS = ("target_outside_training_range", "prediction_outside_training_range", "large_gap",
         "low_registration_similarity", "unlike_training_data")


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` as floats, NaN when absent (a check without its column raises no flag)."""
    return pd.to_numeric(table[name], errors="coerce").to_numpy(float) if name in table else np.full(len(table), np.nan)


def _outside(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.isfinite(values) & ((values < low) | (values > high))


def _feature_flags(features: pd.DataFrame, reference: TrainingReference,
                   z_limit: float) -> tuple[np.ndarray, list[str]]:
    """(flag [N], reason per row) of the input features outside the training inputs' robust range."""
    raised, reasons = np.zeros(len(features), bool), [""] * len(features)
    for name in FEATURES:
        if name not in reference.inputs or name not in features:
            continue
        stats = reference.inputs[name]
        values = features[name].to_numpy(float)
        z = (values - stats["median"]) / stats["scale"]
        for i in np.flatnonzero(np.isfinite(z) & (np.abs(z) > z_limit)):
            raised[i] = True
            reasons[i] += (f"{'; ' if reasons[i] else ''}{name.replace('_', ' ')} {values[i]:.3g} (training median "
                           f"{stats['median']:.3g}, range [{stats['min']:.3g}, {stats['max']:.3g}])")
    return raised, reasons


def named_flags(table: pd.DataFrame, reference: TrainingReference, features: pd.DataFrame | None = None,
                k_sd: float = 3.0, min_similarity: float | None = None, z_limit: float = 6.0,
                gap_name: str | None = None) -> pd.DataFrame:
    """The named flags of every scan of a predictions table (see the module docstring).

    Args:
        table: predictions, one row per scan: ``predicted_<target>``, optionally ``<target>``, ``<gap>``,
            ``<gap>_corrected``, ``registration_similarity`` and ``error`` (as ``PredictionWriter`` writes them).
        reference: the model's stored training statistics; its ``target`` names the columns.
        features: input features per scan (:func:`~supremix_med.inference.reference.input_features`), rows
            aligned with ``table``; None: no ``unlike_training_data`` check.
        k_sd: gap limit in standard deviations of the validation gaps.
        min_similarity: registration similarity below which a scan is flagged; None: no check.
        z_limit: feature limit in robust standard deviations of the training inputs.
        gap_name: gap column; default ``<target>_gap`` (brain-age tables use ``brain_age_gap``), its
            ``_corrected`` twin used when the reference's gap statistics are of corrected gaps.

    Returns:
        a frame with ``table``'s index: one bool column per name of :data:`FLAGS` and ``flags`` (str, ``"; "``-
        joined ``name: detail`` of the raised flags, "" when none).

    Raises:
        ValueError: ``k_sd`` or ``z_limit`` not positive, or ``features`` not aligned with ``table``.
    """
    if k_sd <= 0 or z_limit <= 0:
        raise ValueError(f"named_flags: k_sd and z_limit must be positive, got {k_sd} and {z_limit}.")
    if features is not None and len(features) != len(table):
        raise ValueError(f"named_flags: {len(features)} feature rows for {len(table)} predictions.")
    target = reference.target
    low, high = reference.train_range
    truth, pred = _column(table, target), _column(table, f"predicted_{target}")
    gap_name = gap_name or f"{target}_gap"
    gap = _column(table, f"{gap_name}_corrected" if reference.gap["corrected"] else gap_name)
    similarity = _column(table, "registration_similarity")
    gap_limit = k_sd * reference.gap["sd"]
    checks: dict[str, tuple[np.ndarray, list[str]]] = {
        FLAGS[0]: (_outside(truth, low, high), [f"{target} {v:.1f} outside [{low:g}, {high:g}]" for v in truth]),
        FLAGS[1]: (_outside(pred, low, high),
                   [f"predicted {target} {v:.1f} outside [{low:g}, {high:g}]" for v in pred]),
        FLAGS[2]: (np.isfinite(gap) & (np.abs(gap - reference.gap["mean"]) > gap_limit),
                   [f"gap {v:+.1f} beyond {reference.gap['mean']:+.1f} +- {k_sd:g} x {reference.gap['sd']:.2f}"
                    for v in gap]),
        FLAGS[3]: (np.zeros(len(table), bool) if min_similarity is None else similarity < min_similarity,
                   [f"similarity {v:.2f} < {min_similarity}" for v in similarity]),
        FLAGS[4]: (_feature_flags(features, reference, z_limit) if features is not None
                   else (np.zeros(len(table), bool), [""] * len(table))),
    }
    failed = (table["error"].fillna("").astype(str).str.len().to_numpy() > 0 if "error" in table
              else np.zeros(len(table), bool))
    out = pd.DataFrame({name: raised & ~failed for name, (raised, _) in checks.items()}, index=table.index)
    out["flags"] = ["; ".join(f"{name}: {checks[name][1][i]}" for name in FLAGS if out[name].iloc[i])
                    for i in range(len(table))]
    return out

