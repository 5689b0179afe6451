"""Ignite/MONAI pieces wired by bundle configs: batch preparation, pre-training set-up, reporting, run steps."""

from supremix_med.engines.batches import ContrastiveBatch, multi_view_transform
from supremix_med.engines.pretraining import (
    METHODS, PRETRAINING_METHODS, SENTENCE_PAIR_METHODS, ConRObjective, Pretraining, SentenceEmbedder, pretraining_setup,
)
from supremix_med.engines.reporting import PredictionCollector, plot_predictions, write_report
from supremix_med.engines.workflow import evaluate_and_report, load_weights, run_pretraining, save_run_config
from supremix_med.engines.windows import SubjectAveragingCollector, WindowAveragingInferer

__all__ = [
    "ContrastiveBatch", "multi_view_transform",
    "METHODS", "PRETRAINING_METHODS", "SENTENCE_PAIR_METHODS", "ConRObjective", "Pretraining", "SentenceEmbedder",
    "pretraining_setup",
    "PredictionCollector", "plot_predictions", "write_report",
    "evaluate_and_report", "load_weights", "run_pretraining", "save_run_config",
    "SubjectAveragingCollector", "WindowAveragingInferer",
]
