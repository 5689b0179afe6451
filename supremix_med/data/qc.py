"""The QC rule shared by training and inference: per-scan QC values checked against ``(low, high)`` limits.

A preprocessing pipeline reports per scan the QC values of its ``QC_FIELDS`` (e.g. T1's
``registration_similarity``, see :mod:`supremix_med.inference.scans`); a scan *fails QC* when a value lies
outside its limit in ``qc_limits`` (``{field: (low, high)}``, either bound ``None`` for none). A value that was
not measured (NaN, e.g. no registration) never fails. Inference flags such scans in ``predictions.csv``
(:func:`supremix_med.inference.named_flags`); training and evaluation leave them out of a cache's datasets
(:class:`supremix_med.data.CachedDataset`, ``qc_policy``). Both use :func:`qc_reasons`.

A pipeline may declare default limits as ``QC_LIMITS`` beside ``QC_FIELDS`` (:func:`pipeline_qc_limits`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .exclusions import check_policy
from .labels import check_range

__all__ = ["QC_POLICIES", "check_qc", "check_qc_limits", "pipeline_qc_limits", "qc_reasons"]

logger = logging.getLogger(__name__)
_SHOWN = 5  # failing samples named in a message

#: What a dataset does with rows that fail QC: leave them out and report them (``"exclude"``), keep them
#: (``"keep"``, still reported as a warning), or refuse the data (``"fail"``).
QC_POLICIES: tuple[str, ...] = ("exclude", "keep", "fail")

Limits = Mapping[str, Sequence[float | None]]


def check_qc_limits(qc_limits: Limits | None, fields: Sequence[str] | None = None,
                    owner: str = "qc_limits") -> dict[str, tuple[float | None, float | None]]:
    """``qc_limits`` checked and normalised to ``{field: (low, high)}``.

    Args:
        qc_limits: ``{QC field: (low, high)}``, either bound None; None for no limit.
        fields: the QC fields available; a limit on another field is refused. None: not checked.
        owner: the caller's name, for messages.

    Raises:
        ValueError: a malformed pair, or a limit on a field not in ``fields``.
    """
    limits = {field: check_range(f"{owner}: qc_limits[{field!r}]", bounds, open_ended=True)
              for field, bounds in (qc_limits or {}).items()}
    absent = [] if fields is None else [field for field in limits if field not in fields]
    if absent:
        raise ValueError(f"{owner}: qc_limits name {absent}, which are not QC fields; QC fields: {list(fields)}.")
    return limits


def qc_reasons(qc: Mapping[str, Any], qc_limits: Limits | None, n: int) -> list[list[str]]:
    """Per scan, the QC limits it violates, e.g. ``["registration similarity 0.3 below 0.5"]``.

    Args:
        qc: QC values [n] per field (numbers; NaN where not measured, never a violation).
        qc_limits: ``{field: (low, high)}`` (see :func:`check_qc_limits`); every field must be in ``qc``.
        n: number of scans.

    Returns:
        n lists of reasons, in ``qc_limits`` order (empty: the scan passes).
    """
    limits = check_qc_limits(qc_limits, list(qc))
    reasons: list[list[str]] = [[] for _ in range(n)]
    for field, (floor, ceiling) in limits.items():
        values, name = np.asarray(qc[field], dtype=float).reshape(n), field.replace("_", " ")
        for i, value in enumerate(values):
            if floor is not None and value < floor:
                reasons[i].append(f"{name} {value:.3g} below {floor:g}")
            if ceiling is not None and value > ceiling:
                reasons[i].append(f"{name} {value:.3g} above {ceiling:g}")
    return reasons


def pipeline_qc_limits(pipeline: str | None) -> dict[str, tuple[float | None, float | None]]:
    """The default ``QC_LIMITS`` of a registered pipeline (:data:`supremix_med.pipelines.PIPELINES`); ``{}`` for a
    pipeline that declares none, or a name that is not registered (a cache built by other code)."""
    from supremix_med.pipelines import PIPELINES, get_pipeline

    if pipeline not in PIPELINES:
        return {}
    return check_qc_limits(getattr(get_pipeline(pipeline), "QC_LIMITS", {}), owner=f"pipeline {pipeline!r}")


def check_qc(table: pd.DataFrame, qc_limits: Limits | None, qc_policy: str = "exclude",
             source: str = "data") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply ``qc_policy`` to the rows of ``table`` that fail QC (:func:`qc_reasons`).

    Args:
        table: rows with ``id`` (and ``split``) and their QC values, one column per QC field.
        qc_limits: ``{field: (low, high)}``; fields missing from ``table`` cannot be checked (a cache built
            before QC was stored): a warning says so and no row fails on them.
        qc_policy: ``"exclude"``, ``"keep"`` or ``"fail"`` (see :data:`QC_POLICIES`).
        source: what to call the data in messages (the cache folder).

    Returns:
        ``(kept, excluded)``: the rows to use (index kept) and the left-out rows as ``id, split, reason``
        (empty unless ``"exclude"``). With ``"keep"`` the failing rows are kept and named in a warning.

    Raises:
        ValueError: an unknown policy or malformed limits; with ``"fail"``, a row that fails QC or a limit whose
            field was not recorded.
    """
    check_policy("qc_policy", qc_policy, QC_POLICIES)
    limits = check_qc_limits(qc_limits, owner=source)
    unrecorded = [field for field in limits if field not in table.columns]
    if unrecorded:
        message = (f"{source}: QC field(s) {unrecorded} were not recorded (a cache built before QC was stored, or "
                   f"by a preprocess without QC), so no sample can fail on them")
        advice = "build the cache again into a new folder with the pipeline's preprocess_with_qc to record them"
        if qc_policy == "fail":
            raise ValueError(f"{message}; {advice}, or pass qc_policy='exclude' or 'keep'.")
        logger.warning("%s; %s.", message, advice)
    checked = {field: bounds for field, bounds in limits.items() if field not in unrecorded}
    values = {field: pd.to_numeric(table[field], errors="coerce").to_numpy(float) for field in checked}
    reasons = pd.Series(["; ".join(r) for r in qc_reasons(values, checked, len(table))], index=table.index)
    failing = (reasons != "").to_numpy()
    shown = "; ".join(f"{i!r} ({r})" for i, r in zip(table["id"][failing][:_SHOWN], reasons[failing][:_SHOWN]))
    more = f"; and {int(failing.sum()) - _SHOWN} more" if failing.sum() > _SHOWN else ""
    if failing.any() and qc_policy == "fail":
        raise ValueError(f"{source}: {int(failing.sum())} sample(s) fail QC: {shown}{more}. Rebuild or remove "
                         f"them, or pass qc_policy='exclude' to leave them out or 'keep' to use them.")
    if failing.any() and qc_policy == "keep":
        logger.warning("%s: keeping %d sample(s) that fail QC (qc_policy='keep'): %s%s", source,
                       int(failing.sum()), shown, more)
    drop = failing if qc_policy == "exclude" else np.zeros(len(table), dtype=bool)
    split = table["split"] if "split" in table.columns else pd.Series("", index=table.index)
    excluded = pd.DataFrame({"id": table["id"][drop], "split": split[drop], "reason": "QC: " + reasons[drop]})
    return table[~drop], excluded.reset_index(drop=True)
