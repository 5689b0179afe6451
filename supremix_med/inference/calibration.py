"""The training recipe's calibration step: the interval and training reference stored beside the selected model,
and the interval's coverage on the test split for ``metrics.json``.

:class:`ConformalCalibration` is a handler of the test evaluator (``bundles/_base/train.json#test#handlers``,
after the selected model is loaded and the bias correction fitted). When the test evaluation starts it

1. predicts the validation split with the inferer inference will use (test-time augmentation,
   :class:`~supremix_med.inference.TestTimeAugmentationInferer`), so the spreads it calibrates on are made as at
   inference;
2. fits the split-conformal interval and the training reference on those predictions and writes them beside the
   model (:func:`~supremix_med.inference.reference.fit_model_reference`: ``validation_predictions.csv``,
   ``conformal.json``, ``reference.json``, ``input_reference.npy``; rank 0 only);
3. predicts the test split the same way and keeps the interval's coverage there (:attr:`coverage`, which
   :class:`~supremix_med.engines.TestReport` adds to ``metrics.json`` as ``conformal``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from torch import nn

from supremix_med.engines.distributed import writes_files

from .reference import fit_model_reference, write_model_reference
from .uncertainty import SplitSpreadd, SpreadCollector, TestTimeAugmentationInferer, coverage_report, spread_column

__all__ = ["ConformalCalibration"]

logger = logging.getLogger(__name__)


class ConformalCalibration:
    """Handler of a test evaluator: calibrate the selected model's interval, store it, measure its test coverage.

    Args:
        network: the network (holding the selected weights when the test evaluation starts).
        inferer: the spread source inference will use (its ``settings`` are recorded in ``conformal.json``).
        validation_loader, test_loader: loaders of the validation and test splits (unaugmented).
        prepare_batch: the evaluators' ``prepare_batch``.
        model_dir: the model folder the files go to.
        train_dataset: the training dataset (its ``labels``: the training range).
        train_inputs: preprocessed, unaugmented training inputs for the input statistics (a map-style dataset of
            dicts with ``image``), or None.
        bias_correction: the test evaluator's :class:`~supremix_med.engines.BiasCorrectionHandler` (its fitted
            correction makes the stored gap statistics those of corrected gaps), or None.
        target: the target's name.
        alpha: miscoverage of the interval (0.1: 90 % intervals).
        max_inputs: training inputs the input statistics read at most; 0: no input statistics (inputs without a
            meaningful mean image, e.g. token ids).
        device, amp: as the evaluators'.

    Attributes:
        coverage: :func:`~supremix_med.inference.coverage_report` on the test split (empty before the run).
    """

    def __init__(self, network: nn.Module, inferer: TestTimeAugmentationInferer, validation_loader: Any,
                 test_loader: Any, prepare_batch: Callable, model_dir: str | os.PathLike, train_dataset: Any,
                 train_inputs: Sequence[Any] | None = None, bias_correction: Any = None, target: str = "age",
                 alpha: float = 0.1, max_inputs: int = 256, device: str | torch.device = "cpu",
                 amp: bool = False) -> None:
        if max_inputs < 0:
            raise ValueError(f"ConformalCalibration: max_inputs must be >= 0, got {max_inputs}.")
        self.network, self.inferer, self.prepare_batch = network, inferer, prepare_batch
        self.loaders = {"validation": validation_loader, "test": test_loader}
        self.model_dir, self.train_dataset, self.train_inputs = model_dir, train_dataset, train_inputs
        self.bias_correction, self.target, self.alpha, self.max_inputs = bias_correction, target, alpha, max_inputs
        self.device, self.amp = device, amp
        self.coverage: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Calibrate when ``engine`` (the test evaluator) starts."""
        engine.add_event_handler(Events.STARTED, self)

    def predict(self, split: str) -> pd.DataFrame:
        """``id, <target>, predicted_<target>, predicted_<target>_spread`` of ``"validation"`` or ``"test"``."""
        collector = SpreadCollector()
        SupervisedEvaluator(device=self.device, val_data_loader=self.loaders[split], network=self.network,
                            prepare_batch=self.prepare_batch, inferer=self.inferer, postprocessing=SplitSpreadd(),
                            val_handlers=[collector], amp=self.amp, decollate=False).run()
        return collector.frame(self.target)

    def __call__(self, engine: Engine | None = None) -> None:
        correction = getattr(self.bias_correction, "correction", None)
        table, interval, reference = fit_model_reference(
            self.predict("validation"), self.train_dataset.labels, self.target, correction,
            self.train_inputs if self.max_inputs > 0 else None, self.alpha, max(self.max_inputs, 1),
            self.inferer.settings)
        if writes_files():
            write_model_reference(self.model_dir, table, interval, reference)
        test = self.predict("test")
        spread = test[spread_column(self.target)] if interval.score == "normalised" else None
        self.coverage = coverage_report(interval, test[f"predicted_{self.target}"], test[self.target], spread)
        logger.info("conformal interval: %.0f %% target, %s coverage on %d test cases", 100 * (1 - self.alpha),
                    self.coverage["coverage"], self.coverage["n"])
