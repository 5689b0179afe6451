"""Run-level helpers of the bundle recipe: what training stores beside the model, and loading weights.

Under ``torch.distributed`` only rank 0 writes files (:func:`~supremix_med.engines.distributed.writes_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from supremix_med.data.cache import read_fingerprint
from supremix_med.engines.distributed import writes_files
from supremix_med.io import atomic_write_json
from supremix_med.networks.builders import MODEL_CONFIG

__all__ = ["load_weights", "save_run_config"]

FINGERPRINT = "preprocessing.json"


def save_run_config(ckpt_dir: str | os.PathLike, network_config: dict, dataset_dir: str | os.PathLike,
                    fingerprint: dict | None = None) -> None:
    """Store what inference needs beside the model: how to build the network and the data's fingerprint.

    Writes ``<ckpt_dir>/model_config.json`` (``build_model`` keyword arguments) and
    ``<ckpt_dir>/preprocessing.json``: ``fingerprint`` when given (data read without a cache, e.g. images or
    tables, whose reader describes its own preprocessing), else the fingerprint of the cache in ``dataset_dir``
    when there is one.
    """
    if not writes_files():
        return
    ckpt_dir = Path(ckpt_dir)
    atomic_write_json(dict(network_config), ckpt_dir / MODEL_CONFIG)
    if fingerprint is not None:
        atomic_write_json(dict(fingerprint), ckpt_dir / FINGERPRINT)
    elif (Path(dataset_dir) / FINGERPRINT).is_file():
        atomic_write_json(read_fingerprint(dataset_dir), ckpt_dir / FINGERPRINT)


def load_weights(network: nn.Module, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> bool:
    """Load a ``model.pt`` state dict into ``network`` if the file exists; return whether it did."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        return False
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state)
    return True
