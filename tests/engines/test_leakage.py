"""Labels of unlabeled cases never reach training: deleting or corrupting them changes nothing."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from mt_helpers import record_losses

from dycon_monai.data import isles22_datalist, labeled_train_transforms, unlabeled_train_transforms
from dycon_monai.engines import MeanTeacherTrainer, method_weights
from dycon_monai.losses import FeCLLoss, UnCLLoss
from dycon_monai.networks import DyCONNet

PATCH = (16, 16, 16)
PIXDIM = (6.0, 6.0, 6.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def _run(datalist) -> list[dict[str, float]]:
    lab = DataLoader(
        Dataset(datalist["training_labeled"], labeled_train_transforms(PATCH, PIXDIM)), batch_size=2, shuffle=True
    )
    unl = DataLoader(
        Dataset(datalist["training_unlabeled"], unlabeled_train_transforms(PATCH, PIXDIM)), batch_size=2, shuffle=True
    )
    torch.manual_seed(0)
    net = DyCONNet(UNet(3, 1, 2, (4, 8, 16, 32), (2, 2, 2), num_res_units=1), embedding_dim=16)
    trainer = MeanTeacherTrainer(
        device="cpu",
        max_epochs=3,
        train_data_loader=lab,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        unlabeled_data_loader=unl,
        uncl_loss=UnCLLoss(),
        fecl_loss=FeCLLoss(chunk_size=64, grid_size=4),
        **method_weights("dycon", consistency_weight=0.1),
    )
    losses = record_losses(trainer)
    trainer.run()
    return losses


def test_unlabeled_label_files_deleted_or_garbage_give_identical_losses(synthetic_cohort, tmp_path):
    root = tmp_path / "cohort"
    shutil.copytree(synthetic_cohort, root)
    datalist = isles22_datalist(root, fold=0, labeled_count=2, seed=0)
    assert all("label" not in item for item in datalist["training_unlabeled"])
    clean = _run(datalist)
    assert len(clean) == 3 and all(np.isfinite(r["loss"]) for r in clean)

    unlabeled = [item["case_id"] for item in datalist["training_unlabeled"]]
    masks = {p.name.split("_")[0]: p for p in (root / "derivatives").rglob("*_msk.nii.gz")}
    rng = np.random.default_rng(0)
    for i, cid in enumerate(unlabeled):
        path = masks[cid]
        if i % 2:
            path.unlink()
        else:
            img = nib.load(path)
            garbage = rng.integers(0, 9, size=img.shape).astype(np.float32)
            nib.save(nib.Nifti1Image(garbage, img.affine), path)
    corrupted = _run(datalist)
    assert corrupted == clean
