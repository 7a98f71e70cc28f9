from __future__ import annotations

import copy
import logging

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.handlers import StatsHandler
from monai.networks.nets import UNet
from mt_helpers import GRID, make_cases, make_loaders, make_net, make_trainer, record_losses

from dycon_monai.engines import (
    LOSS_TERMS,
    METHODS,
    OUTPUT_SCALARS,
    MeanTeacherTrainer,
    NonFiniteLossError,
    loss_terms_transform,
    method_weights,
)
from dycon_monai.handlers import ema_decay_at
from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def test_loss_falls_and_every_term_is_on_the_output():
    trainer = make_trainer("dycon", max_epochs=5, lr=0.05)
    losses = record_losses(trainer)
    outputs = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: outputs.append(loss_terms_transform(e.state.output))
    )
    trainer.run()
    assert len(losses) == 10
    first = sum(r["loss"] for r in losses[:2]) / 2
    last = sum(r["loss"] for r in losses[-2:]) / 2
    assert last < 0.8 * first, [round(r["loss"], 3) for r in losses]
    assert set(outputs[0]) == set(OUTPUT_SCALARS)
    for rec in losses:
        for key in LOSS_TERMS:
            assert torch.isfinite(torch.tensor(rec[key]))
        assert rec["loss_uncl"] > 0 and rec["loss_fecl"] >= 0 and rec["loss_consistency"] == 0
        expected = rec["loss_sup"] + rec["loss_uncl"] + rec["loss_fecl"]
        assert rec["loss"] == pytest.approx(expected, rel=1e-5)
    assert any(rec["loss_fecl"] > 0 for rec in losses)
    assert outputs[-1]["loss"] == pytest.approx(losses[-1]["loss"])


def test_teacher_equals_independent_ema_of_student_sequence():
    trainer = make_trainer("dycon", max_epochs=2)
    init = copy.deepcopy(trainer.network.state_dict())
    snapshots = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: snapshots.append(copy.deepcopy(e.network.state_dict()))
    )
    trainer.run()
    assert len(snapshots) == 4
    ema = {k: v.clone() for k, v in init.items()}
    for step, student in enumerate(snapshots):
        d = ema_decay_at(step, 0.99)
        for k, v in student.items():
            ema[k] = d * ema[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    teacher = trainer.teacher_network.state_dict()
    params = {n for n, _ in trainer.teacher_network.named_parameters()}
    for k, v in teacher.items():
        if k in params:
            torch.testing.assert_close(v, ema[k], rtol=1e-5, atol=1e-6)
        else:  # buffers are copied from the student
            assert torch.equal(v, snapshots[-1][k])
    assert trainer.state.ema_decay == pytest.approx(ema_decay_at(3, 0.99))
    assert not any(p.requires_grad for p in trainer.teacher_network.parameters())


def test_two_runs_same_seed_identical_losses():
    runs = []
    for _ in range(2):
        trainer = make_trainer("dycon", max_epochs=2)
        losses = record_losses(trainer)
        trainer.run()
        runs.append(losses)
    assert runs[0] == runs[1]
    other = make_trainer("dycon", max_epochs=1, seed=1)
    other_losses = record_losses(other)
    other.run()
    assert other_losses[0]["loss"] != runs[0][0]["loss"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_runs_with_its_terms(method):
    trainer = make_trainer(method, max_epochs=1)
    losses = record_losses(trainer)
    trainer.run()
    w = METHODS[method]
    for rec in losses:
        assert (rec["loss_uncl"] != 0) == (w["uncl_weight"] > 0)
        assert (rec["loss_fecl"] != 0) == (w["fecl_weight"] > 0)
        assert (rec["loss_consistency"] != 0) == (w["consistency_weight"] > 0)
    assert (trainer.teacher_network is None) == (method == "supervised")
    assert trainer.state.iteration == 2


def test_supervised_needs_no_unlabeled_data_but_semi_supervised_does():
    from dycon_monai.handlers import BetaScheduleHandler, EMATeacherHandler, FeCLEpochHandler

    handlers = [EMATeacherHandler(), BetaScheduleHandler(), FeCLEpochHandler()]  # the same config for every method
    trainer = make_trainer("supervised", max_epochs=1, train_handlers=handlers)
    assert trainer.unlabeled_data_loader is None and trainer.ema_handler is None
    trainer.run()
    lab, _ = make_loaders()
    with pytest.raises(ValueError, match="unlabeled_data_loader is None.*UnCL.*FeCL"):
        MeanTeacherTrainer(
            "cpu", 1, lab, make_net(), torch.optim.SGD(make_net().parameters(), lr=0.1), torch.nn.MSELoss()
        )


def test_method_weights_and_unknown_method():
    assert method_weights("dycon", eta=0.5) == {"uncl_weight": 0.5, "fecl_weight": 0.5, "consistency_weight": 0.0}
    assert method_weights("dycon", consistency_weight=0.1)["consistency_weight"] == 0.1
    assert method_weights("supervised", consistency_weight=0.1)["consistency_weight"] == 0.0
    with pytest.raises(ValueError, match="unknown method 'bcp'"):
        method_weights("bcp")


def test_unlabeled_batch_with_label_key_is_refused():
    lab, _ = make_loaders()
    leaky = DataLoader(Dataset(make_cases(4, True, 3, prefix="leak")), batch_size=2)
    trainer = make_trainer("dycon", max_epochs=1, loaders=(lab, leaky))
    with pytest.raises(ValueError, match=r"unlabeled batch at iteration 1 carries \['label'\].*leak0"):
        trainer.run()


def test_fecl_needs_dycon_net_and_a_large_enough_feature_map():
    lab, unl = make_loaders()
    unet = UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)
    with pytest.raises(TypeError, match="network must be a DyCONNet"):
        make_trainer("dycon", net=unet)
    trainer = make_trainer("dycon", max_epochs=1, fecl_loss=FeCLLoss(grid_size=16))
    with pytest.raises(ValueError, match=r"FeCL grid 16\^3 needs a feature map of at least 16.*\(8, 8, 8\)"):
        trainer.run()


class _NaNAt:
    """Supervised loss that returns NaN on the given call numbers."""

    def __init__(self, loss, bad_calls):
        self.loss, self.bad, self.calls = loss, set(bad_calls), 0

    def __call__(self, pred, target):
        self.calls += 1
        value = self.loss(pred, target)
        return value * float("nan") if self.calls in self.bad else value


def test_nonfinite_raise_names_iteration_term_and_cases():
    trainer = make_trainer("dycon", max_epochs=1)
    trainer.loss_function = _NaNAt(trainer.loss_function, {2})
    with pytest.raises(NonFiniteLossError, match=r"iteration 2 .*loss_sup=nan.*labeled cases \['lab.*unlabeled cases"):
        trainer.run()
    try:
        trainer2 = make_trainer("dycon", max_epochs=1)
        trainer2.loss_function = _NaNAt(trainer2.loss_function, {1})
        trainer2.run()
    except NonFiniteLossError as err:
        assert err.iteration == 1 and "loss_sup" in err.terms and "loss" in err.terms
        assert len(err.labeled_cases) == 2 and all(c.startswith("lab") for c in err.labeled_cases)
        assert len(err.unlabeled_cases) == 2 and all(c.startswith("unl") for c in err.unlabeled_cases)
    else:
        pytest.fail("no NonFiniteLossError")


def test_nonfinite_uncl_term_is_named():
    trainer = make_trainer("dycon", max_epochs=1)
    real = trainer.uncl_loss.forward
    trainer.uncl_loss.forward = lambda s, t, beta=None: real(s, t) * float("inf")
    with pytest.raises(NonFiniteLossError, match=r"loss_uncl=inf") as info:
        trainer.run()
    assert "loss_sup" not in info.value.terms


def test_nonfinite_skip_counts_warns_and_leaves_weights_untouched(caplog):
    trainer = make_trainer("dycon", max_epochs=2, on_nonfinite="skip")
    trainer.loss_function = _NaNAt(trainer.loss_function, {3})
    before = {}

    def _snap(engine):
        if engine.state.iteration == 3:
            before["student"] = copy.deepcopy(dict(engine.network.named_parameters()))
            before["teacher"] = copy.deepcopy(dict(engine.teacher_network.named_parameters()))

    trainer.add_event_handler(Events.ITERATION_STARTED, _snap)
    after = {}

    def _check(engine):
        if engine.state.iteration == 3:
            after["student"] = copy.deepcopy(dict(engine.network.named_parameters()))
            after["teacher"] = copy.deepcopy(dict(engine.teacher_network.named_parameters()))
            after["skipped"] = engine.state.iteration_skipped

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _check)
    with caplog.at_level(logging.WARNING), pytest.warns(RuntimeWarning, match="iteration 3 .*Skipped the optimizer"):
        trainer.run()
    assert trainer.state.iteration == 4
    assert trainer.state.nonfinite_skipped == 1
    assert trainer.state.nonfinite_log[0]["iteration"] == 3
    assert after["skipped"] is True
    for k in before["student"]:  # parameters (BatchNorm running statistics still move in the forward pass)
        assert torch.equal(before["student"][k], after["student"][k])
        assert torch.equal(before["teacher"][k], after["teacher"][k])
    assert any("non-finite loss at iteration 3" in r.getMessage() for r in caplog.records)
    assert trainer.state_dict()["nonfinite_skipped"] == 1


def test_stats_handler_logs_every_term(capsys):
    trainer = make_trainer("dycon", max_epochs=1)
    StatsHandler(name="mt_stats", output_transform=loss_terms_transform, iteration_log=True).attach(trainer)
    trainer.run()
    text = capsys.readouterr().out
    for key in OUTPUT_SCALARS:
        assert f"{key}: " in text


def test_grad_clipping_bounds_the_update():
    trainer = make_trainer("dycon", max_epochs=1, grad_clip_norm=1e-3)
    seen = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: seen.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in e.network.parameters() if p.grad is not None])
                )
            )
        ),
    )
    trainer.run()
    assert all(g <= 1e-3 * 1.001 for g in seen)


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' or 'skip'"):
        make_trainer("dycon", on_nonfinite="ignore")
    with pytest.raises(ValueError, match="uncl_on must be 'unlabeled' or 'all'"):
        make_trainer("dycon", uncl_on="labeled")
    with pytest.raises(ValueError, match="uncl_weight must be a finite number >= 0"):
        make_trainer("dycon", uncl_weight=-1.0)


def test_uncl_on_all_and_reference_fecl_run():
    trainer = make_trainer(
        "dycon", max_epochs=1, uncl_on="all", consistency_weight=0.1, consistency_rampup=10, consistency_on="all"
    )
    losses = record_losses(trainer)
    trainer.run()
    assert losses[0]["consistency_weight"] == pytest.approx(0.1 * torch.exp(torch.tensor(-5.0)).item())
    assert losses[1]["consistency_weight"] > losses[0]["consistency_weight"]

    trainer = make_trainer("dycon", max_epochs=1, fecl_loss=FeCLReferenceLoss(gamma=2.0, chunk_size=64, grid_size=GRID))
    trainer.run()
    assert torch.isfinite(torch.tensor(trainer.state.loss_terms["loss_fecl"]))


def test_amp_on_cpu_falls_back_to_float32_with_a_warning():
    with pytest.warns(UserWarning, match="amp=True on a CPU device: training runs in float32"):
        trainer = make_trainer("dycon", max_epochs=1, amp=True)
    dtypes = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: dtypes.append(e.state.output[0]["pred"].dtype))
    trainer.run()
    assert trainer.amp is False and trainer.scaler is None and dtypes == [torch.float32, torch.float32]


def test_nan_in_an_unlabeled_image_is_reported_with_its_case():
    lab, _ = make_loaders()
    cases = make_cases(2, False, 1, prefix="unl")
    cases[1]["image"][0, 3, 3, 3] = float("nan")
    unl = DataLoader(Dataset(cases), batch_size=2)
    trainer = make_trainer("dycon", max_epochs=1, loaders=(lab, unl))
    with pytest.raises(
        NonFiniteLossError,
        match=r"iteration 1 \(epoch 1\): image=nan, student_logits=nan.*unlabeled cases "
        r"\['unl00', 'unl01'\]\. Non-finite voxels in the input images of cases \['unl01'\]",
    ) as info:
        trainer.run()
    assert "loss_sup" not in info.value.terms  # the losses are not computed from a non-finite forward pass


def test_wrapped_network_goes_through_the_wrapper_forward():
    from dycon_monai.handlers import checkpoint_dict

    wrapped = torch.nn.DataParallel(make_net())  # on CPU it just calls the module: stands in for DDP
    trainer = make_trainer("dycon", max_epochs=1, net=wrapped)
    calls = []
    wrapped.register_forward_pre_hook(lambda m, a, kw: calls.append(kw), with_kwargs=True)
    trainer.run()
    assert calls == [{"with_embeddings": True, "grid_size": trainer.fecl_grid_size}] * 2
    assert trainer.teacher_network is not wrapped.module and not isinstance(
        trainer.teacher_network, torch.nn.DataParallel
    )
    assert checkpoint_dict(trainer)["network"] is wrapped.module.backbone
