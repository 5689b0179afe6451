"""Run-level helpers of the bundle recipe: the data's fingerprint a model is stored with, and loading weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from supremix_med.data.cache import read_fingerprint

__all__ = ["FINGERPRINT", "data_fingerprint", "load_weights"]

#: The file of a model set (and of a cache) holding the preprocessing fingerprint.
FINGERPRINT = "preprocessing.json"


def data_fingerprint(dataset_dir: str | os.PathLike, fingerprint: dict | Callable[[], dict] | None = None) -> dict | None:
    """What inference must reproduce of a run's data: ``fingerprint`` when given (data read without a cache, e.g.
    images or tables, whose reader describes its own preprocessing; a function of no argument is called), else the
    fingerprint of the cache in ``dataset_dir``, else ``None`` (no cache there)."""
    if fingerprint is not None:
        return dict(fingerprint() if callable(fingerprint) else fingerprint)
    if (Path(dataset_dir) / FINGERPRINT).is_file():
        return read_fingerprint(dataset_dir)
    return None


def load_weights(network: nn.Module, checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> bool:
    """Load a ``model.pt`` state dict into ``network`` if the file exists; return whether it did."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        return False
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state)
    return True
