"""Regression metrics (MAE, MSE, GM, Pearson, Spearman), shot-wise metrics, brain-age-gap bias correction, and the
ordinality of a representation (Spearman of feature vs label distances, 2-D embedding).

Plain functions of arrays; their ignite wrappers for MONAI engines are in :mod:`supremix_med.engines.metrics`.
"""

from .bias_correction import BiasCorrection
from .ordinality import embed_2d, ordinality_spearman
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
    "ordinality_spearman",
    "embed_2d",
]
