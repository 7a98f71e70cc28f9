"""The Mean-Teacher trainer with a 4-class network: every DyCON term (FeCL with majority-class patches) is finite."""

from __future__ import annotations

import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from mt_helpers import EMB, GRID, make_cases

from dycon_monai.engines import MeanTeacherTrainer, method_weights
from dycon_monai.losses import FeCLLoss, UnCLLoss
from dycon_monai.networks import DyCONNet


def test_a_four_class_dycon_trainer_runs():
    cases = make_cases(4, True, 0)
    for i, case in enumerate(cases):
        case["label"] = case["label"] * (1 + i % 3)  # classes 0..3
    unlabeled = make_cases(4, False, 1, prefix="u")
    torch.manual_seed(0)
    backbone = UNet(3, 1, 4, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)
    net = DyCONNet(backbone, embedding_dim=EMB, head_kwargs={"dilations": (1, 1, 2, 2)})
    trainer = MeanTeacherTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(cases), batch_size=2),
        unlabeled_data_loader=DataLoader(Dataset(unlabeled), batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        uncl_loss=UnCLLoss(),
        fecl_loss=FeCLLoss(chunk_size=64, grid_size=GRID),
        **method_weights("dycon"),
    )
    trainer.run()
    terms = trainer.state.loss_terms
    assert all(torch.isfinite(torch.tensor(terms[k])) for k in ("loss", "loss_fecl", "loss_uncl"))
    assert terms["loss_fecl"] > 0
