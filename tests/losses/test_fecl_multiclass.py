"""Multi-class FeCL patch labels (majority class per patch, checked against loops); the binary path unchanged."""

from __future__ import annotations

import itertools

import pytest
import torch

from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss, patchify_embeddings

GRID = 4


def naive_majority_patches(volume: torch.Tensor, grid: int, n_cls: int) -> torch.Tensor:
    """(B, 1, S, S, S) class indices -> (B, grid^3) majority class per block, ties to the lowest class, by loops."""
    b, _, s, _, _ = volume.shape
    step = s // grid
    out = torch.zeros(b, grid**3, dtype=torch.long)
    for i in range(b):
        for n, (x, y, z) in enumerate(itertools.product(range(grid), repeat=3)):
            block = volume[i, 0, x * step : (x + 1) * step, y * step : (y + 1) * step, z * step : (z + 1) * step]
            counts = [int((block == c).sum()) for c in range(n_cls)]
            out[i, n] = counts.index(max(counts))
    return out


@pytest.mark.parametrize("cls", [FeCLLoss, FeCLReferenceLoss])
def test_four_classes_match_the_naive_majority_labels(cls):
    torch.manual_seed(0)
    n_cls, size = 4, 16
    emb = torch.randn(3, 6, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    truth = torch.randint(0, n_cls, (1, 1, size, size, size))
    teacher_logits = torch.randn(2, n_cls, size, size, size)
    teacher_emb = torch.randn(3, 6, 8, 8, 8, dtype=torch.float64)
    loss = cls(grid_size=GRID, chunk_size=16)
    got = loss.from_predictions(emb, teacher_logits, truth, teacher_emb)
    volume = torch.cat([truth, teacher_logits.argmax(dim=1, keepdim=True)])
    labels = naive_majority_patches(volume, GRID, n_cls)
    assert len(labels.unique()) == n_cls  # all four classes occur among the patches
    want = loss.from_patches(patchify_embeddings(emb, GRID), labels, patchify_embeddings(teacher_emb, GRID))
    torch.testing.assert_close(got, want)
    (g1,) = torch.autograd.grad(got, emb, retain_graph=True)
    (g2,) = torch.autograd.grad(want, emb)
    torch.testing.assert_close(g1, g2)


def test_binary_path_is_the_thresholded_mean():
    torch.manual_seed(1)
    emb = torch.randn(2, 6, 8, 8, 8, dtype=torch.float64)
    truth = (torch.rand(1, 1, 16, 16, 16) > 0.6).long()
    teacher_logits = torch.randn(1, 2, 16, 16, 16)
    loss = FeCLLoss(grid_size=GRID, hard_negatives="none")
    volume = torch.cat([truth.float(), teacher_logits.argmax(dim=1, keepdim=True).float()])
    means = volume.reshape(2, 1, GRID, 4, GRID, 4, GRID, 4).mean(dim=(3, 5, 7)).flatten(1)
    labels = (means > 0.5).long()
    want = loss.from_patches(patchify_embeddings(emb, GRID), labels)
    assert loss.from_predictions(emb, teacher_logits, truth).item() == want.item()


def test_ground_truth_outside_the_classes_is_refused():
    with pytest.raises(ValueError, match=r"class indices in 0\.\.3 for a 4-class network, got values in \[0, 5\]"):
        FeCLLoss(grid_size=GRID).from_predictions(
            torch.randn(2, 6, 8, 8, 8),
            torch.randn(1, 4, 16, 16, 16),
            torch.tensor([0, 5]).repeat(2048).view(1, 1, 16, 16, 16),
        )
