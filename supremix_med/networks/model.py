"""The model every recipe trains: one encoder with a contrastive projection head and a regression head.

- :class:`ContrastiveRegressor` holds ``encoder`` -> features [B, F], ``projector`` -> projections [B, P] and
  ``regressor`` -> predictions [B, n_targets]. ``forward`` predicts, so the same object is the bundle's
  ``network_def`` for fine-tuning, evaluation and inference. With an optional FDS layer, ``forward(x, labels)``
  in training mode calibrates the features before the regressor (feature-distribution smoothing). With
  ``n_covariates`` C > 0 the regressor sees [features, covariates] [B, F + C] (e.g. sex for bone age):
  ``forward(x, covariates=c)``; the projector, hence contrastive pre-training, sees the image features only.
- :class:`MultiViewProjector` adapts it to contrastive pre-training: views [B, V, *input] -> [B, V, P].
- :class:`JointProjectorRegressor` returns projections and predictions from one encoder pass (ConR, which
  regularises a regression with a contrastive term).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from supremix_med.imbalance.fds import FDS
from supremix_med.losses.mixsupcon import mix_with_partners

from .heads import ProjectionHead, Regressor

__all__ = ["ContrastiveRegressor", "MultiViewProjector", "JointProjectorRegressor", "CHECKPOINT_KEYS"]

#: Keys under which a checkpoint file may hold the model's state dict, tried in this order: MONAI/ignite
#: ``CheckpointSaver(save_dict={"network": net, ...})`` and the usual ``{"model": ...}``, ``{"net": ...}``,
#: ``{"state_dict": ...}`` and ``{"encoder": ...}`` layouts.
CHECKPOINT_KEYS = ("network", "model", "net", "state_dict", "encoder")
# Prefixes added by wrappers around the whole model: DistributedDataParallel / DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Prefixes of the encoder inside our modules: MultiViewProjector / JointProjectorRegressor, ContrastiveRegressor.
_ENCODER_PREFIXES = ("model.encoder.", "encoder.")
_MAX_LISTED_KEYS = 8


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED_KEYS else shown


def _encoder_candidates(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Readings of ``state`` as an encoder state dict: as is, or the part under each encoder prefix."""
    for wrapper in _WRAPPER_PREFIXES:
        state = {k.removeprefix(wrapper): v for k, v in state.items()}
    return [dict(state)] + [
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        for prefix in _ENCODER_PREFIXES
        if any(k.startswith(prefix) for k in state)
    ]


def _read_state(source: str | os.PathLike | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Load ``source`` and return (flat state dict, description of the source for error messages)."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.isfile(name):
            raise FileNotFoundError(f"load_encoder: checkpoint file {name!r} does not exist.")
        try:
            obj = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises pickle, zip and weights-only errors of many types
            raise ValueError(f"load_encoder: cannot read {name!r} as a torch checkpoint: {err}") from err
        where = f"checkpoint {name!r}"
    elif isinstance(source, Mapping):
        obj, where = source, "the given state dict"
    else:
        raise ValueError(f"load_encoder: source must be a path or a state dict, got {type(source).__name__}.")
    if not _is_state_dict(obj):
        nested = [k for k in CHECKPOINT_KEYS if isinstance(obj, Mapping) and _is_state_dict(obj.get(k))]
        if not nested:
            found = _listed(sorted(map(str, obj))) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(
                f"load_encoder: {where} is neither a state dict nor a checkpoint holding one under any of "
                f"{list(CHECKPOINT_KEYS)}; found {found}."
            )
        obj = obj[nested[0]]
    return dict(obj), where


class ContrastiveRegressor(nn.Module):
    """Encoder + L2-normalised projection head + linear regressor.

    Args:
        encoder: module mapping inputs [B, *input] to features [B, F]; must have ``out_features`` (F) unless
            ``in_features`` is given.
        projection_dim: projection size P of the contrastive head.
        n_targets: number of regression outputs.
        in_features: F for an encoder without an ``out_features`` attribute.
        fds: optional :class:`~supremix_med.imbalance.FDS` layer over the F features (see :meth:`forward`);
            its statistics are buffers of the model's state dict.
        n_covariates: number C of covariates (e.g. 1 for sex coded 0/1) concatenated to the F features before
            the regressor; 0 = image only.

    Attributes:
        encoder, projector (:class:`ProjectionHead` F -> F -> P), regressor (:class:`Regressor`
        F + C -> n_targets), fds (or ``None``), n_covariates (C).
        target_mean, target_std: buffers [n_targets]; the regressor works on standardised targets and
            :meth:`predict` returns ``regressor(h) * target_std + target_mean`` in label units (set them with
            :meth:`set_target_statistics` before training; they are saved in the state dict).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projection_dim: int = 128,
        n_targets: int = 1,
        in_features: int | None = None,
        fds: FDS | None = None,
        n_covariates: int = 0,
    ) -> None:
        super().__init__()
        features = in_features if in_features is not None else getattr(encoder, "out_features", None)
        if not isinstance(features, int) or features < 1:
            raise ValueError(
                f"ContrastiveRegressor: encoder {type(encoder).__name__} has no integer out_features "
                f"(got {features!r}); pass in_features."
            )
        if n_targets < 1 or projection_dim < 1:
            raise ValueError(f"ContrastiveRegressor: n_targets and projection_dim must be >= 1, "
                             f"got {n_targets} and {projection_dim}.")
        if not isinstance(n_covariates, int) or n_covariates < 0:
            raise ValueError(f"ContrastiveRegressor: n_covariates must be an integer >= 0, got {n_covariates!r}.")
        if fds is not None and fds.feature_dim != features:
            raise ValueError(f"ContrastiveRegressor: the FDS layer smooths {fds.feature_dim} features, the encoder "
                             f"gives {features}.")
        self.encoder = encoder
        self.projector = ProjectionHead(features, projection_dim)
        self.regressor = Regressor(features + n_covariates, n_targets)
        self.n_covariates = n_covariates
        self.fds = fds
        self.register_buffer("target_mean", torch.zeros(n_targets))
        self.register_buffer("target_std", torch.ones(n_targets))
        self.encoder_frozen = False

    def set_target_statistics(self, targets: Any) -> ContrastiveRegressor:
        """Standardise the regression targets with the mean and std of ``targets`` ([N] or [N, n_targets]).

        A 40-year age range then maps to about 4 units, which suits a freshly initialised linear regressor.
        """
        values = torch.as_tensor(np.asarray(targets, dtype=np.float64)).reshape(-1, self.target_mean.numel())
        if values.shape[0] < 1 or not torch.isfinite(values).all():
            raise ValueError(f"set_target_statistics: expected finite targets, got {values.shape[0]} values "
                             f"with non-finite entries or none at all.")
        std = values.std(dim=0, unbiased=False) if values.shape[0] > 1 else torch.ones(values.shape[1])
        self.target_mean.copy_(values.mean(dim=0))
        self.target_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        return self

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs [B, *input] -> features [B, F]."""
        return self.encoder(x)

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, F] -> unit-norm projections [B, P]."""
        return F.normalize(self.projector(features), dim=1)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs [B, *input] -> unit-norm projections [B, P] (the embedding a contrastive loss sees)."""
        return self.project_features(self.encode(x))

    def regressor_input(self, features: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """The regressor's input: features [B, F] and covariates [B, C] (or [B] when C = 1) -> [B, F + C].

        Raises:
            ValueError: the model takes covariates and none are given, or they are not [B, C].
        """
        if self.n_covariates == 0:
            return features
        if covariates is None:
            raise ValueError("ContrastiveRegressor: this model takes " + str(self.n_covariates)
                             + " covariate(s) per sample beside the image; pass covariates [B, C].")
        # TorchScript-compatible: no f-strings, and a new name for the refined (non-optional) tensor
        values = covariates.unsqueeze(1) if covariates.dim() == 1 and self.n_covariates == 1 else covariates
        if values.dim() != 2 or values.shape[0] != features.shape[0] or values.shape[1] != self.n_covariates:
            raise ValueError("ContrastiveRegressor: expected covariates [" + str(features.shape[0]) + ", "
                             + str(self.n_covariates) + "], got " + str(list(covariates.shape)) + ".")
        return torch.cat([features, values.to(features.dtype)], dim=1)

    def predict_features(self, features: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Features [B, F] (and covariates [B, C] if the model takes any) -> predictions [B, n_targets] in label
        units."""
        return self.regressor(self.regressor_input(features, covariates)) * self.target_std + self.target_mean

    def predict(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs [B, *input] (and covariates [B, C] if the model takes any) -> predictions [B, n_targets] in
        label units."""
        return self.predict_features(self.encode(x), covariates)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions [B, n_targets] in label units from inputs [B, *input] and, for a model with
        ``n_covariates`` C > 0, ``covariates`` [B, C] (float; a trainer or evaluator passes the batch's
        ``"covariates"`` with ``PrepareBatchExtraInput(extra_keys={"covariates": "covariates"})``).

        Without an FDS layer, without ``labels`` or in eval mode this is :meth:`predict`. In training mode with
        an FDS layer and ``labels`` ([B] or [B, 1], label units; a trainer passes them with MONAI's
        ``PrepareBatchExtraInput(extra_keys={"labels": "label"})``), the batch's detached features are first
        collected for the epoch's statistics (:meth:`FDS.collect`) and the features are calibrated by
        :meth:`FDS.smooth` at ``fds.current_epoch`` before the regressor (gradients flow through them). A
        TorchScript export (for inference) compiles only the :meth:`predict` path and ignores ``labels``. FDS
        smooths the image features only; the covariates join them after it.

        Raises:
            ValueError: the model takes covariates and ``covariates`` is None or not [B, C].
        """
        return self.predict_features(self.training_features(x, labels), covariates)

    def training_features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder features [B, F] as :meth:`forward` feeds them to the regressor: FDS-calibrated in training mode
        when the model has an FDS layer and ``labels`` are given (see :meth:`forward`)."""
        features = self.encode(x)
        if not torch.jit.is_scripting() and self.training and self.fds is not None and labels is not None:
            self.fds.collect(features, labels)
            features = self.fds.smooth(features, labels, self.fds.current_epoch)
        return features

    def freeze_encoder(self, frozen: bool = True) -> ContrastiveRegressor:
        """Freeze (or unfreeze) the encoder for the linear-probe protocol.

        A frozen encoder has ``requires_grad=False`` on every parameter and stays in eval mode even when
        :meth:`train` is called, so its BatchNorm running statistics do not move while the heads train.
        """
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        return self.train(self.training)

    def fine_tuning_parameters(self, frozen_encoder: bool = False) -> list[nn.Parameter]:
        """The parameters fine-tuning optimises: all of them, or all but the encoder's for a linear probe."""
        excluded = {id(p) for p in self.encoder.parameters()} if frozen_encoder else set()
        return [p for p in self.parameters() if id(p) not in excluded]

    def train(self, mode: bool = True) -> ContrastiveRegressor:
        """Set train/eval mode like :meth:`torch.nn.Module.train`, keeping a frozen encoder in eval mode."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        return self

    def load_encoder(self, source: str | os.PathLike | Mapping[str, Any]) -> ContrastiveRegressor:
        """Load encoder weights (e.g. after contrastive pre-training) and return ``self``.

        ``source`` is a file written by ``torch.save`` or an in-memory dict, in any of these layouts:

        - an encoder state dict (keys such as ``conv1.weight``);
        - a model state dict whose encoder keys start with ``encoder.`` (this class) or ``model.encoder.``
          (:class:`MultiViewProjector` / :class:`JointProjectorRegressor`); other keys (heads) are ignored;
        - a checkpoint dict holding one of the above under the first present key of :data:`CHECKPOINT_KEYS`
          (``{"network": ..., "optimizer": ...}`` from MONAI's ``CheckpointSaver``; a single-object
          ``CheckpointSaver`` file is already a plain state dict).

        A leading ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile) is removed first; of the
        readings "as is", "under ``model.encoder.``" and "under ``encoder.``" the one sharing the most keys with
        this encoder is loaded (strictly). Files are read on the CPU with ``weights_only=True``.

        Raises:
            FileNotFoundError: ``source`` is a path that does not exist.
            ValueError: the file cannot be read, holds no state dict, or its encoder keys or shapes differ from
                this encoder's (the message names the file and the missing, unexpected and mis-shaped keys).
        """
        state, where = _read_state(source)
        expected = self.encoder.state_dict()
        # the reading that shares the most keys with this encoder is the one to load or to report on
        state = max(_encoder_candidates(state), key=lambda c: len(expected.keys() & c.keys()))
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        misshaped = [
            f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
            for k, v in expected.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or misshaped:
            problems = [
                f"{label}: {_listed(keys)}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
                if keys
            ]
            raise ValueError(
                f"load_encoder: {where} does not match the {type(self.encoder).__name__} encoder; "
                + "; ".join(problems)
            )
        self.encoder.load_state_dict(state)
        return self


def _fold_views(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 3:
        raise ValueError(f"expected views [B, V, *input_shape], got shape {tuple(x.shape)}.")
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class MultiViewProjector(nn.Module):
    """Contrastive pre-training view of a :class:`ContrastiveRegressor`: [B, V, *input] -> [B, V, P] unit-norm.

    All B * V views go through the encoder as one batch (so BatchNorm sees every view), sample-major.
    ``forward(x, mixup=(lam [B], partners [B]))`` mixes each sample's encoder features with its partner's,
    lam * f_b + (1 - lam) * f_partner, before the projection head: MixSupCon's mixup for inputs that cannot be
    mixed themselves, such as token ids (see :class:`~supremix_med.engines.ContrastiveBatch`).
    """

    def __init__(self, model: ContrastiveRegressor) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mixup: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        batch, views = x.shape[:2]
        features = self.model.encode(_fold_views(x)).reshape(batch, views, -1)
        if mixup is not None:
            features = mix_with_partners(features, *mixup)
        return self.model.project_features(features.reshape(batch * views, -1)).reshape(batch, views, -1)


class JointProjectorRegressor(nn.Module):
    """Projections and predictions from one encoder pass, for a regression regularised by a contrastive term.

    forward(x [B, V, *input]) returns ``{"features": [B, V, P] unit-norm, "predictions": [B, V, n_targets]}``.
    The predictions come from the image alone, so a model with covariates is refused (``ValueError``).
    """

    def __init__(self, model: ContrastiveRegressor) -> None:
        super().__init__()
        if model.n_covariates:
            raise ValueError(f"JointProjectorRegressor: the model's regressor takes {model.n_covariates} "
                             "covariate(s), but contrastive pre-training sees images only; pre-train with another "
                             "method or train this model without covariates.")
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, views = x.shape[:2]
        features = self.model.encode(_fold_views(x))
        return {
            "features": self.model.project_features(features).reshape(batch, views, -1),
            "predictions": self.model.predict_features(features).reshape(batch, views, -1),
        }


class ProjectingRegressor(nn.Module):
    """A :class:`ContrastiveRegressor` that also keeps the projections of its last training batch, for a regression
    regularised by a contrastive term (ConR during end-to-end training).

    ``forward`` is the model's: predictions [B, n_targets] from inputs, ``labels`` (FDS) and ``covariates``; in
    training mode it also sets :attr:`projections` to the unit-norm projections [B, P] of the same encoder pass,
    which the regularised loss reads (see ``supremix_med.engines.RegularisedLoss``).
    """

    def __init__(self, model: ContrastiveRegressor) -> None:
        super().__init__()
        self.model = model
        self.projections: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                covariates: torch.Tensor | None = None) -> torch.Tensor:
        features = self.model.training_features(x, labels)
        self.projections = self.model.project_features(features) if self.training else None
        return self.model.predict_features(features, covariates)
