"""Ignite/MONAI pieces wired by bundle configs: batch preparation, pre-training set-up, handlers, reporting, runs.

The only room of the library that imports ignite (with :mod:`supremix_med.inference`, whose writer is a handler).
"""

from supremix_med.engines.batch_augmentation import (
    BatchAugmentation, BatchRandAffine, BatchRandFlip, BatchRandomTransform, BatchRandScaleIntensity,
    BatchRandShiftIntensity,
)
from supremix_med.engines.batches import AugmentedBatch, ContrastiveBatch, multi_view_transform
from supremix_med.engines.checkpoints import PHASES, PhaseCheckpoint, RunCheckpoints
from supremix_med.engines.distributed import (
    EpochSampler, any_rank, barrier, broadcast_from_rank0, distributed, distributed_module, epoch_sampler, gather_to_all,
    rank, rank_handlers, world_size, writes_files,
)
from supremix_med.engines.handlers import FDSUpdateHandler, FineTuningStart, SelectedModelLoader
from supremix_med.engines.metrics import (
    RegressionEpochMetric, as_prediction_pair, from_engine_regression, lower_is_better, regression_ignite_metric,
    regression_ignite_metrics,
)
from supremix_med.engines.model_set import ModelSetPublisher, check_model_set, publish_model_set
from supremix_med.engines.ordinality import OrdinalityHandler
from supremix_med.engines.preemption import EXIT_INTERRUPTED, Preempted, PreemptionSignals
from supremix_med.engines.pretraining import (
    METHODS, PRETRAINING_METHODS, REGULARISED_METHODS, SENTENCE_PAIR_METHODS, ConRObjective, Pretraining,
    RegularisedLoss, SentenceEmbedder, loss_entry, pretraining_setup,
)
from supremix_med.engines.reporting import (
    BiasCorrectionHandler, PredictionCollector, TestReport, plot_predictions, write_report,
)
from supremix_med.engines.runs import RunDirectory
from supremix_med.engines.selection import SelectedModel
from supremix_med.engines.step_options import (
    NoLossScaling, amp_handlers, loss_from_output, place_network, set_cudnn_benchmark,
)
from supremix_med.engines.tracking import MLflowLogger, MLflowRun, sqlite_tracking_uri, tensorboard_report
from supremix_med.engines.windows import SubjectAveragingCollector, WindowAveragingInferer, sliding_windows
from supremix_med.engines.workflow import data_fingerprint, load_weights

__all__ = [
    "BatchAugmentation", "BatchRandAffine", "BatchRandFlip", "BatchRandomTransform", "BatchRandScaleIntensity",
    "BatchRandShiftIntensity",
    "AugmentedBatch", "ContrastiveBatch", "multi_view_transform",
    "PHASES", "PhaseCheckpoint", "RunCheckpoints",
    "EpochSampler", "any_rank", "barrier", "broadcast_from_rank0", "distributed", "distributed_module", "epoch_sampler",
    "gather_to_all", "rank", "rank_handlers", "world_size", "writes_files",
    "FDSUpdateHandler", "FineTuningStart", "SelectedModelLoader",
    "RegressionEpochMetric", "as_prediction_pair", "from_engine_regression", "lower_is_better",
    "regression_ignite_metric", "regression_ignite_metrics",
    "ModelSetPublisher", "check_model_set", "publish_model_set",
    "OrdinalityHandler",
    "EXIT_INTERRUPTED", "Preempted", "PreemptionSignals",
    "METHODS", "PRETRAINING_METHODS", "REGULARISED_METHODS", "SENTENCE_PAIR_METHODS", "ConRObjective", "Pretraining",
    "RegularisedLoss", "SentenceEmbedder", "loss_entry", "pretraining_setup",
    "BiasCorrectionHandler", "PredictionCollector", "TestReport", "plot_predictions", "write_report",
    "RunDirectory", "SelectedModel",
    "NoLossScaling", "amp_handlers", "loss_from_output", "place_network", "set_cudnn_benchmark",
    "MLflowLogger", "MLflowRun", "sqlite_tracking_uri", "tensorboard_report",
    "SubjectAveragingCollector", "WindowAveragingInferer", "sliding_windows",
    "data_fingerprint", "load_weights",
]
