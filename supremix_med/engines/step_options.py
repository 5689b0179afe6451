"""What a fast ``SupervisedTrainer`` step needs beyond the trainer's own arguments.

Most speed options of a training step are arguments of MONAI's ``SupervisedTrainer`` or of its optimiser,
data loader and network (``benchmarks/training_speed.py`` measures each):

- ``optim_set_to_none=True``: gradients are freed instead of zero-filled before each step (no memset
  kernels, backward writes instead of accumulating); results are unchanged for Adam without weight decay.
- ``decollate=False``: MONAI otherwise splits every batch and output into per-sample lists after each
  iteration, calling ``.item()`` on each sample's label and on the loss: B + 1 host synchronisations per
  step on a GPU. The loss handlers then read ``output["loss"]``: use :func:`loss_from_output`.
- ``amp=True, amp_kwargs={"dtype": torch.bfloat16}`` with :class:`NoLossScaling`: bfloat16 has float32's
  range, so the gradient scaler MONAI creates for ``amp`` (a host sync per step to check for inf) is not needed.
- ``non_blocking=True`` with the DataLoader's ``pin_memory=True``: asynchronous host-to-device copies.
- ``compile=True``: ``torch.compile`` of the network (minutes of compilation on the first steps).
- ``torch.optim.Adam(..., fused=True)`` on CUDA: one kernel per parameter group instead of several per
  tensor (results equal up to float rounding).
- ``network.to(memory_format=torch.channels_last_3d)``: the layout cuDNN's fastest 3-D kernels use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["NoLossScaling", "amp_handlers", "loss_from_output", "place_network", "set_cudnn_benchmark"]


def loss_from_output(output: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
    """The step's loss from a trainer's ``engine.state.output``, decollated (a list of dicts, each holding the
    loss) or not (one dict): the ``output_transform`` of loss-logging handlers for either ``decollate``."""
    return output["loss"] if isinstance(output, Mapping) else output[0]["loss"]


class NoLossScaling:
    """Handler: run a ``SupervisedTrainer`` with ``amp`` in bfloat16 without MONAI's gradient scaler.

    MONAI creates a ``GradScaler`` whenever ``amp`` is on; with ``amp_kwargs={"dtype": torch.bfloat16}`` it only
    costs time (it unscales the gradients and synchronises with the host to look for inf every step). This
    handler swaps it for a disabled scaler when the run starts; autocast stays on.

    Raises:
        ValueError: at ``attach``, the engine's autocast dtype is not bfloat16 (float16 gradients need scaling).
    """

    def attach(self, engine: Engine) -> None:
        dtype = getattr(engine, "amp_kwargs", {}).get("dtype")
        if getattr(engine, "amp", False) and dtype is not torch.bfloat16:
            raise ValueError(f"NoLossScaling: the trainer autocasts to {dtype or 'float16 (the default)'}; only "
                             f"bfloat16 can train without loss scaling: set amp_kwargs={{'dtype': torch.bfloat16}}.")
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if getattr(engine, "scaler", None) is not None:
            engine.scaler = torch.amp.GradScaler(enabled=False)


def amp_handlers(amp: bool, dtype: torch.dtype) -> list[NoLossScaling]:
    """The handlers a trainer's mixed precision needs: :class:`NoLossScaling` when it autocasts to bfloat16."""
    return [NoLossScaling()] if amp and dtype is torch.bfloat16 else []


def place_network(network: torch.nn.Module, device: torch.device | str, channels_last: bool = False) -> torch.nn.Module:
    """``network`` on ``device``; with ``channels_last``, its convolution weights in the channels-last layout of their
    rank (``channels_last_3d`` for 3-D convolutions, ``channels_last`` for 2-D), the layout cuDNN's fastest kernels
    use. Networks without convolutions are only moved."""
    network = network.to(device)
    if not channels_last:
        return network
    ranks = {p.dim() for p in network.parameters()}
    layout = torch.channels_last_3d if 5 in ranks else torch.channels_last if 4 in ranks else None
    return network if layout is None else network.to(memory_format=layout)


def set_cudnn_benchmark(benchmark: bool) -> None:
    """Let cuDNN time its algorithms and keep the fastest (``benchmark``; results may then differ between runs), or
    keep MONAI's deterministic choice (``set_determinism`` turns benchmarking off)."""
    torch.backends.cudnn.benchmark = bool(benchmark)
    torch.backends.cudnn.deterministic = not benchmark
