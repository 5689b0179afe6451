"""Regression metrics (MAE, MSE, GM, Pearson, Spearman), shot-wise metrics, brain-age-gap bias correction."""

from .bias_correction import BiasCorrection
from .ignite_metrics import (
    RegressionEpochMetric,
    as_prediction_pair,
    from_engine_regression,
    regression_ignite_metric,
    regression_ignite_metrics,
)
from .regression import REGRESSION_METRICS, as_vector, gm, mae, mse, pearson_r, regression_metrics, spearman_rho
from .shots import SHOT_GROUPS, shot_groups, shot_metrics

__all__ = [
    "mae",
    "mse",
    "gm",
    "pearson_r",
    "spearman_rho",
    "regression_metrics",
    "REGRESSION_METRICS",
    "as_vector",
    "shot_groups",
    "shot_metrics",
    "SHOT_GROUPS",
    "BiasCorrection",
    "RegressionEpochMetric",
    "regression_ignite_metric",
    "regression_ignite_metrics",
    "from_engine_regression",
    "as_prediction_pair",
]
