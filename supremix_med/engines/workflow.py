"""The steps a bundle's ``run`` list calls between and after the MONAI engines.

Under ``torch.distributed`` every rank runs every step (the evaluators' metrics synchronise across ranks)
and only rank 0 writes files, so the multi-GPU overlay reuses ``train.json``'s ``run`` list as it is.

``train.json`` runs: :func:`save_run_config` -> :func:`run_pretraining` (skipped for ``vanilla``) ->
fine-tuning ``SupervisedTrainer.run()`` -> :func:`evaluate_and_report` (best checkpoint, bias correction
fitted on validation predictions, test metrics and files). ``evaluate.json`` runs :func:`evaluate_and_report`
with the bias correction stored beside the model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine
from torch import nn

from supremix_med.data.cache import read_fingerprint
from supremix_med.engines.reporting import PredictionCollector, write_report
from supremix_med.io import atomic_write, atomic_write_json
from supremix_med.metrics import BiasCorrection

__all__ = ["save_run_config", "run_pretraining", "load_weights", "evaluate_and_report"]

logger = logging.getLogger(__name__)

MODEL_CONFIG = "model_config.json"
BIAS_CORRECTION = "bias_correction.json"
FINGERPRINT = "preprocessing.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _writes_files() -> bool:
    """True on the process that writes a run's files: the only one, or rank 0."""
    return not _distributed() or dist.get_rank() == 0


def save_run_config(ckpt_dir: str | os.PathLike, network_config: dict, dataset_dir: str | os.PathLike,
                    fingerprint: dict | None = None) -> None:
    """Store what inference needs beside the model: how to build the network and the data's fingerprint.

    Writes ``<ckpt_dir>/model_config.json`` (``build_model`` keyword arguments) and
    ``<ckpt_dir>/preprocessing.json``: ``fingerprint`` when given (data read without a cache, e.g. images or
    tables, whose reader describes its own preprocessing), else the fingerprint of the cache in ``dataset_dir``
    when there is one.
    """
    if not _writes_files():
        return
    ckpt_dir = Path(ckpt_dir)
    atomic_write_json(dict(network_config), ckpt_dir / MODEL_CONFIG)
    if fingerprint is not None:
        atomic_write_json(dict(fingerprint), ckpt_dir / FINGERPRINT)
    elif (Path(dataset_dir) / FINGERPRINT).is_file():
        atomic_write_json(read_fingerprint(dataset_dir), ckpt_dir / FINGERPRINT)


def run_pretraining(method: str, trainer: Engine | None, encoder: nn.Module,
                    ckpt_dir: str | os.PathLike) -> None:
    """Run contrastive pre-training unless ``method`` is ``vanilla``; save the encoder.

    The pre-trained encoder's state dict goes to ``<ckpt_dir>/pretrained_encoder.pt`` (loadable by
    ``ContrastiveRegressor.load_encoder``), written through a temporary file (by rank 0 when distributed).
    """
    if method.lower() == "vanilla" or trainer is None or trainer.state.max_epochs == 0:
        logger.info("method %r: no contrastive pre-training", method)
        return
    trainer.run()
    if not _writes_files():
        return
    state = encoder.state_dict()
    atomic_write(Path(ckpt_dir) / "pretrained_encoder.pt", lambda tmp: torch.save(state, tmp))


def load_weights(network: nn.Module, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> bool:
    """Load a ``model.pt`` state dict into ``network`` if the file exists; return whether it did."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        return False
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state)
    return True


def _predict(evaluator: Engine, collector: PredictionCollector, target_name: str):
    evaluator.run()
    return collector.frame(target_name)


def _bias_correction(method: str | None, path: Path, val_evaluator: Engine | None,
                     val_collector: PredictionCollector | None, target_name: str) -> BiasCorrection | None:
    """Fit the correction on validation predictions (and save it), load the saved one, or none (``method=None``)."""
    if method is None:
        return None
    if val_evaluator is None or val_collector is None:
        return BiasCorrection.load(path)
    val = _predict(val_evaluator, val_collector, target_name)
    correction = BiasCorrection(method).fit(val[f"predicted_{target_name}"], val[target_name])
    if _writes_files():
        correction.save(path)
    return correction


def evaluate_and_report(network: nn.Module, checkpoint: str | os.PathLike, test_evaluator: Engine,
                        test_collector: PredictionCollector, train_targets: Any, output_dir: str | os.PathLike,
                        ckpt_dir: str | os.PathLike, val_evaluator: Engine | None = None,
                        val_collector: PredictionCollector | None = None, bias_method: str | None = "beheshti",
                        target_name: str = "age", extra: dict | None = None, shots: dict | None = None) -> dict:
    """Load the best checkpoint, fit or load the bias correction, predict the test set, write the report.

    Args:
        network: the fine-tuned model (the evaluators' network).
        checkpoint: the best ``model.pt``; when missing (no validation ran) the network's current weights
            are used and a warning is logged.
        test_evaluator, test_collector: evaluator over the test split and its :class:`PredictionCollector`.
        train_targets: training-set targets for ``baseline_mae``.
        output_dir: where ``metrics.json``, ``predictions.csv`` and the plot go.
        ckpt_dir: where ``bias_correction.json`` is stored (fitted) or read (``val_evaluator`` is None).
        val_evaluator, val_collector: when given, the bias correction is fitted on validation predictions.
        bias_method: ``"beheshti"`` or ``"cole"``; ``None`` for targets other than brain age (no correction).
        target_name: name of the target column.
        extra: more entries for ``metrics.json`` (``world_size`` is added).
        shots: shot-group rule for many/medium/few-shot metrics (see :func:`write_report`); ``None``: none.

    Returns:
        The metrics written (empty on ranks other than 0).
    """
    if _distributed():
        dist.barrier()  # rank 0 may still be writing the best checkpoint
    if not load_weights(network, checkpoint, device=next(network.parameters()).device):
        logger.warning("no checkpoint at %s: reporting the network's current weights", checkpoint)
    correction = _bias_correction(bias_method, Path(ckpt_dir) / BIAS_CORRECTION, val_evaluator, val_collector,
                                  target_name)
    test = _predict(test_evaluator, test_collector, target_name)
    if not _writes_files():
        return {}
    world_size = dist.get_world_size() if _distributed() else 1
    return write_report(test, output_dir, train_targets, correction, target_name,
                        {**(extra or {}), "world_size": world_size}, shots)
