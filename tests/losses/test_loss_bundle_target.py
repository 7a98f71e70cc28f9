"""Both losses instantiate from a MONAI bundle config through ``_target_``."""

from __future__ import annotations

import torch
from monai.bundle import ConfigParser

from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss, UnCLLoss


def test_losses_instantiate_from_bundle_config():
    config = {
        "uncl": {"_target_": "dycon_monai.losses.UnCLLoss", "beta": 0.5, "distance": "kl", "reduction": "sum"},
        "fecl": {
            "_target_": "dycon_monai.losses.FeCLLoss",
            "temperature": 0.6,
            "gamma": 0.8,
            "hard_negatives": "none",
            "top_k": 8,
            "chunk_size": 128,
        },
        "fecl_ref": {"_target_": "dycon_monai.losses.fecl_loss", "variant": "reference", "gamma": 2.0},
    }
    parser = ConfigParser(config)
    uncl = parser.get_parsed_content("uncl")
    fecl = parser.get_parsed_content("fecl")
    fecl_ref = parser.get_parsed_content("fecl_ref")
    assert isinstance(uncl, UnCLLoss) and uncl.beta == 0.5 and uncl.distance == "kl" and uncl.reduction == "sum"
    assert isinstance(fecl, FeCLLoss) and fecl.gamma == 0.8 and fecl.hard_negatives == "none"
    assert fecl.top_k == 8 and fecl.chunk_size == 128 and fecl.epoch == 0
    assert isinstance(fecl_ref, FeCLReferenceLoss) and fecl_ref.gamma == 2.0
    assert torch.isfinite(uncl(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)))
    emb = torch.randn(2, 16, 8)
    labels = (torch.arange(16) % 3 == 0).long().repeat(2, 1)
    assert torch.isfinite(fecl(emb, labels, torch.randn(2, 16, 8)))
    assert torch.isfinite(fecl_ref(emb, labels))
