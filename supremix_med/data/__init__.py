"""The data layer: the preprocessed-tensor cache, its datasets, manifests, splits and covariates.

Raw-format sources read without a cache (faces, sentence pairs, tables) are in :mod:`supremix_med.data.sources`;
the synthetic demo cohorts are in :mod:`supremix_med.demo`.

``CachedDataset`` is imported lazily: worker processes that only build caches import this package and
should not pay for importing MONAI.
"""

from supremix_med.data.cache import CacheInfo, build_cache, read_cache_info, read_fingerprint
from supremix_med.data.manifest import load_manifest, validate_manifest
from supremix_med.data.splits import SPLITS, assign_splits, select_splits

__all__ = ["CacheInfo", "build_cache", "read_cache_info", "read_fingerprint", "load_manifest",
           "validate_manifest", "SPLITS", "assign_splits", "CachedDataset", "select_splits"]


def __getattr__(name: str):
    if name == "CachedDataset":
        from supremix_med.data.datasets import CachedDataset

        return CachedDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
