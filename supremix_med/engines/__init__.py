"""Ignite/MONAI pieces wired by bundle configs: batch preparation, pre-training set-up, reporting, run steps."""

from supremix_med.engines.batch_augmentation import (
    BatchAugmentation, BatchRandAffine, BatchRandFlip, BatchRandomTransform, BatchRandScaleIntensity,
    BatchRandShiftIntensity,
)
from supremix_med.engines.batches import AugmentedBatch, ContrastiveBatch, multi_view_transform
from supremix_med.engines.handlers import FDSUpdateHandler
from supremix_med.engines.metrics import (
    RegressionEpochMetric, as_prediction_pair, from_engine_regression, regression_ignite_metric, regression_ignite_metrics,
)
from supremix_med.engines.pretraining import (
    METHODS, PRETRAINING_METHODS, SENTENCE_PAIR_METHODS, ConRObjective, Pretraining, SentenceEmbedder, pretraining_setup,
)
from supremix_med.engines.reporting import PredictionCollector, plot_predictions, write_report
from supremix_med.engines.step_options import NoLossScaling, loss_from_output
from supremix_med.engines.workflow import evaluate_and_report, load_weights, run_pretraining, save_run_config
from supremix_med.engines.windows import SubjectAveragingCollector, WindowAveragingInferer, sliding_windows

__all__ = [
    "BatchAugmentation", "BatchRandAffine", "BatchRandFlip", "BatchRandomTransform", "BatchRandScaleIntensity",
    "BatchRandShiftIntensity",
    "AugmentedBatch", "ContrastiveBatch", "multi_view_transform",
    "NoLossScaling", "loss_from_output",
    "FDSUpdateHandler",
    "RegressionEpochMetric", "as_prediction_pair", "from_engine_regression", "regression_ignite_metric",
    "regression_ignite_metrics",
    "METHODS", "PRETRAINING_METHODS", "SENTENCE_PAIR_METHODS", "ConRObjective", "Pretraining", "SentenceEmbedder",
    "pretraining_setup",
    "PredictionCollector", "plot_predictions", "write_report",
    "evaluate_and_report", "load_weights", "run_pretraining", "save_run_config",
    "SubjectAveragingCollector", "WindowAveragingInferer", "sliding_windows",
]
