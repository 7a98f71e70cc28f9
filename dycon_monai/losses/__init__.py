"""DyCON losses as MONAI-style ``_Loss`` classes: UnCL (paper Eq. 1-2), FeCL (paper Eq. 3-6) and the released-code FeCL."""

from __future__ import annotations

from .fecl import FeCLLoss
from .fecl_base import FeCLBase
from .fecl_reference import FeCLReferenceLoss
from .fecl_variants import FECL_LOSSES, fecl_loss
from .patches import patch_entropy, patchify_embeddings, patchify_labels, pool_to_grid
from .uncl import UnCLLoss, uncl_voxel_terms

__all__ = [
    "FECL_LOSSES",
    "FeCLBase",
    "FeCLLoss",
    "FeCLReferenceLoss",
    "fecl_loss",
    "UnCLLoss",
    "patch_entropy",
    "patchify_embeddings",
    "patchify_labels",
    "pool_to_grid",
    "uncl_voxel_terms",
]
