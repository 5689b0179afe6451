"""The data layer: the preprocessed-tensor cache, its datasets, manifests, splits and covariates, and the
screening every loader runs (label checks, QC limits, the exclusion report).

Raw-format sources read without a cache (faces, sentence pairs, tables) are in :mod:`supremix_med.data.sources`;
the synthetic demo cohorts are in :mod:`supremix_med.demo`.

The MONAI-facing names (``CachedDataset``, ``collate_fn``, ``read_records``, ``covariate_transforms``,
``covariate_inputs``) are
imported lazily: worker processes that only build caches import this package and should not pay for importing
MONAI.
"""

from supremix_med.data.cache import CacheInfo, build_cache, read_cache_info, read_cache_qc, read_fingerprint
from supremix_med.data.exclusions import EXCLUDED_FILE, report_exclusions
from supremix_med.data.labels import LABEL_POLICIES, check_labels
from supremix_med.data.manifest import load_manifest, validate_manifest
from supremix_med.data.qc import QC_POLICIES, check_qc
from supremix_med.data.splits import SPLITS, assign_splits, select_splits

__all__ = ["CacheInfo", "build_cache", "read_cache_info", "read_cache_qc", "read_fingerprint", "load_manifest",
           "validate_manifest", "SPLITS", "assign_splits", "select_splits", "EXCLUDED_FILE", "report_exclusions",
           "LABEL_POLICIES", "check_labels", "QC_POLICIES", "check_qc", "CachedDataset",
           "collate_fn", "covariate_inputs", "covariate_transforms", "read_records"]

_LAZY = {"CachedDataset": "datasets", "collate_fn": "datasets", "read_records": "datasets", "covariate_inputs": "covariates",
         "covariate_transforms": "covariates"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"supremix_med.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
