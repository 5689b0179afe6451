"""A training run's model set: the files inference needs, published together, each naming the run it comes from.

The model set is the content of ``ckpt_dir``:

======================== ===========================================================================
``model.pt``             the weights validation selected (a state dict)
``model_final.pt``       the weights at the end of fine-tuning
``pretrained_encoder.pt``  the encoder after contrastive pre-training (methods that pre-train)
``model_config.json``    the :func:`~supremix_med.networks.build_model` arguments
``preprocessing.json``   the fingerprint of the data's preprocessing (when there is one)
``bias_correction.json`` the brain-age gap correction (bundles with one)
======================== ===========================================================================

Every file carries the run id (:data:`~supremix_med.io.RUN_ID_KEY`): a ``"run_id"`` entry in the JSON files, and
in the weight files the state dict's metadata (``state_dict._metadata[""]["run_id"]``, which ``torch.save`` keeps
and ``load_state_dict`` ignores), so :func:`check_model_set` can refuse a folder that mixes files of two runs.

:func:`publish_model_set` is all or nothing: it writes the whole set into a hidden folder beside ``ckpt_dir`` and
then exchanges the two folders in one rename (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, between
which ``ckpt_dir`` is briefly absent but never mixed). A process killed at any point leaves either the previous set
or the new one whole.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from supremix_med.engines.distributed import barrier, writes_files
from supremix_med.engines.workflow import FINGERPRINT
from supremix_med.io import RUN_ID_KEY, atomic_write, atomic_write_json
from supremix_med.networks.builders import MODEL_CONFIG

__all__ = ["BIAS_CORRECTION", "MODEL_WEIGHTS", "MODEL_SET_FILES", "ModelSetPublisher", "check_model_set",
           "file_run_id", "publish_model_set", "save_weights", "unwrap"]

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.pt"
BIAS_CORRECTION = "bias_correction.json"
#: The files of a model set that name their run, weights first.
MODEL_SET_FILES = (MODEL_WEIGHTS, "model_final.pt", "pretrained_encoder.pt", MODEL_CONFIG, FINGERPRINT,
                   BIAS_CORRECTION)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, or ``network`` itself."""
    wrapped = isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    return network.module if wrapped else network


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, run_id: str) -> None:
    """Write ``state_dict`` to ``path`` atomically, stamped with ``run_id`` in its metadata."""
    stamped = OrderedDict(state_dict)
    metadata = OrderedDict(getattr(state_dict, "_metadata", None) or {})
    metadata[""] = {**metadata.get("", {}), RUN_ID_KEY: run_id}
    stamped._metadata = metadata  # type: ignore[attr-defined]
    atomic_write(path, lambda tmp: torch.save(stamped, tmp))


def file_run_id(path: str | os.PathLike) -> str | None:
    """The run id a model-set file carries (``None``: none, e.g. written before run ids existed).

    Raises:
        ValueError: the file cannot be read as a state dict or a JSON object (the message names it).
    """
    path = Path(path)
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            return record.get(RUN_ID_KEY) if isinstance(record, dict) else None
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: cannot be read ({type(error).__name__}: {error}).") from error
    return (getattr(state, "_metadata", None) or {}).get("", {}).get(RUN_ID_KEY)


def check_model_set(folder: str | os.PathLike) -> str | None:
    """Refuse a models folder whose files come from different runs; return the run id they share.

    Returns:
        The run id of every file, or ``None`` for a set written before run ids existed (no file has one).

    Raises:
        FileNotFoundError: ``folder`` holds no ``model.pt`` (the message says to train first).
        ValueError: the files name different runs, or some name a run and others none (the message names each
            file with its run).
    """
    folder = Path(folder)
    if not (folder / MODEL_WEIGHTS).is_file():
        raise FileNotFoundError(f"no trained model at {folder / MODEL_WEIGHTS}: train one first, or point ckpt_dir at "
                                f"the models folder of a training run.")
    ids = {name: file_run_id(folder / name) for name in MODEL_SET_FILES if (folder / name).is_file()}
    if len(set(ids.values())) == 1:
        return next(iter(ids.values()))
    groups: dict[str | None, list[str]] = {}
    for name, run_id in ids.items():
        groups.setdefault(run_id, []).append(name)
    described = "; ".join(f"{', '.join(names)} (run {run_id or 'unknown: no run id'})" for run_id, names in groups.items())
    raise ValueError(f"{folder} mixes files of different training runs: {described}; use the models folder of "
                     f"one run as it was published.")


def publish_model_set(folder: str | os.PathLike, run_id: str,
                      writers: Mapping[str, Callable[[Path], object]]) -> None:
    """Make ``folder`` hold exactly the files ``writers`` write, all at once.

    Args:
        folder: the models folder (``ckpt_dir``); its parent must be writable and ``folder`` itself must not be a
            mount point (it is replaced by a rename).
        run_id: the publishing run; names the staging folder.
        writers: file name -> ``write(path)``, each writing one file of the set at ``path``.

    The set is written into ``.<folder name>.<run_id>.partial`` beside ``folder``, then exchanged with ``folder``.
    Staging folders that a killed publication left beside ``folder`` are removed first; the previous set (this
    run's, or an empty folder: a run never publishes over another run's set) is removed after the exchange.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*folder.parent.glob(f".{folder.name}.*.partial"), *folder.parent.glob(f".{folder.name}.*.previous")]:
        shutil.rmtree(leftover)
    staged = folder.parent / f".{folder.name}.{run_id}.partial"
    staged.mkdir()
    for name, write in writers.items():
        write(staged / name)
    previous = _swap_in(staged, folder)
    if previous is not None:
        shutil.rmtree(previous)
    logger.info("published the model set of run %s in %s: %s", run_id, folder, sorted(writers))


def _swap_in(staged: Path, folder: Path) -> Path | None:
    """Put ``staged`` at ``folder``; return where the previous content of ``folder`` now is (``None``: none)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        os.rename(staged, folder)
        return None
    if _exchange(staged, folder):
        return staged
    previous = staged.with_suffix(".previous")
    os.rename(folder, previous)
    os.rename(staged, folder)
    return previous


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic rename (Linux ``renameat2``); ``False`` where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without exchange (e.g. NFS)
        return False
    raise OSError(code, os.strerror(code), str(second))


def _json_writer(record: Mapping[str, Any], run_id: str) -> Callable[[Path], None]:
    return lambda path: atomic_write_json({**record, RUN_ID_KEY: run_id}, path)


def _copy_writer(source: Path) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        try:
            os.link(source, path)  # the staged file is replaced, never modified, so a hard link is a safe copy
        except OSError:
            shutil.copyfile(source, path)
    return write


class ModelSetPublisher:
    """When the test evaluator starts, publish the run's model set (rank 0; every rank waits for it).

    Attach it after :class:`~supremix_med.engines.SelectedModelLoader` and the bias correction, so ``model.pt`` is
    the selected model that the test report then evaluates.

    Args:
        run: the training run's :class:`~supremix_med.engines.RunDirectory`: its ``ckpt_dir`` is the folder
            published, its ``run_id`` stamps the files, its ``fingerprint`` is ``preprocessing.json`` and its
            ``model_files`` folder holds the rest of the set (``model_final.pt``, ``pretrained_encoder.pt``, what
            the bundle saved for its model).
        network: the model; its current weights become ``model.pt``.
        model_config: the ``build_model`` arguments, ``model_config.json``.
        bias_correction: the test evaluator's :class:`~supremix_med.engines.BiasCorrectionHandler`, or ``None``.
    """

    def __init__(self, run, network: nn.Module, model_config: Mapping[str, Any], bias_correction=None) -> None:
        self.run, self.network, self.model_config, self.bias_correction = run, network, dict(model_config), bias_correction

    def attach(self, engine: Engine) -> None:
        """Publish when ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def writers(self) -> dict[str, Callable[[Path], object]]:
        """File name -> writer of every file of this run's model set."""
        run_id = self.run.run_id
        state = unwrap(self.network).state_dict()
        files: dict[str, Callable[[Path], object]] = {MODEL_WEIGHTS: lambda path: save_weights(state, path, run_id)}
        files.update({name: _copy_writer(path) for name, path in self.run.model_set_files().items()})
        files[MODEL_CONFIG] = _json_writer(self.model_config, run_id)
        if self.run.fingerprint is not None:
            files[FINGERPRINT] = _json_writer(self.run.fingerprint, run_id)
        correction = None if self.bias_correction is None else self.bias_correction.correction
        if correction is not None:
            files[BIAS_CORRECTION] = _json_writer(correction.to_dict(), run_id)
        return files

    def __call__(self, engine: Engine | None = None) -> None:
        if writes_files():
            publish_model_set(self.run.ckpt_dir, self.run.run_id, self.writers())
        barrier()
