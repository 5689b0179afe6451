"""One run, one folder: ``run.json``, never mixing two runs' files, ``--resume`` and ``--overwrite``.

Every bundle workflow owns its output folder through a :class:`RunDirectory` (``run_directory`` in the configs):
training owns ``output_dir`` and ``ckpt_dir``, ``evaluate.json`` its report folder ``<output_dir>/eval``, inference
the folder its predictions go to. Its :meth:`~RunDirectory.start` is the first step of the workflow's ``run``:

- a folder holding another run (its ``run.json``, or files such a run writes: :data:`RUN_ITEMS`) is refused with
  one line naming the folder and the two ways on: ``--resume True`` continues that run (training only), and
  ``--overwrite True`` moves its files to ``<output_dir>/previous/<its start time>/`` (nothing is deleted);
- ``--resume True`` requires the run's resolved config to agree with this one except for the epoch counts and
  intervals (:data:`RESUMABLE_CHANGES`; the differing keys are listed otherwise) and the paths of the run and its
  data (a requeued job may see them elsewhere), the same data fingerprint and the
  same world size (the batches each optimisation step sees depend on it, so another world size is refused), and a
  readable checkpoint, from which the run continues in whichever phase it was taken
  (:class:`~supremix_med.engines.checkpoints.RunCheckpoints`);
- evaluation and inference first refuse a models folder whose files come from different runs
  (:func:`~supremix_med.engines.model_set.check_model_set`).

``run.json`` records what the run is and how it went (rank 0 writes it; every rank reads the decision):

========================= =============================================================================
``run_id``                ``<UTC start time>-<6 hex digits>``; stamped on every file of the model set
``kind``, ``state``       ``train`` / ``evaluate`` / ``inference``; ``running``, ``finished``, ``failed``
                          (with ``error``) or ``interrupted`` (a pre-emption signal: resume it)
``config``                the resolved config: the bundle's files merged, macros filled in, every override
``fingerprint``           the data's preprocessing fingerprint (the cache's, or the reader's)
``seed``, ``world_size``  the seed and the number of processes
``code``                  package version, git commit (and whether the checkout had changes), torch, MONAI,
                          ignite and Python versions
``models``,               evaluation / inference: the models folder read and the run id of its files
``model_run_id``
``started``, ``updated``  UTC times
``sessions``              one entry per process start: host, pid, command line, world size, the checkpoint
                          it resumed from, its end state
``previous``              where ``--overwrite`` moved the run found in the folder
========================= =============================================================================

The resolved config is the one of the MONAI ``ConfigParser`` running the workflow: MONAI hands an expression no
handle on its parser, so :func:`running_config` finds the nearest one on the call stack.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine

import supremix_med
from supremix_med.data.exclusions import EXCLUDED_FILE
from supremix_med.engines.checkpoints import PHASES, ResumePoint, RunCheckpoints
from supremix_med.engines.distributed import broadcast_from_rank0, world_size, writes_files
from supremix_med.engines.model_set import check_model_set
from supremix_med.engines.preemption import EXIT_INTERRUPTED, Preempted, PreemptionSignals
from supremix_med.engines.progress import RunProgress
from supremix_med.io import atomic_write_json

__all__ = ["CHECKPOINTS", "KINDS", "MODEL_FILES", "PREVIOUS", "PROGRESS", "RESUMABLE_CHANGES", "RUN_ITEMS", "RUN_RECORD", "STATES",
           "UNMARKED",
           "RunDirectory", "code_version", "config_differences", "running_config"]

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"
#: Where ``--overwrite`` moves the run found in a folder: ``<folder>/previous/<its start time>/``.
PREVIOUS = "previous"
#: The folder in ``checkpoints/`` holding the files of the model set until it is published.
MODEL_FILES = "model_set"
KINDS = ("train", "evaluate", "inference")
STATES = ("running", "finished", "failed", "interrupted")
_REPORT = ("metrics.json", "predictions.csv", "predictions.png", EXCLUDED_FILE)
#: What each kind of run writes into its folder, as names or glob patterns (training also owns ``ckpt_dir``):
#: found there, it marks another run (except :data:`UNMARKED`); ``--overwrite`` moves it. The report files are the
#: test report's (:func:`~supremix_med.engines.reporting.write_report`) and the exclusion report
#: (:mod:`~supremix_med.data.exclusions`); ``ordinality_<phase>.json/.png`` are the
#: :class:`~supremix_med.engines.OrdinalityHandler` s'; ``eval`` is the report folder of ``evaluate.json``, part of
#: the trained run; inference writes ``predictions.csv`` and ``report.html`` (its scan previews are inside the page).
#: Not run items: the files of MONAI's ``--tracking mlflow`` (``config_<time>.json``, written before the run opens
#: its folder, and the store ``mlruns.db`` with ``mlruns/``, which gathers many runs).
RUN_ITEMS = {
    "train": (RUN_RECORD, PROGRESS, CHECKPOINTS, *_REPORT, "ordinality_*.json", "ordinality_*.png", "tensorboard",
              "eval"),
    "evaluate": (RUN_RECORD, *_REPORT),
    "inference": (RUN_RECORD, "predictions.csv", "report.html"),
}
#: Run items that alone do not mark another run: MONAI's TensorBoard handlers write their files as soon as the
#: engines are built, which a caller may do before the run opens its folder (``ConfigWorkflow.check_properties``).
UNMARKED = ("tensorboard",)
#: Top-level config keys a resumed run may change: epoch counts and intervals.
RESUMABLE_CHANGES = ("pretrain_epochs", "finetune_epochs", "val_interval", "checkpoint_interval", "keep_checkpoints")
#: Keys never compared: the run-control switches, where the run and its data are (a requeued job may see them under
#: other paths; the data's fingerprint is compared instead), MONAI's metadata, the time-stamped file of --tracking.
_NOT_COMPARED = ("resume", "overwrite", "output_dir", "dataset_dir", "_meta_", "save_execute_config")
#: Set by ``docker build --build-arg VCS_REF=...``: the commit of an installed copy without a git checkout.
_COMMIT_ENV = "SUPREMIX_MED_GIT_COMMIT"


def running_config() -> dict[str, Any] | None:
    """The config of the MONAI ``ConfigParser`` evaluating the caller (files merged, macros resolved, overrides
    applied), or ``None`` when no parser is on the call stack."""
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner.get()
        frame = frame.f_back
    return None


def _plain_json(value: Any) -> Any:
    """``value`` as JSON would give it back (non-JSON values as their ``str``), MONAI's ``_meta_`` dropped."""
    if isinstance(value, Mapping):
        value = {k: v for k, v in value.items() if k != "_meta_"}
    return json.loads(json.dumps(value, default=str))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a config by MONAI id (``"network_config#widen_factor"``, ``"train#handlers#0"``)."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}#{key}" if prefix else str(key)).items()}
    if isinstance(node, list) and node:
        return {k: v for i, value in enumerate(node) for k, v in _flatten(value, f"{prefix}#{i}").items()}
    return {prefix: node}


def config_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The MONAI ids whose values differ between two resolved configs, ignoring :data:`RESUMABLE_CHANGES` and the
    run-control keys."""
    ignored = (*RESUMABLE_CHANGES, *_NOT_COMPARED)
    before = _flatten({k: v for k, v in _plain_json(recorded).items() if k not in ignored})
    after = _flatten({k: v for k, v in _plain_json(current).items() if k not in ignored})
    missing = object()
    return sorted(k for k in before.keys() | after.keys() if before.get(k, missing) != after.get(k, missing))


def _changed_settings(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[Any]]:
    """``{key: [recorded, current]}`` of the :data:`RESUMABLE_CHANGES` a resumed session changed."""
    missing = object()
    return {key: [recorded.get(key), current.get(key)] for key in RESUMABLE_CHANGES
            if recorded.get(key, missing) != current.get(key, missing)}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                          check=True).stdout.strip()


def code_version() -> dict[str, Any]:
    """The code a run ran with: package version, git commit and whether the checkout had uncommitted changes (when
    the package runs from a git checkout; an image records its build's commit in ``$SUPREMIX_MED_GIT_COMMIT``),
    and the versions of torch, MONAI, ignite and Python."""
    import ignite
    import monai

    root = Path(supremix_med.__file__).resolve().parents[1]
    commit, dirty = os.environ.get(_COMMIT_ENV) or None, None
    if (root / ".git").exists():
        try:
            commit = _git(root, "rev-parse", "HEAD")
            dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            pass
    return {"supremix_med": supremix_med.__version__, "git_commit": commit, "git_dirty": dirty,
            "torch": torch.__version__, "monai": monai.__version__, "ignite": ignite.__version__,
            "python": platform.python_version()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"--{name} must be True or False, got {value!r}.")
    return value


class RunDirectory:
    """The owner of one run's folder and its ``run.json``.

    Args:
        output_dir: the folder the run writes (training: ``output_dir``; evaluation: its report folder;
            inference: the predictions' folder).
        kind: ``"train"``, ``"evaluate"`` or ``"inference"``.
        ckpt_dir: training: the models folder the run publishes (:mod:`~supremix_med.engines.model_set`).
        models: evaluation and inference: the models folder they read.
        resume: continue the run in ``output_dir`` from its newest checkpoint (training only).
        overwrite: move a run found in ``output_dir`` to ``previous/`` and start anew.
        seed: the run's seed (recorded).
        fingerprint: the data's preprocessing fingerprint (recorded; a resumed run must have the same), or a
            function of no argument giving it when the run starts (the data are read then, not when the config is
            built: by rank 0, once the folder is this run's, so what the reader writes there, its exclusion report,
            never lands in another run's folder).
        checkpoint_interval, keep_checkpoints: training: checkpoint every that many epochs, keep the newest that
            many (:class:`~supremix_med.engines.checkpoints.RunCheckpoints`).
        phase_epochs: training: the epochs of the phases after pre-training (``{"finetune": n}``), for
            ``progress.json``'s time estimate while pre-training runs.
        config: the resolved config to record; default :func:`running_config`.

    Attributes:
        record: ``run.json``'s content once started.
        checkpoints: training: the run's :class:`~supremix_med.engines.checkpoints.RunCheckpoints`.
        model_files: training: ``<output_dir>/checkpoints/model_set``, where the run keeps the files of its model
            set other than ``model.pt`` and the JSON files until it publishes them: the phases' final weights, and
            what a bundle saves for its model (stsb's vocabulary and word vectors).
        preemption: the signal handlers installed while a training run runs.
        progress: training: the ``progress.json`` writer, once started.
    """

    def __init__(self, output_dir: str | os.PathLike, kind: str = "train", ckpt_dir: str | os.PathLike | None = None,
                 models: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                 seed: int | None = None, fingerprint: Mapping[str, Any] | Callable[[], Any] | None = None,
                 checkpoint_interval: int = 1,
                 keep_checkpoints: int = 2, phase_epochs: Mapping[str, int] | None = None,
                 config: Mapping[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown run kind {kind!r}; expected one of {KINDS}.")
        if kind == "train" and ckpt_dir is None:
            raise ValueError("a training run needs its ckpt_dir (the models folder it publishes).")
        if kind != "train" and models is None:
            raise ValueError(f"an {kind} run needs the models folder it reads (models=...).")
        self.output_dir, self.kind = Path(output_dir), kind
        self.ckpt_dir = None if ckpt_dir is None else Path(ckpt_dir)
        self.models = None if models is None else Path(models)
        self.resume, self.overwrite = _flag("resume", resume), _flag("overwrite", overwrite)
        self.seed = seed
        self._fingerprint = fingerprint
        self.fingerprint: dict[str, Any] | None = None
        self.checkpoints = (RunCheckpoints(self.output_dir / CHECKPOINTS, checkpoint_interval, keep_checkpoints)
                            if kind == "train" else None)
        self.model_files = None if kind != "train" else self.output_dir / CHECKPOINTS / MODEL_FILES
        self.phase_epochs = {phase: int(epochs) for phase, epochs in (phase_epochs or {}).items()}
        self.config = config
        self.preemption = PreemptionSignals()
        self.progress: RunProgress | None = None
        self.record: dict[str, Any] | None = None

    @property
    def run_id(self) -> str | None:
        """The run's id (``None`` before :meth:`start`)."""
        return None if self.record is None else self.record["run_id"]

    def model_set_files(self) -> dict[str, Path]:
        """File name -> path of every file in :attr:`model_files` (training)."""
        if self.model_files is None or not self.model_files.is_dir():
            return {}
        return {p.name: p for p in sorted(self.model_files.iterdir()) if p.is_file() and not p.name.startswith(".")}

    @property
    def model_run_id(self) -> str | None:
        """Evaluation / inference: the run id of the model set read (``None`` for a set without run ids)."""
        return None if self.record is None else self.record.get("model_run_id")

    # ------------------------------------------------------------------ start
    def start(self) -> RunDirectory:
        """Open the folder for this run (refuse, move aside, resume or start), write ``run.json``; every rank.

        Raises:
            ValueError: the folder holds another run and neither flag says what to do with it; ``--resume`` and
                ``--overwrite`` together; a resume whose config, data or world size differs; a mixed models folder.
            FileNotFoundError: ``--resume True`` with nothing to resume; no model to evaluate or apply.
        """
        if self.resume and self.overwrite:
            raise ValueError(f"--resume True and --overwrite True together: choose one (resume continues the run in "
                             f"{self.output_dir}; overwrite moves it to {self.output_dir / PREVIOUS}/ and starts anew).")
        config = _plain_json(self.config if self.config is not None else running_config() or {})
        decision: tuple = ()
        failure: Exception | None = None
        if writes_files():
            try:
                decision = ("ok", *self._open(config))
            except Exception as error:  # every rank must hear of it, or the others wait in the broadcast
                failure, decision = error, ("error", type(error).__name__, str(error))
        decision = broadcast_from_rank0(decision)
        if failure is not None:
            raise failure
        if decision[0] == "error":
            raise {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}.get(decision[1], RuntimeError)(
                decision[2])
        self.record, point = decision[1], decision[2]
        self.fingerprint = self.record.get("fingerprint")
        if self.kind == "train":
            if point is not None:
                self.checkpoints.resume_point = self._point if writes_files() else self.checkpoints.load(point)
            self.progress = RunProgress(self.output_dir / PROGRESS, self.run_id, self.phase_epochs)
            self.preemption.install()
        atexit.register(self._at_exit)
        logger.info("run %s (%s) in %s", self.run_id, self.kind, self.output_dir)
        return self

    def _open(self, config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """Rank 0's decision: the record to run with and the checkpoint to resume from (its path)."""
        model_run_id = None if self.models is None else check_model_set(self.models)
        existing, found = self._read_record(), self._found_items()
        if self.resume:
            return self._resume_record(existing, found, config)
        moved = None
        if any(p.name not in UNMARKED for p in found):
            if not self.overwrite:
                raise ValueError(self._refusal(existing, found))
            moved = self._move_aside(existing, found)
        self.fingerprint = self._read_fingerprint()
        now = _now()
        run_id = f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        record = {"run_id": run_id, "kind": self.kind,
                  "state": "running", "started": now, "updated": now, "output_dir": str(self.output_dir),
                  "ckpt_dir": None if self.ckpt_dir is None else str(self.ckpt_dir),
                  "models": None if self.models is None else str(self.models), "model_run_id": model_run_id,
                  "seed": self.seed, "world_size": world_size(), "fingerprint": self.fingerprint,
                  "code": code_version(), "config": config, "previous": None if moved is None else str(moved),
                  "sessions": [self._session(None)]}
        self._write(record)
        return record, None

    def _resume_record(self, existing: dict | None, found: list[Path], config: dict) -> tuple[dict, str]:
        where = self.output_dir
        if self.kind != "train":
            raise ValueError(f"--resume True: an {self.kind} has no checkpoints to resume; run it again with "
                             f"--overwrite True (the earlier results move to {where / PREVIOUS}/).")
        if existing is None:
            hint = (f" (only files of an earlier run: {', '.join(p.name for p in found)}; start anew with "
                    f"--overwrite True)" if found else "; start the run without --resume True")
            raise FileNotFoundError(f"nothing to resume in {where}: it holds no {RUN_RECORD}{hint}.")
        run = existing.get("run_id")
        self.fingerprint = self._read_fingerprint()
        differing = config_differences(existing.get("config", {}), config)
        if differing:
            raise ValueError(f"cannot resume run {run} in {where}: the config differs in {differing} (only epoch "
                             f"counts and intervals may change); resume with the values in {where / RUN_RECORD}, or "
                             f"start anew with --overwrite True.")
        if existing.get("fingerprint") != self.fingerprint:
            raise ValueError(f"cannot resume run {run} in {where}: its data's preprocessing fingerprint differs from "
                             f"the one in {where / RUN_RECORD} (the data changed); start anew with --overwrite True.")
        point = self.checkpoints.newest()
        if point is None:
            raise FileNotFoundError(f"nothing to resume in {where}: run {run} wrote no checkpoint (it stopped before "
                                    f"its first checkpoint); start it anew with --overwrite True.")
        written_by = point.payload.get("world_size")
        if written_by != world_size():
            raise ValueError(f"cannot resume run {run} in {where} with {world_size()} process(es): its checkpoint "
                             f"{point.path.name} was written by {written_by}; resume with the same number (torchrun "
                             f"--nnodes x --nproc_per_node), since the batches of every step depend on it.")
        self._point: ResumePoint = point
        record = dict(existing, state="running", updated=_now(), error=None, config=config)
        session = self._session(point.describe())
        changed = _changed_settings(existing.get("config", {}), config)
        if changed:
            session["changed"] = changed
        record["sessions"] = [*existing.get("sessions", []), session]
        self._write(record)
        return record, str(point.path)

    def _read_fingerprint(self) -> dict[str, Any] | None:
        """The data's fingerprint (calling the function given for it: the data are read now)."""
        fingerprint = self._fingerprint() if callable(self._fingerprint) else self._fingerprint
        return None if fingerprint is None else _plain_json(dict(fingerprint))

    def _session(self, resumed_from: str | None) -> dict[str, Any]:
        return {"started": _now(), "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                "world_size": world_size(), "cwd": os.getcwd(), "argv": list(sys.argv), "resumed_from": resumed_from}

    def _items(self) -> list[Path]:
        """The paths of :data:`RUN_ITEMS` present in the folder (patterns expanded), then ``ckpt_dir`` and the staging
        folders of a killed publication beside it."""
        items = [path for pattern in RUN_ITEMS[self.kind] for path in sorted(self.output_dir.glob(pattern))]
        if self.ckpt_dir is not None:
            items.append(self.ckpt_dir)
            items.extend(sorted(self.ckpt_dir.parent.glob(f".{self.ckpt_dir.name}.*")))  # a killed publication
        return items

    def _found_items(self) -> list[Path]:
        """The run items present (a folder counts when it holds anything)."""
        return [p for p in self._items() if p.is_file() or (p.is_dir() and any(p.iterdir()))]

    def _read_record(self) -> dict[str, Any] | None:
        path = self.output_dir / RUN_RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _refusal(self, existing: dict | None, found: list[Path]) -> str:
        if existing:
            what = f"run {existing.get('run_id')}, {existing.get('state')}, started {existing.get('started')}"
        else:
            what = f"files of an earlier run: {', '.join(p.name for p in found)}"
        if self.kind == "train":
            return (f"{self.output_dir} holds another run ({what}); continue it with --resume True, or move it to "
                    f"{self.output_dir / PREVIOUS}/ and start anew with --overwrite True.")
        return (f"{self.output_dir} holds the results of another {self.kind} ({what}); move them to "
                f"{self.output_dir / PREVIOUS}/ with --overwrite True, or choose another output_dir.")

    def _move_aside(self, existing: dict | None, found: list[Path]) -> Path:
        """Move the found run's items to ``previous/<its start time>/`` (a numbered suffix if taken)."""
        started = (existing or {}).get("started")
        stamp = (started or _now())[:19].replace("-", "").replace(":", "")
        target, n = self.output_dir / PREVIOUS / stamp, 1
        while target.exists():
            target, n = self.output_dir / PREVIOUS / f"{stamp}-{n}", n + 1
        target.mkdir(parents=True)
        for item in found:
            inside = item.resolve().is_relative_to(self.output_dir.resolve())
            destination = target / (item.resolve().relative_to(self.output_dir.resolve()) if inside else item.name)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(item), str(destination))
        logger.warning("moved the run found in %s to %s", self.output_dir, target)
        return target

    def _write(self, record: dict[str, Any]) -> None:
        atomic_write_json(record, self.output_dir / RUN_RECORD, durable=True)

    # ------------------------------------------------------------------ running
    def run_phase(self, phase: str, engine: Engine) -> None:
        """Run one phase's engine (training phases through the checkpoints, so a resumed run skips or continues
        them), recording a failure or an interruption in ``run.json``.

        Raises:
            Preempted: a pre-emption signal arrived; the checkpoint is written (exit status
                :data:`~supremix_med.engines.preemption.EXIT_INTERRUPTED`).
        """
        trained = self.checkpoints is not None and phase in PHASES
        with self._recorded(phase):
            if trained:
                self.checkpoints.run(phase, engine)
            else:
                engine.run()
            if trained and self.preemption.requested():
                self.interrupted()
                message = (f"stopped on {self.preemption.received or 'a signal to another rank'}: the checkpoint is in "
                           f"{self.checkpoints.directory}; continue with --resume True (exit status {EXIT_INTERRUPTED}).")
                logger.warning(message)
                raise Preempted(message)

    def run_step(self, step: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Return ``function(*args, **kwargs)``, a step of the run besides its engines (e.g. refusing an inference
        in which every input failed), recording its failure in ``run.json`` as :meth:`run_phase` does."""
        with self._recorded(step):
            return function(*args, **kwargs)

    @contextlib.contextmanager
    def _recorded(self, step: str) -> Iterator[None]:
        """Mark the run failed (error ``<step>: <type>: <message>``) or interrupted (Ctrl-C) when the block raises;
        a pre-emption is marked where it is detected."""
        if self.record is None:
            raise RuntimeError(f"{step!r} before start(): the run directory must be opened first.")
        try:
            yield
        except Preempted:
            raise
        except KeyboardInterrupt:
            self._set_state("interrupted", error="KeyboardInterrupt")
            raise
        except BaseException as error:
            self._set_state("failed", error=f"{step}: {type(error).__name__}: {error}")
            raise

    def interrupted(self) -> None:
        """Mark the run interrupted (its checkpoint is written)."""
        self._set_state("interrupted")

    def finish(self) -> None:
        """Mark the run finished."""
        self._set_state("finished")

    def _set_state(self, state: str, error: str | None = None) -> None:
        if self.record is None or self.record["state"] != "running":
            return
        self.record.update(state=state, updated=_now(), error=error)
        session = self.record["sessions"][-1]
        session.update(state=state, ended=self.record["updated"])
        if writes_files():
            self._write(self.record)
        self.preemption.uninstall()
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        """At interpreter exit: a run still running ended without finishing (an error before any engine ran)."""
        try:
            self._set_state("failed", error="the process ended before the run finished; see its log")
        except OSError:
            pass
