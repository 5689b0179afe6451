"""State checkpoints of a training run, and resuming from them in whichever phase they were taken.

A training run has two checkpointed phases, :data:`PHASES`: contrastive pre-training and fine-tuning (a linear
probe is fine-tuning with a frozen encoder). Each phase's trainer carries a :class:`PhaseCheckpoint` handler that
writes the phase's complete state to ``<output_dir>/checkpoints/`` every ``interval`` epochs, when the phase
completes and when a pre-emption signal arrives:

- ``trainer``: the engine's epoch and iteration, and MONAI's best-metric bookkeeping (``best_metric``,
  ``best_metric_epoch``) through ignite's ``state_dict_user_keys``;
- ``network`` (encoder, projection head, regressor and every buffer: target statistics, FDS statistics),
  ``optimizer``, the AMP ``scaler`` (with CUDA), and what the bundle adds (``lr_scheduler``; for fine-tuning the
  ``validator``'s best metric and the :class:`~supremix_med.engines.SelectedModel`);
- ``loader``: the training DataLoader's generator (the shuffling order; the sampler's epoch follows the trainer's
  epoch, which MONAI passes to a ``DistributedSampler`` at every epoch start) and the random states of the
  dataset's MONAI transforms (they draw in the main process when ``num_workers`` is 0); a loader with its own
  ``state_dict`` (:class:`~supremix_med.data.device_cache.DeviceCacheLoader`: the epoch that seeds its permutation) saves that;
- ``rng``: the Python, NumPy, torch and CUDA random states of every rank.

:class:`RunCheckpoints` owns the folder: files are written atomically, the newest ``keep`` are kept, and a newest
file that cannot be read is set aside (``.corrupt``) with a warning naming it, falling back to the one before.
ignite's ``Checkpoint`` (and MONAI's ``CheckpointSaver`` built on it) removes the oldest file before writing the
new one and forgets its files when the process ends; a pre-emptible run needs the reverse, so the files are
handled here and ignite's ``Checkpoint.load_objects`` restores the objects.

Resuming from an epoch-boundary checkpoint continues exactly where the uninterrupted run would be (same batches,
same random draws; on CPU with deterministic settings the same results). A checkpoint written on a signal in the
middle of an epoch resumes with that epoch's remaining iterations, taken from a new pass over the loader (ignite's
semantics), so only the epoch-boundary resume is exact.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch.utils.data import DataLoader

from supremix_med.engines.distributed import barrier, gather_to_all, rank, world_size, writes_files
from supremix_med.engines.model_set import save_weights, unwrap
from supremix_med.engines.step_options import loss_from_output
from supremix_med.io import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "PHASES", "PhaseCheckpoint", "ResumePoint", "RunCheckpoints", "random_states",
           "set_random_states"]

logger = logging.getLogger(__name__)

#: The checkpointed phases of a training run, in the order they run.
PHASES = ("pretrain", "finetune")
#: Version of the checkpoint layout; a file of another version is not resumed from.
CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^checkpoint-(\d{6})-([a-z]+)-epoch(\d+)-iteration(\d+)\.pt$")
#: Engine state attributes that MONAI's workflows keep and a checkpoint must restore.
_BEST_METRIC_KEYS = ("best_metric", "best_metric_epoch")


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def random_states() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA random states (tensors and plain values only, so a
    checkpoint loads with ``weights_only=True``). The CUDA state is the current device's (each rank's own GPU),
    ``None`` when the process has not used CUDA."""
    return {
        "python": random.getstate(),
        "numpy": _numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if _cuda_in_use() else None,
    }


def set_random_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`random_states` returned (the CUDA state on the current device, when both use CUDA)."""
    random.setstate(_python_state(states["python"]))
    np.random.set_state(_numpy_tuple(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and _cuda_in_use():
        torch.cuda.set_rng_state(states["cuda"])


def _numpy_state(state: tuple) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(position), int(has_gauss), float(cached)


def _numpy_tuple(state) -> tuple:
    kind, keys, position, has_gauss, cached = state
    return kind, keys.numpy().astype(np.uint32), int(position), int(has_gauss), float(cached)


def _python_state(state) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def _randomizables(root: Any) -> list[Any]:
    """Objects with a NumPy random state ``R`` reachable from ``root`` through lists, tuples and attributes, in a
    fixed order (the walk of MONAI's ``set_rnd``, continued into composed transforms)."""
    found: list[Any] = []
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen or isinstance(obj, (np.ndarray, torch.Tensor, str, bytes)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item)
            return
        if not hasattr(obj, "__dict__"):
            return
        if isinstance(getattr(obj, "R", None), np.random.RandomState):
            found.append(obj)
        for key, value in vars(obj).items():
            if not key.startswith("__") and key != "R":
                walk(value)

    walk(root)
    return found


def _loader_state(loader: DataLoader) -> dict[str, Any]:
    """The loader's generator state and its dataset transforms' random states; for a loader that keeps its own
    state (``state_dict``, e.g. :class:`~supremix_med.data.device_cache.DeviceCacheLoader`'s epoch), that state."""
    if hasattr(loader, "state_dict"):
        return {"own": loader.state_dict()}
    generator = getattr(loader, "generator", None)
    dataset = loader.dataset
    transforms = _randomizables(getattr(dataset, "transform", dataset))
    return {"generator": None if generator is None else generator.get_state(),
            "transforms": [_numpy_state(t.R.get_state()) for t in transforms]}


def _load_loader_state(loader: DataLoader, state: Mapping[str, Any]) -> None:
    if "own" in state:
        loader.load_state_dict(state["own"])
        return
    if state["generator"] is not None:
        loader.generator.set_state(state["generator"])
    dataset = loader.dataset
    transforms = _randomizables(getattr(dataset, "transform", dataset))
    if len(transforms) != len(state["transforms"]):
        raise ValueError(f"the checkpoint holds the random states of {len(state['transforms'])} random transforms, "
                         f"the training data has {len(transforms)}: the transforms changed since it was written.")
    for transform, saved in zip(transforms, state["transforms"]):
        transform.R.set_state(_numpy_tuple(saved))


def _finish_epoch_pass(engine: Engine) -> None:
    """Let the loader pass of the epoch that just ended run out now rather than when the next epoch starts.

    With ``drop_last``, the sampler still holds the dropped samples when an epoch's last batch is done; ignite asks the
    spent iterator for one more batch when the next epoch starts, and a shuffling sampler draws its next permutation
    from the loader's generator then. Running it out before a checkpoint puts that draw into the checkpoint; the
    draws happen in the same order either way. (ignite keeps the iterator of a pass over the data in
    ``_dataloader_iter``; an epoch shorter than the loader continues that pass and is left alone.)
    """
    iterator = getattr(engine, "_dataloader_iter", None)
    data = engine.state.dataloader
    if iterator is None or not isinstance(data, DataLoader) or engine.state.epoch_length != len(data):
        return
    for _ in iterator:
        pass


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python numbers and tensors (loadable with ``weights_only``);
    dicts keep their type and a state dict its ``_metadata``."""
    if isinstance(value, dict):
        plain = (type(value) if type(value) in (dict, OrderedDict) else dict)((k, _plain(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):
            plain._metadata = value._metadata
        return plain
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


def _track_best_metric(engine: Engine) -> None:
    """Make ``engine.state_dict()`` hold MONAI's best-metric bookkeeping (ignite's ``state_dict_user_keys``)."""
    for key in _BEST_METRIC_KEYS:
        if hasattr(engine.state, key) and key not in engine.state_dict_user_keys:
            engine.state_dict_user_keys.append(key)


class ResumePoint:
    """A checkpoint chosen to resume from: its file and content.

    Attributes:
        path: the file.
        payload: what :meth:`PhaseCheckpoint.save` wrote: ``phase``, ``epoch``, ``iteration``, ``complete``,
            ``world_size``, ``run_id``, ``state`` (object name -> state dict) and ``rng`` (one entry per rank).
    """

    def __init__(self, path: Path, payload: dict[str, Any]) -> None:
        self.path, self.payload = path, payload

    @property
    def phase(self) -> str:
        return self.payload["phase"]

    def describe(self) -> str:
        """``"<file> (finetune epoch 3, iteration 24)"``."""
        p = self.payload
        done = ", phase complete" if p["complete"] else ""
        return f"{self.path.name} ({p['phase']} epoch {p['epoch']}, iteration {p['iteration']}{done})"


class RunCheckpoints:
    """The checkpoints folder of one training run: writing, keeping the newest, resuming.

    Args:
        directory: ``<output_dir>/checkpoints``.
        interval: checkpoint every ``interval`` epochs (0: only when a phase completes and on a signal).
        keep: how many checkpoint files to keep (the newest), at least 1.

    Attributes:
        resume_point: the checkpoint the run resumes from, until its phase has been restored.
    """

    def __init__(self, directory: str | os.PathLike, interval: int = 1, keep: int = 2) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
            raise ValueError(f"checkpoint_interval must be an integer >= 0 (0: only at the end of each phase), "
                             f"got {interval!r}.")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep_checkpoints must be an integer >= 1, got {keep!r}.")
        self.directory, self.interval, self.keep = Path(directory), interval, keep
        self.resume_point: ResumePoint | None = None
        self._phases: dict[str, PhaseCheckpoint] = {}

    def files(self) -> list[Path]:
        """The checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)

    def register(self, handler: PhaseCheckpoint) -> None:
        """Make ``handler``'s phase resumable."""
        if handler.phase not in PHASES:
            raise ValueError(f"unknown phase {handler.phase!r}; the phases are {PHASES}.")
        self._phases[handler.phase] = handler

    def write(self, payload: dict[str, Any]) -> Path:
        """Write a checkpoint atomically (rank 0 only), then remove all but the newest ``keep``."""
        files = self.files()
        number = int(_NAME.match(files[-1].name).group(1)) + 1 if files else 1
        path = self.directory / (f"checkpoint-{number:06d}-{payload['phase']}-epoch{payload['epoch']}-"
                                 f"iteration{payload['iteration']}.pt")
        atomic_write(path, lambda tmp: torch.save(_plain(payload), tmp), durable=True)
        for old in self.files()[:-self.keep]:
            old.unlink()
        return path

    def newest(self) -> ResumePoint | None:
        """The newest checkpoint that loads; newer ones that do not are renamed ``*.corrupt``, with a warning."""
        for path in reversed(self.files()):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError(f"not a checkpoint of format {CHECKPOINT_FORMAT}")
            except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as error:
                logger.warning("checkpoint %s cannot be read (%s: %s); set aside as %s.corrupt, trying the one before",
                               path, type(error).__name__, error, path.name)
                path.rename(path.with_name(path.name + ".corrupt"))
                continue
            return ResumePoint(path, payload)
        return None

    def load(self, path: str | os.PathLike) -> ResumePoint:
        """Read the checkpoint at ``path`` (on ranks that did not choose it)."""
        path = Path(path)
        return ResumePoint(path, torch.load(path, map_location="cpu", weights_only=True))

    def run(self, phase: str, engine: Engine) -> None:
        """Run ``phase``'s trainer: from the start, or from the resume point, or not at all when the run resumes in
        a later phase.

        Raises:
            ValueError: the resume point's phase is skipped by this config, or lies beyond its epochs.
        """
        point = self.resume_point
        if point is None:
            engine.run()
            return
        if PHASES.index(phase) < PHASES.index(point.phase):
            logger.info("%s is complete in the checkpoint; resuming in %s", phase, point.phase)
            return
        if phase != point.phase:
            raise ValueError(f"cannot resume: the checkpoint {point.path} is in {point.phase}, which this run skips "
                             f"(no {point.phase} epochs); resume with the epochs it was written with.")
        self.resume_point = None
        max_epochs = engine.state.max_epochs
        self._phases[phase].load(point.payload)
        logger.info("resumed %s from %s", phase, point.describe())
        if engine.state.epoch > max_epochs:
            raise ValueError(f"cannot resume: the checkpoint {point.path} is at {phase} epoch {engine.state.epoch}, "
                             f"beyond the {max_epochs} epochs this run asks for.")
        engine.state.max_epochs = max_epochs  # the epochs asked for now: a finished phase may be extended
        if engine.state.iteration >= max_epochs * engine.state.epoch_length:  # nothing left: ignite would restart
            if not point.payload["complete"]:
                self._phases[phase].completed(engine)
            return
        engine.run()


class PhaseCheckpoint:
    """Trainer handler: the checkpoints, final weights and progress of one phase of a training run.

    Every rank runs it (the random states of every rank are gathered; the pre-emption request is agreed on); rank 0
    writes. Attach it last among the trainer's handlers that change state at epoch end (FDS, validation, learning
    rate), so a checkpoint holds the state after them. A trainer run while the run directory is not open (a script
    running the recipe's engines by hand) writes nothing into a folder nobody checked: the handler stays idle,
    with a warning.

    Args:
        run: the run's :class:`~supremix_med.engines.RunDirectory` (its ``checkpoints``, ``preemption``,
            ``progress``, ``model_files`` and ``run_id``).
        phase: one of :data:`PHASES`.
        objects: more objects with ``state_dict`` / ``load_state_dict`` to checkpoint, by name (the learning-rate
            scheduler; for fine-tuning the validator and the selected model). The trainer, its network, optimizer,
            AMP scaler and training loader are always included.
        final: file name -> module whose weights are written (stamped with the run id) when the phase completes,
            e.g. ``{"pretrained_encoder.pt": encoder}``, into the run's ``model_files``; the model set publishes them.

    Example (``pretrain#recipe_handlers``)::

        {"_target_": "supremix_med.engines.PhaseCheckpoint", "run": "@run_directory", "phase": "pretrain",
         "objects": {"lr_scheduler": "@pretrain#lr_scheduler"}, "final": {"pretrained_encoder.pt": "$@network.encoder"}}
    """

    def __init__(self, run, phase: str, objects: Mapping[str, Any] | None = None,
                 final: Mapping[str, torch.nn.Module] | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; the phases are {PHASES}.")
        self.run, self.phase = run, phase
        self.objects, self.final = dict(objects or {}), dict(final or {})
        self.engine: Engine | None = None
        self._epoch_start = 0.0
        self._losses: list[torch.Tensor] = []

    def attach(self, engine: Engine) -> None:
        """Register with the run's checkpoints and handle the trainer's iteration, epoch and completion events."""
        self.engine = engine
        for obj in (engine, *self.objects.values()):
            if isinstance(obj, Engine):
                _track_best_metric(obj)
        self.run.checkpoints.register(self)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @property
    def active(self) -> bool:
        """Whether the run directory is open (``run_directory.start()`` ran), so the phase may write."""
        return self.run.run_id is not None

    def _started(self, engine: Engine) -> None:
        if not self.active:
            logger.warning("%s runs while the run directory %s is not open (run_directory.start() did not run): no "
                           "checkpoints, final weights or progress are written", self.phase, self.run.output_dir)

    def checkpointed(self) -> dict[str, Any]:
        """Object name -> object of everything this phase's checkpoints hold (``loader`` aside)."""
        engine = self.engine
        objects: dict[str, Any] = {"trainer": engine, "network": unwrap(engine.network), "optimizer": engine.optimizer}
        if getattr(engine, "scaler", None) is not None:
            objects["scaler"] = engine.scaler
        objects.update(self.objects)
        return objects

    def save(self, complete: bool = False) -> None:
        """Write a checkpoint of the current state (all ranks call it; rank 0 writes)."""
        engine = self.engine
        if engine.state.iteration % engine.state.epoch_length == 0:
            _finish_epoch_pass(engine)
        rng = gather_to_all(random_states())
        if not writes_files():
            return
        state = {name: obj.state_dict() for name, obj in self.checkpointed().items()}
        state["loader"] = _loader_state(engine.data_loader)
        payload = {"format": CHECKPOINT_FORMAT, "run_id": self.run.run_id, "phase": self.phase,
                   "epoch": engine.state.epoch, "iteration": engine.state.iteration, "complete": complete,
                   "world_size": world_size(), "time": time.time(), "state": state, "rng": rng}
        path = self.run.checkpoints.write(payload)
        logger.info("checkpoint %s", path)

    def load(self, payload: Mapping[str, Any]) -> None:
        """Restore a checkpoint of this phase written by :meth:`save` (random states last)."""
        state = payload["state"]
        Checkpoint.load_objects(to_load=self.checkpointed(), checkpoint=state)
        _load_loader_state(self.engine.data_loader, state["loader"])
        set_random_states(payload["rng"][rank()])

    def completed(self, engine: Engine) -> None:
        """Write the phase's final weights, then a checkpoint marking the phase complete."""
        if not self.active:
            return
        if writes_files():
            for name, module in self.final.items():
                save_weights(module.state_dict(), self.run.model_files / name, self.run.run_id)
        self.save(complete=True)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start, self._losses = time.monotonic(), []

    def _iteration_completed(self, engine: Engine) -> None:
        if not self.active:
            return
        # kept on the device: reading it here would wait for the GPU every step; read once at the epoch's end
        self._losses.append(torch.as_tensor(loss_from_output(engine.state.output)).detach())
        at_epoch_end = engine.state.iteration % engine.state.epoch_length == 0
        if not at_epoch_end and self.run.preemption.requested():
            self._stop(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if not self.active:
            return
        epoch = engine.state.epoch
        if epoch < engine.state.max_epochs:  # the last epoch's checkpoint is written on completion
            stop = self.run.preemption.requested()
            if stop or (self.run.checkpoints.interval and epoch % self.run.checkpoints.interval == 0):
                self.save()
            if stop:
                self._stop(engine, saved=True)
        if writes_files():
            losses = torch.stack(self._losses).float().tolist() if self._losses else []
            self.run.progress.epoch_completed(self.phase, engine, time.monotonic() - self._epoch_start,
                                              losses, self.objects.get("validator"))

    def _stop(self, engine: Engine, saved: bool = False) -> None:
        """Checkpoint (unless ``saved``), mark the run interrupted, and end the trainer's run without completing."""
        if not saved:
            self.save()
        self.run.interrupted()
        barrier()  # no rank leaves (and makes torchrun stop the others) before rank 0 has written
        engine.terminate(skip_completed=True)
