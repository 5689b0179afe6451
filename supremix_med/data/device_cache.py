"""A cache held in device memory: batches are gathered on the GPU, with no loader workers and no copies.

:class:`DeviceCacheLoader` reads the samples of a :class:`~supremix_med.data.datasets.CachedDataset` once, in
their stored dtype (float16: 2 MB per 100^3 volume, so a 40,000-scan UK Biobank cache is 80 GB and fits an
H200), into one device tensor. Every batch is then an ``index_select`` on the device and a conversion to
float32: the input pipeline costs microseconds of host time and no PCIe traffic. Random augmentation runs
on the device too (:class:`~supremix_med.engines.BatchAugmentation`, e.g. through
:class:`~supremix_med.engines.ContrastiveBatch`).

Under ``torch.distributed`` each rank holds one shard, ``samples[rank::world_size]`` cut to the same length on
every rank, and shuffles it every epoch: a rank sees the same samples each epoch, unlike a
``DistributedSampler``, which re-deals the dataset across ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.transforms import Compose

from .cache import array_path
from .datasets import CachedDataset

__all__ = ["DeviceCacheLoader", "device_memory"]

logger = logging.getLogger(__name__)

_GIB = 2**30
#: samples read from disk and copied to the device at a time while loading (~256 MB of 100^3 float16)
LOAD_CHUNK = 128


def device_memory(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes of ``device``: CUDA's ``mem_get_info``, or on the CPU the kernel's ``MemAvailable``
    and ``MemTotal``; ``None`` where unknown."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in meminfo}
        return fields["MemAvailable"], fields["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """This process's (rank, world size): the given ones, else torch.distributed's, else (0, 1)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else dist.get_rank() if distributed else 0
    world_size = world_size if world_size is not None else dist.get_world_size() if distributed else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"DeviceCacheLoader: rank {rank} is not in [0, {world_size}).")
    return rank, world_size


def _has_transform(transform: Any) -> bool:
    return transform is not None and not (isinstance(transform, Compose) and not transform.transforms)


class DeviceCacheLoader:
    """Shuffled batches of a cached dataset whose samples live on ``device``.

    Yields dicts like a ``DataLoader`` over the dataset: ``"image"`` [B, *sample_shape] (``dtype``, on
    ``device``), ``"label"`` [B, 1] float32 on ``device``, ``"id"`` (list of B str), and every covariate of the
    dataset ([B, 1] float32 on ``device`` for a numeric one, a list of str otherwise). Each ``iter()`` is one
    epoch with a new permutation (seeded ``seed + epoch``; :meth:`set_epoch` picks the epoch, e.g. on resume).
    ``len()`` is the number of batches per epoch, so MONAI's ``SupervisedTrainer`` takes it as its
    ``train_data_loader``.

    Args:
        dataset: the samples (its ``transform`` must be empty: per-sample transforms cannot run here; give the
            random ones to :class:`~supremix_med.engines.BatchAugmentation` instead).
        batch_size: samples per batch B.
        device: where the cache and the batches live.
        shuffle: new order every epoch (else the dataset's order).
        drop_last: leave out the last, incomplete batch (always the same samples when ``shuffle`` is off).
        seed: seed of the permutations.
        dtype: dtype of the batches' images (the cache keeps the stored dtype, float16 or float32).
        reserve_fraction: share of the device's total memory that must stay free after loading, for the
            network's weights and activations.
        rank, world_size: the shard to hold; default torch.distributed's (or the whole dataset).

    Raises:
        ValueError: bad arguments, a dataset with a transform, a shard smaller than one batch, or a shard that
            does not fit: the message gives its size, the device's free memory and what to change.
    """

    def __init__(self, dataset: CachedDataset, batch_size: int, device: str | torch.device = "cuda",
                 shuffle: bool = True, drop_last: bool = True, seed: int = 0, dtype: torch.dtype = torch.float32,
                 reserve_fraction: float = 0.25, rank: int | None = None, world_size: int | None = None) -> None:
        if batch_size < 1 or not 0.0 <= reserve_fraction < 1.0:
            raise ValueError(f"DeviceCacheLoader: batch_size must be >= 1 and reserve_fraction in [0, 1), got "
                             f"{batch_size} and {reserve_fraction}.")
        if _has_transform(dataset.transform):
            raise ValueError(f"DeviceCacheLoader: the dataset over {dataset.cache_dir} has a transform "
                             f"({type(dataset.transform).__name__}), which cannot run on cached device batches; "
                             f"build it without one and augment on the device (BatchAugmentation).")
        self.device = torch.device(device)
        self.rank, self.world_size = _world(rank, world_size)
        per_rank = len(dataset) // self.world_size
        self.records = dataset.data[self.rank::self.world_size][:per_rank]
        if len(self.records) < batch_size and drop_last:
            raise ValueError(f"DeviceCacheLoader: {len(self.records)} samples per rank ({len(dataset)} over "
                             f"{self.world_size} rank(s)) make no full batch of {batch_size}.")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.dtype, self.epoch = seed, dtype, 0
        self.ids = [r["id"] for r in self.records]
        self.covariates = dataset.covariates
        self._check_fits(dataset, reserve_fraction)
        self.images = self._load(dataset)
        self.labels = torch.tensor([r["label"] for r in self.records], dtype=torch.float32, device=self.device)
        self.numeric = {c: torch.tensor([r[c] for r in self.records], dtype=torch.float32, device=self.device)
                        for c in self.covariates if all(isinstance(r[c], float) for r in self.records)}

    def nbytes_needed(self, dataset: CachedDataset) -> int:
        """Bytes the shard's images take on the device."""
        return len(self.records) * math.prod(dataset.sample_shape) * dataset.dtype.itemsize

    def _check_fits(self, dataset: CachedDataset, reserve_fraction: float) -> None:
        needed = self.nbytes_needed(dataset)
        memory = device_memory(self.device)
        if memory is None:
            return
        free, total = memory
        reserve = int(reserve_fraction * total)
        if needed + reserve > free:
            raise ValueError(
                f"DeviceCacheLoader: {len(self.records)} samples of {dataset.sample_shape} {dataset.dtype} from "
                f"{dataset.cache_dir} need {needed / _GIB:.1f} GiB on {self.device}, which has {free / _GIB:.1f} GiB "
                f"free of {total / _GIB:.1f} GiB, of which {reserve / _GIB:.1f} GiB (reserve_fraction="
                f"{reserve_fraction}) stay free for training. Use more ranks (each holds 1/world_size), a smaller "
                f"reserve_fraction, or the DataLoader.")

    def _load(self, dataset: CachedDataset) -> torch.Tensor:
        """The shard's images, in stored dtype, on the device (read from the memory-mapped split arrays)."""
        torch_dtype = torch.from_numpy(np.zeros(0, dtype=dataset.dtype)).dtype
        images = torch.empty((len(self.records), *dataset.sample_shape), dtype=torch_dtype, device=self.device)
        splits = {r["split"] for r in self.records}
        arrays = {s: np.load(array_path(dataset.cache_dir, s), mmap_mode="r") for s in splits}
        for start in range(0, len(self.records), LOAD_CHUNK):
            chunk = self.records[start:start + LOAD_CHUNK]
            host = np.stack([arrays[r["split"]][r["index"]] for r in chunk])
            images[start:start + len(chunk)] = torch.from_numpy(host).to(self.device)
        logger.info("device cache: %d samples (%.1f GiB) of %s on %s (rank %d of %d)", len(self.records),
                    images.numel() * images.element_size() / _GIB, dataset.cache_dir, self.device, self.rank,
                    self.world_size)
        return images

    def __len__(self) -> int:
        n = len(self.records)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` epoch ``epoch`` (its permutation is seeded ``seed + epoch``)."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """What a training checkpoint saves to resume the same order: the next epoch."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`: the next ``iter()`` gives the permutation the saved loader would have."""
        self.set_epoch(int(state["epoch"]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = len(self.records)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        self.epoch += 1
        on_device = order.to(self.device)  # one copy per epoch; batches slice it without host syncs
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            rows = on_device[start:start + self.batch_size]
            picked = order[start:start + self.batch_size].tolist()  # host copy: no device sync
            batch: dict[str, Any] = {"image": self.images.index_select(0, rows).to(self.dtype),
                                     "label": self.labels.index_select(0, rows)[:, None],
                                     "id": [self.ids[i] for i in picked]}
            for c in self.covariates:
                batch[c] = (self.numeric[c].index_select(0, rows)[:, None] if c in self.numeric
                            else [self.records[i][c] for i in picked])
            yield batch
