"""Networks for DyCON: the projection head, the backbone wrapper that taps a feature map, the co-training average."""

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
from .ensemble import ProbabilityAverage, check_patch_divisible
from .projection import ProjectionHead

__all__ = [
    "DyCONNet",
    "FeatureLayer",
    "ProbabilityAverage",
    "ProjectionHead",
    "check_feature_grid",
    "check_patch_divisible",
    "default_feature_layer",
    "encoder_feature_layer",
    "infer_feature_channels",
    "resolve_feature_layer",
    "unwrap_module",
]
