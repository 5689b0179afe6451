"""Prediction on new scans of any modality, written to CSV with QC columns (``bundles/<name>/inference.json``).

- :func:`list_scans`: a folder of scans (by suffix, DICOM files or DICOM series folders) or a CSV
  ``id,path[,<target>]`` -> dataset items;
- :func:`check_fingerprint`: refuse a model trained on differently preprocessed data;
- :class:`PreprocessScan`: a pipeline's (``preprocessing.<modality>``) preprocessing per item, errors captured
  instead of raised, QC fields from the pipeline's ``QC_FIELDS``;
- :class:`PredictionWriter`: ignite handler writing ``predictions.csv`` (predictions, intervals, gaps, QC, flags,
  errors) atomically; :class:`ScanProgress`: a progress bar over the scans; :func:`require_predictions`: a run
  in which every input failed is an error (:class:`NothingPredicted`), counted by :func:`failed_inputs`;
- :mod:`~supremix_med.inference.uncertainty`: test-time augmentation, deep ensembles, split conformal intervals;
- :mod:`~supremix_med.inference.reference`: what training stores beside the model for intervals, flags and report;
  :class:`ConformalCalibration`: the training recipe's handler that stores it and reports the test coverage;
- :class:`StoredModel`: what inference reads beside one model or an ensemble's models; :func:`save_bundle_record`:
  which bundle runs a model;
- :func:`named_flags`: every per-scan flag (QC limits, implausible targets, against the training reference);
- :class:`InferenceReport`: ignite handler writing ``report.html``.
"""

from .scans import (
    DICOM_LAYOUTS,
    FINGERPRINT_IGNORED,
    NIFTI_SUFFIXES,
    PreprocessScan,
    check_fingerprint,
    list_scans,
    qc_fields,
)
from .calibration import ConformalCalibration
from .flags import FLAGS, implausible_targets, named_flags
from .model_folder import (
    StoredModel,
    check_model_folder,
    read_bundle_record,
    save_bundle_record,
    stored_params,
)
from .reference import TrainingReference, save_model_reference
from .report import InferenceReport, render_report
from .uncertainty import (
    ConformalInterval,
    DeepEnsemble,
    SplitSpreadd,
    SpreadCollector,
    TestTimeAugmentationInferer,
    calibrated_inferer,
    coverage_report,
    load_ensemble,
)
from .writer import NothingPredicted, PredictionWriter, ScanProgress, failed_inputs, require_predictions

__all__ = [
    "ConformalCalibration",
    "StoredModel",
    "check_model_folder",
    "read_bundle_record",
    "save_bundle_record",
    "stored_params",
    "ConformalInterval",
    "DeepEnsemble",
    "FLAGS",
    "InferenceReport",
    "SplitSpreadd",
    "SpreadCollector",
    "TestTimeAugmentationInferer",
    "TrainingReference",
    "calibrated_inferer",
    "coverage_report",
    "load_ensemble",
    "implausible_targets",
    "named_flags",
    "render_report",
    "save_model_reference",
    "DICOM_LAYOUTS",
    "FINGERPRINT_IGNORED",
    "NIFTI_SUFFIXES",
    "NothingPredicted",
    "PredictionWriter",
    "PreprocessScan",
    "ScanProgress",
    "check_fingerprint",
    "failed_inputs",
    "list_scans",
    "qc_fields",
    "require_predictions",
]
