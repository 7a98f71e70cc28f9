"""Networks for DyCON: the projection head and the backbone wrapper that taps an intermediate feature map."""

from __future__ import annotations

from .dycon_net import (
    DyCONNet,
    FeatureLayer,
    check_feature_grid,
    default_feature_layer,
    encoder_feature_layer,
    infer_feature_channels,
    resolve_feature_layer,
    unwrap_module,
)
from .projection import ProjectionHead

__all__ = [
    "DyCONNet",
    "FeatureLayer",
    "ProjectionHead",
    "check_feature_grid",
    "default_feature_layer",
    "encoder_feature_layer",
    "infer_feature_channels",
    "resolve_feature_layer",
    "unwrap_module",
]
