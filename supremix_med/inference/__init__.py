"""Prediction on new scans, written to CSV with QC columns (``bundles/<name>/inference.json``).

- :func:`list_scans`: a folder of NIfTI files or a CSV ``id,path[,age]`` -> dataset items;
- :func:`check_fingerprint`: refuse a model trained on differently preprocessed data;
- :class:`PreprocessScan`: the training pipeline per item, errors captured instead of raised;
- :class:`PredictionWriter`: ignite handler writing ``predictions.csv`` (ages, gaps, QC, errors) atomically.
"""

from .scans import FINGERPRINT_IGNORED, NIFTI_SUFFIXES, PreprocessScan, check_fingerprint, list_scans
from .writer import QC_COLUMNS, PredictionWriter, qc_flags

__all__ = [
    "FINGERPRINT_IGNORED",
    "NIFTI_SUFFIXES",
    "QC_COLUMNS",
    "PredictionWriter",
    "PreprocessScan",
    "check_fingerprint",
    "list_scans",
    "qc_flags",
]
