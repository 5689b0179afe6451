"""Training throughput of SupReMix pre-training as the bundles run it: compute, input pipeline, end to end.

Prints one JSON object. Every case trains the pre-training network of ``ukb_brainage`` (``resnet18_3d`` +
projection head, ``pretraining_setup("supremix")``, ``ContrastiveBatch``, Adam, MONAI ``SupervisedTrainer``)
on B samples x V views of [1, S, S, S] volumes read from a float16 cache through ``CachedDataset``, augmented
with the bundle's ``RandAffined`` + ``RandScaleIntensityd``. Per case:

- ``compute``: trainer steps on one batch of views already on the device: the step's ceiling;
- ``loader``: the input pipeline alone, up to views on the device (DataLoader workers or the device cache,
  transfer, stacking, device augmentation), no network;
- ``end_to_end``: the trainer over the input pipeline, as a bundle trains; with ``vs_compute`` (end to end /
  compute), ``vs_backbone`` and, on CUDA, the share of the wall time the GPU spends inside steps
  (``gpu_step_time_fraction``, from CUDA events) and NVML's utilisation when ``pynvml`` is installed;
- ``profile`` of ``compute`` and of the ``backbone`` (a bare MONAI ``resnet18`` forward + backward on the same
  B x V volumes with the same precision and layout, the ceiling the step is compared with): ops and kernel
  launches per step, ``.item()`` calls and CUDA synchronisations per step, the most expensive ops.

Rates are ``volumes_per_s`` (encoder inputs, B x V per step) and ``samples_per_s`` (B per step).

Why the input pipeline cannot be timed on a pre-filled queue: DataLoaders run with persistent workers, and every
timed pass is a whole epoch started with a fresh ``iter()`` after a complete untimed epoch (the priming: workers
started, memory maps opened, page cache warm). At the end of an epoch the workers hold no work (the sampler is
exhausted and every batch was consumed), and the next epoch's indices reach them only when its iterator is
created, after the timer has started; so the timer can only see batches produced while it runs. ``loader`` times
the epoch after the priming one; ``end_to_end`` the epoch after that, with the network already warm from
``compute`` (cuDNN autotuning and compilation done). An epoch is at least 4x the prefetch depth (workers x
prefetch_factor batches), so the start of the timed epoch, when the queue is still empty, is spread over at least
four times as many batches as the queue holds; a smaller ``--epoch_batches`` is refused, and so is a DataLoader
without persistent workers. ``compute`` and the backbone time ``--steps`` steps after ``--warmup`` untimed ones.
CUDA work is synchronised before every clock reading. Besides the wall clock, every rate reports the CPU seconds
of the benchmark's own process: on a shared machine they vary far less than the wall clock for full-size
convolutions (2 % against 40 % on the development CPU), though small ones with several threads spin and vary too.

Cases (``--cases``; each option is a documented bundle override, see README "Performance"):

- ``bundle``: as ``train.json`` today: worker augmentation, fp16 autocast with MONAI's gradient scaler,
  ``decollate=True``, zero-filled gradients, Adam's default implementation, the loss logged every step,
  deterministic cuDNN (MONAI's ``set_determinism``), no pinned memory.
- ``step``: the same loader; bf16 autocast without loss scaling (``NoLossScaling``), ``optim_set_to_none``,
  ``decollate=False``, fused Adam, loss logged every 50 steps, channels-last-3d, cuDNN autotuning, pinned
  memory and ``non_blocking`` copies.
- ``device_augment``: ``step`` with the augmentation moved to the device (``BatchAugmentation`` in
  ``ContrastiveBatch``): the workers only read the cache and one view per sample crosses PCIe.
- ``device_cache``: ``device_augment`` with the cache in device memory (``DeviceCacheLoader``): no workers.
- ``compile``: ``device_cache`` with ``torch.compile`` of the network.

On the CPU autocast, channels-last and cuDNN settings do not apply (the step runs in float32).

    python benchmarks/training_speed.py --device cuda    # every case; estimated 8 min with 16 cores, 5 without compile
    python benchmarks/training_speed.py --device cpu --size 32 --widen 0.25 --batch_size 8 --workers 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import monai
import numpy as np
import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler
from monai.networks.nets import resnet18
from monai.transforms import RandAffined, RandScaleIntensityd

from supremix_med.data.cache import build_cache
from supremix_med.data.datasets import CachedDataset
from supremix_med.data.device_cache import DeviceCacheLoader
from supremix_med.engines import (
    BatchAugmentation, ContrastiveBatch, NoLossScaling, loss_from_output, multi_view_transform, pretraining_setup,
)
from supremix_med.networks import build_model

#: ``ukb_brainage``'s pre-training loss settings and augmentation (bundles/ukb_brainage/train.json)
LOSS_KWARGS = {"supremix": {"temperature": 0.5, "window": 3.0, "beta": [2.0, 8.0], "label_range": [45.0, 82.0]}}
AGE_RANGE = (45.0, 80.0)
#: the timed epoch must hold at least this many times the DataLoader's prefetch depth
PREFETCH_MARGIN = 4
PROFILE_TOP = 8
#: what run_case measures (end_to_end needs loader, which primes the loader it then uses)
PARTS = ("backbone", "compute", "loader", "end_to_end")
VIEW_KEYS = ("image", "image_1")
#: loaders whose priming epoch has run and been drained (by time_loader)
_PRIMED: weakref.WeakSet = weakref.WeakSet()


def bundle_augmentation() -> list:
    """``ukb_brainage``'s augmentation (MONAI dictionary transforms on ``"image"``)."""
    return [RandAffined(keys="image", prob=0.8, rotate_range=[0.05] * 3, translate_range=[3] * 3,
                        scale_range=[0.05] * 3, padding_mode="zeros"),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5)]


@dataclasses.dataclass(frozen=True)
class Case:
    """One way of running the same pre-training: what feeds the step and how the step runs."""

    name: str
    loader: str = "workers"  # "workers" (DataLoader over CachedDataset) or "device_cache" (DeviceCacheLoader)
    augment: str = "loader"  # "loader" (MONAI transforms in the workers) or "device" (BatchAugmentation)
    amp: str = "float16"  # autocast dtype on CUDA ("float16" with MONAI's scaler, "bfloat16" without, "off")
    set_to_none: bool = False
    decollate: bool = True
    fused_adam: bool = False
    log_every: int = 1  # iterations between loss logs (each reads the loss: a host sync)
    channels_last: bool = False
    cudnn_benchmark: bool = False  # False: MONAI's set_determinism (deterministic cuDNN algorithms)
    pin_memory: bool = False
    non_blocking: bool = False
    compile: bool = False


_STEP = dict(amp="bfloat16", set_to_none=True, decollate=False, fused_adam=True, log_every=50, channels_last=True,
             cudnn_benchmark=True, pin_memory=True, non_blocking=True)
CASES = {
    "bundle": Case("bundle"),
    "step": Case("step", **_STEP),
    "device_augment": Case("device_augment", augment="device", **_STEP),
    "device_cache": Case("device_cache", loader="device_cache", augment="device", **_STEP),
    "compile": Case("compile", loader="device_cache", augment="device", compile=True, **_STEP),
}


def epoch_batches(steps: int, workers: int, prefetch_factor: int, requested: int | None = None) -> int:
    """Batches per timed epoch: at least ``steps`` and ``PREFETCH_MARGIN`` x the prefetch depth.

    Raises:
        ValueError: ``requested`` is smaller than either bound (the timing could be dominated by a queue
            filled before it started, or have too few steps).
    """
    depth = workers * prefetch_factor if workers > 0 else 0
    needed = max(steps, PREFETCH_MARGIN * depth, 1)
    if requested is None:
        return needed
    if requested < needed:
        raise ValueError(f"an epoch of {requested} batches is too small to time: it must hold at least {steps} "
                         f"timed steps and {PREFETCH_MARGIN} x the prefetch depth ({workers} workers x "
                         f"prefetch_factor {prefetch_factor} = {depth} batches), i.e. >= {needed} batches.")
    return requested


def check_primable(loader: Iterable) -> None:
    """Refuse a DataLoader whose workers would restart every epoch (the priming epoch would be lost).

    Raises:
        ValueError: a multi-process DataLoader without ``persistent_workers``.
    """
    if isinstance(loader, torch.utils.data.DataLoader) and loader.num_workers > 0 and not loader.persistent_workers:
        raise ValueError("a DataLoader with workers must have persistent_workers=True to be timed: otherwise every "
                         "epoch restarts its workers and the priming epoch warms nothing.")


class _Clock:
    """Seconds between ``start`` and ``stop`` with the device's work finished at both readings: wall clock, and
    CPU time of this process (all its threads; not its DataLoader workers), which a shared machine's other
    load disturbs far less than the wall clock."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = self.cpu_seconds = 0.0
        self._start = self._cpu_start = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, *_: Any) -> None:
        self._sync()
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def stop(self, *_: Any) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start

    def rates(self, samples: int) -> dict[str, float]:
        """Samples and volumes (encoder inputs: samples x views) per wall second, and the seconds."""
        return {"samples_per_s": round(samples / self.seconds, 2),
                "volumes_per_s": round(samples * len(VIEW_KEYS) / self.seconds, 2),
                "seconds": round(self.seconds, 3), "main_process_cpu_seconds": round(self.cpu_seconds, 3)}


class _GpuActivity:
    """On CUDA: GPU time inside steps (CUDA events around every iteration) and NVML utilisation samples."""

    def __init__(self, device: torch.device) -> None:
        self.enabled = device.type == "cuda"
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.samples: list[float] = []
        self._running = False
        self._thread: threading.Thread | None = None

    def step_started(self, _: Engine) -> None:
        if self._running:
            self.events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self.events[-1][0].record()

    def step_completed(self, _: Engine) -> None:
        if self._running:
            self.events[-1][1].record()

    def start(self) -> None:
        self._running = self.enabled
        if self.enabled:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while self._running:
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # pynvml missing or NVML unavailable: no samples
                return
            time.sleep(0.05)

    def report(self, wall_s: float) -> dict[str, float | None]:
        if not self.enabled:
            return {"gpu_step_time_fraction": None, "gpu_utilization_nvml": None}
        torch.cuda.synchronize()
        busy = sum(start.elapsed_time(end) for start, end in self.events) / 1000.0
        return {"gpu_step_time_fraction": round(busy / wall_s, 3),
                "gpu_utilization_nvml": round(float(np.mean(self.samples)) / 100, 3) if self.samples else None}


def profile_summary(profiler: torch.profiler.profile, steps: int, device: torch.device) -> dict[str, Any]:
    """Per-step counts from a torch.profiler run: aten ops, ``.item()`` calls (``aten::_local_scalar_dense``),
    and on CUDA kernel launches, synchronisations and the busiest kernels; else the busiest CPU ops."""
    events = profiler.key_averages()
    count = lambda predicate: round(sum(e.count for e in events if predicate(e.key)) / steps, 1)  # noqa: E731
    summary: dict[str, Any] = {
        "aten_ops_per_step": count(lambda k: k.startswith("aten::")),
        "item_calls_per_step": count(lambda k: k == "aten::_local_scalar_dense"),
        "kernel_launches_per_step": None, "cuda_syncs_per_step": None,
    }
    if device.type == "cuda":
        summary["kernel_launches_per_step"] = count(lambda k: k in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                    "cudaLaunchKernelExC", "cuLaunchKernelEx"))
        summary["cuda_syncs_per_step"] = count(lambda k: k in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                               "cudaEventSynchronize"))
        key = "self_device_time_total"
    else:
        key = "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:PROFILE_TOP]
    summary["top_ops_ms_per_step"] = {e.key: round(getattr(e, key) / 1000.0 / steps, 3) for e in top}
    return summary


def _profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


# ---------------------------------------------------------------------------------------------------- data


class _Preprocess:
    """A stand-in preprocessed scan: one fixed random volume, shifted per sample (content does not change speed)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.base = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def __call__(self, path: str) -> np.ndarray:
        return self.base + np.float32(int(Path(path).stem.split("-")[-1]) % 97) / 97


def make_cache(folder: Path, samples: int, size: int) -> Path:
    """A float16 cache of ``samples`` [1, size, size, size] volumes, all in the train split, ages spread evenly."""
    paths = [str(folder / f"s-{i}.nii") for i in range(samples)]
    for path in paths:
        Path(path).touch()
    manifest = pd.DataFrame({"id": [f"s-{i}" for i in range(samples)], "path": paths,
                             "age": np.linspace(*AGE_RANGE, samples).round(1), "split": "train"})
    build_cache(manifest, folder / "cache", preprocess=_Preprocess((1, size, size, size)),
                fingerprint={"pipeline": "benchmark", "size": size}, progress=False)
    return folder / "cache"


def _prepare_batch(case: Case) -> ContrastiveBatch:
    """Views as the case makes them: stacked from the loader's two views, or two device augmentations of one."""
    if case.augment == "device":
        return ContrastiveBatch(("image", "image"),
                                augmentation=BatchAugmentation.from_monai(bundle_augmentation(), spatial_dims=3))
    return ContrastiveBatch(VIEW_KEYS)


def _loader(case: Case, cache: Path, args: argparse.Namespace, device: torch.device) -> Iterable:
    if case.loader == "device_cache":
        return DeviceCacheLoader(CachedDataset(cache, "train"), args.batch_size, device, seed=0)
    transform = multi_view_transform(bundle_augmentation(), VIEW_KEYS) if case.augment == "loader" else None
    return DataLoader(CachedDataset(cache, "train", transform=transform), batch_size=args.batch_size, shuffle=True,
                      drop_last=True, num_workers=args.workers, pin_memory=case.pin_memory and device.type == "cuda",
                      persistent_workers=args.workers > 0,
                      prefetch_factor=args.prefetch_factor if args.workers > 0 else None)


# ------------------------------------------------------------------------------------------------- network


def _amp(case: Case, device: torch.device) -> torch.dtype | None:
    return None if device.type != "cuda" or case.amp == "off" else getattr(torch, case.amp)


@dataclasses.dataclass
class _Step:
    """The trained pieces of one case, shared by its trainers (so ``torch.compile`` compiles once)."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: torch.nn.Module


def _step(case: Case, args: argparse.Namespace, device: torch.device) -> _Step:
    """The bundle's pre-training network, loss and optimiser for this case."""
    _set_cudnn(case)
    model = build_model("resnet18_3d", widen_factor=args.widen).set_target_statistics(np.linspace(*AGE_RANGE, 8))
    setup = pretraining_setup("supremix", model, LOSS_KWARGS, VIEW_KEYS)
    network = setup.network.to(device)
    if case.channels_last and device.type == "cuda":
        network = network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(network.parameters(), 1e-3, **({"fused": True} if case.fused_adam else {}))
    return _Step(network, optimizer, setup.loss_function)


def _set_cudnn(case: Case) -> None:
    """Autotuned cuDNN algorithms, or the deterministic ones MONAI's ``set_determinism`` selects."""
    torch.backends.cudnn.benchmark = case.cudnn_benchmark
    torch.backends.cudnn.deterministic = not case.cudnn_benchmark


def _trainer(case: Case, step: _Step, device: torch.device, data: Iterable, prepare_batch: ContrastiveBatch,
             max_epochs: int) -> SupervisedTrainer:
    """A pre-training ``SupervisedTrainer`` of ``step`` over ``data``, with the case's options."""
    dtype = _amp(case, device)
    logging.getLogger("benchmark.loss").setLevel(logging.WARNING)  # the loss is read (a sync), not printed
    handlers = [StatsHandler(name="benchmark.loss", tag_name="loss", output_transform=loss_from_output,
                             iteration_log=lambda _, i: i % case.log_every == 0, epoch_log=False)]
    if dtype is torch.bfloat16:
        handlers.append(NoLossScaling())
    return SupervisedTrainer(device=device, max_epochs=max_epochs, train_data_loader=data, network=step.network,
                             optimizer=step.optimizer, loss_function=step.loss, prepare_batch=prepare_batch,
                             amp=dtype is not None, amp_kwargs={"dtype": dtype} if dtype else None,
                             decollate=case.decollate, optim_set_to_none=case.set_to_none,
                             non_blocking=case.non_blocking, compile=case.compile, train_handlers=handlers)


def _device_views(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One batch of views as a loader yields it, already on the device (for ``compute``)."""
    shape = (args.batch_size, 1, args.size, args.size, args.size)
    generator = torch.Generator().manual_seed(0)
    labels = torch.linspace(*AGE_RANGE, args.batch_size).round()[:, None]
    return {**{k: torch.randn(shape, generator=generator).to(device) for k in VIEW_KEYS}, "label": labels.to(device)}


def time_compute(case: Case, step: _Step, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--steps`` trainer steps on a device-resident batch after ``--warmup``, then ``--profile_steps`` profiled."""
    batch = _device_views(args, device)
    total = args.warmup + args.steps + args.profile_steps
    trainer = _trainer(case, step, device, [batch] * total, ContrastiveBatch(VIEW_KEYS), max_epochs=1)
    clock, profiler = _Clock(device), _profiler(device)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup), clock.start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup + args.steps), clock.stop)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.warmup + args.steps), lambda _: profiler.start())
    trainer.run()
    profiler.stop()
    return {**clock.rates(args.batch_size * args.steps),
            "profile": profile_summary(profiler, args.profile_steps, device)}


def time_backbone(case: Case, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """A bare MONAI resnet18 forward + backward on B x V volumes, with the case's precision, layout, compile."""
    _set_cudnn(case)
    network = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, widen_factor=args.widen,
                       feed_forward=False).to(device)
    volumes = torch.randn(args.batch_size * len(VIEW_KEYS), 1, args.size, args.size, args.size, device=device)
    if case.channels_last and device.type == "cuda":
        network = network.to(memory_format=torch.channels_last_3d)
        volumes = volumes.contiguous(memory_format=torch.channels_last_3d)
    forward = torch.compile(network) if case.compile else network
    dtype = _amp(case, device)
    autocast = torch.autocast("cuda", dtype=dtype) if dtype else nullcontext()

    def step() -> None:
        network.zero_grad(set_to_none=True)
        with autocast:
            out = forward(volumes)
        out.float().mean().backward()

    for _ in range(args.warmup):
        step()
    clock, profiler = _Clock(device), _profiler(device)
    clock.start()
    for _ in range(args.steps):
        step()
    clock.stop()
    with profiler:
        for _ in range(args.profile_steps):
            step()
    return {**clock.rates(args.batch_size * args.steps),
            "profile": profile_summary(profiler, args.profile_steps, device)}


def time_loader(loader: Iterable, prepare_batch: Callable, device: torch.device, non_blocking: bool,
                profile_steps: int = 0) -> dict:
    """The input pipeline alone: a fresh epoch after a complete priming epoch (see the module docstring), then
    ``profile_steps`` profiled preparations (transfer, stacking, device augmentation) of a batch kept from it."""
    check_primable(loader)
    for batch in loader:  # priming epoch, drained to the end
        prepare_batch(batch, device, non_blocking)
    _PRIMED.add(loader)
    clock, samples = _Clock(device), 0
    clock.start()
    for batch in loader:  # a new iterator: the workers get this epoch's indices only now
        samples += prepare_batch(batch, device, non_blocking)[0].shape[0]
    clock.stop()
    result = clock.rates(samples)
    if profile_steps:
        with _profiler(device) as profiler:
            for _ in range(profile_steps):
                prepare_batch(batch, device, non_blocking)
        result["prepare_batch_profile"] = profile_summary(profiler, profile_steps, device)
    return result


def time_end_to_end(case: Case, step: _Step, device: torch.device, loader: Iterable, batch_size: int) -> dict:
    """One trainer epoch over a loader that :func:`time_loader` primed and drained, with ``step`` warm.

    The clock starts at the epoch's start, before ignite creates the epoch's iterator (so before any worker
    has this epoch's indices), and stops when its last step has finished on the device.

    Raises:
        ValueError: the loader was not primed by :func:`time_loader`.
    """
    if loader not in _PRIMED:
        raise ValueError("time the loader first: end to end runs on a primed, drained loader.")
    trainer = _trainer(case, step, device, loader, _prepare_batch(case), max_epochs=1)
    clock, activity = _Clock(device), _GpuActivity(device)

    def started(engine: Engine) -> None:
        clock.start()
        activity.start()

    def completed(engine: Engine) -> None:
        clock.stop()
        activity.stop()

    trainer.add_event_handler(Events.EPOCH_STARTED, started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
    trainer.add_event_handler(Events.ITERATION_STARTED, activity.step_started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, activity.step_completed)
    trainer.run()
    steps = trainer.state.epoch_length
    return {**clock.rates(batch_size * steps), "steps": steps, **activity.report(clock.seconds)}


def run_case(case: Case, cache: Path, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The measurements of ``args.parts`` for one case."""
    torch.manual_seed(0)
    parts = args.parts.split(",")
    result: dict[str, Any] = {"case": case.name, "options": dataclasses.asdict(case)}
    if "backbone" in parts:
        result["backbone"] = time_backbone(case, args, device)
    step = _step(case, args, device)
    if "compute" in parts or "end_to_end" in parts:
        result["compute"] = time_compute(case, step, args, device)  # also warms the step up for end_to_end
    if "loader" in parts or "end_to_end" in parts:
        loader = _loader(case, cache, args, device)
        result["loader"] = time_loader(loader, _prepare_batch(case), device, case.non_blocking, args.profile_steps)
        result["loader_keeps_up"] = (result["loader"]["volumes_per_s"] >= result["compute"]["volumes_per_s"]
                                     if "compute" in result else None)
    if "end_to_end" in parts:
        e2e = result["end_to_end"] = time_end_to_end(case, step, device, loader, args.batch_size)
        e2e["vs_compute"] = round(e2e["volumes_per_s"] / result["compute"]["volumes_per_s"], 3)
        if "backbone" in result:
            e2e["vs_backbone"] = round(e2e["volumes_per_s"] / result["backbone"]["volumes_per_s"], 3)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--batch_size", type=int, default=32, help="samples per step (x views volumes)")
    parser.add_argument("--size", type=int, default=100, help="volume side S ([1, S, S, S])")
    parser.add_argument("--widen", type=float, default=1.0, help="ResNet-18 width factor (1.0: the paper's)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps of compute and backbone")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--profile_steps", type=int, default=3, help="profiled steps after them")
    parser.add_argument("--workers", type=int, default=min(14, max(1, (os.cpu_count() or 2) - 2)),
                        help="DataLoader workers")
    parser.add_argument("--prefetch_factor", type=int, default=2)
    parser.add_argument("--epoch_batches", type=int, default=None,
                        help=f"batches per epoch (default: max(steps, {PREFETCH_MARGIN} x workers x prefetch_factor))")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {list(PARTS)}")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    for option, known in (("cases", CASES), ("parts", PARTS)):
        unknown = [c for c in getattr(args, option).split(",") if c not in known]
        if unknown:
            parser.error(f"unknown {option} {unknown}; choose from {list(known)}")
    if args.steps < 1 or args.warmup < 1 or args.profile_steps < 1:
        parser.error("--steps, --warmup and --profile_steps must be >= 1")
    try:
        args.epoch_batches = epoch_batches(args.steps, args.workers, args.prefetch_factor, args.epoch_batches)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "monai": monai.__version__, "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "batch_size": args.batch_size, "views": len(VIEW_KEYS), "size": args.size, "widen": args.widen,
        "steps": args.steps, "warmup": args.warmup, "workers": args.workers, "prefetch_factor": args.prefetch_factor,
        "epoch_batches": args.epoch_batches, "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        needs_data = {"loader", "end_to_end"} & set(args.parts.split(","))
        cache = make_cache(Path(tmp), args.batch_size * args.epoch_batches, args.size) if needs_data else Path(tmp)
        for name in args.cases.split(","):
            result["cases"].append(run_case(CASES[name], cache, args, device))
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
