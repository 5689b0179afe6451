"""Prediction on new scans of any modality, written to CSV with QC columns (``bundles/<name>/inference.json``).

- :func:`list_scans`: a folder of scans (by suffix, DICOM files or DICOM series folders) or a CSV
  ``id,path[,<target>]`` -> dataset items;
- :func:`check_fingerprint`: refuse a model trained on differently preprocessed data;
- :class:`PreprocessScan`: a pipeline's (``preprocessing.<modality>``) preprocessing per item, errors captured
  instead of raised, QC fields from the pipeline's ``QC_FIELDS``;
- :class:`PredictionWriter`: ignite handler writing ``predictions.csv`` (predictions, gaps, QC, errors) atomically;
- :mod:`~supremix_med.inference.uncertainty`: test-time augmentation, deep ensembles, split conformal intervals;
- :mod:`~supremix_med.inference.reference`: what training stores beside the model for intervals, flags and report;
- :func:`named_flags`: named QC flags of a predictions table against the training reference;
- :class:`InferenceReport`: ignite handler writing ``report.html`` (and the interval and flag columns).
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
from .flags import FLAGS, named_flags
from .model_folder import check_model_folder, stored_params
from .reference import TrainingReference, save_model_reference
from .report import InferenceReport, annotate_predictions, render_report
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
from .writer import PredictionWriter, qc_flags

__all__ = [
    "check_model_folder",
    "stored_params",
    "ConformalInterval",
    "DeepEnsemble",
    "FLAGS",
    "InferenceReport",
    "SplitSpreadd",
    "SpreadCollector",
    "TestTimeAugmentationInferer",
    "TrainingReference",
    "annotate_predictions",
    "calibrated_inferer",
    "coverage_report",
    "load_ensemble",
    "named_flags",
    "render_report",
    "save_model_reference",
    "DICOM_LAYOUTS",
    "FINGERPRINT_IGNORED",
    "NIFTI_SUFFIXES",
    "PredictionWriter",
    "PreprocessScan",
    "check_fingerprint",
    "list_scans",
    "qc_fields",
    "qc_flags",
]
