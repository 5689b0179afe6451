"""Ignite handlers that the bundle configs attach to MONAI's engines (the reporting ones are in :mod:`.reporting`).

- :class:`FineTuningStart`: at the start of fine-tuning, the target statistics and the frozen encoder.
- :class:`SelectedModelLoader`: the model that validation selected, loaded before an evaluation.
- :class:`FDSUpdateHandler`: the epoch protocol of feature-distribution smoothing (:mod:`supremix_med.imbalance`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from supremix_med.engines.distributed import barrier
from supremix_med.engines.workflow import load_weights
from supremix_med.imbalance.fds import FDS

__all__ = ["FDSUpdateHandler", "FineTuningStart", "SelectedModelLoader"]

logger = logging.getLogger(__name__)


class FineTuningStart:
    """At a fine-tuning trainer's start: standardise targets with the training labels, freeze the encoder or not.

    Args:
        network: the :class:`~supremix_med.networks.ContrastiveRegressor` being fine-tuned.
        dataset: the training dataset; its ``labels`` [N] (read when fine-tuning starts, so a config opens
            without data) give the target mean and standard deviation the regressor predicts in.
        frozen_encoder: keep the encoder frozen (a linear probe); see ``Pretraining.frozen_encoder``.

    Example (a bundle's ``train#handlers``)::

        {"_target_": "supremix_med.engines.FineTuningStart", "network": "@network",
         "dataset": "@train#dataset", "frozen_encoder": "$@pretrain#setup.frozen_encoder"}
    """

    def __init__(self, network: nn.Module, dataset, frozen_encoder: bool = False) -> None:
        self.network = network
        self.dataset = dataset
        self.frozen_encoder = bool(frozen_encoder)

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` when ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        self.network.set_target_statistics(self.dataset.labels)
        self.network.freeze_encoder(self.frozen_encoder)


class SelectedModelLoader:
    """Before an evaluation runs, load the weights that validation selected into the network.

    The test report of a training run evaluates what this run's validation selected (``selection``, kept in memory
    and in the run's checkpoints), never a file another run left behind. An evaluation of a stored model reads
    ``checkpoint`` (``model.pt``); under ``torch.distributed`` every rank waits for the others first and then
    loads it.

    Args:
        network: the evaluated model (possibly wrapped in DistributedDataParallel).
        checkpoint: the state-dict file, e.g. ``<ckpt_dir>/model.pt`` (without ``selection``).
        required: a missing file is an error (evaluating a trained model); otherwise the network's current
            weights are evaluated, with a warning.
        selection: the training run's :class:`~supremix_med.engines.SelectedModel`; before any validation ran
            it holds nothing and the network's final weights are evaluated, with a warning.

    Raises:
        FileNotFoundError: ``required`` and no file at ``checkpoint`` (the message names it).
    """

    def __init__(self, network: nn.Module, checkpoint: str | os.PathLike | None = None, required: bool = False,
                 selection=None) -> None:
        if (checkpoint is None) == (selection is None):
            raise ValueError("SelectedModelLoader: give either the checkpoint file or the run's selection.")
        self.network = network
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.required = required
        self.selection = selection

    def attach(self, engine: Engine) -> None:
        """Run :meth:`__call__` when ``engine`` starts."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if self.selection is not None:
            if self.selection.weights is None:
                logger.warning("validation never ran (val_interval > epochs?): evaluating the final weights")
                return
            target = self.network.module if hasattr(self.network, "module") else self.network
            target.load_state_dict(self.selection.weights)
            return
        barrier()
        device = next(self.network.parameters()).device
        if not load_weights(self.network, self.checkpoint, device=device):
            if self.required:
                raise FileNotFoundError(f"no trained model at {self.checkpoint}: train one first, or point ckpt_dir at "
                                        f"the models folder of a training run.")
            logger.warning("no checkpoint at %s: evaluating the network's current weights", self.checkpoint)
class FDSUpdateHandler:
    """Ignite handler that runs FDS's epoch protocol for a model with an ``fds`` layer.

    At EPOCH_STARTED it sets ``fds.current_epoch`` (the 0-based epoch, ``engine.state.epoch - 1``, which the
    model passes to :meth:`FDS.smooth`) and drops anything collected outside an epoch. At EPOCH_COMPLETED it
    sums the per-bucket feature sums that the model collected during the epoch over all ranks (when
    torch.distributed is initialised; every rank runs the handler), freezes and smooths the last epoch's
    statistics (:meth:`FDS.update_last_epoch_stats`) and folds the epoch into the running statistics
    (:meth:`FDS.update_running_stats_from_sums`).

    It does nothing for a network without an FDS layer (``network.fds`` missing or ``None``), so a recipe
    can always attach it.

    Args:
        network: the trained model, e.g. a :class:`~supremix_med.networks.ContrastiveRegressor`, possibly
            wrapped in DistributedDataParallel / DataParallel.

    Example (a bundle's ``train#handlers``)::

        {"_target_": "supremix_med.engines.FDSUpdateHandler", "network": "@network"}
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    @property
    def fds(self) -> FDS | None:
        """The network's FDS layer, or ``None``."""
        wrapped = isinstance(self.network, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        return getattr(self.network.module if wrapped else self.network, "fds", None)

    def attach(self, engine: Engine) -> None:
        """Register the epoch-start and epoch-end updates with ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        """Tell the FDS layer the current (0-based) epoch and start an empty collection."""
        fds = self.fds
        if fds is not None:
            fds.current_epoch = engine.state.epoch - 1
            fds.pop_collected()

    @torch.no_grad()
    def epoch_completed(self, engine: Engine) -> None:
        """Update the FDS statistics from the epoch's collected features of every rank."""
        fds = self.fds
        if fds is None:
            return
        epoch = engine.state.epoch - 1
        sums = idist.all_reduce(fds.pop_collected())
        fds.update_last_epoch_stats(epoch)
        fds.update_running_stats_from_sums(sums, epoch)
