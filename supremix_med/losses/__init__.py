"""Contrastive regression losses: SupReMix and the baselines users compare it with.

Every loss takes ``features`` [B, D] or [B, V, D] and ``labels`` [B] or [B, 1] (see ``_utils``) and returns
a 0-dim float32 (or float64) tensor. :func:`get_loss` builds one by the name bundle configs use.
"""

from __future__ import annotations

from torch import nn

from .conr import ConRLoss
from .mixsupcon import MixSupConLoss
from .rnc import RnCLoss
from .simcse import SimCSELoss
from .supcon import SupConLoss
from .supremix import SupReMixLoss

__all__ = ["SupReMixLoss", "SupConLoss", "RnCLoss", "ConRLoss", "MixSupConLoss", "SimCSELoss", "LOSSES", "get_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "supremix": SupReMixLoss,
    "supcon": SupConLoss,
    "rnc": RnCLoss,
    "conr": ConRLoss,
    "mixsupcon": MixSupConLoss,
    "simcse": SimCSELoss,
}


def get_loss(name: str, **kwargs) -> nn.Module:
    """Build a pre-training loss by name (``supremix``, ``supcon``, ``rnc``, ``conr``, ``mixsupcon``, ``simcse``)."""
    try:
        cls = LOSSES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}.") from None
    return cls(**kwargs)
