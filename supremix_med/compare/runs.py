"""Running the grid of a comparison: one bundle run per row and seed (a *cell*), resumable, failure-tolerant.

A *row* (:class:`Row`) is a name, the ``--method`` it runs and bundle overrides of its own: a plain method is
the row named after it with no overrides; a *variant* (:func:`parse_variant`, ``--variant`` on the command line)
names a method run with other settings, e.g. ``supremix_ft=supremix:linear_probe=False``.

A cell is ``python -m monai.bundle run --config_file "[...]" --method M --output_dir DIR/<row>/seed<S> --seed S
--overwrite True`` plus the comparison's overrides, then the row's (:func:`bundle_command` builds it: the one place that knows how
a cell is launched). Its output is streamed to ``DIR/<row>/seed<S>/run.log`` (and the console), and what was
asked of it (row, method, seed, overrides) to ``DIR/<row>/seed<S>/cell.json``. A cell whose ``metrics.json`` is
there already is reused, not run again, unless ``overwrite`` or its ``cell.json`` records other settings than
those asked for now (then it is stale and runs again); a failing cell is recorded with its log and the others
still run. A cell that runs again moves its earlier attempt to the cell's ``previous/`` folder (the bundle's
``--overwrite True``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from monai.bundle import ConfigParser

from supremix_med.bundles import bundles_dir
from supremix_med.engines import METHODS, loss_entry

__all__ = ["CellRun", "Row", "BUNDLE_LAUNCHER", "RESERVED_OVERRIDES", "bundle_methods", "override_pairs",
           "parse_variant", "comparison_rows", "bundle_command", "cell_dir", "run_bundle", "run_cell",
           "compare_methods"]

logger = logging.getLogger(__name__)

#: The command that runs a bundle; :func:`bundle_command` appends the config files and overrides.
BUNDLE_LAUNCHER = (sys.executable, "-m", "monai.bundle", "run")
#: Options that the comparison sets per cell and a bundle override may not set.
RESERVED_OVERRIDES = frozenset({"method", "output_dir", "seed", "config_file", "overwrite", "resume"})
#: A row's name is its cells' folder name: letters, digits and ``. _ + -``, starting with a letter or digit.
_ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: Where a variant's override list splits: at a comma followed by the next ``key=`` (keys are config paths such as
#: ``loss_kwargs#supremix#temperature``), so a value may hold commas (``beta=[2.0,8.0]``).
_NEXT_OVERRIDE = re.compile(r",(?=\s*(?:--)?[A-Za-z_][\w#]*=)")
#: What a cell records of its request, beside its outputs.
CELL_FILE = "cell.json"


@dataclass
class Row:
    """One row of a comparison: its name, the ``--method`` its cells run and the bundle overrides of its own.

    Attributes:
        name: the row's label in the report and the folder of its cells (``<output_dir>/<name>/seed<S>``).
        method: the ``--method`` value.
        overrides: ``{key: value}`` bundle overrides (values unparsed, as on the command line), applied after
            the comparison's own: the row's value wins for a key both set. Empty for a plain method.
    """

    name: str
    method: str
    overrides: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``--method supremix --linear_probe False``: how the row's cells differ from the comparison's command."""
        return " ".join([f"--method {self.method}", *(f"--{k} {v}" for k, v in self.overrides.items())])


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
        row: the name of its row (:class:`Row`); defaults to ``method``.
    """

    method: str
    seed: int
    status: str
    output_dir: Path
    log: Path
    returncode: int | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    row: str = ""

    def __post_init__(self) -> None:
        self.row = self.row or self.method

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


def parse_variant(text: str) -> Row:
    """``NAME=METHOD[:KEY=VALUE[,KEY=VALUE...]]`` -> :class:`Row` (the ``--variant`` syntax).

    Keys are bundle override keys without the dashes (``linear_probe``, ``loss_kwargs#supremix#temperature``);
    values are passed to the bundle unparsed, as after ``--key`` on a command line. The list splits at a comma
    followed by the next ``key=``, so a value may hold commas: ``supremix_b=supremix:loss_kwargs#supremix#beta=[1,4]``.

    Examples:
        ``supremix_ft=supremix:linear_probe=False`` -> ``Row("supremix_ft", "supremix", {"linear_probe": "False"})``;
        ``supremix_t0.1_w0.5=supremix:loss_kwargs#supremix#temperature=0.1,window=0.5``.

    Raises:
        ValueError: no ``NAME=METHOD``, a name that cannot be a folder name, an override without ``=`` or a
            value, a repeated key, or a key the comparison sets (:data:`RESERVED_OVERRIDES`).
    """
    name, sep, rest = text.partition("=")
    method, _, settings = rest.partition(":")
    name, method = name.strip(), method.strip()
    if not sep or not name or not method:
        raise ValueError(f"a variant is NAME=METHOD[:KEY=VALUE,...], got {text!r}.")
    if not _ROW_NAME.fullmatch(name):
        raise ValueError(f"variant name {name!r} (in {text!r}): use letters, digits and . _ + - (it names the "
                         "variant's folder).")
    overrides: dict[str, str] = {}
    for item in _NEXT_OVERRIDE.split(settings) if settings.strip() else []:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key or not value.strip():
            raise ValueError(f"variant {name!r}: overrides are KEY=VALUE, got {item!r}.")
        if key in overrides:
            raise ValueError(f"variant {name!r} sets {key!r} twice.")
        if key in RESERVED_OVERRIDES:
            raise ValueError(f"variant {name!r}: --{key} is set by the comparison for every run; the method goes "
                             "after '=' (NAME=METHOD:...).")
        overrides[key] = value.strip()
    return Row(name, method, overrides)


def comparison_rows(config_files: Sequence[str | os.PathLike], methods: Sequence[str] | None = None,
                    variants: Sequence[Row] = ()) -> list[Row]:
    """The rows of a comparison, in order: each name of ``methods`` (a method, or a variant's name, which places
    that variant), then the variants ``methods`` does not name, in their order.

    Args:
        config_files: the bundle's config files.
        methods: plain methods and variant names in row order; default :func:`bundle_methods`.
        variants: named variants (:func:`parse_variant`).

    Raises:
        ValueError: a method the bundle does not configure (named or run by a variant), a repeated name, a
            variant named like a method (its cells would share the method's folder), or a variant override of a
            key the comparison sets.
    """
    supported = bundle_methods(config_files)
    variants = {v.name: v for v in _unique(list(variants), "variant", key=lambda v: v.name, allow_empty=True)}
    clash = sorted(set(variants).intersection(METHODS))
    if clash:
        raise ValueError(f"variants {clash} are named like methods; give a variant a name of its own "
                         f"(e.g. {clash[0]}_probe).")
    names = _unique(supported if methods is None else methods, "method")
    rows = [variants.get(name) or Row(name, name) for name in names]
    rows += [v for name, v in variants.items() if name not in names]
    unsupported = sorted({row.method for row in rows if row.method not in supported})
    if unsupported:
        raise ValueError(f"methods {unsupported} are not configured by {[str(f) for f in config_files]}; "
                         f"it supports {list(supported)} (a method needs an entry in loss_kwargs"
                         + (f"; variants: {list(variants)}" if variants else "") + ").")
    for row in rows:
        reserved = RESERVED_OVERRIDES.intersection(row.overrides)
        if reserved:
            raise ValueError(f"row {row.name!r} may not override {sorted(reserved)}: the comparison sets them.")
    return rows


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


def cell_dir(output_dir: str | os.PathLike, row: str, seed: int) -> Path:
    """The folder of one cell: ``<output_dir>/<row>/seed<seed>`` (a plain method's row is named after it)."""
    return Path(output_dir) / row / f"seed{seed}"


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


def _stale(run_dir: Path, request: dict[str, Any]) -> str | None:
    """Why the finished cell in ``run_dir`` is not the one requested now (None: it is, or it records nothing)."""
    try:
        recorded = json.loads((run_dir / CELL_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a cell from before cell.json was written: its metrics.json is trusted, as it always was
    recorded = recorded if isinstance(recorded, dict) else {}
    changed = [key for key in request if recorded.get(key) != request[key]]
    if not changed:
        return None
    return (f"its {CELL_FILE} records {json.dumps({k: recorded.get(k) for k in changed})}, asked now "
            f"{json.dumps({k: request[k] for k in changed})}")


def run_cell(config_files: Sequence[str | os.PathLike], method: str, seed: int, output_dir: str | os.PathLike,
             overrides: dict[str, str] | None = None, overwrite: bool = False,
             launcher: Sequence[str] = BUNDLE_LAUNCHER, echo: TextIO | None = None, row: str | None = None) -> CellRun:
    """Run (or reuse) one cell of row ``row`` (default: the plain method's row) into :func:`cell_dir` of
    ``output_dir``; ``overrides`` are all of the cell's (the comparison's merged with the row's). A finished
    cell whose ``cell.json`` records another method, seed or overrides runs again. A failure is returned, not
    raised."""
    row = row or method
    run_dir = cell_dir(output_dir, row, seed)
    metrics_path, log = run_dir / "metrics.json", run_dir / "run.log"
    request = {"row": row, "method": method, "seed": seed,
               "overrides": {key: str(value) for key, value in (overrides or {}).items()}}
    where = f"{row} seed {seed}"
    if metrics_path.is_file() and not overwrite:
        try:
            metrics = _read_metrics(metrics_path)
        except ValueError as err:
            logger.warning("%s; running %s again", err, where)
        else:
            stale = _stale(run_dir, request)
            if stale is None:
                logger.info("%s: %s exists, not run again (--overwrite re-runs it)", where, metrics_path)
                return CellRun(method, seed, "reused", run_dir, log, metrics=metrics, row=row)
            logger.warning("%s: %s; running it again", where, stale)
    metrics_path.unlink(missing_ok=True)  # a failed re-run must not leave the old result looking current
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CELL_FILE).write_text(json.dumps(request, indent=2), encoding="utf-8")
    command = bundle_command(config_files, method, run_dir, seed, overrides, launcher)
    logger.info("%s: running (log: %s)", where, log)

    def outcome(status: str, returncode: int | None = None, **found: Any) -> CellRun:
        return CellRun(method, seed, status, run_dir, log, returncode, row=row, **found)

    try:
        returncode = run_bundle(command, log, echo)
    except OSError as err:  # the launcher itself could not start
        return outcome("failed", error=f"could not start {command[0]!r}: {err}")
    if returncode != 0:
        return outcome("failed", returncode, error=f"exit status {returncode}")
    try:
        metrics = _read_metrics(metrics_path)
    except ValueError as err:
        return outcome("failed", returncode, error=str(err))
    return outcome("ran", returncode, metrics=metrics)


def _unique(values: Sequence, what: str, key=lambda value: value, allow_empty: bool = False) -> list:
    values = list(values)
    if not values and not allow_empty:
        raise ValueError(f"a comparison needs at least one {what}.")
    keys = [key(value) for value in values]
    if len(set(keys)) != len(keys):
        raise ValueError(f"each {what} may be given once, got {keys}.")
    return values


def compare_methods(config_files: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                    methods: Sequence[str] | None = None, seeds: Sequence[int] = (0,),
                    overrides: dict[str, str] | None = None, overwrite: bool = False,
                    launcher: Sequence[str] | None = None, echo: TextIO | None = None,
                    variants: Sequence[Row] = ()) -> list[CellRun]:
    """Run every row with every seed, seed by seed (each seed's rows together: a paired replicate).

    Args:
        config_files: the bundle's config files (``train.json`` first, then overlays).
        output_dir: the comparison's folder; cell (row R, seed S) runs in ``<output_dir>/<R>/seed<S>``.
        methods: methods (and variant names) in row order; default :func:`bundle_methods`
            (see :func:`comparison_rows`).
        seeds: ``--seed`` values; every row runs once with each.
        overrides: bundle overrides given to every run (``{"pretrain_epochs": "10", ...}``).
        overwrite: run cells again whose ``metrics.json`` exists.
        launcher: the command that runs a bundle; default :data:`BUNDLE_LAUNCHER` (tests inject a fake one).
        echo: where the runs' output is streamed besides their logs (None: logs only; the CLI streams to stdout).
        variants: named rows of a method with overrides of their own (:func:`parse_variant`); a variant's
            overrides are applied after ``overrides``.

    Returns:
        One :class:`CellRun` per cell, seed-major (all rows of the first seed, then the next seed).
        Failed cells are returned, not raised.

    Raises:
        ValueError: no config file, a method the bundle does not configure, a repeated row or seed, a variant
            named like a method, or a reserved key in ``overrides`` or a variant's.
    """
    if not config_files:
        raise ValueError("compare_methods needs at least one bundle config file.")
    rows = comparison_rows(config_files, methods, variants)
    seeds = [int(s) for s in _unique(seeds, "seed")]
    reserved = RESERVED_OVERRIDES.intersection(overrides or {})
    if reserved:
        raise ValueError(f"overrides may not set {sorted(reserved)}: the comparison sets them for every run.")
    launcher = BUNDLE_LAUNCHER if launcher is None else launcher
    return [run_cell(config_files, row.method, seed, output_dir, {**(overrides or {}), **row.overrides}, overwrite,
                     launcher, echo, row=row.name)
            for seed in seeds for row in rows]
