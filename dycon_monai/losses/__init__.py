"""Losses as MONAI-style ``_Loss`` classes: DyCON's UnCL (Eq. 1-2) and FeCL (Eq. 3-6, paper and released code), and
the co-training losses of seed 003 (cross pseudo / entropy-filtered supervision, KL uncertainty, prototype contrast,
subnet consistency)."""

from __future__ import annotations

from .cross_pseudo import CrossPseudoSupervisionLoss
from .fecl import FeCLLoss
from .fecl_base import FeCLBase
from .fecl_reference import FeCLReferenceLoss
from .fecl_variants import FECL_LOSSES, fecl_loss
from .patches import patch_entropy, patchify_embeddings, patchify_labels, pool_to_grid
from .prototype import PrototypeContrastiveLoss, prototype_weight
from .subnet_consistency import SubnetConsistencyLoss
from .uncertainty_kl import KLUncertaintyLoss
from .uncl import UnCLLoss, uncl_voxel_terms

__all__ = [
    "FECL_LOSSES",
    "fecl_loss",
    "patch_entropy",
    "patchify_embeddings",
    "patchify_labels",
    "pool_to_grid",
    "prototype_weight",
    "uncl_voxel_terms",
    "CrossPseudoSupervisionLoss",
    "FeCLBase",
    "FeCLLoss",
    "FeCLReferenceLoss",
    "KLUncertaintyLoss",
    "PrototypeContrastiveLoss",
    "SubnetConsistencyLoss",
    "UnCLLoss",
]
