"""Plausible label ranges and the label check every training data loader runs when it reads its table.

A label that is missing, not a number, not finite, or outside the plausible range of its quantity is a data
error (an age of -5 or 999 years, an EF of 250 %), never something to train on. :func:`check_labels` finds
them, names every one, and either refuses the table (``label_policy="refuse"``, the default) or leaves those
rows out (``"drop"``), returning them for the exclusion report
(:func:`supremix_med.data.exclusions.report_exclusions`).

Each bundle declares its plausible range (what a value *can* be, not the training data's range) as its
``plausible_range`` knob, which its loaders receive as ``label_range``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .exclusions import check_policy

__all__ = ["LABEL_POLICIES", "check_labels", "check_range", "label_problems"]

#: What a loader does with unusable labels: ``"refuse"`` raises one ``ValueError`` naming them all;
#: ``"drop"`` leaves those rows out and returns them to be reported.
LABEL_POLICIES: tuple[str, ...] = ("refuse", "drop")
_SHOWN = 5  # unusable labels listed in a message

def check_range(name: str, bounds: Sequence[float | None], open_ended: bool = False) -> tuple[float | None, float | None]:
    """``bounds`` as a ``(low, high)`` pair of floats with low < high (``None`` = unbounded where ``open_ended``).

    Raises:
        ValueError: not a pair, a ``None`` bound where not ``open_ended``, a NaN bound, or low >= high; the
            message starts with ``name``.
    """
    message = (f"{name} must be (low, high) with low < high{' (None for no bound)' if open_ended else ''}, "
               f"got {bounds!r}.")
    if isinstance(bounds, str) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ValueError(message)
    try:
        low, high = (None if b is None else float(b) for b in bounds)
    except (TypeError, ValueError) as err:
        raise ValueError(message) from err
    if None in (low, high) and not open_ended:
        raise ValueError(message)
    if any(b is not None and math.isnan(b) for b in (low, high)) or (None not in (low, high) and low >= high):
        raise ValueError(message)
    return low, high


def label_problems(values: pd.Series, label_range: Sequence[float] | None = None) -> pd.Series:
    """Why each label cannot be used, ``""`` where it can.

    Args:
        values: the raw labels (numbers or text as read from a file; NaN, None or blank text = missing).
        label_range: inclusive plausible ``(low, high)``; ``None`` checks only that labels are finite numbers.

    Returns:
        str Series on ``values``' index: ``"missing"``, ``"'x' is not a number"``, ``"inf is not finite"`` or
        ``"999 is outside the plausible range [0, 120]"``.
    """
    low, high = check_range("label_range", label_range) if label_range is not None else (-np.inf, np.inf)
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    text = values.astype(str).str.strip()
    missing = values.isna() | (text == "")
    problems = pd.Series("", index=values.index, dtype=object)
    outside = np.isfinite(numbers) & ((numbers < low) | (numbers > high))
    problems[outside] = [f"{v:g} is outside the plausible range [{low:g}, {high:g}]" for v in numbers[outside]]
    infinite = numbers.notna() & ~np.isfinite(numbers)
    problems[infinite] = [f"{v:g} is not finite" for v in numbers[infinite]]
    not_number = numbers.isna() & ~missing
    problems[not_number] = [f"{v!r} is not a number" for v in text[not_number]]
    problems[missing] = "missing"
    return problems


def check_labels(
    table: pd.DataFrame,
    column: str,
    label_range: Sequence[float] | None = None,
    label_policy: str = "refuse",
    source: str = "labels",
    where: Sequence[str] | None = None,
    drop_option: str = "label_policy='drop'",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Refuse or leave out the rows of ``table`` whose ``column`` is not a usable label.

    Args:
        table: rows with an ``id`` column (and ``split`` when known) and the label ``column``.
        column: the label column (e.g. ``"age"``).
        label_range: inclusive plausible ``(low, high)`` (a bundle's ``plausible_range``); ``None`` refuses
            only missing, non-numeric and non-finite labels.
        label_policy: ``"refuse"`` or ``"drop"`` (see :data:`LABEL_POLICIES`).
        source: what to call the table in the message (its file).
        where: per row, where it is in ``source`` (e.g. ``"line 5"``); default: its 0-based row position.
        drop_option: how the caller's user asks for ``"drop"``, named in the refusal (a command line's
            ``"--label_policy drop"``).

    Returns:
        ``(kept, excluded)``: the usable rows with ``column`` as float (index kept), and the left-out rows as
        ``id, split, reason`` (empty unless ``label_policy="drop"``).

    Raises:
        ValueError: an unknown ``label_policy`` or malformed ``label_range``; with ``"refuse"``, any unusable
            label (one line naming the column, the range and each offending row with its id and value).
    """
    check_policy("label_policy", label_policy, LABEL_POLICIES)
    problems = label_problems(table[column], label_range)
    bad = (problems != "").to_numpy()
    where = [f"row {i}" for i in range(len(table))] if where is None else list(where)
    if bad.any() and label_policy == "refuse":
        positions = np.flatnonzero(bad)
        shown = [f"{where[p]} (id {table['id'].iloc[p]!r}): {problems.iloc[p]}" for p in positions[:_SHOWN]]
        more = f"; and {positions.size - _SHOWN} more" if positions.size > _SHOWN else ""
        limits = "" if label_range is None else f", plausible range [{label_range[0]:g}, {label_range[1]:g}]"
        raise ValueError(f"{source}: {positions.size} unusable {column!r} label(s){limits}: {'; '.join(shown)}{more}. "
                         f"Correct them, or pass {drop_option} to leave these samples out (they are then "
                         f"listed in excluded.csv).")
    split = table["split"] if "split" in table.columns else pd.Series("", index=table.index)
    excluded = pd.DataFrame({"id": table["id"][bad], "split": split[bad], "reason": "label " + problems[bad]})
    kept = table[~bad].copy()
    kept[column] = pd.to_numeric(kept[column]).astype(float)
    return kept, excluded.reset_index(drop=True)
