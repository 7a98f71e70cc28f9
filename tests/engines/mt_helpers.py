"""Tiny in-memory data and networks shared by the engine tests (CPU, 16^3 patches, batch 2 + 2, FeCL grid 4)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

from dycon_monai.engines import MeanTeacherTrainer, method_weights
from dycon_monai.losses import FeCLLoss, UnCLLoss
from dycon_monai.networks import DyCONNet

SIZE = 16
GRID = 4
EMB = 16


def make_cases(n: int, labeled: bool, seed: int, size: int = SIZE, prefix: str = "case") -> list[dict[str, Any]]:
    """Cubic 'lesions' on noise; labeled cases carry a ``label``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        lab = torch.zeros(1, size, size, size)
        c = torch.randint(size // 4, size - size // 4, (3,), generator=g).tolist()
        r = size // 8
        lab[:, c[0] - r : c[0] + r, c[1] - r : c[1] + r, c[2] - r : c[2] + r] = 1.0
        img = lab + 0.4 * torch.randn(1, size, size, size, generator=g)
        item: dict[str, Any] = {"image": img, "case_id": f"{prefix}{i:02d}"}
        if labeled:
            item["label"] = lab
        out.append(item)
    return out


def make_loaders(n_labeled: int = 4, n_unlabeled: int = 6, batch: int = 2) -> tuple[DataLoader, DataLoader]:
    """Labeled and unlabeled loaders with random MONAI transforms (shuffled, num_workers=0)."""
    t_lab = Compose(
        [RandFlipd(("image", "label"), prob=0.5, spatial_axis=0), RandGaussianNoised("image", prob=0.5, std=0.05)]
    )
    t_unl = Compose([RandFlipd("image", prob=0.5, spatial_axis=1), RandGaussianNoised("image", prob=0.5, std=0.05)])
    lab = DataLoader(Dataset(make_cases(n_labeled, True, 0, prefix="lab"), t_lab), batch_size=batch, shuffle=True)
    unl = DataLoader(Dataset(make_cases(n_unlabeled, False, 1, prefix="unl"), t_unl), batch_size=batch, shuffle=True)
    return lab, unl


def make_net(seed: int = 0) -> DyCONNet:
    torch.manual_seed(seed)
    backbone = UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)
    return DyCONNet(backbone, embedding_dim=EMB, head_kwargs={"dilations": (1, 1, 2, 2)})


def make_trainer(
    method: str = "dycon",
    max_epochs: int = 2,
    loaders: tuple | None = None,
    net: DyCONNet | None = None,
    lr: float = 0.05,
    **kwargs: Any,
) -> MeanTeacherTrainer:
    lab, unl = loaders if loaders is not None else make_loaders()
    net = net if net is not None else make_net()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    options: dict[str, Any] = {
        "uncl_loss": UnCLLoss(),
        "fecl_loss": FeCLLoss(chunk_size=64, grid_size=GRID),
        **method_weights(method),
    }
    options.update(kwargs)
    return MeanTeacherTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=lab,
        network=net,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        unlabeled_data_loader=unl if method != "supervised" else None,
        **options,
    )


def record_losses(trainer: MeanTeacherTrainer) -> list[dict[str, float]]:
    """Per-iteration ``state.loss_terms`` (with the iteration number), filled as the trainer runs."""
    out: list[dict[str, float]] = []

    def _rec(engine: MeanTeacherTrainer) -> None:
        out.append({"iteration": engine.state.iteration, **engine.state.loss_terms})

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _rec)
    return out


def state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"state entry {k} differs"
