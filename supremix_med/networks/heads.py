"""Heads on top of an encoder's features [B, F]: the contrastive projection head and the linear regressor."""

from __future__ import annotations

from torch import nn

__all__ = ["ProjectionHead", "Regressor"]


class ProjectionHead(nn.Sequential):
    """Two-layer MLP ``Linear -> ReLU -> Linear``: features [B, in_features] -> projections [B, out_features].

    The output is not normalised; :class:`~supremix_med.networks.model.ContrastiveRegressor` L2-normalises it.

    Args:
        in_features: encoder feature size F.
        out_features: projection size P.
        hidden_features: hidden width; defaults to ``in_features`` (SimCLR / SupCon convention).
    """

    def __init__(self, in_features: int, out_features: int = 128, hidden_features: int | None = None) -> None:
        hidden = in_features if hidden_features is None else hidden_features
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))
        self.in_features = in_features
        self.out_features = out_features


class Regressor(nn.Linear):
    """Linear regression head: features [B, in_features] -> predictions [B, out_features] (label units)."""

    def __init__(self, in_features: int, out_features: int = 1) -> None:
        super().__init__(in_features, out_features)
