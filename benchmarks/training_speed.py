"""Training throughput of the brain-age network: volumes/s per step, and whether the data loader keeps up.

Prints one JSON object per case. A case times SupReMix pre-training steps (forward, loss, backward, Adam) of
``resnet18_3d`` on [B, 1, 100, 100, 100] volumes:

- ``compute``: the step alone on tensors already on the device (the ceiling);
- ``loader``: batches read from a float16 cache through ``CachedDataset`` and a ``DataLoader`` (workers,
  pinned memory) without a model: volumes/s the input pipeline can deliver;
- ``end_to_end``: both together, as a bundle trains. ``loader_keeps_up`` is true when the loader delivers
  faster than the step consumes.

On CUDA the step runs with AMP (bfloat16 autocast) and channels-last-3d memory, as ``train.json`` does
where CUDA is available; on CPU it runs in float32.

    python benchmarks/training_speed.py [--batch_size 8] [--steps 5] [--widen 1.0] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from supremix_med.data.cache import build_cache
from supremix_med.data.datasets import CachedDataset
from supremix_med.losses import SupReMixLoss
from supremix_med.networks import MultiViewProjector, build_model

SHAPE = (1, 100, 100, 100)


def _volume(path: str) -> np.ndarray:
    """Deterministic stand-in for a preprocessed scan (the benchmark measures I/O, not preprocessing)."""
    seed = int(Path(path).stem.split("-")[-1])
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)


def _make_cache(folder: Path, n: int) -> Path:
    manifest = pd.DataFrame({"id": [f"s-{i}" for i in range(n)], "path": [str(folder / f"s-{i}.nii") for i in range(n)],
                             "age": np.linspace(45, 80, n), "split": "train"})
    for path in manifest["path"]:
        Path(path).touch()
    build_cache(manifest, folder / "cache", preprocess=_volume, fingerprint={"pipeline": "benchmark"}, progress=False)
    return folder / "cache"


def _step_fn(device: torch.device, widen: float):
    model = build_model("resnet18_3d", widen_factor=widen).to(device)
    network = MultiViewProjector(model)
    if device.type == "cuda":
        network = network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    loss_fn = SupReMixLoss(temperature=0.5, window=3.0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last_3d)
        optimizer.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(network(images[:, None]), labels.to(device))
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(n_volumes: int, seconds: float) -> float:
    return round(n_volumes / seconds, 2)


def _time_compute(step, device: torch.device, batch: int, steps: int) -> float:
    images = torch.randn(batch, *SHAPE, device=device)
    labels = torch.linspace(45, 80, batch).round()
    step(images, labels)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    _sync(device)
    return _rate(batch * steps, time.perf_counter() - start)


def _loader(cache: Path, batch: int, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(CachedDataset(cache, "train"), batch_size=batch, shuffle=True, drop_last=True,
                      num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def _time_loader(loader: DataLoader, steps: int) -> float:
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    n = sum(next(iterator)["image"].shape[0] for _ in range(steps))
    return _rate(n, time.perf_counter() - start)


def _time_end_to_end(step, loader: DataLoader, device: torch.device, steps: int) -> float:
    iterator = iter(loader)
    first = next(iterator)
    step(first["image"], first["label"][:, 0])
    _sync(device)
    start = time.perf_counter()
    n = 0
    for _ in range(steps):
        batch = next(iterator)
        step(batch["image"], batch["label"][:, 0])
        n += batch["image"].shape[0]
    _sync(device)
    return _rate(n, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--widen", type=float, default=1.0, help="ResNet-18 width factor (1.0: the paper's)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    step = _step_fn(device, args.widen)
    with tempfile.TemporaryDirectory() as tmp:
        cache = _make_cache(Path(tmp), args.batch_size * (args.steps + 2))
        loader = _loader(cache, args.batch_size, args.workers, device)
        result = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "batch_size": args.batch_size, "widen": args.widen,
            "amp": device.type == "cuda", "compute_volumes_per_s": _time_compute(step, device, args.batch_size,
                                                                              args.steps),
            "loader_volumes_per_s": _time_loader(loader, args.steps + 1),
            "end_to_end_volumes_per_s": _time_end_to_end(step, loader, device, args.steps),
            "loader_workers": args.workers,
        }
    result["loader_keeps_up"] = result["loader_volumes_per_s"] > result["compute_volumes_per_s"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
