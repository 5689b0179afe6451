"""Validation's choice of weights: the model that the test report evaluates and ``model.pt`` publishes."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from supremix_med.engines.model_set import unwrap

__all__ = ["SelectedModel"]


class SelectedModel:
    """Validator handler keeping this run's selected weights: the network's at the best key-metric epoch.

    MONAI's evaluator decides what is best (``state.best_metric`` / ``best_metric_epoch``, with its
    ``metric_cmp_fn``); at every validation epoch that improves on it this handler copies the network's weights to
    CPU memory. The selection is part of the run's checkpoints (:meth:`state_dict`), so a resumed run keeps it, and
    it never comes from a file another run left behind. Every rank keeps its own copy (DDP keeps the weights equal).

    Args:
        network: the validated model (possibly wrapped in DistributedDataParallel).

    Attributes:
        weights: the selected state dict on CPU, ``None`` until a validation ran.
        epoch: the trainer epoch it was selected at (``None`` before).
        metric: its key-metric value.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self.weights: dict[str, torch.Tensor] | None = None
        self.epoch: int | None = None
        self.metric: float | None = None

    def attach(self, engine: Engine) -> None:
        """Look at the evaluator's best metric when each validation epoch completes."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.update)

    def update(self, engine: Engine) -> None:
        """Copy the weights when this validation epoch is the evaluator's new best."""
        state = engine.state
        if state.best_metric_epoch != state.epoch or state.best_metric_epoch == self.epoch:
            return
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.network).state_dict().items()}
        self.epoch, self.metric = int(state.best_metric_epoch), float(state.best_metric)

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "metric", "weights"}`` for a checkpoint."""
        return {"epoch": self.epoch, "metric": self.metric, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.epoch, self.metric, self.weights = state["epoch"], state["metric"], state["weights"]
