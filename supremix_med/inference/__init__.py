"""Prediction on new scans of any modality, written to CSV with QC columns (``bundles/<name>/inference.json``).

- :func:`list_scans`: a folder of scans (by suffix, DICOM files or DICOM series folders) or a CSV
  ``id,path[,<target>]`` -> dataset items;
- :func:`check_fingerprint`: refuse a model trained on differently preprocessed data;
- :class:`PreprocessScan`: a pipeline's (``preprocessing.<modality>``) preprocessing per item, errors captured
  instead of raised, QC fields from the pipeline's ``QC_FIELDS``;
- :class:`PredictionWriter`: ignite handler writing ``predictions.csv`` (predictions, gaps, QC, errors) atomically.
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
from .writer import PredictionWriter, qc_flags

__all__ = [
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
