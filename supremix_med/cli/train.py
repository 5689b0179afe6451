"""``supremix-med train``: run a bundle's ``train.json`` (the shared recipe) with MONAI's bundle runner.

A thin front-end: ``python -m monai.bundle run --config_file "[<bundle>/train.json, <overlays>]" --key value ...``
in the folder that holds ``bundles/`` (:func:`~supremix_med.bundles.bundles_dir`'s parent, where the configs'
macros resolve), with absolute paths, so it runs from any working directory. Every ``--key value`` is a bundle
override exactly as ``monai.bundle run`` takes it; values of path knobs (keys ending in ``_dir``, ``_path`` or
``_file``) and relative ``sqlite:///`` URIs of ``_uri`` knobs are made absolute against the caller's working
directory.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from supremix_med.cli.refusals import DEBUG_ENV, add_debug_argument, run_cli

__all__ = ["main", "parser", "run_passing_signals", "train_command"]

PROG = "supremix-med train"
_PATH_KNOBS = ("_dir", "_path", "_file")
_URI_KNOB = "_uri"
#: The MLflow store of ``--tracking mlflow``: ``mlruns.db`` in the run's folder, where MONAI's setting puts it.
_OUTPUT_MLRUNS = "$supremix_med.engines.sqlite_tracking_uri(@output_dir)"
_SQLITE = "sqlite:///"

EXAMPLES = """\
examples:
  # brain age from T1 MRI on a preprocessed cache, SupReMix pre-training then fine-tuning
  supremix-med train ukb_brainage --dataset_dir /data/ukb_cache --output_dir runs/ukb

  # the demo settings (small network, few epochs) with another method, tracked in MLflow (both losses,
  # validation and test metrics, config, artifacts) in runs/rnc/mlruns.db; --mlflow_uri URI picks another store
  supremix-med train ukb_brainage --overlay demo --method rnc --dataset_dir cache/ --output_dir runs/rnc \\
      --tracking mlflow

  # print the bundle command without running it
  supremix-med train airfoil --output_dir runs/airfoil --dry_run

Any --key value is a knob of the bundle's train.json (see bundles/<bundle>/README.md); the model folder
<output_dir>/models is what `supremix-med predict --model` takes.
"""


def parser() -> argparse.ArgumentParser:
    """The command's argument parser (bundle overrides are the unknown ``--key value`` pairs)."""
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                                allow_abbrev=False,  # a bundle knob must never be taken for an abbreviated option
                                description="Train a bundle: pre-training, fine-tuning, test report, calibration. "
                                            "Give the bundle first, then options and --key value overrides.")
    p.add_argument("bundle", help="the bundle's name, e.g. ukb_brainage")
    p.add_argument("--overlay", action="append", default=[], metavar="NAME_OR_FILE",
                   help="a config merged over train.json: a file of the bundle (demo, multi_gpu_train) or a JSON "
                        "file; repeat for more")
    p.add_argument("--dry_run", action="store_true", help="print the command instead of running it")
    return add_debug_argument(p)


def _absolute(key: str, value: str) -> str:
    """``value`` made absolute when ``key`` is a path knob and ``value`` a plain relative path, or ``key`` a URI
    knob (``_uri``) and ``value`` a relative ``sqlite:///`` database (the run's working directory is not the
    caller's)."""
    if value[:1] in ("$", "@", "%") or value in ("None", "null", ""):
        return value
    if key.endswith(_URI_KNOB) and value.startswith(_SQLITE) and not value[len(_SQLITE):].startswith("/"):
        return _SQLITE + str(Path(value[len(_SQLITE):]).expanduser().resolve())
    if not key.endswith(_PATH_KNOBS):
        return value
    return str(Path(value).expanduser().resolve())


def train_command(bundle: str, overlays: Sequence[str] = (), overrides: dict[str, str] | None = None) -> list[str]:
    """The argv that trains ``bundle``: MONAI's runner, ``train.json`` + ``overlays``, then the overrides.

    Raises:
        ValueError: an unknown bundle (the message lists the bundles) or an overlay that is neither a file of the
            bundle nor an existing JSON file.
    """
    from supremix_med.bundles import bundle_names, bundles_dir

    folder = bundles_dir()
    if bundle not in bundle_names(folder):
        raise ValueError(f"unknown bundle {bundle!r}; the bundles are {bundle_names(folder)}.")
    files = [folder / bundle / "train.json"]
    for overlay in overlays:
        own = folder / bundle / f"{overlay}.json"
        path = own if own.is_file() else Path(overlay).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--overlay {overlay!r} is neither a config of bundle {bundle!r} ({own.name}) nor a file.")
        files.append(path)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(f) for f in files])]
    for key, value in _whole_run_tracking(dict(overrides or {})).items():
        command += [f"--{key}", _absolute(key, value)]
    return command


def _whole_run_tracking(overrides: dict[str, str]) -> dict[str, str]:
    """``--tracking mlflow`` means the recipe's whole-run MLflow record (``--mlflow_uri``, default
    ``<output_dir>/mlruns.db`` as MONAI's own setting), not MONAI's handlers, which see the fine-tuning stage only
    (:mod:`supremix_med.engines.tracking`); other ``--tracking`` values pass through."""
    if overrides.get("tracking") != "mlflow":
        return overrides
    del overrides["tracking"]
    overrides.setdefault("mlflow_uri", _OUTPUT_MLRUNS)
    return overrides


def _train(args: argparse.Namespace) -> None:
    from supremix_med.bundles import bundles_dir
    from supremix_med.compare.runs import override_pairs

    command = train_command(args.bundle, args.overlay, override_pairs(args.extra, reserved=()))
    if args.dry_run:
        print(subprocess.list2cmdline(command))
        return
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **({DEBUG_ENV: "1"} if args.debug else {})}
    code = run_passing_signals(command, cwd=bundles_dir().parent, env=env)
    if code:
        raise SystemExit(code)


def run_passing_signals(command: Sequence[str], cwd: str | os.PathLike, env: Mapping[str, str]) -> int:
    """Run ``command`` and return its exit status, passing the pre-emption signals this process receives
    (SIGTERM from ``docker stop`` to the container's first process, SIGUSR1 from SLURM) on to it, so the bundle
    run checkpoints and exits 75 as it does when started directly (a signal it also gets directly only repeats
    the request)."""
    from supremix_med.engines.preemption import PREEMPTION_SIGNALS  # the engines load only when a run starts

    child = subprocess.Popen(list(command), cwd=cwd, env=dict(env))
    previous = {signum: signal.signal(signum, lambda signum, _frame: child.send_signal(signum))
                for signum in PREEMPTION_SIGNALS}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; see the module docstring. Returns 0 (the bundle run's failure exits with its status)."""
    run_cli(parser(), argv, _train, extra=True)
    return 0
