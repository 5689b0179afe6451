"""Run one bundle once per pre-training method and tabulate the test metrics in the layout of the paper's tables.

Command line::

    python -m supremix_med.compare --config_file bundles/ukb_brainage/train.json \\
        [--config_file bundles/ukb_brainage/demo.json ...] --output_dir DIR \\
        [--methods vanilla,supcon,rnc,conr,mixsupcon,supremix] [--seed 0] [--overwrite] \\
        [--shot_metrics mae,gm] [--digits 3] [any --key value bundle override ...]

Every method runs ``python -m monai.bundle run --config_file "[...]" --method M --output_dir DIR/M --seed S``
plus the same overrides (the same seed and budget for all), in a subprocess whose output is streamed to the
console and to ``DIR/M/run.log``. A method whose ``DIR/M/metrics.json`` exists is not run again (so an
interrupted comparison resumes) unless ``--overwrite`` is given. A failing method does not stop the others:
it is listed as failed with its log, and the command exits with status 1 at the end.

The result is ``DIR/comparison.md`` and ``DIR/comparison.json``: one row per method, columns MAE, MSE, GM,
Pearson and Spearman on the whole test set, then the shot-wise metrics (``many``, ``medium``, ``few``) where
the runs' ``metrics.json`` holds a ``shots`` entry, the best value of every column in bold.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pandas as pd
from monai.bundle import ConfigParser

from supremix_med.bundles import bundles_dir
from supremix_med.engines import METHODS
from supremix_med.io import atomic_write, atomic_write_json
from supremix_med.metrics import REGRESSION_METRICS, SHOT_GROUPS

__all__ = ["MethodRun", "BUNDLE_LAUNCHER", "bundle_methods", "bundle_command", "run_bundle", "compare_methods",
           "check_shot_metrics", "comparison_table", "column_label", "best_methods", "comparison_markdown",
           "write_comparison", "main"]

logger = logging.getLogger(__name__)

#: The command that runs a bundle; :func:`compare_methods` appends the config files and overrides.
BUNDLE_LAUNCHER = (sys.executable, "-m", "monai.bundle", "run")
#: Names used in the table's rows.
DISPLAY_NAMES = {"vanilla": "Vanilla", "supcon": "SupCon", "rnc": "RnC", "conr": "ConR", "mixsupcon": "MixSupCon",
                 "supremix": "SupReMix", "simcse": "SimCSE"}
#: Whole-test-set columns: metrics.json key -> column label.
OVERALL_COLUMNS = {"mae": "MAE", "mse": "MSE", "gm": "GM", "pearson_r": "Pearson", "spearman_rho": "Spearman"}
#: Metrics where a larger value is better; lower is better for the rest.
HIGHER_IS_BETTER = frozenset({"pearson_r", "spearman_rho"})
#: Options that the comparison sets per run and a bundle override may not set.
RESERVED_OVERRIDES = frozenset({"method", "output_dir", "seed", "config_file"})


@dataclass
class MethodRun:
    """The outcome of one method's bundle run.

    Attributes:
        method: the ``--method`` value.
        status: ``"ran"`` (run now, succeeded), ``"reused"`` (``metrics.json`` was already there) or
            ``"failed"``.
        output_dir: the run's ``--output_dir``.
        log: the run's ``run.log``.
        returncode: the bundle process's exit status (None when it was not run).
        metrics: the run's ``metrics.json`` (None when failed).
        error: why it failed (None otherwise).
    """

    method: str
    status: str
    output_dir: Path
    log: Path
    returncode: int | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the run failed (``status == "failed"``)."""
        return self.status == "failed"


def bundle_methods(config_files: Sequence[str | os.PathLike]) -> tuple[str, ...]:
    """The methods a bundle supports: ``vanilla`` and every method its ``loss_kwargs`` configures.

    Args:
        config_files: the bundle's config files (later ones override earlier ones, as in MONAI).

    Returns:
        The supported methods of :data:`supremix_med.engines.METHODS` in their order, SupReMix last (the
        paper's row order). A bundle whose ``loss_kwargs`` is not a dict supports all of them.
    """
    missing = [str(f) for f in config_files if not Path(f).is_file()]
    if missing:
        raise ValueError(f"bundle config file(s) not found: {missing}.")
    config = ConfigParser(ConfigParser.load_config_files([str(f) for f in config_files]))
    loss_kwargs = config.get("loss_kwargs", {})
    supported = [m for m in METHODS if not isinstance(loss_kwargs, dict) or m == "vanilla" or m in loss_kwargs]
    return tuple(sorted(supported, key=lambda method: method == "supremix"))


def _override_pairs(tokens: Sequence[str]) -> dict[str, str]:
    """``["--key", "value", "--other=value"]`` -> ``{"key": "value", "other": "value"}`` (values unparsed)."""
    pairs: dict[str, str] = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"bundle overrides must be '--key value' pairs; got {token!r} where a --key was expected.")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if not tokens or tokens[0].startswith("--"):
                raise ValueError(f"bundle override --{key} has no value.")
            value = tokens.pop(0)
        if key in RESERVED_OVERRIDES:
            raise ValueError(f"--{key} is set by the comparison for every run; it cannot be a bundle override.")
        pairs[key] = value
    return pairs


def bundle_command(config_files: Sequence[str | os.PathLike], method: str, output_dir: str | os.PathLike,
                   seed: int = 0, overrides: dict[str, str] | None = None,
                   launcher: Sequence[str] = BUNDLE_LAUNCHER) -> list[str]:
    """The argument list that runs the bundle for one method (see the module docstring); paths are absolute, as
    the run starts where the bundles' macros resolve (:func:`run_bundle`)."""
    files = repr([str(Path(f).resolve()) for f in config_files])
    command = [*launcher, "--config_file", files, "--method", method, "--output_dir", str(Path(output_dir).resolve()),
               "--seed", str(seed)]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", str(value)]
    return command


def run_bundle(command: Sequence[str], log: str | os.PathLike, echo: TextIO | None = None) -> int:
    """Run ``command``, writing its merged stdout/stderr line by line to ``log`` (and ``echo``); return its status.

    The log starts with the command line. The child runs unbuffered so the log follows it live, in the folder that
    holds ``bundles/`` (where the bundle configs' macros ``bundles/_base/...`` resolve).
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + subprocess.list2cmdline(list(command)) + "\n")
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                              errors="replace", cwd=bundles_dir().parent) as process:
            for line in process.stdout:
                out.write(line)
                out.flush()
                if echo is not None:
                    echo.write(line)
        return process.returncode


def _read_metrics(path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable metrics.json ({err}).") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(metrics).__name__}.")
    return metrics


def _run_method(config_files: Sequence[str | os.PathLike], method: str, output_dir: Path, seed: int,
                overrides: dict[str, str], overwrite: bool, launcher: Sequence[str],
                echo: TextIO | None) -> MethodRun:
    run_dir = output_dir / method
    metrics_path, log = run_dir / "metrics.json", run_dir / "run.log"
    if metrics_path.is_file() and not overwrite:
        try:
            metrics = _read_metrics(metrics_path)
        except ValueError as err:
            logger.warning("%s; running %s again", err, method)
        else:
            logger.info("%s: %s exists, not run again (--overwrite re-runs it)", method, metrics_path)
            return MethodRun(method, "reused", run_dir, log, metrics=metrics)
    metrics_path.unlink(missing_ok=True)  # a failed re-run must not leave the old result looking current
    command = bundle_command(config_files, method, run_dir, seed, overrides, launcher)
    logger.info("%s: running (log: %s)", method, log)
    returncode = run_bundle(command, log, echo)
    if returncode != 0:
        return MethodRun(method, "failed", run_dir, log, returncode, error=f"exit status {returncode}")
    try:
        metrics = _read_metrics(metrics_path)
    except ValueError as err:
        return MethodRun(method, "failed", run_dir, log, returncode, error=str(err))
    return MethodRun(method, "ran", run_dir, log, returncode, metrics=metrics)


def compare_methods(config_files: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                    methods: Sequence[str] | None = None, seed: int = 0, overrides: dict[str, str] | None = None,
                    overwrite: bool = False, launcher: Sequence[str] | None = None,
                    echo: TextIO | None = None) -> list[MethodRun]:
    """Run the bundle once per method into ``output_dir/<method>``, same seed and overrides for each.

    Args:
        config_files: the bundle's config files (``train.json`` first, then overlays).
        output_dir: the comparison's folder.
        methods: methods to run, in row order; default :func:`bundle_methods`.
        seed: ``--seed`` of every run.
        overrides: bundle overrides given to every run (``{"pretrain_epochs": "10", ...}``).
        overwrite: run methods again whose ``metrics.json`` exists.
        launcher: the command that runs a bundle; default :data:`BUNDLE_LAUNCHER` (tests inject a fake one).
        echo: where the runs' output is streamed besides their logs (None: logs only; the CLI streams to stdout).

    Returns:
        One :class:`MethodRun` per method, in order. Failed runs are returned, not raised.

    Raises:
        ValueError: no config file, a method the bundle does not configure, a repeated method, or a reserved
            key in ``overrides``.
    """
    if not config_files:
        raise ValueError("compare_methods needs at least one bundle config file.")
    supported = bundle_methods(config_files)
    methods = list(supported if methods is None else methods)
    unsupported = [m for m in methods if m not in supported]
    if unsupported or not methods:
        raise ValueError(f"methods {unsupported or methods} are not configured by {[str(f) for f in config_files]}; "
                         f"it supports {list(supported)} (a method needs an entry in loss_kwargs).")
    if len(set(methods)) != len(methods):
        raise ValueError(f"each method may be compared once, got {methods}.")
    reserved = RESERVED_OVERRIDES.intersection(overrides or {})
    if reserved:
        raise ValueError(f"overrides may not set {sorted(reserved)}: the comparison sets them for every run.")
    output_dir = Path(output_dir)
    launcher = BUNDLE_LAUNCHER if launcher is None else launcher
    return [_run_method(config_files, method, output_dir, seed, dict(overrides or {}), overwrite, launcher, echo)
            for method in methods]


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _shot_value(metrics: dict[str, Any], group: str, key: str) -> Any:
    shots = metrics.get("shots")
    entry = shots.get(group) if isinstance(shots, dict) else None
    return entry.get(key) if isinstance(entry, dict) else None


def check_shot_metrics(shot_metrics: Sequence[str]) -> None:
    """Raise ``ValueError`` unless every name in ``shot_metrics`` is one of the regression metrics."""
    unknown = sorted(set(shot_metrics) - set(REGRESSION_METRICS))
    if unknown:
        raise ValueError(f"unknown shot metric(s) {unknown}; choose from {sorted(REGRESSION_METRICS)}.")


def comparison_table(runs: Sequence[MethodRun], shot_metrics: Sequence[str] = ("mae", "gm")) -> pd.DataFrame:
    """The metrics table: one row per method, one float column per metric (nan where a run lacks it).

    Rows are indexed by the methods' display names (``Method``). Columns are a ``(metric, group)`` MultiIndex:
    ``(key, "all")`` for each of :data:`OVERALL_COLUMNS` some run reports, then ``(key, group)`` for each of
    ``shot_metrics`` and each of ``many``/``medium``/``few`` that some run's ``metrics["shots"]`` holds.

    Raises:
        ValueError: a name in ``shot_metrics`` is not one of the regression metrics.
    """
    check_shot_metrics(shot_metrics)
    metrics = [run.metrics or {} for run in runs]
    columns: dict[tuple[str, str], list[float]] = {}
    for key in OVERALL_COLUMNS:
        if any(key in m for m in metrics):
            columns[(key, "all")] = [_number(m.get(key)) for m in metrics]
    for key in shot_metrics:
        for group in SHOT_GROUPS:
            values = [_shot_value(m, group, key) for m in metrics]
            if any(value is not None for value in values):
                columns[(key, group)] = [_number(value) for value in values]
    index = pd.Index([DISPLAY_NAMES.get(run.method, run.method) for run in runs], name="Method")
    frame = pd.DataFrame(columns, index=index, dtype=float)
    frame.columns = pd.MultiIndex.from_tuples(list(columns), names=["metric", "group"])
    return frame


def column_label(metric: str, group: str) -> str:
    """``("mae", "all") -> "MAE"``, ``("gm", "few") -> "GM few"``."""
    name = OVERALL_COLUMNS.get(metric, metric)
    return name if group == "all" else f"{name} {group}"


def best_methods(table: pd.DataFrame, digits: int = 3) -> dict[tuple[str, str], list[str]]:
    """Per column of :func:`comparison_table`, the method(s) with the best value rounded to ``digits``."""
    best: dict[tuple[str, str], list[str]] = {}
    for metric, group in table.columns:
        values = table[(metric, group)].round(digits)
        if values.isna().all():
            continue
        target = values.max() if metric in HIGHER_IS_BETTER else values.min()
        best[(metric, group)] = [str(name) for name in values.index[values == target]]
    return best


def _markdown_table(cells: pd.DataFrame) -> str:
    """A GitHub markdown table of string ``cells`` (index = first column, numbers right-aligned)."""
    header = "| " + " | ".join([str(cells.index.name), *map(str, cells.columns)]) + " |"
    rule = "|" + "|".join([":---", *["---:"] * len(cells.columns)]) + "|"
    rows = ["| " + " | ".join([str(name), *row]) + " |" for name, row in zip(cells.index, cells.to_numpy())]
    return "\n".join([header, rule, *rows])


def _cell(value: float, digits: int, bold: bool) -> str:
    text = "–" if math.isnan(value) else f"{value:.{digits}f}"
    return f"**{text}**" if bold else text


def comparison_markdown(runs: Sequence[MethodRun], table: pd.DataFrame, title: str, settings: str,
                        digits: int = 3) -> str:
    """The markdown report: title, settings line, the table (best per column in bold), baseline, failures."""
    best = best_methods(table, digits)
    cells = pd.DataFrame(
        {column_label(*column): [_cell(value, digits, name in best.get(column, []))
                                 for name, value in table[column].items()] for column in table.columns},
        index=pd.Index([f"{name} (failed)" if run.failed else name for name, run in zip(table.index, runs)],
                       name=table.index.name))
    lines = [f"# {title}", "", settings, "",
             "Test-set metrics; lower is better for MAE, MSE and GM, higher for Pearson and Spearman; "
             "the best value of each column is in bold.", "", _markdown_table(cells), ""]
    reported = [run.metrics for run in runs if run.metrics]
    if reported and "baseline_mae" in reported[0]:
        lines.append(f"Predict-the-training-mean baseline: MAE {_number(reported[0]['baseline_mae']):.{digits}f} "
                     f"on {reported[0].get('n', '?')} test samples.")
    with_shots = [metrics for metrics in reported if isinstance(metrics.get("shots"), dict)]
    if with_shots:
        counts = [f"{group} {_shot_value(with_shots[0], group, 'n')}" for group in SHOT_GROUPS]
        rule = with_shots[0]["shots"].get("rule")
        stated = (f" (label bins of width {rule.get('bin_width')}: many > {rule.get('many')}, few < "
                  f"{rule.get('few')} training samples)" if isinstance(rule, dict) else "")
        lines.append(f"Test samples per shot group{stated}: {', '.join(counts)}.")
    failed = [run for run in runs if run.failed]
    if failed:
        lines += ["", "Failed runs:"]
        lines += [f"- {DISPLAY_NAMES.get(r.method, r.method)}: {r.error}; log `{r.log}`" for r in failed]
    return "\n".join(lines) + "\n"


def _json_value(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def write_comparison(runs: Sequence[MethodRun], output_dir: str | os.PathLike, config_files: Sequence[str],
                     seed: int = 0, overrides: dict[str, str] | None = None,
                     shot_metrics: Sequence[str] = ("mae", "gm"), digits: int = 3) -> pd.DataFrame:
    """Write ``comparison.md`` and ``comparison.json`` under ``output_dir``; return the table.

    ``comparison.json`` holds the settings (config files, seed, overrides), every run (status, exit status,
    log, error, its full ``metrics.json``), the table (``{method: {column: value or null}}``) and the best
    method(s) per column.
    """
    output_dir = Path(output_dir)
    table = comparison_table(runs, shot_metrics)
    overrides = dict(overrides or {})
    name = Path(config_files[0]).parent.name if config_files else "bundle"
    settings = (f"Bundle `{name}`: {', '.join(f'`{f}`' for f in config_files)}; seed {seed}; overrides: "
                + (" ".join(f"`--{k} {v}`" for k, v in overrides.items()) or "none") + ".")
    markdown = comparison_markdown(runs, table, f"Method comparison: {name}", settings, digits)
    atomic_write(output_dir / "comparison.md", lambda tmp: tmp.write_text(markdown, encoding="utf-8"))
    record = {
        "config_files": [str(f) for f in config_files], "seed": seed, "overrides": overrides,
        "runs": {run.method: {"status": run.status, "returncode": run.returncode, "output_dir": str(run.output_dir),
                              "log": str(run.log), "error": run.error, "metrics": run.metrics} for run in runs},
        "table": {run.method: {column_label(*column): _json_value(value) for column, value in row.items()}
                  for run, (_, row) in zip(runs, table.iterrows())},
        "best": {column_label(*column): names for column, names in best_methods(table, digits).items()},
    }
    atomic_write_json(record, output_dir / "comparison.json")
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supremix_med.compare", allow_abbrev=False,
        description="Run a bundle once per pre-training method (same seed and budget) and write a markdown "
                    "table of the test metrics. Unknown '--key value' arguments are passed to every run.")
    parser.add_argument("--config_file", action="append", required=True,
                        help="bundle config file; repeat for overlays (train.json first)")
    parser.add_argument("--output_dir", required=True, help="the comparison's folder (one sub-folder per method)")
    parser.add_argument("--methods", help="comma-separated methods in row order (default: every method the "
                                          "bundle configures)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="re-run methods whose metrics.json exists")
    parser.add_argument("--shot_metrics", default="mae,gm", help="metrics shown per shot group (default mae,gm)")
    parser.add_argument("--digits", type=int, default=3, help="decimals in the markdown table (default 3)")
    return parser


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); returns 1 when a method failed, else 0 (2: bad arguments)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        overrides = _override_pairs(extra)
        shot_metrics = _split(args.shot_metrics)
        check_shot_metrics(shot_metrics)
        runs = compare_methods(args.config_file, args.output_dir, _split(args.methods), args.seed, overrides,
                               args.overwrite, echo=sys.stdout)
    except ValueError as err:
        parser.error(str(err))
    write_comparison(runs, args.output_dir, args.config_file, args.seed, overrides, shot_metrics, args.digits)
    logger.info("wrote %s", Path(args.output_dir) / "comparison.md")
    failed = [run.method for run in runs if run.failed]
    if failed:
        logger.error("failed: %s (see their run.log)", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
