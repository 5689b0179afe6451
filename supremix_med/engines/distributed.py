"""``torch.distributed`` awareness of the bundle recipe, so one ``train.json`` runs on one process or under torchrun.

Every helper looks at whether a process group is initialised (``multi_gpu_train.json`` initialises one in its
``initialize`` step, before any component is built): without one they return the single-process choice.
Every rank runs every engine and every handler of :func:`rank_handlers`' first list (the evaluators' metrics
synchronise across ranks); only rank 0 logs, checkpoints and writes files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

__all__ = ["EpochSampler", "any_rank", "barrier", "broadcast_from_rank0", "distributed", "distributed_module",
           "epoch_sampler", "gather_to_all", "rank", "rank_handlers", "world_size", "writes_files"]


def distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if distributed() else 0


def world_size() -> int:
    """Number of processes of the run (1 without ``torch.distributed``)."""
    return dist.get_world_size() if distributed() else 1


def writes_files() -> bool:
    """True on the process that writes a run's files: the only one, or rank 0."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op without ``torch.distributed``)."""
    if distributed():
        dist.barrier()


class EpochSampler(Sampler[int]):
    """The indices of ``dataset`` for one epoch: a fresh random order from a generator seeded with ``seed``
    (``shuffle``; the orders of ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))``), or the
    dataset's own order.

    A config builds its loaders before any data is read: while a lazily read dataset (``records_loaded`` False, see
    :class:`~supremix_med.data.datasets.RecordDataset`) has not been read, ``len()`` raises ``TypeError``, which
    MONAI's engines take as "length not known yet" (torch's samplers would read the dataset to size it). Once read,
    the length is the dataset's.
    """

    def __init__(self, dataset: Dataset, shuffle: bool = True, seed: int = 0) -> None:
        self.dataset, self.shuffle = dataset, shuffle
        #: the order's generator; a bundle's DataLoader shares it (``generator``), so checkpoints that save the
        #: loader's generator save the order too
        self.generator = torch.Generator().manual_seed(int(seed))

    def __iter__(self):
        n = len(self.dataset)
        yield from (torch.randperm(n, generator=self.generator).tolist() if self.shuffle else range(n))

    def __len__(self) -> int:
        if not getattr(self.dataset, "records_loaded", True):
            raise TypeError("the dataset has not been read yet, so its length is not known")
        return len(self.dataset)


def epoch_sampler(dataset: Dataset, shuffle: bool = True, drop_last: bool = False, seed: int = 0) -> Sampler[int]:
    """The order in which a training loader visits ``dataset``: under ``torch.distributed`` a ``DistributedSampler``
    giving each rank its share (MONAI's trainers call its ``set_epoch``), else an :class:`EpochSampler`.
    ``drop_last`` is the ranks' equal share; the loader drops the last incomplete batch itself."""
    if distributed():
        return DistributedSampler(dataset, shuffle=shuffle, drop_last=drop_last, seed=int(seed))
    return EpochSampler(dataset, shuffle, seed)


def distributed_module(module: nn.Module, device: torch.device | str) -> nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` under ``torch.distributed`` (on ``device`` with CUDA),
    else ``module`` itself. Unused parameters are allowed: pre-training does not use the regressor head."""
    if not distributed():
        return module
    device_ids = [torch.device(device)] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def rank_handlers(every_rank: Sequence[Any], rank0: Sequence[Any]) -> list[Any]:
    """An engine's handlers: ``every_rank`` (state every rank must keep in step, e.g. validation, schedules), then
    ``rank0`` (logging, checkpoints) on the process that writes files."""
    return [*every_rank, *(rank0 if writes_files() else ())]


def broadcast_from_rank0(obj: Any) -> Any:
    """``obj`` as rank 0 holds it, on every rank (``obj`` itself without ``torch.distributed``).

    Every rank must call it; what the other ranks pass is ignored. ``obj`` must be picklable.
    """
    if not distributed():
        return obj
    box = [obj if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without ``torch.distributed``)."""
    if not distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj, group=None)
    return gathered


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (``flag`` itself without ``torch.distributed``).

    Every rank must call it at the same point: it is one all-reduce of a single number.
    """
    if not distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _collective_device() -> torch.device:
    """The device of the tensors a collective exchanges: the rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
