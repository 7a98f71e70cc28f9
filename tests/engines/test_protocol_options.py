"""Paper-protocol switches of the Mean-Teacher trainer: FeCL's batch part, the teacher's input, empty loaders."""

from __future__ import annotations

import pytest
import torch
from mt_helpers import GRID, make_loaders, make_trainer

from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss


class _Spy:
    """Records what the trainer hands a FeCL loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[dict] = []

    def from_patches(self, embeddings, labels, teacher_embeddings=None, patch_entropy=None):
        self.calls.append(
            {
                "batch": embeddings.shape[0],
                "labels": labels.detach().clone(),
                "teacher": None if teacher_embeddings is None else teacher_embeddings.shape[0],
                "entropy": None if patch_entropy is None else patch_entropy.shape[0],
            }
        )
        return super().from_patches(embeddings, labels, teacher_embeddings, patch_entropy)


class _SpyFeCL(_Spy, FeCLLoss):
    """FeCLLoss that records what the trainer hands it."""


class _SpyReferenceFeCL(_Spy, FeCLReferenceLoss):
    """FeCLReferenceLoss that records what the trainer hands it."""


@pytest.mark.parametrize("fecl_on, expected_batch", [("unlabeled", 2), ("all", 4)])
def test_fecl_on_selects_the_batch_part(one_thread, fecl_on, expected_batch):
    spy = _SpyFeCL(chunk_size=64, grid_size=GRID)
    trainer = make_trainer("dycon", max_epochs=1, fecl_loss=spy, fecl_on=fecl_on)
    trainer.run()
    assert spy.calls and all(c["batch"] == expected_batch for c in spy.calls)
    assert all(c["teacher"] == expected_batch and c["entropy"] == expected_batch for c in spy.calls)
    assert trainer.fecl_on == fecl_on
    # the teacher runs on the unlabeled half only unless another term needs the whole batch
    assert trainer._teacher_on_all is (fecl_on == "all")


def test_fecl_on_all_uses_ground_truth_patches_for_labeled_samples(one_thread):
    """With fecl_on='all' the first (labeled) samples carry their ground-truth patch labels."""
    from monai.data import DataLoader, Dataset
    from mt_helpers import make_cases

    from dycon_monai.losses import patchify_labels

    cases = make_cases(2, True, 0, prefix="lab")
    lab = DataLoader(Dataset(cases), batch_size=2, shuffle=False)
    _, unl = make_loaders()
    spy = _SpyFeCL(chunk_size=64, grid_size=GRID)
    make_trainer("dycon", max_epochs=1, loaders=(lab, unl), fecl_loss=spy, fecl_on="all").run()
    truth = patchify_labels(torch.stack([c["label"] for c in cases]), GRID)
    torch.testing.assert_close(spy.calls[0]["labels"][:2].long(), truth.long())


def test_reference_fecl_gets_no_entropy(one_thread):
    spy = _SpyReferenceFeCL(chunk_size=64, grid_size=GRID)
    make_trainer("dycon", max_epochs=1, fecl_loss=spy).run()
    assert spy.calls and all(c["entropy"] is None for c in spy.calls)


def test_bad_fecl_on_and_empty_labeled_loader_are_refused(one_thread):
    with pytest.raises(ValueError, match="fecl_on must be 'unlabeled' or 'all'"):
        make_trainer("dycon", fecl_on="labeled")
    from monai.data import DataLoader, Dataset
    from mt_helpers import make_cases

    # 1 labeled case, labeled batch 2, drop_last=True (the bundle's setting): no batch at all
    lab = DataLoader(Dataset(make_cases(1, True, 0)), batch_size=2, drop_last=True)
    _, unl = make_loaders()
    with pytest.raises(ValueError, match="train_data_loader yields no batch: 1 cases with batch_size=2"):
        make_trainer("dycon", loaders=(lab, unl)).run()
