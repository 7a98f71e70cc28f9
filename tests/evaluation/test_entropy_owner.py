"""One voxel entropy: the evaluation's entropy map and MONAI Label's study score use the same function."""

from __future__ import annotations

import math

import torch

from dycon_monai.evaluation.entropy import voxel_entropy
from dycon_monai.evaluation.transforms import prediction_entropy
from dycon_monai.monailabel import entropy as study


def test_both_call_paths_agree_with_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 5, 6, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    naive = -(probs * torch.log(probs)).sum(dim=1) / math.log(3)
    assert torch.allclose(voxel_entropy(logits), naive.float(), atol=1e-6)
    assert torch.allclose(prediction_entropy(probs[0]), naive.float(), atol=1e-6)
    assert study.voxel_entropy is voxel_entropy
    # one foreground channel: binary entropy, as two-class softmax
    fg = torch.sigmoid(logits[:, :1])
    two = torch.cat([1 - fg, fg], dim=1)
    assert torch.allclose(prediction_entropy(fg[0]), voxel_entropy(two, activation="none"), atol=1e-7)
    assert torch.allclose(voxel_entropy(logits[:, :1], activation="sigmoid"), prediction_entropy(fg[0]), atol=1e-6)
