"""The registry of preprocessing pipelines: the one place where the library reaches ``preprocessing``.

A *pipeline* turns one raw input (a scan, a photo, a table row) into the tensor a model was trained on. Each is a
module offering ``preprocess(path, **params)`` (optionally ``preprocess_with_qc``), ``fingerprint(**params)`` and
``PIPELINE``, the name its fingerprint records; see :mod:`supremix_med.inference.scans` for the optional
``QC_FIELDS`` and ``RUN_PARAMS``. :data:`PIPELINES` maps those names to the modules, so a model folder's
``preprocessing.json`` says which pipeline inference must run, and a bundle's ``inference.json`` names it
(``"pipeline": "t1"``). Modules are imported on first use only: SimpleITK, nilearn or PyAV load for the pipeline
that needs them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["PIPELINES", "get_pipeline"]

#: Pipeline name (the ``pipeline`` entry of its fingerprint) -> the module implementing it.
PIPELINES: dict[str, str] = {
    "t1": "preprocessing.t1",
    "fmri_parcels": "preprocessing.fmri",
    "xray": "preprocessing.xray",
    "ultrasound": "preprocessing.ultrasound",
    "pet": "preprocessing.pet",
    "faces": "supremix_med.data.sources.faces",
    "tables": "supremix_med.data.sources.tables",
}


def get_pipeline(name: str) -> ModuleType:
    """The module of pipeline ``name``, checked to offer ``preprocess`` and ``fingerprint``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names), or its module lacks
            either function.
    """
    if name not in PIPELINES:
        raise ValueError(f"unknown preprocessing pipeline {name!r}; registered pipelines: {sorted(PIPELINES)}.")
    module = importlib.import_module(PIPELINES[name])
    missing = [attr for attr in ("preprocess", "fingerprint") if not callable(getattr(module, attr, None))]
    if missing:
        raise ValueError(f"pipeline {name!r} ({PIPELINES[name]}) has no {' or '.join(missing)}().")
    return module
