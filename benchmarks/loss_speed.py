"""Speed and memory of the contrastive losses, and of SupReMix against a materialising implementation.

Prints one JSON object per line:

- ``{"kind": "loss", "loss", "n", "device", "seconds", "cpu_seconds", "peak_mb", ...}`` for every loss in
  ``supremix_med.losses.LOSSES`` x batch size x device: median forward+backward time (wall clock, and the
  process's CPU time) over ``--repeats`` runs after warm-up, and the peak memory of the run (peak RSS
  growth of a fresh process on CPU, ``torch.cuda.max_memory_allocated`` on CUDA). One more forward+backward,
  profiled, counts what makes a loss launch- or sync-bound (see :func:`count_launches_and_syncs`):
  ``aten_ops`` (operators that compute, i.e. launch a kernel), ``host_reads`` and ``dynamic_shape_ops``
  (each a host sync on CUDA) and ``syncs``; on CUDA also ``kernels``, ``copies`` and ``syncs`` as the CUDA
  trace records them. ``--cuda-plan-gib`` makes a CPU run plan SupReMix's blocks as a GPU would.
- ``{"kind": "materialising", ...}`` for SupReMix computed by building every mixture vector
  ([N, N, D] Mix-neg and [N, N, N, D] Mix-pos tensors, the way the paper's code does), with the speed-up of
  the Gram-matrix implementation and the largest difference between the two losses.

Every case runs in its own process so that peak memory is its own. Inputs: D = 128, one view, integer
labels (ages) uniform in 0..100, SupReMix window 5 and label range (0, 100).

Usage::

    python benchmarks/loss_speed.py [--sizes 64 256 1024] [--losses supremix supcon] [--device cpu]
                                    [--repeats 5] [--compare-sizes 64] [--threads 0] [--cuda-plan-gib 0]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

from supremix_med.losses import LOSSES, SupReMixLoss

DIM = 128
LABEL_RANGE = (0.0, 100.0)
#: Constructor arguments per loss name (defaults otherwise).
LOSS_KWARGS = {"supremix": dict(window=5.0, label_range=LABEL_RANGE)}
#: Tensor methods that hand tensor values to Python: each waits for the device on CUDA.
HOST_READS = frozenset({"item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"})
#: Operators whose output size depends on tensor values: each waits for the device on CUDA.
DYNAMIC_SHAPE_OPS = frozenset({"aten::nonzero", "aten::argwhere", "aten::masked_select", "aten::unique_consecutive",
                               "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::repeat_interleave"})
#: Operators that compute nothing (views, allocation, metadata): not counted as kernel launches.
NO_KERNEL_OPS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::view", "aten::reshape",
    "aten::_reshape_alias", "aten::_unsafe_view", "aten::expand", "aten::expand_as", "aten::unsqueeze",
    "aten::squeeze", "aten::transpose", "aten::t", "aten::permute", "aten::select", "aten::slice", "aten::narrow",
    "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::detach", "aten::alias", "aten::resolve_conj",
    "aten::resolve_neg", "aten::real", "aten::result_type", "aten::lift_fresh", "aten::resize_", "aten::set_",
    "aten::to", "aten::contiguous", "aten::flatten", "aten::view_as", "aten::scalar_tensor", "aten::item",
    "aten::_local_scalar_dense"})
#: CUDA runtime calls that block the host until the device is done.
CUDA_SYNC_CALLS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
                             "cudaMemcpy"})


def make_inputs(n: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [n, DIM] (leaf, requiring grad) and integer labels [n] in 0..100."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, DIM, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, 101, (n,), generator=gen).float().to(device)
    return features, labels


def loss_call(name: str, features: torch.Tensor, labels: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A closure computing loss ``name`` on the inputs (ConR also needs the regressor's predictions).

    SimCSE takes the N rows as N / 2 sentence pairs [N / 2, 2, D] with scores 0..5 (the labels / 20).
    """
    loss = LOSSES[name](**LOSS_KWARGS.get(name, {}))
    if name == "simcse":
        return lambda: loss(features.reshape(-1, 2, DIM), labels[: features.shape[0] // 2] / 20)
    if name == "conr":
        predictions = labels + 5 * torch.randn(labels.shape, generator=torch.Generator().manual_seed(1)).to(labels)
        return lambda: loss(features, labels, predictions)
    return lambda: loss(features, labels)


def materialising_supremix(features: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor,
                           temperature: float = 0.5, window: float = 5.0) -> torch.Tensor:
    """SupReMix (all options on, one view) by building every mixture vector: O(N^3 D) memory."""
    z = F.normalize(features, dim=1)
    n = z.shape[0]
    y = labels
    scale = LABEL_RANGE[1] - LABEL_RANGE[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (y[None, :] == y[:, None]) & ~eye
    negative = ~(y[None, :] == y[:, None])
    # Mix-neg: m[i, k] = lam z_i + (1 - lam) z_k, label lam y_i + (1 - lam) y_k.
    mix_neg = F.normalize(lam[..., None] * z[:, None, :] + (1 - lam[..., None]) * z[None, :, :], dim=-1, eps=1e-6)
    neg_logits = torch.einsum("id,ikd->ik", z, mix_neg) / temperature
    neg_weights = (1 + (1 - lam) * (y[None, :] - y[:, None]).abs()) / scale
    # Mix-pos: m[i, j, k] = a z_j + (1 - a) z_k for y_j < y_i < y_k within the window, label y_i.
    below, above = y[:, None, None] - y[None, :, None], y[None, None, :] - y[:, None, None]
    pairs = (below > 0) & (below <= window) & (above > 0) & (above <= window)
    coef = torch.where(pairs, above / (above + below).clamp_min(1e-12), 0.0)[..., None]
    mix_pos = F.normalize(coef * z[None, :, None, :] + (1 - coef) * z[None, None, :, :], dim=-1, eps=1e-6)
    pos_logits = torch.einsum("id,ijkd->ijk", z, mix_pos).reshape(n, -1) / temperature
    pairs = pairs.reshape(n, -1)
    real_logits = z @ z.T / temperature
    real_weights = (1 + (y[None, :] - y[:, None]).abs()) / scale
    denominator = (torch.where(~eye, real_weights * real_logits.exp(), 0.0).sum(1)
                   + torch.where(negative, neg_weights * neg_logits.exp(), 0.0).sum(1)
                   + torch.where(pairs, pos_logits.exp() / scale, 0.0).sum(1))
    numerator = torch.where(positive, real_logits, 0.0).sum(1) + torch.where(pairs, pos_logits, 0.0).sum(1)
    count = positive.sum(1) + pairs.sum(1)
    valid = count > 0
    anchor_losses = denominator.log() - numerator / count.clamp_min(1)
    return anchor_losses[valid].mean()


def measure(fn: Callable[[], torch.Tensor], features: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median forward+backward seconds over ``repeats`` runs after 2 warm-ups, and the peak memory in MB.

    ``seconds`` is wall-clock time; ``cpu_seconds`` the process's CPU time over the same runs, the steadier
    figure on a CPU shared with other jobs (for a single-threaded run; it adds up all threads otherwise).
    """
    cuda = features.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, cpu_seconds = [], []
    for run in range(repeats + 2):
        features.grad = None
        start, cpu_start = time.perf_counter(), time.process_time()
        fn().backward()
        if cuda:
            torch.cuda.synchronize()
        if run >= 2:
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**10  # ru_maxrss is in KB
    return {"seconds": statistics.median(seconds), "cpu_seconds": statistics.median(cpu_seconds),
            "peak_mb": round(peak_mb, 1)}


class HostReadCounter(TorchFunctionMode):
    """Counts, while active, Python-level reads of tensor values (:data:`HOST_READS`) and copies of device
    tensors to the CPU; on CUDA each one waits for the device (the autograd engine's own C++ calls are not
    seen, but checkpoint recomputation runs in Python and is)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        source = args[0] if args else None
        if name in HOST_READS or (name in ("cpu", "to") and isinstance(source, torch.Tensor)
                                  and source.device.type != "cpu" and isinstance(result, torch.Tensor)
                                  and result.device.type == "cpu"):
            self.count += 1
        return result


def _outermost(events: list, names: frozenset) -> list:
    """The events named in ``names`` that are not nested inside another one of them."""
    def nested(event) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if parent.name in names:
                return True
            parent = parent.cpu_parent
        return False
    return [e for e in events if e.name in names and not nested(e)]


def count_launches_and_syncs(fn: Callable[[], torch.Tensor], device: str) -> dict[str, int]:
    """Profile one forward+backward of ``fn`` and count its kernel launches and host syncs.

    - ``aten_ops``: leaf operators that compute (not views, allocations or metadata, :data:`NO_KERNEL_OPS`):
      the CPU's proxy for kernel launches.
    - ``host_reads``: Python-level reads of tensor values and device-to-CPU copies (:class:`HostReadCounter`).
    - ``dynamic_shape_ops``: outermost operators whose output size depends on values (:data:`DYNAMIC_SHAPE_OPS`).
    - ``syncs``: on CUDA the blocking runtime calls of the trace (:data:`CUDA_SYNC_CALLS`); on the CPU the proxy
      ``host_reads + dynamic_shape_ops`` (what would wait for a GPU).
    - CUDA only: ``kernels`` (device kernels) and ``copies`` (device memcpy events).
    """
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof, HostReadCounter() as reads:
        fn().backward()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::") and e.device_type == DeviceType.CPU]
    leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
    counts = {"aten_ops": sum(e.name not in NO_KERNEL_OPS for e in leaves), "host_reads": reads.count,
              "dynamic_shape_ops": len(_outermost(aten, DYNAMIC_SHAPE_OPS))}
    if device != "cuda":
        return counts | {"syncs": counts["host_reads"] + counts["dynamic_shape_ops"]}
    on_device = [e for e in events if e.device_type == DeviceType.CUDA]
    copies = sum(e.name.startswith("Memcpy") for e in on_device)
    return counts | {"kernels": sum(not e.name.startswith(("Memcpy", "Memset")) for e in on_device),
                     "copies": copies, "syncs": sum(e.name in CUDA_SYNC_CALLS for e in events)}


def plan_mix_pos_as_cuda(gib: float) -> None:
    """Make SupReMix plan its Mix-pos blocks on the CPU as a CUDA device whose budget is ``gib`` GiB would
    (block size and per-block overhead), so that the CPU run's operator count stands for the kernels a GPU
    would launch. Memory and time are then those of the big blocks, not the CPU's."""
    from supremix_med.losses import _mix_pos

    budget = int(gib * 2**30)
    _mix_pos._memory_budget = lambda device, itemsize: (budget // (itemsize * _mix_pos.MIX_POS_BLOCK_TENSORS),
                                                         budget // itemsize)
    _mix_pos.MIX_POS_BLOCK_OVERHEAD["cpu"] = _mix_pos.MIX_POS_BLOCK_OVERHEAD["cuda"]


def run_case(spec: dict) -> dict:
    """Measure one case in this process (called in a fresh subprocess)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if spec.get("cuda_plan_gib") and spec["device"] == "cpu":
        plan_mix_pos_as_cuda(spec["cuda_plan_gib"])
    features, labels = make_inputs(spec["n"], spec["device"])
    result = {"kind": spec["kind"], "loss": spec["loss"], "n": spec["n"], "d": DIM, "device": spec["device"],
              "threads": torch.get_num_threads()} | ({"cuda_plan_gib": spec["cuda_plan_gib"]}
                                                      if spec.get("cuda_plan_gib") else {})
    if spec["kind"] == "loss":
        call = loss_call(spec["loss"], features, labels)
        result |= measure(call, features, spec["repeats"])
        return result | count_launches_and_syncs(call, spec["device"])
    lam = torch.distributions.Beta(2.0, 8.0).sample((spec["n"], spec["n"])).to(features)
    fast = SupReMixLoss(**LOSS_KWARGS["supremix"])
    result |= measure(lambda: materialising_supremix(features, labels, lam), features, spec["repeats"])
    with torch.no_grad():
        difference = materialising_supremix(features, labels, lam) - fast(features, labels, lam)
    result["max_abs_diff"] = abs(difference.item())
    result["gram_seconds"] = measure(lambda: fast(features, labels, lam), features, spec["repeats"])["seconds"]
    result["speedup"] = round(result["seconds"] / result["gram_seconds"], 1)
    return result


def spawn(spec: dict) -> dict:
    """Run one case in a subprocess; return its JSON result (or the error it died with)."""
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return spec | {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="batch sizes N")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="loss names")
    parser.add_argument("--device", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"],
                        help="devices to run on")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (after 2 warm-ups)")
    parser.add_argument("--compare-sizes", type=int, nargs="*", default=[64],
                        help="batch sizes of the SupReMix vs materialising comparison (none to skip; "
                             "the materialising loss needs about 0.8 GB at N=64 and 8x that per doubling)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per case (0: torch's default)")
    parser.add_argument("--cuda-plan-gib", type=float, default=0,
                        help="on the CPU, plan SupReMix's Mix-pos blocks as a CUDA device with this many GiB of "
                             "budget would (0: the CPU's own plan), to count the operators a GPU would run")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    for device in args.device:
        common = dict(device=device, repeats=args.repeats, threads=args.threads, cuda_plan_gib=args.cuda_plan_gib)
        specs = [dict(kind="loss", loss=name, n=n, **common) for name in args.losses for n in args.sizes]
        specs += [dict(kind="materialising", loss="supremix", n=n, **common) for n in args.compare_sizes]
        for spec in specs:
            print(json.dumps(spawn(spec)), flush=True)


if __name__ == "__main__":
    main()
