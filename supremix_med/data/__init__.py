"""Cached-tensor datasets, manifests, splits and the embedded demo cohorts."""
