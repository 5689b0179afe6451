"""The comparison's numbers and files: per-seed values, mean ± sd, paired differences with intervals.

:func:`write_comparison` turns the cells of a grid (:class:`~supremix_med.compare.runs.CellRun`) into
``comparison.md``, ``comparison.json`` and ``comparison.png``. Cells are grouped by row (a method, or a named
variant of one: :class:`~supremix_med.compare.runs.Row`). Differences are ``row - reference`` (the reference
is the ``vanilla`` row) on the same seed, so a negative difference is an improvement for MAE, MSE and GM and a
positive one for Pearson, Spearman and ordinality.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from supremix_med.compare.plots import plot_comparison
from supremix_med.compare.runs import CellRun, Row
from supremix_med.compare.stats import BOOTSTRAP_RESAMPLES, CONFIDENCE, Interval, paired_bootstrap, t_interval
from supremix_med.io import atomic_write, atomic_write_json
from supremix_med.metrics import REGRESSION_METRICS, SHOT_GROUPS

__all__ = ["Column", "REFERENCE", "DISPLAY_NAMES", "OVERALL_COLUMNS", "display_name", "run_protocol",
           "check_shot_metrics", "report_columns", "cell_values", "summary_table", "seed_differences",
           "read_predictions", "bootstrap_differences", "Comparison", "build_comparison", "comparison_markdown",
           "write_comparison"]

logger = logging.getLogger(__name__)

#: The row every other one is compared with (the plain ``vanilla`` method).
REFERENCE = "vanilla"
#: Names used in the tables' rows for plain methods (a variant is shown by its name).
DISPLAY_NAMES = {"vanilla": "Vanilla", "supcon": "SupCon", "rnc": "RnC", "conr": "ConR",
                 "conr_regularizer": "ConR (regulariser)", "mixsupcon": "MixSupCon", "supremix": "SupReMix",
                 "simcse": "SimCSE"}
#: Whole-test-set columns: metrics.json key -> column label.
OVERALL_COLUMNS = {"mae": "MAE", "mse": "MSE", "gm": "GM", "pearson_r": "Pearson", "spearman_rho": "Spearman"}
#: The metrics.json entry of the ordinality scores: ``{phase: {"spearman": float, ...}}`` (see
#: :class:`supremix_med.engines.ordinality.OrdinalityHandler`).
ORDINALITY = "ordinality"
#: The ordinality phases in training order (metrics.json writes its keys sorted, which would put them backwards).
ORDINALITY_PHASES = ("pretrained", "finetuned")
#: Metrics where a larger value is better; lower is better for the rest.
HIGHER_IS_BETTER = frozenset({"pearson_r", "spearman_rho", ORDINALITY})
#: Row groups of the paired bootstrap, in the order of their index in the resampling entropy.
BOOTSTRAP_GROUPS = ("all", *SHOT_GROUPS)
#: predictions.csv column naming each test sample's shot group (many / medium / few).
SHOT_COLUMN = "shot"
DASH = "–"


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _entry(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@dataclass(frozen=True)
class Column:
    """One metric column: a ``metrics.json`` value of every cell.

    Attributes:
        metric: a key of :data:`OVERALL_COLUMNS` / :data:`~supremix_med.metrics.REGRESSION_METRICS`, or
            :data:`ORDINALITY`.
        group: ``"all"`` (whole test set), a shot group (``many`` / ``medium`` / ``few``, read from
            ``metrics["shots"][group][metric]``), or for ordinality the phase (``metrics["ordinality"][group]
            ["spearman"]``).
    """

    metric: str
    group: str = "all"

    @property
    def label(self) -> str:
        """``MAE``, ``GM few``, ``Ordinality finetuned``."""
        name = "Ordinality" if self.metric == ORDINALITY else OVERALL_COLUMNS.get(self.metric, self.metric)
        return name if self.group == "all" else f"{name} {self.group}"

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def bootstrappable(self) -> bool:
        """Whether the test predictions give it per resample (a regression metric; not ordinality)."""
        return self.metric in REGRESSION_METRICS and self.group in BOOTSTRAP_GROUPS

    def value(self, metrics: dict[str, Any] | None) -> float:
        """The cell's value (nan where it has none)."""
        if not metrics:
            return math.nan
        if self.metric == ORDINALITY:
            return _number(_entry(_entry(metrics.get(ORDINALITY), self.group), "spearman"))
        if self.group == "all":
            return _number(metrics.get(self.metric))
        return _number(_entry(_entry(metrics.get("shots"), self.group), self.metric))


def display_name(row: str) -> str:
    """A row's label: the method's display name for a plain method, else the row's (variant's) name."""
    return DISPLAY_NAMES.get(row, row)


def run_protocol(run: CellRun) -> str:
    """How the cell trained: ``metrics["protocol"]`` when the run states it, else (a run from before the entry)
    what the recipe's :func:`~supremix_med.engines.pretraining.protocol` says of its method and
    ``metrics["linear_probe"]``."""
    metrics = run.metrics or {}
    if isinstance(metrics.get("protocol"), str):
        return metrics["protocol"]
    from supremix_med.engines.pretraining import protocol  # the engines load only for such an old run

    return protocol(run.method, metrics.get("linear_probe") is True)


def check_shot_metrics(shot_metrics: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every name in ``shot_metrics`` is one of the regression metrics."""
    unknown = sorted(set(shot_metrics) - set(REGRESSION_METRICS))
    if unknown:
        raise ValueError(f"unknown shot metric(s) {unknown}; choose from {sorted(REGRESSION_METRICS)}.")


def report_columns(runs: Sequence[CellRun], shot_metrics: Sequence[str] = ("mae", "gm")) -> list[Column]:
    """The columns some cell reports: :data:`OVERALL_COLUMNS`, then each of ``shot_metrics`` per shot group,
    then ordinality per phase (:data:`ORDINALITY_PHASES` in training order, then any other phase a run names).

    Raises:
        ValueError: a name in ``shot_metrics`` is not one of the regression metrics.
    """
    check_shot_metrics(shot_metrics)
    reported = [run.metrics for run in runs if run.metrics]
    candidates = [Column(key) for key in OVERALL_COLUMNS]
    candidates += [Column(key, group) for key in shot_metrics for group in SHOT_GROUPS]
    named = dict.fromkeys(phase for m in reported if isinstance(m.get(ORDINALITY), dict) for phase in m[ORDINALITY])
    phases = [p for p in ORDINALITY_PHASES if p in named] + [p for p in named if p not in ORDINALITY_PHASES]
    candidates += [Column(ORDINALITY, phase) for phase in phases]
    return [c for c in candidates if any(not math.isnan(c.value(m)) for m in reported)]


def cell_values(runs: Sequence[CellRun], columns: Sequence[Column]) -> pd.DataFrame:
    """Every cell's value of every column: index ``(row, seed)``, one float column per label (nan: none)."""
    index = pd.MultiIndex.from_tuples([(run.row, run.seed) for run in runs], names=["row", "seed"])
    return pd.DataFrame({c.label: [c.value(run.metrics) for run in runs] for c in columns}, index=index,
                        dtype=float)


def summary_table(values: pd.DataFrame) -> pd.DataFrame:
    """Per row (in order of appearance) and column: ``mean``, ``sd`` (ddof 1; nan for one seed) and ``n``."""
    grouped = values.groupby(level="row", sort=False)
    return pd.concat({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n": grouped.count()}, axis=1)


def seed_differences(values: pd.DataFrame, reference: str = REFERENCE) -> pd.DataFrame:
    """``value(row, seed) - value(reference, seed)`` for every other row: index ``(row, seed)``.

    A seed where either cell has no value gives nan. Empty when ``reference`` has no cell.
    """
    rows = [r for r in dict.fromkeys(values.index.get_level_values("row")) if r != reference]
    if reference not in values.index.get_level_values("row") or not rows:
        return values.iloc[0:0]
    base = values.xs(reference, level="row")
    return pd.concat({r: values.xs(r, level="row") - base for r in rows}, names=["row"])


def read_predictions(run: CellRun) -> pd.DataFrame:
    """A cell's test predictions as ``id`` (str), ``target``, ``pred`` and, when the file has one, ``shot``.

    Raises:
        ValueError: the file is missing or unreadable, has no ``predicted_<target>`` column beside
            ``<target>``, a missing or non-numeric value in either, or a repeated id (one line naming the file).
    """
    path = run.predictions
    try:
        frame = pd.read_csv(path, dtype={"id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a readable predictions.csv ({err}).") from err
    targets = [c[len("predicted_"):] for c in frame.columns if c.startswith("predicted_")
               and c[len("predicted_"):] in frame.columns]
    if "id" not in frame.columns or len(targets) != 1:
        raise ValueError(f"{path}: expected columns 'id', '<target>' and 'predicted_<target>', got "
                         f"{list(frame.columns)}.")
    if frame["id"].duplicated().any():
        raise ValueError(f"{path}: sample ids repeat (e.g. {frame['id'][frame['id'].duplicated()].iloc[0]!r}); "
                         "predictions cannot be paired by id.")
    try:
        out = pd.DataFrame({"id": frame["id"], "target": pd.to_numeric(frame[targets[0]]),
                            "pred": pd.to_numeric(frame[f"predicted_{targets[0]}"])}).astype({"target": float,
                                                                                             "pred": float})
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: a non-numeric label or prediction ({err}).") from err
    bad = ~np.isfinite(out[["target", "pred"]]).all(axis=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} row(s) without a finite label and prediction (e.g. id "
                         f"{out['id'][bad].iloc[0]!r}).")
    if SHOT_COLUMN in frame.columns:
        out[SHOT_COLUMN] = frame[SHOT_COLUMN].astype(str)
    return out


def _paired(reference: pd.DataFrame, method: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Inner join on id (sorted by id); refuse when the two runs disagree on a shared sample's label."""
    paired = reference.merge(method[["id", "target", "pred"]], on="id", suffixes=("", "_method"))
    if paired.empty:
        raise ValueError(f"{path}: no sample id in common with the reference run's predictions.")
    if not np.allclose(paired["target"], paired["target_method"], rtol=1e-6, atol=1e-6):
        raise ValueError(f"{path}: the labels differ from the reference run's for the same ids (not the same "
                         "test set).")
    return paired.sort_values("id", kind="stable").reset_index(drop=True)


def _bootstrap_cell(reference: pd.DataFrame, method: CellRun, columns: Sequence[Column], resamples: int,
                    bootstrap_seed: int, confidence: float) -> tuple[dict[str, Interval], list[str]]:
    """Bootstrap intervals of one (row, seed) cell for every bootstrappable column, and notes on what is
    missing."""
    predictions = read_predictions(method)
    paired = _paired(reference, predictions, method.predictions)
    intervals: dict[str, Interval] = {}
    notes: list[str] = []
    if len(paired) < max(len(reference), len(predictions)):
        notes.append(f"paired by id on {len(paired)} test samples (the reference has {len(reference)}, this run "
                     f"{len(predictions)})")
    for index, group in enumerate(BOOTSTRAP_GROUPS):
        wanted = [c for c in columns if c.group == group and c.bootstrappable]
        if not wanted:
            continue
        if group == "all":
            rows = paired
        elif SHOT_COLUMN not in paired.columns:
            continue  # the reference has no shot column: noted once by bootstrap_differences
        else:
            rows = paired[paired[SHOT_COLUMN] == group]
        if rows.empty:
            continue
        found = paired_bootstrap(rows["pred"], rows["pred_method"], rows["target"], [c.metric for c in wanted],
                                 resamples, (bootstrap_seed, method.seed, index), confidence)
        intervals.update({c.label: found[c.metric] for c in wanted})
    return intervals, notes


def bootstrap_differences(runs: Sequence[CellRun], columns: Sequence[Column], reference: str = REFERENCE,
                          resamples: int = BOOTSTRAP_RESAMPLES, bootstrap_seed: int = 0,
                          confidence: float = CONFIDENCE) -> tuple[dict[tuple[str, int], dict[str, Interval]],
                                                                   list[str]]:
    """Paired bootstrap intervals of ``row - reference`` within each seed, from the cells' predictions.csv.

    Pairs are matched by sample id. Shot-group intervals resample the group's samples only and need a
    ``shot`` column in the reference's predictions.csv. Resample b of seed S and group g (index in
    :data:`BOOTSTRAP_GROUPS`) is drawn from ``numpy.random.default_rng([bootstrap_seed, S, g, b])``.

    Returns:
        ``{(row, seed): {column label: Interval}}`` for every succeeded non-reference cell whose seed's
        reference cell succeeded, and notes (one line each) on cells or groups that could not be resampled.
    """
    found: dict[tuple[str, int], dict[str, Interval]] = {}
    notes: list[str] = []
    references: dict[int, pd.DataFrame] = {}
    for run in runs:
        if run.row == reference and not run.failed:
            try:
                references[run.seed] = read_predictions(run)
            except ValueError as err:
                notes.append(f"{display_name(reference)} seed {run.seed}: no bootstrap for this seed: {err}")
    unshot = [seed for seed, frame in references.items() if SHOT_COLUMN not in frame.columns]
    if unshot and any(c.bootstrappable and c.group != "all" for c in columns):
        notes.append(f"{display_name(reference)} seed{'s' if len(unshot) > 1 else ''} "
                     f"{', '.join(map(str, unshot))}: predictions.csv has no '{SHOT_COLUMN}' column, so the shot "
                     "groups have no bootstrap interval (their t-intervals over seeds stand)")
    for run in runs:
        if run.row == reference or run.failed or run.seed not in references:
            continue
        where = f"{display_name(run.row)} seed {run.seed}"
        try:
            found[(run.row, run.seed)], cell_notes = _bootstrap_cell(references[run.seed], run, columns,
                                                                       resamples, bootstrap_seed, confidence)
        except ValueError as err:
            notes.append(f"{where}: no bootstrap: {err}")
            continue
        notes += [f"{where}: {note}" for note in dict.fromkeys(cell_notes)]
    return found, notes


@dataclass
class Comparison:
    """Everything the report states; :func:`build_comparison` fills it.

    Attributes:
        runs: the cells, seed-major.
        columns: the metric columns.
        values: :func:`cell_values`.
        summary: :func:`summary_table`.
        differences: :func:`seed_differences`.
        versus: ``{(row, column label): Interval}``, the t-interval over seeds of :func:`seed_differences`.
        bootstrap: ``{(row, seed): {column label: Interval}}`` (:func:`bootstrap_differences`).
        notes: what could not be computed, one line each.
        reference, confidence, resamples, bootstrap_seed: the settings used.
    """

    runs: list[CellRun]
    columns: list[Column]
    values: pd.DataFrame
    summary: pd.DataFrame
    differences: pd.DataFrame
    versus: dict[tuple[str, str], Interval]
    bootstrap: dict[tuple[str, int], dict[str, Interval]]
    notes: list[str] = field(default_factory=list)
    reference: str = REFERENCE
    confidence: float = CONFIDENCE
    resamples: int = BOOTSTRAP_RESAMPLES
    bootstrap_seed: int = 0

    @property
    def rows(self) -> list[str]:
        """The rows' names in order (a plain method's row is named after it)."""
        return list(dict.fromkeys(run.row for run in self.runs))

    @property
    def seeds(self) -> list[int]:
        return list(dict.fromkeys(run.seed for run in self.runs))

    def best(self, digits: int = 3) -> dict[str, list[str]]:
        """Per column label, the row(s) whose mean over seeds is best when rounded to ``digits``."""
        best = {}
        for column in self.columns:
            means = self.summary[("mean", column.label)].round(digits)
            if means.isna().all():
                continue
            target = means.max() if column.higher_is_better else means.min()
            best[column.label] = [str(m) for m in means.index[means == target]]
        return best


def build_comparison(runs: Sequence[CellRun], shot_metrics: Sequence[str] = ("mae", "gm"),
                     reference: str = REFERENCE, confidence: float = CONFIDENCE,
                     resamples: int = BOOTSTRAP_RESAMPLES, bootstrap_seed: int = 0) -> Comparison:
    """Compute every number of the report from the cells (see :class:`Comparison`)."""
    runs = list(runs)
    if not runs:
        raise ValueError("build_comparison needs at least one cell.")
    columns = report_columns(runs, shot_metrics)
    values = cell_values(runs, columns)
    differences = seed_differences(values, reference)
    versus = {(row, label): t_interval(differences.loc[row, label].to_numpy(), confidence)
              for row in dict.fromkeys(differences.index.get_level_values("row")) for label in values.columns}
    bootstrap, notes = bootstrap_differences(runs, columns, reference, resamples, bootstrap_seed, confidence)
    if reference not in {run.row for run in runs}:
        notes.insert(0, f"no {display_name(reference)} cell: no differences or intervals")
    return Comparison(runs, columns, values, summary_table(values), differences, versus, bootstrap, notes,
                      reference, confidence, resamples, bootstrap_seed)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """A GitHub markdown table; the first ``text_columns`` columns left-aligned, numbers right-aligned."""
    rule = "|" + "|".join([":---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"
    return "\n".join(["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)])


def _fixed(value: float, digits: int, sign: bool = False) -> str:
    return DASH if math.isnan(value) else f"{value:{'+' if sign else ''}.{digits}f}"


def _bounds(interval: Interval | None, digits: int) -> str:
    if interval is None or math.isnan(interval.low):
        return DASH
    return f"[{_fixed(interval.low, digits, True)}, {_fixed(interval.high, digits, True)}]"


def _summary_rows(comparison: Comparison, digits: int) -> list[list[str]]:
    best = comparison.best(digits)
    rows = []
    for name in comparison.rows:
        cells = [run for run in comparison.runs if run.row == name]
        ok = [run for run in cells if not run.failed]
        protocols = " / ".join(dict.fromkeys(run_protocol(run) for run in ok)) or DASH
        row = [display_name(name), protocols, f"{len(ok)}/{len(cells)}"]
        for column in comparison.columns:
            mean, sd, n = (comparison.summary.loc[name, (stat, column.label)] for stat in ("mean", "sd", "n"))
            text = _fixed(mean, digits) if n < 2 else f"{mean:.{digits}f} ± {sd:.{digits}f}"
            row.append(f"**{text}**" if name in best.get(column.label, []) else text)
        rows.append(row)
    return rows


def _versus_rows(comparison: Comparison, column: Column, digits: int) -> list[list[str]]:
    rows = []
    for name in comparison.rows:
        interval = comparison.versus.get((name, column.label))
        boots = [comparison.bootstrap.get((name, seed), {}).get(column.label) for seed in comparison.seeds]
        if interval is None or (interval.n == 0 and not any(boots)):
            continue  # nothing measured (a row that always failed, a column the reference lacks)
        row = [display_name(name), f"{_fixed(interval.estimate, digits, True)} ({interval.n})",
               _bounds(interval, digits)]
        for seed, boot in zip(comparison.seeds, boots):
            difference = comparison.differences[column.label].get((name, seed), math.nan)
            if boot is None:
                row.append(_fixed(difference, digits, True))
            else:  # the metrics.json difference; the predictions' own where the runs' metrics lack the column
                shown = boot.estimate if math.isnan(difference) else difference
                row.append(f"{_fixed(shown, digits, True)} {_bounds(boot, digits)}")
        rows.append(row)
    return rows


def _per_seed_line(texts: dict[int, str]) -> str:
    """One text when every seed gives the same, else ``seed S: text`` per seed."""
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"seed {seed}: {text}" for seed, text in texts.items())


def _context_lines(comparison: Comparison, digits: int) -> list[str]:
    """The predict-the-mean baseline and the shot groups' sizes, per seed where they differ."""
    first = {}
    for run in comparison.runs:
        if run.metrics and run.seed not in first:
            first[run.seed] = run.metrics
    lines = []
    baselines = {seed: f"MAE {_number(m['baseline_mae']):.{digits}f} on {m.get('n', '?')} test samples"
                 for seed, m in first.items() if "baseline_mae" in m}
    if baselines:
        lines.append(f"Predict-the-training-mean baseline: {_per_seed_line(baselines)}.")
    shots = {}
    for seed, m in first.items():
        if isinstance(m.get("shots"), dict):
            counts = ", ".join(f"{g} {_entry(m['shots'].get(g), 'n')}" for g in SHOT_GROUPS)
            shots[seed] = counts
    if shots:
        rule = _entry(next(m for m in first.values() if isinstance(m.get("shots"), dict))["shots"], "rule")
        stated = (f" (label bins of width {rule.get('bin_width')}: many > {rule.get('many')}, few < "
                  f"{rule.get('few')} training samples)" if isinstance(rule, dict) else "")
        lines.append(f"Test samples per shot group{stated}: {_per_seed_line(shots)}.")
    return lines


def comparison_markdown(comparison: Comparison, title: str, settings: str, digits: int = 3) -> str:
    """The markdown report: settings, the mean ± sd table, one table of paired differences per column, notes."""
    level = round(100 * comparison.confidence)
    columns = comparison.columns
    reference = display_name(comparison.reference)
    summary = _markdown_table(["Method", "Protocol", "Seeds", *(c.label for c in columns)],
                              _summary_rows(comparison, digits), text_columns=2)
    ordinality = any(c.metric == ORDINALITY for c in columns)
    lines = [f"# {title}", "", settings, "", "## Mean ± sd over seeds", "",
             "Test-set metrics" + (" (Ordinality: the Spearman correlation of feature and label distances on the "
                                   "validation set, after each phase)" if ordinality else "")
             + "; lower is better for MAE, MSE and GM, higher for Pearson, Spearman"
             + (" and Ordinality" if ordinality else "") + "; the best mean of each column is in bold. Seeds: "
             "cells that finished / cells run.", "", summary, "", *_context_lines(comparison, digits)]
    if any(comparison.versus):
        lines += ["", f"## Paired differences against {reference}", "",
                  f"Each value is row - {reference} on the same seed (same split, initial weights and data order). "
                  f"Mean (seeds): the mean difference over the seeds where both finished, with its {level} % "
                  f"t-interval over seeds. Seed S: that seed's difference with its {level} % paired bootstrap "
                  f"interval over the test samples ({comparison.resamples} resamples, bootstrap seed "
                  f"{comparison.bootstrap_seed}).", ""]
        for column in columns:
            rows = _versus_rows(comparison, column, digits)
            if rows:
                header = ["Method", "Mean (seeds)", f"{level} % t-interval",
                          *(f"Seed {seed} ({level} % bootstrap)" for seed in comparison.seeds)]
                lines += [f"### {column.label}", "", _markdown_table(header, rows), ""]
    failed = [run for run in comparison.runs if run.failed]
    if lines[-1]:
        lines.append("")
    if failed:
        lines += ["Failed cells:"]
        lines += [f"- {display_name(r.row)} seed {r.seed}: {r.error}; log `{r.log}`" for r in failed]
    if comparison.notes:
        lines += [*([""] if failed else []), "Notes:", *(f"- {note}" for note in comparison.notes)]
    return "\n".join(lines).rstrip("\n") + "\n"


def _json(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _record(comparison: Comparison, digits: int) -> dict[str, Any]:
    """The JSON-ready body of comparison.json (see :func:`write_comparison`)."""
    summary = comparison.summary
    return {
        "reference": comparison.reference, "confidence": comparison.confidence,
        "bootstrap": {"resamples": comparison.resamples, "seed": comparison.bootstrap_seed},
        "cells": {name: {str(run.seed): {"status": run.status, "returncode": run.returncode, "method": run.method,
                                         "output_dir": str(run.output_dir), "log": str(run.log),
                                         "error": run.error, "protocol": run_protocol(run) if not run.failed
                                         else None, "metrics": run.metrics}
                         for run in comparison.runs if run.row == name} for name in comparison.rows},
        "rows": comparison.rows,
        "columns": [c.label for c in comparison.columns],
        "table": {m: {c.label: _json(summary.loc[m, ("mean", c.label)]) for c in comparison.columns}
                  for m in comparison.rows},
        "summary": {m: {c.label: {"mean": _json(summary.loc[m, ("mean", c.label)]),
                                  "sd": _json(summary.loc[m, ("sd", c.label)]),
                                  "n": int(summary.loc[m, ("n", c.label)]),
                                  "values": {str(s): _json(v) for s, v in
                                             comparison.values.xs(m, level="row")[c.label].items()}}
                        for c in comparison.columns} for m in comparison.rows},
        "versus_reference": {m: {label: {"t_interval": interval.to_dict(),
                                         "bootstrap": {str(s): comparison.bootstrap[(m, s)][label].to_dict()
                                                       for s in comparison.seeds
                                                       if label in comparison.bootstrap.get((m, s), {})}}
                                 for (row, label), interval in comparison.versus.items() if row == m}
                             for m in dict.fromkeys(row for row, _ in comparison.versus)},
        "best": comparison.best(digits),
        "notes": comparison.notes,
    }


def write_comparison(runs: Sequence[CellRun], output_dir: str | os.PathLike, config_files: Sequence[str],
                     overrides: dict[str, str] | None = None, shot_metrics: Sequence[str] = ("mae", "gm"),
                     digits: int = 3, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES,
                     bootstrap_seed: int = 0, reference: str = REFERENCE, variants: Sequence[Row] = ()) -> Comparison:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` under ``output_dir``.

    ``comparison.json`` holds the settings (config files, seeds, overrides, ``variants``: each variant's
    method and overrides, confidence, bootstrap), every cell per row (status, exit status, method, log,
    error, protocol, its full ``metrics.json``), ``columns``, ``table`` (the mean of each column per row),
    ``summary`` (mean, sd, n and the per-seed values), ``versus_reference`` (per row and column: the
    t-interval over seeds and the bootstrap interval of each seed, each as ``{estimate, low, high, n,
    confidence}``), ``best`` (best mean per column), ``rows`` (the row order; the JSON objects are written with
    sorted keys) and ``notes``. ``comparison.md`` states the same settings,
    each variant as the arguments its cells add (``supremix_ft``: ``--method supremix --linear_probe False``).

    Returns:
        The :class:`Comparison` written.
    """
    comparison = build_comparison(runs, shot_metrics, reference, confidence, resamples, bootstrap_seed)
    output_dir = Path(output_dir)
    overrides = dict(overrides or {})
    name = Path(config_files[0]).parent.name if config_files else "bundle"
    seeds = ", ".join(map(str, comparison.seeds))
    settings = (f"Bundle `{name}`: {', '.join(f'`{f}`' for f in config_files)}; seeds {seeds}; overrides: "
                + (" ".join(f"`--{k} {v}`" for k, v in overrides.items()) or "none") + ".")
    variants = [v for v in variants if v.name in comparison.rows]
    if variants:
        settings += ("\n\nVariants (their own arguments, after the overrides): "
                     + "; ".join(f"{display_name(v.name)}: `{v.describe()}`" for v in variants) + ".")
    markdown = comparison_markdown(comparison, f"Method comparison: {name}", settings, digits)
    atomic_write(output_dir / "comparison.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    record = {"config_files": [str(f) for f in config_files], "seeds": comparison.seeds, "overrides": overrides,
              "variants": {v.name: {"method": v.method, "overrides": dict(v.overrides)} for v in variants},
              **_record(comparison, digits)}
    atomic_write_json(record, output_dir / "comparison.json")
    plot_comparison(comparison.values, output_dir / "comparison.png", display_name)
    return comparison
