"""DyCON losses as MONAI-style ``_Loss`` classes: UnCL (paper Eq. 1-2) and FeCL (paper Eq. 3-6)."""

from __future__ import annotations

from .fecl import FeCLLoss
from .patches import patch_entropy, patchify_embeddings, patchify_labels, pool_to_grid
from .uncl import UnCLLoss, uncl_voxel_terms

__all__ = [
    "FeCLLoss",
    "UnCLLoss",
    "patch_entropy",
    "patchify_embeddings",
    "patchify_labels",
    "pool_to_grid",
    "uncl_voxel_terms",
]
