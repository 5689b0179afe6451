"""Tools for imbalanced regression (Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021).

- :mod:`.lds`: label-distribution smoothing, i.e. loss weights from the kernel-smoothed label density
  (:class:`LDSWeights`, :func:`lds_weights`) and the weighted L1 loss that uses them (:class:`WeightedL1Loss`).
- :mod:`.fds`: feature-distribution smoothing, i.e. calibration of features with kernel-smoothed per-bucket
  feature statistics (:class:`FDS`).
"""

from __future__ import annotations

from .fds import FDS
from .lds import KERNELS, REWEIGHTS, LDSWeights, WeightedL1Loss, kernel_window, lds_weights

__all__ = ["FDS", "KERNELS", "REWEIGHTS", "LDSWeights", "WeightedL1Loss", "kernel_window", "lds_weights"]
