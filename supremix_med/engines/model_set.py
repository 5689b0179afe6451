"""A training run's model set: the files inference needs, published together, each naming the run it comes from.

The model set is the content of ``ckpt_dir``:

=============================== ====================================================================
``model.pt``                    the weights validation selected (a state dict)
``model_final.pt``              the weights at the end of fine-tuning
``pretrained_encoder.pt``       the encoder after contrastive pre-training (methods that pre-train)
``model_config.json``           the :func:`~supremix_med.networks.build_model` arguments
``preprocessing.json``          the fingerprint of the data's preprocessing (when there is one)
``bias_correction.json``        the brain-age gap correction (bundles with one)
``bundle.json``, ``conformal.json``, ``reference.json``, ``validation_predictions.csv``,
``input_reference.npy``, ...    what else the run stored for inference in its ``model_files`` folder
                                (:class:`~supremix_med.engines.RunDirectory`): the bundle's name, the
                                interval and training reference (:mod:`supremix_med.inference`), a
                                bundle's own files (stsb's vocabulary and word vectors)
``model_set.json``              the manifest (:data:`MANIFEST`): the run id and every file's sha256
=============================== ====================================================================

Every file names the run it comes from: :data:`MODEL_SET_FILES` carry the run id themselves
(:data:`~supremix_med.io.RUN_ID_KEY`: a ``"run_id"`` entry in the JSON files, and in the weight files the state
dict's metadata, ``state_dict._metadata[""]["run_id"]``, which ``torch.save`` keeps and ``load_state_dict``
ignores), and the manifest names the run of all of them with their content's sha256 (the only way for a ``.npy`` or
``.csv`` file). :func:`check_model_set` refuses a folder that mixes files of two runs, naming them.

:func:`publish_model_set` is all or nothing: it writes the whole set into a hidden folder beside ``ckpt_dir`` and
then exchanges the two folders in one rename (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames, between
which ``ckpt_dir`` is briefly absent but never mixed). A process killed at any point leaves either the previous set
or the new one whole.
"""

from __future__ import annotations

import ctypes
import errno
import functools
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
from supremix_med.io import RUN_ID_KEY, atomic_write, atomic_write_json, file_sha256
from supremix_med.networks.builders import MODEL_CONFIG

__all__ = ["BIAS_CORRECTION", "MANIFEST", "MODEL_WEIGHTS", "MODEL_SET_FILES", "ModelSetPublisher", "check_model_set",
           "file_run_id", "publish_model_set", "save_weights", "unwrap"]

logger = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.pt"
BIAS_CORRECTION = "bias_correction.json"
#: The files of a model set that name their run, weights first.
MODEL_SET_FILES = (MODEL_WEIGHTS, "model_final.pt", "pretrained_encoder.pt", MODEL_CONFIG, FINGERPRINT,
                   BIAS_CORRECTION)
#: The manifest of a published model set: ``{"run_id": ..., "files": {name: sha256}}``, written last.
MANIFEST = "model_set.json"
_STAMPED_SUFFIXES = (".pt", ".json")  # files that can carry a run id themselves

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


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """``folder``'s :data:`MANIFEST` (``None``: none, a set published before manifests existed).

    Raises:
        ValueError: the file is not a manifest (the message names it).
    """
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        valid = isinstance(manifest[RUN_ID_KEY], str) and isinstance(manifest["files"], dict)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a model-set manifest ({type(error).__name__}: {error}).") from error
    if not valid:
        raise ValueError(f"{path}: not a model-set manifest (its run_id and files are not a string and an object).")
    return manifest


def _content_sha256(path: Path) -> str:
    """:func:`~supremix_med.io.file_sha256` of ``path``, read once per version of the file in a process: an
    inference run checks its models folder before it opens its own folder and again when it does."""
    status = path.stat()
    return _version_sha256(str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _version_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """The sha256 of one version of a file (inode, size and modification time tell versions apart)."""
    return file_sha256(path)


def _origin(path: Path, manifest: Mapping[str, Any] | None) -> str:
    """Where a file of a models folder comes from, as a refusal names it: ``"run <id>"`` when it names the
    manifest's run (or, without a manifest, its own), else why it is not the file that run published."""
    own = file_run_id(path) if path.suffix in _STAMPED_SUFFIXES else None
    if manifest is None:
        return f"run {own or 'unknown: no run id'}"
    run_id = manifest[RUN_ID_KEY]
    if own is not None and own != run_id:
        return f"run {own}"
    published = manifest["files"].get(path.name)
    if published is None:
        return f"not in the model set run {run_id} published"
    if published != _content_sha256(path):
        return f"changed since run {run_id} published it"
    return f"run {run_id}"


def check_model_set(folder: str | os.PathLike) -> str | None:
    """Refuse a models folder whose files come from different runs; return the run id they share.

    With a :data:`MANIFEST`, every file of the folder (hidden ones aside) must be one its run published, unchanged
    (its sha256); a file the manifest lists may be missing (an exported model leaves out what only training uses).
    A folder published before manifests existed is judged by the files that carry their run id
    (:data:`MODEL_SET_FILES`).

    Returns:
        The run id of every file, or ``None`` for a set written before run ids existed (no file has one).

    Raises:
        FileNotFoundError: ``folder`` holds no ``model.pt`` (the message says to train first).
        ValueError: the files name different runs, some name a run and others none, or a file is not the one the
            manifest's run published (the message names each file with its run, or what is wrong with it).
    """
    folder = Path(folder)
    if not (folder / MODEL_WEIGHTS).is_file():
        raise FileNotFoundError(f"no trained model at {folder / MODEL_WEIGHTS}: train one first, or point ckpt_dir at "
                                f"the models folder of a training run.")
    manifest = _read_manifest(folder)
    names = [name for name in MODEL_SET_FILES if (folder / name).is_file()]
    if manifest is not None:  # then every file counts, not only those that can name their run
        names += sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.name not in (*MODEL_SET_FILES, MANIFEST))
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_origin(folder / name, manifest), []).append(name)
    if manifest is None and len(groups) == 1:
        return file_run_id(folder / MODEL_WEIGHTS)
    if manifest is not None and list(groups) == [f"run {manifest[RUN_ID_KEY]}"]:
        return manifest[RUN_ID_KEY]
    described = "; ".join(f"{', '.join(names)} ({origin})" for origin, names in groups.items())
    raise ValueError(f"{folder} mixes files of different training runs: {described}; use the models folder of "
                     f"one run as it was published.")


def publish_model_set(folder: str | os.PathLike, run_id: str,
                      writers: Mapping[str, Callable[[Path], object]]) -> None:
    """Make ``folder`` hold exactly the files ``writers`` write and their :data:`MANIFEST`, all at once.

    Args:
        folder: the models folder (``ckpt_dir``); its parent must be writable and ``folder`` itself must not be a
            mount point (it is replaced by a rename).
        run_id: the publishing run; names the staging folder.
        writers: file name -> ``write(path)``, each writing one file of the set at ``path``.

    The set is written into ``.<folder name>.<run_id>.partial`` beside ``folder``, the manifest last (``run_id``
    and each file's sha256), then exchanged with ``folder``.
    Staging folders that a killed publication left beside ``folder`` are removed first; the previous set (this
    run's, or an empty folder: a run never publishes over another run's set) is removed after the exchange.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for leftover in [*folder.parent.glob(f".{folder.name}.*.partial"), *folder.parent.glob(f".{folder.name}.*.previous")]:
        shutil.rmtree(leftover)
    if MANIFEST in writers:
        raise ValueError(f"publish_model_set: {MANIFEST} is the model set's manifest, written by the publication.")
    staged = folder.parent / f".{folder.name}.{run_id}.partial"
    staged.mkdir()
    for name, write in writers.items():
        write(staged / name)
    files = {name: file_sha256(staged / name) for name in sorted(writers)}
    atomic_write_json({RUN_ID_KEY: run_id, "files": files}, staged / MANIFEST)
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
