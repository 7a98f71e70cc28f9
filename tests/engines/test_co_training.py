"""CoTrainingTrainer: every method trains both networks, terms add up, resumes exactly, never sees unlabeled labels."""

from __future__ import annotations

import itertools
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from mt_helpers import GRID, assert_same_state, make_loaders, make_net, record_losses, state_of

from dycon_monai.data import isles22_datalist, labeled_train_transforms, unlabeled_train_transforms
from dycon_monai.engines import CO_LOSS_TERMS, CO_METHODS, CoTrainingTrainer, co_training_weights, loss_terms_transform
from dycon_monai.handlers import AtomicCheckpointSaver, checkpoint_dict, checkpoint_loader, latest_checkpoint
from dycon_monai.losses import FeCLLoss
from dycon_monai.networks import DyCONNet, ProbabilityAverage

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead

#: the terms each method must compute (the others stay exactly 0)
ACTIVE = {
    "cps": {"loss_sup", "loss_cps"},
    "cps_dycon": {"loss_sup", "loss_cps", "loss_uncl", "loss_fecl"},
    "dual_cce": {"loss_sup", "loss_cr", "loss_cps", "loss_efs", "loss_une", "loss_pgl"},
}


def _trainer(method: str, loaders=None, nets=None, max_epochs: int = 2, cps_rampup=4, **kwargs) -> CoTrainingTrainer:
    lab, unl = loaders if loaders is not None else make_loaders()
    a, b = nets if nets is not None else (make_net(0), make_net(1))
    opt = torch.optim.SGD(itertools.chain(a.parameters(), b.parameters()), lr=0.05, momentum=0.9)
    options = {**co_training_weights(method, cps_rampup=cps_rampup), **kwargs}
    return CoTrainingTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=lab,
        network=a,
        network_b=b,
        optimizer=opt,
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        unlabeled_data_loader=unl,
        fecl_loss=FeCLLoss(chunk_size=64, grid_size=GRID, label_threshold=0.0),
        **options,
    )


@pytest.mark.parametrize("method", sorted(CO_METHODS))
def test_each_method_trains_both_networks_and_the_total_is_the_weighted_sum(method):
    trainer = _trainer(method)
    a0, b0 = state_of(trainer.network), state_of(trainer.network_b)
    losses = record_losses(trainer)
    trainer.run()
    assert len(losses) == 4
    for row in losses:
        for name in CO_LOSS_TERMS:
            assert np.isfinite(row[name]), (method, name, row)
        for name in set(CO_LOSS_TERMS[1:]) - ACTIVE[method]:
            assert row[name] == 0.0, (method, name)
        weights = {
            "loss_sup": 1.0,
            "loss_cps": row["cps_weight"],
            "loss_pgl": row["pgl_weight"],
            **{f"loss_{k}": getattr(trainer, f"{k}_weight") for k in ("cr", "efs", "une", "uncl", "fecl")},
        }
        total = sum(weights[k] * row[k] for k in CO_LOSS_TERMS[1:])
        assert row["loss"] == pytest.approx(total, rel=1e-5, abs=1e-6)
    for name in ACTIVE[method]:
        assert any(row[name] != 0.0 for row in losses), f"{method}: {name} never computed"
    changed = [not torch.equal(a0[k], v) for k, v in trainer.network.state_dict().items() if v.is_floating_point()]
    changed_b = [not torch.equal(b0[k], v) for k, v in trainer.network_b.state_dict().items() if v.is_floating_point()]
    assert any(changed) and any(changed_b)
    # the bundle's stats handlers see every co-training scalar
    logged = loss_terms_transform(trainer.state.output)  # MONAI decollates the output: one dict per sample
    assert set(CO_LOSS_TERMS) | {"cps_weight", "pgl_weight", "grad_norm"} <= set(logged)
    first = trainer.state.output[0]
    assert first["pred_b"].shape == first["pred"].shape


def test_cps_weight_ramps_up_and_the_paper_prototype_weight_decays():
    trainer = _trainer("dual_cce")
    assert [trainer.cps_ramp(i) for i in (1, 100)] == [1.0, 1.0]  # dual_cce: no ramp (seed 003 Eq. 1)
    cps = _trainer("cps", cps_rampup=10)
    ramp = [cps.cps_ramp(i) for i in (1, 5, 11, 50)]
    assert ramp[0] < ramp[1] < ramp[2] == ramp[3] == 1.0
    trainer.state.max_epochs, trainer.state.epoch_length = 1, 100
    assert trainer.pgl_ramp(1) == pytest.approx(0.1 * np.exp(4.0))
    assert trainer.pgl_ramp(101) == pytest.approx(0.1)


def test_same_seed_same_weights_and_checkpoint_resume_is_exact(tmp_path):
    full = _trainer("cps_dycon", max_epochs=2)
    full_losses = record_losses(full)
    full.run()
    again = _trainer("cps_dycon", max_epochs=2)
    again.run()
    assert_same_state(state_of(full.network), state_of(again.network))

    first = _trainer("cps_dycon", max_epochs=2)
    ckpt = checkpoint_dict(first)
    assert {"network", "head", "network_b", "head_b", "optimizer", "trainer"} <= set(ckpt)
    AtomicCheckpointSaver(tmp_path, ckpt, save_interval=1, n_saved=1, save_final=False).attach(first)
    first.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate())
    first.run()
    resumed = _trainer("cps_dycon", nets=(make_net(5), make_net(6)), max_epochs=2)
    checkpoint_loader(latest_checkpoint(tmp_path), resumed).attach(resumed)
    resumed_losses = record_losses(resumed)
    resumed.run()
    assert resumed_losses == full_losses[3:]
    assert_same_state(state_of(full.network), state_of(resumed.network))
    assert_same_state(state_of(full.network_b), state_of(resumed.network_b))


def test_bad_setups_are_refused_with_a_clear_message():
    lab, unl = make_loaders()
    a, b = make_net(0), make_net(1)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    only_a = torch.optim.SGD(a.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="parameters of network_b .* not in the optimizer"):
        CoTrainingTrainer("cpu", 1, lab, a, b, only_a, loss, unl)
    with pytest.raises(ValueError, match="same module"):
        CoTrainingTrainer("cpu", 1, lab, a, a, only_a, loss, unl)
    both = torch.optim.SGD(itertools.chain(a.parameters(), b.parameters()), lr=0.1)
    with pytest.raises(ValueError, match="unlabeled_data_loader is None"):
        CoTrainingTrainer("cpu", 1, lab, a, b, both, loss, None)
    plain = UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1)
    opt = torch.optim.SGD(itertools.chain(a.parameters(), plain.parameters()), lr=0.1)
    with pytest.raises(TypeError, match="FeCL needs embeddings: network_b must be a DyCONNet"):
        CoTrainingTrainer("cpu", 1, lab, a, plain, opt, loss, unl, fecl_weight=1.0)
    with pytest.raises(ValueError, match="cps_weight must be a finite number >= 0"):
        CoTrainingTrainer("cpu", 1, lab, a, b, both, loss, unl, cps_weight=-1.0)
    # a supervised-only pair (every unlabeled term off) needs no unlabeled loader
    sup = CoTrainingTrainer("cpu", 1, lab, a, b, both, loss, None, cps_weight=0.0, cr_weight=0.5)
    assert sup.unlabeled_data_loader is None


def test_ablation_switches_set_seed_003_terms():
    full = co_training_weights("dual_cce")
    assert full["cps_rampup"] == 0.0
    no_cce = co_training_weights("dual_cce", cce=False)
    assert no_cce["cps_weight"] == no_cce["efs_weight"] == 0.0 and no_cce["une_weight"] == 1.0
    assert co_training_weights("dual_cce", pgl=False, ue=False, cr=False) == {
        **full,
        "pgl_weight": 0.0,
        "une_weight": 0.0,
        "cr_weight": 0.0,
    }
    assert co_training_weights("cps", pgl=True)["pgl_weight"] == 1.0
    assert co_training_weights("cps_dycon", eta=0.5)["fecl_weight"] == 0.5
    with pytest.raises(ValueError, match="unknown ablation switch 'pcl'"):
        co_training_weights("dual_cce", pcl=False)
    with pytest.raises(ValueError, match="unknown co-training method"):
        co_training_weights("mean_teacher")


def test_probability_average_serves_the_mean_of_both_networks():
    a, b = make_net(0).backbone.eval(), make_net(1).backbone.eval()
    both = ProbabilityAverage([a, b]).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        out = both(x)
    torch.testing.assert_close(torch.softmax(out, 1), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least two networks"):
        ProbabilityAverage([a])


PATCH, PIXDIM = (16, 16, 16), (6.0, 6.0, 6.0)


def _run_on(datalist, method: str) -> list[dict[str, float]]:
    lab = DataLoader(
        Dataset(datalist["training_labeled"], labeled_train_transforms(PATCH, PIXDIM)), batch_size=2, shuffle=True
    )
    unl = DataLoader(
        Dataset(datalist["training_unlabeled"], unlabeled_train_transforms(PATCH, PIXDIM)), batch_size=2, shuffle=True
    )
    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        nets.append(DyCONNet(UNet(3, 1, 2, (4, 8, 16, 32), (2, 2, 2), num_res_units=1), embedding_dim=16))
    trainer = _trainer(method, loaders=(lab, unl), nets=nets, max_epochs=3)
    losses = record_losses(trainer)
    trainer.run()
    return losses


@pytest.mark.parametrize("method", sorted(CO_METHODS))
def test_unlabeled_label_files_deleted_or_garbage_give_identical_losses(synthetic_cohort, tmp_path, method):
    root = tmp_path / "cohort"
    shutil.copytree(synthetic_cohort, root)
    datalist = isles22_datalist(root, fold=0, labeled_count=2, seed=0)
    assert all("label" not in item for item in datalist["training_unlabeled"])
    clean = _run_on(datalist, method)
    assert len(clean) == 3 and all(np.isfinite(r["loss"]) for r in clean)
    masks = {p.name.split("_")[0]: p for p in (root / "derivatives").rglob("*_msk.nii.gz")}
    rng = np.random.default_rng(0)
    for i, item in enumerate(datalist["training_unlabeled"]):
        path = masks[item["case_id"]]
        if i % 2:
            path.unlink()
        else:
            img = nib.load(path)
            nib.save(nib.Nifti1Image(rng.integers(0, 9, size=img.shape).astype(np.float32), img.affine), path)
    assert _run_on(datalist, method) == clean


def test_pgl_schedules_and_patch_check():
    trainer = _trainer("dual_cce", pgl_schedule="rampup")
    trainer.state.max_epochs, trainer.state.epoch_length = 1, 100
    assert trainer.pgl_ramp(1) == pytest.approx(0.1 * np.exp(-4.0))
    assert trainer.pgl_ramp(101) == pytest.approx(0.1)
    assert _trainer("dual_cce", pgl_schedule="constant").pgl_ramp(1) == 1.0
    with pytest.raises(ValueError, match="pgl_schedule must be one of"):
        _trainer("dual_cce", pgl_schedule="cosine")
    from dycon_monai.networks import check_patch_divisible

    check_patch_divisible([96, 96, 64], 32, "FlexibleUNet")
    with pytest.raises(
        ValueError, match=r"patch_size \[112, 112, 80\] does not suit FlexibleUNet.*\[96, 96, 64\] or \[128, 128, 96\]"
    ):
        check_patch_divisible([112, 112, 80], 32, "FlexibleUNet")


def test_ablation_switches_accept_command_line_strings():
    assert co_training_weights("dual_cce", pgl="false", cr="null")["pgl_weight"] == 0.0
    assert co_training_weights("dual_cce", cr="null")["cr_weight"] == 0.5
    assert co_training_weights("cps", ue="true")["une_weight"] == 1.0
    with pytest.raises(ValueError, match="ablation switch pgl"):
        co_training_weights("dual_cce", pgl="maybe")
