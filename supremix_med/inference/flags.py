"""Every per-scan flag of a predictions table, decided in one place: the named boolean flags and ``qc_flag``.

:func:`named_flags` reads a predictions table (the columns :class:`~supremix_med.inference.PredictionWriter`
builds) and returns one boolean column per flag of :data:`FLAGS` plus ``qc_flag``, the raised flags' reasons
(``"; "``-joined, in :data:`FLAGS` order, with the numbers behind them; ``""`` when none). A scan that failed
(``error`` set) gets no flag: its error already says why it has no prediction. A check whose input is missing
(no training reference, no QC column, no known target) raises no flag; the report says which checks the model
folder could not support.

- ``low_registration_similarity``: the pipeline's ``registration_similarity`` below its lower QC limit (``qc_limits``,
  by default the pipeline's ``QC_LIMITS``: for T1 the similarity below which ``register="auto"`` registers);
- ``qc_outside_limits``: another QC value outside its limits (e.g. T1's ``non_brain_fraction``: a skull left on);
- ``implausible_target``: the known target cannot be true (outside ``plausible_range``, or not finite): a
  data-entry error; the gap is left empty;
- ``target_outside_training_range``: the known target (chronological age) outside the training targets' range
  (the model's ``reference.json``): the model never saw such a subject, so the gap is an extrapolation;
- ``prediction_outside_training_range``: the prediction outside that range;
- ``large_gap``: the gap (the bias-corrected one when the reference's gap statistics are of corrected gaps)
  more than ``k_sd`` standard deviations of the validation gaps from their mean;
- ``unlike_training_data``: an input feature (:data:`~supremix_med.inference.reference.FEATURES`) more than
  ``z_limit`` robust standard deviations from the training inputs' median.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from supremix_med.data.labels import check_range, label_problems
from supremix_med.data.qc import check_qc_limits, qc_reasons

from .reference import FEATURES, TrainingReference

__all__ = ["FLAGS", "QC_FLAG", "implausible_targets", "named_flags"]

FLAGS = ("low_registration_similarity", "qc_outside_limits", "implausible_target", "target_outside_training_range",
         "prediction_outside_training_range", "large_gap", "unlike_training_data")
#: The column of the raised flags' reasons.
QC_FLAG = "qc_flag"
_SIMILARITY = "registration_similarity"

Limits = Mapping[str, Sequence[float | None]]
Check = tuple[np.ndarray, list[str]]  # (raised [N], reason per row)


def implausible_targets(known: np.ndarray, plausible_range: Sequence[float] | None = None) -> list[str]:
    """Per scan, why its known target cannot be true (the training label rule,
    :func:`supremix_med.data.labels.label_problems`: not finite, or outside ``plausible_range``), e.g.
    ``"999 is outside the plausible range [0, 120]"``; ``""`` for a plausible or unknown (NaN) target."""
    if plausible_range is not None:
        check_range("plausible_range", plausible_range)
    problems = label_problems(pd.Series(np.asarray(known, float)), plausible_range)
    return problems.where(problems != "missing", "").tolist()


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` as floats, NaN when absent (a check without its column raises no flag)."""
    return pd.to_numeric(table[name], errors="coerce").to_numpy(float) if name in table else np.full(len(table), np.nan)


def _none(n: int) -> Check:
    return np.zeros(n, bool), [""] * n


def _qc_check(table: pd.DataFrame, limits: Mapping[str, tuple[float | None, float | None]]) -> Check:
    """The scans with a QC value outside ``limits`` (:func:`~supremix_med.data.qc.qc_reasons`, the training rule)."""
    reasons = qc_reasons({field: _column(table, field) for field in limits}, limits, len(table))
    return np.array([bool(r) for r in reasons], bool), ["; ".join(r) for r in reasons]


def _range_check(values: np.ndarray, low: float, high: float, text: str) -> Check:
    raised = np.isfinite(values) & ((values < low) | (values > high))
    return raised, [text.format(v) for v in values]


def _feature_check(features: pd.DataFrame, reference: TrainingReference, z_limit: float) -> Check:
    """The scans with an input feature beyond ``z_limit`` robust SDs of the training inputs."""
    raised, reasons = np.zeros(len(features), bool), [""] * len(features)
    for name in FEATURES:
        if name not in reference.inputs or name not in features:
            continue
        stats = reference.inputs[name]
        values = features[name].to_numpy(float)
        z = (values - stats["median"]) / stats["scale"]
        for i in np.flatnonzero(np.isfinite(z) & (np.abs(z) > z_limit)):
            raised[i] = True
            reasons[i] += (f"{'; ' if reasons[i] else ''}{name.replace('_', ' ')} {values[i]:.3g} unlike the training "
                           f"inputs (median {stats['median']:.3g}, range [{stats['min']:.3g}, {stats['max']:.3g}])")
    return raised, reasons


def _reference_checks(table: pd.DataFrame, reference: TrainingReference, target: str, gap_name: str,
                      features: pd.DataFrame | None, k_sd: float, z_limit: float) -> dict[str, Check]:
    """The flags that compare a scan with what the model stored about its training data."""
    low, high = reference.train_range
    span = f"the training range [{low:g}, {high:g}]"
    gap = _column(table, f"{gap_name}_corrected" if reference.gap["corrected"] else gap_name)
    mean, sd = reference.gap["mean"], reference.gap["sd"]
    return {
        "target_outside_training_range": _range_check(_column(table, target), low, high,
                                                      f"{target} {{:g}} outside {span}"),
        "prediction_outside_training_range": _range_check(_column(table, f"predicted_{target}"), low, high,
                                                          f"predicted {target} {{:.1f}} outside {span}"),
        "large_gap": (np.isfinite(gap) & (np.abs(gap - mean) > k_sd * sd),
                      [f"gap {v:+.1f} beyond the validation gaps' {mean:+.1f} +- {k_sd:g} x {sd:.2f}" for v in gap]),
        "unlike_training_data": (_feature_check(features, reference, z_limit) if features is not None
                                 else _none(len(table))),
    }


def named_flags(table: pd.DataFrame, reference: TrainingReference | None = None,
                features: pd.DataFrame | None = None, qc_limits: Limits | None = None,
                plausible_range: Sequence[float] | None = None, target: str | None = None,
                gap_name: str | None = None, k_sd: float = 3.0, z_limit: float = 6.0) -> pd.DataFrame:
    """The flags of every scan of a predictions table (see the module docstring).

    Args:
        table: predictions, one row per scan: ``predicted_<target>``, optionally ``<target>``, ``<gap>``,
            ``<gap>_corrected``, QC columns and ``error`` (as ``PredictionWriter`` builds them).
        reference: the model's stored training statistics; None: no training-range, gap or input checks.
        features: input features per scan (:func:`~supremix_med.inference.reference.input_features`), rows
            aligned with ``table``; None: no ``unlike_training_data`` check.
        qc_limits: ``{QC field: (low, high)}``, either bound None; values outside are flagged (NaN: not measured,
            never flagged). ``registration_similarity`` below its low bound is ``low_registration_similarity``,
            any other violation ``qc_outside_limits``.
        plausible_range: ``(low, high)`` a known target can take at all (e.g. ``(0, 120)`` years); a non-finite
            target is always implausible.
        target: the target's name; default the reference's, else ``"age"``.
        gap_name: gap column; default ``<target>_gap`` (brain-age tables use ``brain_age_gap``), its
            ``_corrected`` twin used when the reference's gap statistics are of corrected gaps.
        k_sd: gap limit in standard deviations of the validation gaps.
        z_limit: feature limit in robust standard deviations of the training inputs.

    Returns:
        a frame with ``table``'s index: one bool column per name of :data:`FLAGS`, then ``qc_flag`` (str).

    Raises:
        ValueError: ``k_sd`` or ``z_limit`` not positive, malformed ranges or limits, or ``features`` not aligned
            with ``table``.
    """
    if k_sd <= 0 or z_limit <= 0:
        raise ValueError(f"named_flags: k_sd and z_limit must be positive, got {k_sd} and {z_limit}.")
    if features is not None and len(features) != len(table):
        raise ValueError(f"named_flags: {len(features)} feature rows for {len(table)} predictions.")
    target = target or (reference.target if reference is not None else "age")
    gap_name = gap_name or f"{target}_gap"
    limits = check_qc_limits(qc_limits, owner="named_flags")
    similarity = {field: bounds for field, bounds in limits.items() if field == _SIMILARITY}
    implausible = implausible_targets(_column(table, target), plausible_range)
    checks: dict[str, Check] = {
        "low_registration_similarity": _qc_check(table, similarity),
        "qc_outside_limits": _qc_check(table, {f: b for f, b in limits.items() if f not in similarity}),
        "implausible_target": (np.array([bool(p) for p in implausible], bool),
                               [f"implausible {target}: {p} (gap left empty)" for p in implausible]),
    }
    if reference is not None:
        checks.update(_reference_checks(table, reference, target, gap_name, features, k_sd, z_limit))
        outside, reasons = checks["target_outside_training_range"]  # an impossible target is named as such only
        checks["target_outside_training_range"] = (outside & ~checks["implausible_target"][0], reasons)
    checks = {name: checks.get(name, _none(len(table))) for name in FLAGS}
    failed = table["error"].fillna("").astype(str).str.len().to_numpy() > 0 if "error" in table else False
    failed = failed | ~np.isfinite(_column(table, f"predicted_{target}"))
    out = pd.DataFrame({name: raised & ~failed for name, (raised, _) in checks.items()}, index=table.index)
    out[QC_FLAG] = ["; ".join(checks[name][1][i] for name in FLAGS if out[name].iloc[i]) for i in range(len(table))]
    return out
