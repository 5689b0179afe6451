"""Tools for imbalanced regression (Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021).

- :mod:`.lds`: label-distribution smoothing, i.e. loss weights from the kernel-smoothed label density
  (:class:`LDSWeights`, :func:`lds_weights`) and the weighted L1 losses that use them (:class:`WeightedL1Loss`,
  :class:`LDSL1Loss`).
- :mod:`.fds`: feature-distribution smoothing, i.e. calibration of features with kernel-smoothed per-bucket
  feature statistics (:class:`FDS`).
- :mod:`.training`: both as switches of a training recipe (:func:`regression_loss`, :func:`build_fds`); the
  ignite side of FDS is :class:`supremix_med.engines.FDSUpdateHandler`.
"""

from __future__ import annotations

from .fds import FDS
from .lds import KERNELS, REWEIGHTS, LDSL1Loss, LDSWeights, WeightedL1Loss, kernel_window, lds_weights
from .training import FDS_DEFAULTS, build_fds, regression_loss

__all__ = [
    "FDS",
    "FDS_DEFAULTS",
    "KERNELS",
    "REWEIGHTS",
    "LDSL1Loss",
    "LDSWeights",
    "WeightedL1Loss",
    "build_fds",
    "kernel_window",
    "lds_weights",
    "regression_loss",
]
