"""Ignite handlers that the bundle configs attach to MONAI's engines.

- :class:`FDSUpdateHandler`: the epoch protocol of feature-distribution smoothing (:mod:`supremix_med.imbalance`).
"""

from __future__ import annotations

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn

from supremix_med.imbalance.fds import FDS

__all__ = ["FDSUpdateHandler"]
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
