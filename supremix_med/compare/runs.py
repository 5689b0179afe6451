"""Running the grid of a comparison: one bundle run per method and seed (a *cell*), resumable, failure-tolerant.

A cell is ``python -m monai.bundle run --config_file "[...]" --method M --output_dir DIR/M/seed<S> --seed S
--overwrite True`` plus the comparison's overrides (:func:`bundle_command` builds it: the one place that knows how a cell is
launched). Its output is streamed to ``DIR/M/seed<S>/run.log`` (and the console). A cell whose
``metrics.json`` is there already is reused, not run again, unless ``overwrite``; a failing cell is recorded
with its log and the others still run. A cell that runs again moves its earlier attempt to the cell's
``previous/`` folder (the bundle's ``--overwrite True``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from monai.bundle import ConfigParser

from supremix_med.bundles import bundles_dir
from supremix_med.engines import METHODS, loss_entry

__all__ = ["CellRun", "BUNDLE_LAUNCHER", "RESERVED_OVERRIDES", "bundle_methods", "override_pairs", "bundle_command",
           "cell_dir", "run_bundle", "run_cell", "compare_methods"]

logger = logging.getLogger(__name__)

#: The command that runs a bundle; :func:`bundle_command` appends the config files and overrides.
BUNDLE_LAUNCHER = (sys.executable, "-m", "monai.bundle", "run")
#: Options that the comparison sets per cell and a bundle override may not set.
RESERVED_OVERRIDES = frozenset({"method", "output_dir", "seed", "config_file", "overwrite", "resume"})


@dataclass
class CellRun:
    """The outcome of one cell (one method with one seed).

    Attributes:
        method: the ``--method`` value.
        seed: the ``--seed`` value.
        status: ``"ran"`` (run now, succeeded), ``"reused"`` (``metrics.json`` was already there) or
            ``"failed"``.
        output_dir: the run's ``--output_dir``; it holds ``metrics.json`` and ``predictions.csv``.
        log: the run's ``run.log``.
        returncode: the bundle process's exit status (None when it was not run).
        metrics: the run's ``metrics.json`` (None when failed).
        error: why it failed (None otherwise).
    """

    method: str
    seed: int
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

    @property
    def predictions(self) -> Path:
        """The run's ``predictions.csv`` (test set: ``id, <target>, predicted_<target>[, shot]``)."""
        return self.output_dir / "predictions.csv"


def bundle_methods(config_files: Sequence[str | os.PathLike]) -> tuple[str, ...]:
    """The methods a bundle supports: ``vanilla`` and every method whose loss (:func:`~supremix_med.engines.loss_entry`)
    its ``loss_kwargs`` configures.

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
    supported = [m for m in METHODS
                 if not isinstance(loss_kwargs, dict) or m == "vanilla" or loss_entry(m) in loss_kwargs]
    return tuple(sorted(supported, key=lambda method: method == "supremix"))


def override_pairs(tokens: Sequence[str], reserved: Collection[str] = RESERVED_OVERRIDES) -> dict[str, str]:
    """``["--key", "value", "--other=value"]`` -> ``{"key": "value", "other": "value"}`` (values unparsed).

    Args:
        tokens: the command line's override arguments.
        reserved: keys that may not be overridden (default: those the comparison sets per cell).

    Raises:
        ValueError: a token is not a ``--key``, a key has no value, or a key is ``reserved``.
    """
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
        if key in reserved:
            hint = " (give the comparison's seeds with --seeds 0,1,2)" if key == "seed" else ""
            raise ValueError(f"--{key} is set by the comparison for every run; it cannot be a bundle override{hint}.")
        pairs[key] = value
    return pairs


def bundle_command(config_files: Sequence[str | os.PathLike], method: str, output_dir: str | os.PathLike,
                   seed: int = 0, overrides: dict[str, str] | None = None,
                   launcher: Sequence[str] = BUNDLE_LAUNCHER) -> list[str]:
    """The argument list that runs one cell: ``launcher --config_file "[...]" --method M --output_dir D --seed S
    --overwrite True`` followed by ``--key value`` for each override. Paths are absolute: the cell runs where the
    bundles' macros resolve (:func:`run_bundle`). A cell only runs when its result is missing or to be replaced, so
    an earlier attempt in its folder moves to ``previous/`` (a bundle refuses to mix two runs in one folder)."""
    files = repr([str(Path(f).resolve()) for f in config_files])
    command = [*launcher, "--config_file", files, "--method", method, "--output_dir", str(Path(output_dir).resolve()),
               "--seed", str(seed), "--overwrite", "True"]
    for key, value in (overrides or {}).items():
        command += [f"--{key}", str(value)]
    return command


def cell_dir(output_dir: str | os.PathLike, method: str, seed: int) -> Path:
    """The folder of one cell: ``<output_dir>/<method>/seed<seed>``."""
    return Path(output_dir) / method / f"seed{seed}"


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


def run_cell(config_files: Sequence[str | os.PathLike], method: str, seed: int, output_dir: str | os.PathLike,
             overrides: dict[str, str] | None = None, overwrite: bool = False,
             launcher: Sequence[str] = BUNDLE_LAUNCHER, echo: TextIO | None = None) -> CellRun:
    """Run (or reuse) one cell into :func:`cell_dir` of ``output_dir``; a failure is returned, not raised."""
    run_dir = cell_dir(output_dir, method, seed)
    metrics_path, log = run_dir / "metrics.json", run_dir / "run.log"
    if metrics_path.is_file() and not overwrite:
        try:
            metrics = _read_metrics(metrics_path)
        except ValueError as err:
            logger.warning("%s; running %s seed %d again", err, method, seed)
        else:
            logger.info("%s seed %d: %s exists, not run again (--overwrite re-runs it)", method, seed, metrics_path)
            return CellRun(method, seed, "reused", run_dir, log, metrics=metrics)
    metrics_path.unlink(missing_ok=True)  # a failed re-run must not leave the old result looking current
    command = bundle_command(config_files, method, run_dir, seed, overrides, launcher)
    logger.info("%s seed %d: running (log: %s)", method, seed, log)
    try:
        returncode = run_bundle(command, log, echo)
    except OSError as err:  # the launcher itself could not start
        return CellRun(method, seed, "failed", run_dir, log, error=f"could not start {command[0]!r}: {err}")
    if returncode != 0:
        return CellRun(method, seed, "failed", run_dir, log, returncode, error=f"exit status {returncode}")
    try:
        metrics = _read_metrics(metrics_path)
    except ValueError as err:
        return CellRun(method, seed, "failed", run_dir, log, returncode, error=str(err))
    return CellRun(method, seed, "ran", run_dir, log, returncode, metrics=metrics)


def _unique(values: Sequence, what: str) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"a comparison needs at least one {what}.")
    if len(set(values)) != len(values):
        raise ValueError(f"each {what} may be given once, got {values}.")
    return values


def compare_methods(config_files: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                    methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
                    overrides: dict[str, str] | None = None, overwrite: bool = False,
                    launcher: Sequence[str] | None = None, echo: TextIO | None = None) -> list[CellRun]:
    """Run every method with every seed, seed by seed (each seed's methods together: a paired replicate).

    Args:
        config_files: the bundle's config files (``train.json`` first, then overlays).
        output_dir: the comparison's folder; cell (M, S) runs in ``<output_dir>/<M>/seed<S>``.
        methods: methods to run, in row order; default :func:`bundle_methods`.
        seeds: ``--seed`` values; every method runs once with each.
        overrides: bundle overrides given to every run (``{"pretrain_epochs": "10", ...}``).
        overwrite: run cells again whose ``metrics.json`` exists.
        launcher: the command that runs a bundle; default :data:`BUNDLE_LAUNCHER` (tests inject a fake one).
        echo: where the runs' output is streamed besides their logs (None: logs only; the CLI streams to stdout).

    Returns:
        One :class:`CellRun` per cell, seed-major (all methods of the first seed, then the next seed).
        Failed cells are returned, not raised.

    Raises:
        ValueError: no config file, a method the bundle does not configure, a repeated method or seed, or a
            reserved key in ``overrides``.
    """
    if not config_files:
        raise ValueError("compare_methods needs at least one bundle config file.")
    supported = bundle_methods(config_files)
    methods = _unique(supported if methods is None else methods, "method")
    unsupported = [m for m in methods if m not in supported]
    if unsupported:
        raise ValueError(f"methods {unsupported} are not configured by {[str(f) for f in config_files]}; "
                         f"it supports {list(supported)} (a method needs an entry in loss_kwargs).")
    seeds = [int(s) for s in _unique(seeds, "seed")]
    reserved = RESERVED_OVERRIDES.intersection(overrides or {})
    if reserved:
        raise ValueError(f"overrides may not set {sorted(reserved)}: the comparison sets them for every run.")
    launcher = BUNDLE_LAUNCHER if launcher is None else launcher
    return [run_cell(config_files, method, seed, output_dir, dict(overrides or {}), overwrite, launcher, echo)
            for seed in seeds for method in methods]
