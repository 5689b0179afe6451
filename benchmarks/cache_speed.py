"""Cache speed: writing with ``build_cache`` and random-access reading through ``CachedDataset``.

Builds a cache of ``--n`` random volumes in a temporary folder, then reads them in random order, warm
(page cache), in this process and through a MONAI DataLoader. Prints one JSON object: rates in volumes/s
(wall clock) and CPU ms per volume (all processes), which does not depend on other load on the machine.

    python benchmarks/cache_speed.py [--n 64] [--shape 1 100 100 100] [--dtype float16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
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


def cpu_seconds() -> float:
    """CPU time of this process and of its finished (joined) children, e.g. DataLoader workers."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(read_epoch: Callable[[], int], epochs: int) -> dict[str, float]:
    """Volumes/s (wall clock) and CPU ms per volume (independent of other load on the machine)."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    count = sum(read_epoch() for _ in range(epochs))
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return {"volumes_per_s": count / wall, "cpu_ms_per_volume": 1000 * cpu / count}


def read_single(dataset: CachedDataset, epochs: int, seed: int = 0) -> dict[str, float]:
    """Random-order item access in this process."""
    rng = np.random.default_rng(seed)

    def epoch() -> int:
        for i in rng.permutation(len(dataset)):
            dataset[int(i)]
        return len(dataset)

    epoch()  # warm the page cache
    return timed(epoch, epochs)


def read_loader(dataset: CachedDataset, epochs: int, batch_size: int, workers: int) -> dict[str, float]:
    """A shuffling MONAI DataLoader (collating batches); its workers start each epoch and are joined at its end,
    so their CPU time counts."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=True)
    return {"workers": workers, "batch_size": batch_size,
            **timed(lambda: sum(len(batch["id"]) for batch in loader), epochs)}


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
        result["read_single_process"] = read_single(dataset, args.epochs)
        result["read_dataloader"] = read_loader(dataset, args.epochs, args.batch_size, args.loader_workers)
        result["read_dataloader_in_process"] = read_loader(dataset, args.epochs, args.batch_size, 0)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
