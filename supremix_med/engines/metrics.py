"""Ignite metrics for MONAI evaluators (``key_val_metric`` / ``additional_metrics`` of ``SupervisedEvaluator``).

MAE and MSE are ignite's own running metrics. GM, Pearson r and Spearman rho need every prediction of the epoch,
so they are :class:`ignite.metrics.EpochMetric` s computing the functions of
:mod:`supremix_med.metrics.regression` on the gathered predictions (all ranks under DDP); the numbers therefore
equal the plain functions on the same data.

Every metric reads ``engine.state.output`` through ``output_transform`` (default
``monai.handlers.from_engine(["pred", "label"])``, which handles both a batch dict and MONAI's decollated list of
dicts) and then :func:`as_prediction_pair`, which accepts [B] or [B, 1] tensors or lists of per-sample values.

Example (bundle config)::

    "key_val_metric": "$supremix_med.engines.regression_ignite_metrics(['mae'])",
    "additional_metrics": "$supremix_med.engines.regression_ignite_metrics(['mse', 'gm', 'pearson_r'])"
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import EpochMetric, MeanAbsoluteError, MeanSquaredError, Metric
from monai.handlers import from_engine
from monai.utils import convert_to_tensor

from supremix_med.metrics.regression import REGRESSION_METRICS

__all__ = ["lower_is_better", "as_prediction_pair", "from_engine_regression", "RegressionEpochMetric", "regression_ignite_metric",
           "regression_ignite_metrics"]

_RUNNING_METRICS: dict[str, type[Metric]] = {"mae": MeanAbsoluteError, "mse": MeanSquaredError}


def _as_column(values: Any, name: str) -> torch.Tensor:
    """[B] / [B, 1] tensor, or a list of B scalars / [1] tensors -> float64 tensor [B]."""
    if isinstance(values, (list, tuple)):
        values = torch.stack([convert_to_tensor(v, track_meta=False).reshape(-1) for v in values])
    values = convert_to_tensor(values, track_meta=False)
    if values.dim() == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.dim() != 1:
        raise ValueError(f"regression metrics need {name} of shape [B] or [B, 1] (one target), "
                         f"got {tuple(values.shape)}.")
    return values.to(torch.float64)


def as_prediction_pair(output: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_pred, y)``, each [B], [B, 1] or a list of per-sample values -> two float64 tensors [B]."""
    y_pred, y = output
    y_pred, y = _as_column(y_pred, "y_pred"), _as_column(y, "y")
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must hold the same number of values, got {y_pred.numel()} and {y.numel()}.")
    return y_pred, y


def from_engine_regression(keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[torch.Tensor, ...]]:
    """``monai.handlers.from_engine(keys)`` followed by :func:`as_prediction_pair`."""
    return _then_pair(from_engine(list(keys)))


def _then_pair(output_transform: Callable[[Any], Any]) -> Callable[[Any], tuple[torch.Tensor, torch.Tensor]]:
    def transform(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return as_prediction_pair(output_transform(output))

    return transform


class RegressionEpochMetric(EpochMetric):
    """A function of :data:`~supremix_med.metrics.regression.REGRESSION_METRICS` over a whole epoch.

    Args:
        name: metric name, e.g. ``"gm"``, ``"pearson_r"``, ``"spearman_rho"``.
        output_transform: engine output -> ``(y_pred, y)``; followed by :func:`as_prediction_pair`.
        device: where predictions are stored until the epoch ends.
    """

    def __init__(
        self,
        name: str,
        output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
        device: str | torch.device = "cpu",
    ) -> None:
        if name not in REGRESSION_METRICS:
            raise ValueError(f"Unknown regression metric {name!r}; choose from {sorted(REGRESSION_METRICS)}.")
        self.name = name
        super().__init__(REGRESSION_METRICS[name], output_transform=_then_pair(output_transform),
                         check_compute_fn=False, device=device)


def regression_ignite_metric(
    name: str,
    output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
    device: str | torch.device = "cpu",
) -> Metric:
    """One metric by name: ignite's running MAE / MSE for ``"mae"`` / ``"mse"``, else a RegressionEpochMetric."""
    if name in _RUNNING_METRICS:
        return _RUNNING_METRICS[name](output_transform=_then_pair(output_transform), device=device)
    return RegressionEpochMetric(name, output_transform=output_transform, device=device)


def regression_ignite_metrics(
    names: Sequence[str] = ("mae", "mse", "gm", "pearson_r"),
    output_transform: Callable[[Any], Any] = from_engine(["pred", "label"]),
    device: str | torch.device = "cpu",
) -> dict[str, Metric]:
    """``{name: metric}`` for :func:`regression_ignite_metric` of every name (a MONAI evaluator's metric dict)."""
    return {name: regression_ignite_metric(name, output_transform, device) for name in names}


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` of MONAI engines for errors (MAE): ``current`` improves on ``best`` when it is lower, and
    any value improves on MONAI's initial best of -1."""
    return best < 0 or current < best
