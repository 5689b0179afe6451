"""What contrastive pre-training needs per method: the network view of the model, the loss, the batches.

``--method`` picks one of :data:`PRETRAINING_METHODS` (or ``vanilla``: no pre-training, plain L1 regression
from scratch). :func:`pretraining_setup` is the one place that decides what a method means, down to its number
of pre-training epochs and whether fine-tuning may freeze its encoder; bundle configs read its answer. All
methods train the same :class:`~supremix_med.networks.ContrastiveRegressor`'s encoder and projection head, so
fine-tuning continues on the very same module:

- ``supremix``, ``supcon``, ``rnc``: projections [B, V, P] of V views -> the contrastive loss with labels [B].
- ``mixsupcon``: the same on input-level mixup (mixed inputs and labels, ``ContrastiveBatch(mixup_alpha=...)``).
- ``conr``: ConR regularises a regression, so the network also predicts and the objective is
  ``L1(prediction, y) + conr_weight * ConR(projections, y, prediction)`` during pre-training.
- ``conr_regularizer``: ConR as published, the regulariser of an end-to-end regression: no pre-training, and the
  fine-tuning loss is ``L1 (or LDS) + conr_weight * ConR`` on the projections of the same encoder pass
  (:class:`RegularisedLoss`); its settings are ``loss_kwargs["conr"]``.
- ``simcse`` (:data:`SENTENCE_PAIR_METHODS`, encoders with ``encode_sentences`` such as ``BiLSTMPairEncoder``):
  the two sentences of each pair are encoded separately (:class:`SentenceEmbedder`) and the supervised SimCSE
  loss pulls together the sentences of pairs scoring above its threshold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from supremix_med.engines.batches import ContrastiveBatch
from supremix_med.losses import ConRLoss, get_loss
from supremix_med.networks import ContrastiveRegressor, JointProjectorRegressor, MultiViewProjector, ProjectingRegressor

__all__ = ["PRETRAINING_METHODS", "SENTENCE_PAIR_METHODS", "REGULARISED_METHODS", "METHODS", "ConRObjective",
           "RegularisedLoss", "SentenceEmbedder", "Pretraining", "loss_entry", "pretraining_setup", "protocol"]

PRETRAINING_METHODS = ("supremix", "supcon", "rnc", "conr", "mixsupcon")
#: Methods for sentence-pair encoders only (they need ``encoder.encode_sentences``).
SENTENCE_PAIR_METHODS = ("simcse",)
#: Methods that train end to end with a contrastive regulariser instead of pre-training: method -> its loss.
REGULARISED_METHODS = {"conr_regularizer": "conr"}
METHODS = ("vanilla", *PRETRAINING_METHODS, *REGULARISED_METHODS, *SENTENCE_PAIR_METHODS)


def loss_entry(method: str) -> str | None:
    """The ``loss_kwargs`` entry (loss name) a method uses; ``None`` for ``vanilla``."""
    method = method.lower()
    return None if method == "vanilla" else REGULARISED_METHODS.get(method, method)


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


class SentenceEmbedder(nn.Module):
    """SimCSE's view of a sentence-pair model: tokens [B, 2, L] (or [B, 1, 2, L]) -> [B, 2, D] unit-norm.

    Each sentence of a pair is embedded on its own by ``model.encoder.encode_sentences`` ([N, L] -> [N, D]; for
    :class:`~supremix_med.networks.BiLSTMPairEncoder` the max-pooled BiLSTM states, D = 2 * hidden_size), then
    L2-normalised; no projection head, so the loss shapes the very embeddings the pair features are made of.
    The single-view axis that :class:`ContrastiveBatch` adds is accepted and removed.

    Raises:
        ValueError: the model's encoder has no ``encode_sentences``, or tokens are not [B, 2, L] / [B, 1, 2, L].
    """

    def __init__(self, model: ContrastiveRegressor) -> None:
        super().__init__()
        if not callable(getattr(model.encoder, "encode_sentences", None)):
            raise ValueError(f"SentenceEmbedder: encoder {type(model.encoder).__name__} has no encode_sentences "
                             f"method; sentence-pair methods need a sentence-pair encoder such as bilstm_pair.")
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() == 4 and tokens.shape[1] == 1:
            tokens = tokens[:, 0]
        if tokens.dim() != 3 or tokens.shape[1] != 2:
            raise ValueError(f"SentenceEmbedder: tokens must be [B, 2, L] or [B, 1, 2, L], got {tuple(tokens.shape)}.")
        batch = tokens.shape[0]
        sentences = self.model.encoder.encode_sentences(tokens.reshape(2 * batch, -1))
        return F.normalize(sentences, dim=1).reshape(batch, 2, -1)


class RegularisedLoss(nn.Module):
    """``base(pred, y) + weight * regulariser(projections, y, pred)``: a regression loss plus a contrastive term on
    the projections of the same forward pass (:class:`~supremix_med.networks.ProjectingRegressor` keeps them).

    Args:
        base: the regression loss (L1, or LDS-weighted L1).
        regulariser: e.g. :class:`~supremix_med.losses.ConRLoss`, called with projections [B, 1, P], labels [B]
            and predictions [B].
        network: the :class:`~supremix_med.networks.ProjectingRegressor` the trainer runs.
        weight: the regulariser's weight (ConR's alpha).
    """

    def __init__(self, base: nn.Module, regulariser: nn.Module, network: ProjectingRegressor,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.base, self.regulariser, self.weight = base, regulariser, weight
        self.network = [network]  # a reference, not a submodule: the trainer owns the network's parameters

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Predictions and targets [B, 1] (label units) -> the 0-dim loss."""
        projections = self.network[0].projections
        if projections is None:
            raise RuntimeError("RegularisedLoss: the network kept no projections (is it in training mode?).")
        labels = target.reshape(-1)
        return self.base(pred, target) + self.weight * self.regulariser(projections.unsqueeze(1), labels,
                                                                        pred.reshape(-1))


@dataclass
class Pretraining:
    """What the recipe's phases are for one ``method``: the one place that decides it.

    Attributes:
        network: the module the pre-training ``SupervisedTrainer`` trains (a view of the model).
        loss_function: the pre-training objective; ``None`` when there is no pre-training.
        prepare_batch: turns a batch into views (and labels) for ``network``.
        epochs: pre-training epochs: the requested number, or 0 for ``vanilla`` and the end-to-end regularised
            methods (no pre-training: bundles run the pre-training trainer only when ``epochs > 0``).
        frozen_encoder: whether fine-tuning keeps the encoder frozen (a linear probe): the requested
            ``linear_probe``, except for the methods that train end to end (``vanilla``, ``conr_regularizer``),
            whose encoder always trains.
        finetune_network: the module the fine-tuning trainer runs: the model, or for a regularised method a
            :class:`~supremix_med.networks.ProjectingRegressor` around it.
        regulariser: the contrastive term added to the fine-tuning loss (:meth:`finetune_loss`), or ``None``.
        regulariser_weight: its weight.
        protocol: how the method trains, in words (:func:`protocol`; reported in ``metrics.json`` and
            comparisons).
    """

    network: nn.Module
    loss_function: nn.Module | None
    prepare_batch: ContrastiveBatch
    epochs: int = 0
    frozen_encoder: bool = False
    finetune_network: nn.Module | None = None
    regulariser: nn.Module | None = None
    regulariser_weight: float = 1.0
    protocol: str = ""

    def finetune_loss(self, base: nn.Module) -> nn.Module:
        """The fine-tuning loss: ``base`` itself, or ``base`` plus the method's regulariser."""
        if self.regulariser is None:
            return base
        return RegularisedLoss(base, self.regulariser, self.finetune_network, self.regulariser_weight)


def protocol(method: str, linear_probe: bool = False) -> str:
    """How ``method`` trains, in words (``metrics.json``'s ``protocol``, the comparisons' Protocol column)."""
    method = method.lower()
    if method == "vanilla":
        return "end to end"
    if method in REGULARISED_METHODS:
        return f"end to end + {loss_entry(method)} regulariser"
    first = "joint pre-train (L1 + ConR), then " if method == "conr" else "pre-train, then "
    return first + ("linear probe" if linear_probe else "fine-tune")


def pretraining_setup(method: str, model: ContrastiveRegressor, loss_kwargs: Mapping[str, Mapping] | None = None,
                      view_keys: Sequence[str] = ("image",), epochs: int = 0, linear_probe: bool = False,
                      conr_weight: float = 1.0) -> Pretraining:
    """Decide what ``method`` means: pre-training network view, loss, batches and epochs, fine-tuning network and
    loss, frozen encoder, and the protocol in words.

    Args:
        method: one of :data:`METHODS`; ``vanilla`` gives a set-up without a loss, with 0 epochs and an encoder
            trained end to end; ``conr_regularizer`` trains end to end with ConR added to the fine-tuning loss.
        model: the model whose encoder (and projection head) pre-training trains.
        loss_kwargs: per-loss keyword arguments, e.g. ``{"supremix": {"temperature": 0.5}}``; only the entry of
            the method's loss (:func:`loss_entry`) is used.
        view_keys: batch keys of the V views (see :class:`ContrastiveBatch`).
        epochs: requested pre-training epochs (>= 0).
        linear_probe: requested linear probe (frozen encoder during fine-tuning).
        conr_weight: weight of the ConR term against the L1 regression term (``conr``, ``conr_regularizer``).
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"pretraining_setup: epochs must be an integer >= 0, got {epochs!r}.")
    if method == "vanilla":
        return Pretraining(MultiViewProjector(model), None, ContrastiveBatch(view_keys), finetune_network=model,
                           protocol=protocol(method))
    loss = get_loss(loss_entry(method), **dict((loss_kwargs or {}).get(loss_entry(method), {})))
    if method in REGULARISED_METHODS:
        return Pretraining(MultiViewProjector(model), None, ContrastiveBatch(view_keys),
                           finetune_network=ProjectingRegressor(model), regulariser=loss,
                           regulariser_weight=conr_weight, protocol=protocol(method))
    phase = {"epochs": epochs, "frozen_encoder": bool(linear_probe), "finetune_network": model,
             "protocol": protocol(method, linear_probe)}
    if method == "conr":
        return Pretraining(JointProjectorRegressor(model), ConRObjective(loss, conr_weight),
                           ContrastiveBatch(view_keys), **phase)
    if method in SENTENCE_PAIR_METHODS:
        return Pretraining(SentenceEmbedder(model), loss, ContrastiveBatch(view_keys), **phase)
    mixup_alpha = getattr(loss, "mixup_alpha", None) if method == "mixsupcon" else None
    return Pretraining(MultiViewProjector(model), loss, ContrastiveBatch(view_keys, mixup_alpha=mixup_alpha), **phase)
