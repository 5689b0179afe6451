"""Build encoders and models by name, as bundle configs do.

Example (a bundle's ``network_def``)::

    "network_def": {
        "_target_": "supremix_med.networks.build_model",
        "encoder": "resnet18_3d",
        "projection_dim": 128,
        "encoder_checkpoint": "$@ckpt_dir + '/pretrain_final.pt'"
    }

With ``"covariates": ["sex"]`` the model's regressor also takes one covariate per sample (see
:mod:`supremix_med.data.covariates`); the names are kept in the model config, so inference knows what to read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from supremix_med.imbalance.training import build_fds
from supremix_med.io import RUN_ID_KEY

from .encoders import BiLSTMPairEncoder, MLPEncoder, ResNetEncoder, resnet18_1d, resnet18_3d, resnet50_2d
from .model import ContrastiveRegressor

__all__ = ["ENCODERS", "MODEL_CONFIG", "build_encoder", "build_model", "stored_model_config"]

#: File beside a trained model holding its :func:`build_model` arguments.
MODEL_CONFIG = "model_config.json"
#: Encoder constructors by name; every one returns a module with ``out_features``.
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18_3d": resnet18_3d,
    "resnet18_1d": resnet18_1d,
    "resnet50_2d": resnet50_2d,
    "resnet": ResNetEncoder,
    "mlp": MLPEncoder,
    "bilstm_pair": BiLSTMPairEncoder,
}


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Build the encoder registered as ``name`` in :data:`ENCODERS` with ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the choices).
    """
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; choose one of {sorted(ENCODERS)}.")
    return ENCODERS[name](**kwargs)


def build_model(
    encoder: str | nn.Module,
    projection_dim: int = 128,
    n_targets: int = 1,
    encoder_checkpoint: str | os.PathLike | None = None,
    freeze_encoder: bool = False,
    fds: bool | Mapping[str, Any] | None = None,
    label_range: Sequence[float] | None = None,
    covariates: Sequence[str] = (),
    **encoder_kwargs,
) -> ContrastiveRegressor:
    """Build a :class:`ContrastiveRegressor`, optionally with pre-trained and frozen encoder weights.

    Args:
        encoder: a name from :data:`ENCODERS` (built with ``encoder_kwargs``) or a ready module.
        projection_dim: projection size P.
        n_targets: number of regression outputs.
        encoder_checkpoint: file for :meth:`ContrastiveRegressor.load_encoder` (any layout it accepts).
        freeze_encoder: freeze the encoder (linear probe), see :meth:`ContrastiveRegressor.freeze_encoder`.
        fds: feature-distribution smoothing of the encoder's features: ``None``/``False`` (off), ``True``
            (default settings) or a mapping of FDS settings, e.g. ``{"kernel": "laplace", "bin_width": 0.5}``;
            see :func:`supremix_med.imbalance.build_fds` for the keys and defaults. The same kwargs rebuild
            the same layer, so saved as a model config they restore its buffers too.
        label_range: [lo, hi] target range (label units) over which the FDS buckets are laid out unless
            ``fds`` places them itself; used only with ``fds``.
        covariates: names of the covariates the regressor takes beside the image features, in the order of the
            batch's ``"covariates"`` [B, C] tensor (e.g. ``["sex"]``); the model gets
            ``n_covariates = len(covariates)``. Empty: image only.
        encoder_kwargs: constructor arguments of the named encoder.

    Raises:
        ValueError: unknown encoder name, ``encoder_kwargs`` given with a module, a checkpoint that does not
            fit the encoder, bad ``fds`` settings, or ``covariates`` that are not distinct names.
    """
    names = [] if isinstance(covariates, str) else list(covariates)
    if isinstance(covariates, str) or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"build_model: covariates must be a list of distinct column names, e.g. ['sex'], got "
                         f"{covariates!r}.")
    if isinstance(encoder, str):
        encoder = build_encoder(encoder, **encoder_kwargs)
    elif encoder_kwargs:
        raise ValueError(f"build_model: encoder arguments {sorted(encoder_kwargs)} given with a ready "
                         f"{type(encoder).__name__} module; pass an encoder name to use them.")
    model = ContrastiveRegressor(encoder, projection_dim=projection_dim, n_targets=n_targets,
                                 fds=build_fds(getattr(encoder, "out_features", None), fds, label_range),
                                 n_covariates=len(names))
    if encoder_checkpoint is not None:
        model.load_encoder(encoder_checkpoint)
    return model.freeze_encoder(freeze_encoder)


def stored_model_config(ckpt_dir: str | os.PathLike, declared: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The :func:`build_model` arguments of the model in ``ckpt_dir`` (its ``model_config.json``, written by
    training), or ``declared`` (the bundle's architecture) while the folder holds no model yet, so a config
    builds its network before any model exists.

    Raises:
        FileNotFoundError: no ``model_config.json`` and nothing ``declared`` (the message names the file).
        ValueError: ``model_config.json`` exists but is not a JSON object (the message names the file).
    """
    path = Path(ckpt_dir) / MODEL_CONFIG
    if not path.is_file():
        if declared is None:
            raise FileNotFoundError(f"no {MODEL_CONFIG} at {path}: point ckpt_dir at the models folder of a "
                                    f"training run.")
        return dict(declared)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the model config ({err}).") from err
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: expected a JSON object of build_model arguments, got {type(stored).__name__}.")
    stored.pop(RUN_ID_KEY, None)  # which training run wrote the file (supremix_med.engines.model_set), not an argument
    return stored
