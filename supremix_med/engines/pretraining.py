"""What contrastive pre-training needs per method: the network view of the model, the loss, the batches.

``--method`` picks one of :data:`PRETRAINING_METHODS` (or ``vanilla``: no pre-training, plain L1 regression
from scratch). All methods train the same :class:`~supremix_med.networks.ContrastiveRegressor`'s encoder and
projection head, so fine-tuning continues on the very same module:

- ``supremix``, ``supcon``, ``rnc``: projections [B, V, P] of V views -> the contrastive loss with labels [B].
- ``mixsupcon``: the same on input-level mixup (mixed inputs and labels, ``ContrastiveBatch(mixup_alpha=...)``).
- ``conr``: ConR regularises a regression, so the network also predicts and the objective is
  ``L1(prediction, y) + conr_weight * ConR(projections, y, prediction)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from supremix_med.engines.batches import ContrastiveBatch
from supremix_med.losses import ConRLoss, get_loss
from supremix_med.networks import ContrastiveRegressor, JointProjectorRegressor, MultiViewProjector

__all__ = ["PRETRAINING_METHODS", "METHODS", "ConRObjective", "Pretraining", "pretraining_setup"]

PRETRAINING_METHODS = ("supremix", "supcon", "rnc", "conr", "mixsupcon")
METHODS = ("vanilla", *PRETRAINING_METHODS)


class ConRObjective(nn.Module):
    """``L1(prediction, y) + weight * ConR(features, y, prediction)`` for ``JointProjectorRegressor`` outputs.

    Args:
        conr: the ConR regulariser.
        weight: its weight (ConR's alpha).

    ``forward(outputs, labels)`` takes ``{"features": [B, V, P], "predictions": [B, V, 1]}`` and labels [B];
    ConR sees each sample's prediction averaged over its views.
    """

    def __init__(self, conr: ConRLoss, weight: float = 1.0) -> None:
        super().__init__()
        self.conr = conr
        self.weight = weight

    def forward(self, outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Return the 0-dim objective."""
        predictions = outputs["predictions"][..., 0]
        regression = (predictions - labels.reshape(-1, 1).to(predictions.dtype)).abs().mean()
        return regression + self.weight * self.conr(outputs["features"], labels, predictions.mean(dim=1))


@dataclass
class Pretraining:
    """The three method-specific pieces of a pre-training ``SupervisedTrainer``.

    ``loss_function`` is None for ``vanilla``: its trainer has ``max_epochs=0`` and never runs.
    """

    network: nn.Module
    loss_function: nn.Module | None
    prepare_batch: ContrastiveBatch


def pretraining_setup(method: str, model: ContrastiveRegressor, loss_kwargs: Mapping[str, Mapping] | None = None,
                      view_keys: Sequence[str] = ("image",), conr_weight: float = 1.0) -> Pretraining:
    """Build the pre-training network view, loss and batch preparation for ``method``.

    Args:
        method: one of :data:`METHODS` (``vanilla`` gives a set-up without a loss).
        model: the model whose encoder (and projection head) pre-training trains.
        loss_kwargs: per-method keyword arguments of the loss, e.g. ``{"supremix": {"temperature": 0.5}}``;
            only ``loss_kwargs[method]`` is used.
        view_keys: batch keys of the V views (see :class:`ContrastiveBatch`).
        conr_weight: weight of the ConR term against the L1 regression term (``conr`` only).
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
    if method == "vanilla":
        return Pretraining(MultiViewProjector(model), None, ContrastiveBatch(view_keys))
    loss = get_loss(method, **dict((loss_kwargs or {}).get(method, {})))
    if method == "conr":
        return Pretraining(JointProjectorRegressor(model), ConRObjective(loss, conr_weight),
                           ContrastiveBatch(view_keys))
    mixup_alpha = getattr(loss, "mixup_alpha", None) if method == "mixsupcon" else None
    return Pretraining(MultiViewProjector(model), loss, ContrastiveBatch(view_keys, mixup_alpha=mixup_alpha))
