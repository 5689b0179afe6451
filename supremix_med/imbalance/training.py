"""LDS and FDS as training switches, for any recipe and any pre-training method.

A bundle's ``lds`` and ``fds`` config values are each ``null``/``false`` (off), ``true`` (default settings) or a
mapping of settings (e.g. ``--lds "{'kernel': 'laplace', 'kernel_size': 5, 'sigma': 2}"``):

- :func:`regression_loss` ``(train_labels, lds)``: the fine-tuning loss, L1 or LDS-weighted L1.
- :func:`build_fds` ``(feature_dim, fds)``: the FDS layer of a model (what
  ``supremix_med.networks.build_model(fds=...)`` calls), or ``None``.

The epoch protocol of FDS in an ignite trainer is :class:`supremix_med.engines.FDSUpdateHandler`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from numpy.typing import ArrayLike
from torch import nn

from .fds import FDS
from .lds import LDSL1Loss, LDSWeights

__all__ = ["FDS_DEFAULTS", "regression_loss", "build_fds"]

#: FDS buckets used when neither the settings nor :func:`build_fds`'s ``label_range`` place them: 100 buckets of
#: width 1 from 0, the authors' setting for ages.
FDS_DEFAULTS: dict[str, Any] = {"bucket_num": 100, "bucket_start": 0.0}


def _keywords(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    """Names of the keyword arguments of ``cls``'s constructor, less ``exclude``."""
    return set(inspect.signature(cls).parameters) - set(exclude)


def _settings(value: bool | Mapping[str, Any] | None, name: str, allowed: set[str]) -> dict[str, Any] | None:
    """``None`` for off (``None``/``False``), ``{}`` for ``True``, a checked copy of a mapping.

    Raises:
        ValueError: ``value`` is of another type, or a mapping with keys outside ``allowed``.
    """
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be null/false (off), true (defaults) or a mapping of settings, "
                         f"got {type(value).__name__} {value!r}.")
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"{name}: unknown settings {sorted(unknown)}; expected some of {sorted(allowed)}.")
    return dict(value)


def regression_loss(train_labels: ArrayLike | Any, lds: bool | Mapping[str, Any] | None = None) -> nn.Module:
    """The fine-tuning loss ``(pred, target) -> scalar`` in label units (the model's predictions and the raw
    targets), optionally weighted by label-distribution smoothing.

    Without LDS it is the mean absolute error over all elements of [B, T] tensors; LDS weighs one target per
    sample ([B] or [B, 1]) by the weight of its label.

    Args:
        train_labels: [N] or [N, 1] training targets, label units (used only with LDS, to fit the density), or a
            dataset whose ``labels`` are read the first time the loss is called (so a bundle config can build
            its loss before any data is there).
        lds: ``None``/``False``: ``torch.nn.L1Loss()``. ``True``: :class:`LDSL1Loss` with the default
            :class:`LDSWeights` (bins of width 1, Gaussian kernel of size 5 and sigma 2, inverse density).
            A mapping: :class:`LDSWeights` keyword arguments (``bin_width``, ``kernel``, ``kernel_size``,
            ``sigma``, ``reweight``, ``clip_max``).

    Returns:
        the loss module; with LDS its weights have mean 1 over the training labels, so the loss is on the scale
        of the plain L1 loss.

    Raises:
        ValueError: ``lds`` of another type or with unknown keys, bad LDS settings, empty or non-finite labels.
    """
    settings = _settings(lds, "lds", _keywords(LDSWeights))
    if settings is None:
        return nn.L1Loss()
    weights = LDSWeights(**settings)  # settings are checked now, the density is fitted on the labels
    if hasattr(train_labels, "labels"):
        return _DatasetLDSL1Loss(weights, train_labels)
    return LDSL1Loss(weights.fit(train_labels))


class _DatasetLDSL1Loss(nn.Module):
    """:class:`LDSL1Loss` fitted on ``dataset.labels`` when first called (the dataset is read at training time)."""

    def __init__(self, weights: LDSWeights, dataset: Any) -> None:
        super().__init__()
        self.weights, self.dataset = weights, dataset
        self.loss: LDSL1Loss | None = None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted L1 of predictions and targets, as :meth:`LDSL1Loss.forward`."""
        if self.loss is None:
            self.loss = LDSL1Loss(self.weights.fit(self.dataset.labels)).to(target.device)
        return self.loss(input, target)


def build_fds(feature_dim: int, fds: bool | Mapping[str, Any] | None = None,
              label_range: Sequence[float] | None = None) -> FDS | None:
    """The FDS layer for features of size ``feature_dim``, or ``None`` when ``fds`` is off.

    Buckets: ``label_range: [lo, hi]`` (label units) gives buckets of ``bin_width`` from ``lo``,
    ``ceil((hi - lo) / bin_width)`` of them (labels beyond either end join the edge bucket). It is taken from
    the settings, else from the ``label_range`` argument, unless the settings give ``bucket_start`` /
    ``bucket_num`` themselves; with no range at all the buckets of :data:`FDS_DEFAULTS` are used.

    Args:
        feature_dim: D, the encoder's feature size.
        fds: ``None``/``False``: no layer. ``True``: :class:`FDS`'s default settings (Gaussian kernel of size 5
            and sigma 2, momentum 0.9, smoothing from epoch 1) with the buckets above. A mapping: :class:`FDS`
            keyword arguments (all but ``feature_dim``) and/or ``label_range``; missing ones as for ``True``.
            Every value is JSON-friendly, so the same arguments in a saved model config rebuild the layer.
        label_range: the target range of the task (e.g. a bundle's ``label_range``), used when ``fds`` does
            not place the buckets.

    Raises:
        ValueError: ``fds`` of another type or with unknown keys, ``label_range`` together with
            ``bucket_start``/``bucket_num`` or not two finite numbers with lo < hi, a ``bin_width`` that is not
            a number > 0, bad FDS settings.
    """
    settings = _settings(fds, "fds", _keywords(FDS, exclude=("feature_dim",)) | {"label_range"})
    if settings is None:
        return None
    if label_range is not None and not {"label_range", "bucket_start", "bucket_num"} & set(settings):
        settings["label_range"] = label_range
    if "label_range" in settings:
        settings.update(_buckets_of_range(settings))
    return FDS(feature_dim, **{**FDS_DEFAULTS, **settings})


def _buckets_of_range(settings: dict[str, Any]) -> dict[str, Any]:
    """Pop ``label_range`` from ``settings`` and return the ``bucket_start`` and ``bucket_num`` covering it."""
    clash = sorted({"bucket_start", "bucket_num"} & set(settings))
    if clash:
        raise ValueError(f"fds: give either label_range or {clash}, not both.")
    label_range = settings.pop("label_range")
    try:
        low, high = (float(v) for v in label_range)
    except (TypeError, ValueError) as err:
        raise ValueError(f"fds: label_range must be [lo, hi] (label units), got {label_range!r}.") from err
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"fds: label_range must hold two finite numbers with lo < hi, got {label_range!r}.")
    bin_width = settings.get("bin_width", inspect.signature(FDS).parameters["bin_width"].default)
    if isinstance(bin_width, bool) or not isinstance(bin_width, (int, float)) or not bin_width > 0:
        raise ValueError(f"fds: bin_width must be a number > 0 (label units), got {bin_width!r}.")
    return {"bucket_start": low, "bucket_num": max(1, math.ceil((high - low) / bin_width))}
