"""Cache speed: writing with ``build_cache`` and random-access reading through ``CachedDataset``.

Builds a cache of ``--n`` random volumes in a temporary folder, then reads them in random order, warm
(page cache), in this process and through a MONAI DataLoader. Prints one JSON object; rates are volumes/s.

    python benchmarks/cache_speed.py [--n 64] [--shape 1 100 100 100] [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import DataLoader

from supremix_med.data.cache import build_cache
from supremix_med.data.datasets import CachedDataset


def random_volume(path: str, shape: tuple[int, ...]) -> np.ndarray:
    """Fake preprocessing: a standard-normal float32 volume seeded by the file's name."""
    return np.random.default_rng(int(Path(path).stem)).standard_normal(shape, dtype=np.float32)


def write_rate(folder: Path, n: int, shape: tuple[int, ...], dtype: str) -> dict[str, float]:
    """Time ``build_cache`` end to end and the fake preprocessing alone; the difference is the writing."""
    for i in range(n):
        (folder / f"{i}.raw").touch()
    manifest = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "path": [str(folder / f"{i}.raw") for i in range(n)],
                             "age": np.linspace(20, 80, n)})
    preprocess = partial(random_volume, shape=shape)
    start = time.perf_counter()
    for path in manifest["path"]:
        preprocess(path)
    generate_s = time.perf_counter() - start
    start = time.perf_counter()
    build_cache(manifest, folder / "cache", preprocess, {"benchmark": "cache_speed"}, progress=False, dtype=dtype)
    build_s = time.perf_counter() - start
    return {"build_volumes_per_s": n / build_s, "write_only_volumes_per_s": n / max(build_s - generate_s, 1e-9)}


def read_rate_single(dataset: CachedDataset, epochs: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for i in rng.permutation(len(dataset)):
            dataset[int(i)]
    return epochs * len(dataset) / (time.perf_counter() - start)


def read_rate_loader(dataset: CachedDataset, epochs: int, batch_size: int, workers: int) -> dict[str, float]:
    """Volumes/s of a shuffling DataLoader: the first epoch (worker start-up included) and the later ones."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True, persistent_workers=True)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(len(batch["id"]) for batch in loader)
        rates.append(count / (time.perf_counter() - start))
    return {"first_epoch": rates[0], "later_epochs": float(np.mean(rates[1:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="volumes in the cache")
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 100, 100, 100], help="shape of one volume")
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--epochs", type=int, default=3, help="read passes over the cache")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--loader_workers", type=int, default=2)
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"n": args.n, "shape": list(shape), "dtype": args.dtype, "cpu_count": os.cpu_count(),
                  "load_average_1min_at_start": os.getloadavg()[0], "torch_threads": torch.get_num_threads()}
        result["write"] = write_rate(folder, args.n, shape, args.dtype)
        dataset = CachedDataset(folder / "cache", split="all")
        read_rate_single(dataset, 1)  # warm the page cache
        result["read_single_process_volumes_per_s"] = read_rate_single(dataset, args.epochs)
        result[f"read_dataloader_{args.loader_workers}_workers_batch_{args.batch_size}_volumes_per_s"] = \
            read_rate_loader(dataset, args.epochs, args.batch_size, args.loader_workers)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
