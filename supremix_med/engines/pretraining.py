"""What contrastive pre-training needs per method: the network view of the model, the loss, the batches.

``--method`` picks one of :data:`PRETRAINING_METHODS` (or ``vanilla``: no pre-training, plain L1 regression
from scratch). :func:`pretraining_setup` is the one place that decides what a method means, down to its number
of pre-training epochs and whether fine-tuning may freeze its encoder; bundle configs read its answer. All
methods train the same :class:`~supremix_med.networks.ContrastiveRegressor`'s encoder and projection head, so
fine-tuning continues on the very same module:

- ``supremix``, ``supcon``, ``rnc``: projections [B, V, P] of V views -> the contrastive loss with labels [B].
- ``mixsupcon``: the same on input-level mixup (mixed inputs and labels, ``ContrastiveBatch(mixup_alpha=...)``).
- ``conr``: ConR regularises a regression, so the network also predicts and the objective is
  ``L1(prediction, y) + conr_weight * ConR(projections, y, prediction)``.
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
from supremix_med.networks import ContrastiveRegressor, JointProjectorRegressor, MultiViewProjector

__all__ = ["PRETRAINING_METHODS", "SENTENCE_PAIR_METHODS", "METHODS", "ConRObjective", "SentenceEmbedder",
           "Pretraining", "pretraining_setup"]

PRETRAINING_METHODS = ("supremix", "supcon", "rnc", "conr", "mixsupcon")
#: Methods for sentence-pair encoders only (they need ``encoder.encode_sentences``).
SENTENCE_PAIR_METHODS = ("simcse",)
METHODS = ("vanilla", *PRETRAINING_METHODS, *SENTENCE_PAIR_METHODS)


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


@dataclass
class Pretraining:
    """What a bundle's pre-training phase is for one ``method``: the one place that decides it.

    Attributes:
        network: the module the pre-training ``SupervisedTrainer`` trains (a view of the model).
        loss_function: the objective; ``None`` for ``vanilla``.
        prepare_batch: turns a batch into views (and labels) for ``network``.
        epochs: pre-training epochs: the requested number, or 0 for ``vanilla`` (no pre-training: bundles run
            the pre-training trainer only when ``epochs > 0``).
        frozen_encoder: whether fine-tuning keeps the encoder frozen (a linear probe): the requested
            ``linear_probe``, except for ``vanilla``, whose encoder has nothing to probe and always trains end to
            end.
    """

    network: nn.Module
    loss_function: nn.Module | None
    prepare_batch: ContrastiveBatch
    epochs: int = 0
    frozen_encoder: bool = False


def pretraining_setup(method: str, model: ContrastiveRegressor, loss_kwargs: Mapping[str, Mapping] | None = None,
                      view_keys: Sequence[str] = ("image",), epochs: int = 0, linear_probe: bool = False,
                      conr_weight: float = 1.0) -> Pretraining:
    """Decide what pre-training ``method`` means: network view, loss, batch preparation, epochs and probe.

    Args:
        method: one of :data:`METHODS`; ``vanilla`` gives a set-up without a loss, with 0 epochs and an encoder
            trained end to end.
        model: the model whose encoder (and projection head) pre-training trains.
        loss_kwargs: per-method keyword arguments of the loss, e.g. ``{"supremix": {"temperature": 0.5}}``;
            only ``loss_kwargs[method]`` is used.
        view_keys: batch keys of the V views (see :class:`ContrastiveBatch`).
        epochs: requested pre-training epochs (>= 0).
        linear_probe: requested linear probe (frozen encoder during fine-tuning).
        conr_weight: weight of the ConR term against the L1 regression term (``conr`` only).
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}.")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"pretraining_setup: epochs must be an integer >= 0, got {epochs!r}.")
    if method == "vanilla":
        return Pretraining(MultiViewProjector(model), None, ContrastiveBatch(view_keys))
    loss = get_loss(method, **dict((loss_kwargs or {}).get(method, {})))
    phase = {"epochs": epochs, "frozen_encoder": bool(linear_probe)}
    if method == "conr":
        return Pretraining(JointProjectorRegressor(model), ConRObjective(loss, conr_weight),
                           ContrastiveBatch(view_keys), **phase)
    if method in SENTENCE_PAIR_METHODS:
        return Pretraining(SentenceEmbedder(model), loss, ContrastiveBatch(view_keys), **phase)
    mixup_alpha = getattr(loss, "mixup_alpha", None) if method == "mixsupcon" else None
    return Pretraining(MultiViewProjector(model), loss, ContrastiveBatch(view_keys, mixup_alpha=mixup_alpha), **phase)
