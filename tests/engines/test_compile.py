"""The opt-in ``compile=True`` path (MONAI's ``SupervisedTrainer`` argument, ``torch.compile``) of both trainers:
same losses as eager, the EMA teacher and the checkpointed backbone keep working, network B is compiled too."""

from __future__ import annotations

import json
from pathlib import Path

import monai
import pytest
import torch
from mt_helpers import make_loaders, make_net, make_trainer, record_losses, state_of
from test_co_training import _trainer as co_trainer

from dycon_monai.handlers import EMATeacherHandler
from dycon_monai.networks import unwrap_module

REPO = Path(__file__).resolve().parents[2]


def test_unwrap_module_sees_through_compile_and_data_parallel():
    net = make_net()
    compiled = torch.compile(net)
    assert unwrap_module(compiled) is net
    assert unwrap_module(torch.nn.DataParallel(compiled)) is net
    assert unwrap_module(net) is net


def _mean_teacher(compile: bool) -> tuple[list, dict, dict]:
    monai.utils.set_determinism(0)
    trainer = make_trainer("dycon", max_epochs=1, loaders=make_loaders(), net=make_net(), compile=compile)
    EMATeacherHandler(decay=0.9).attach(trainer)
    teacher_before = state_of(trainer.teacher_network)
    losses = record_losses(trainer)
    trainer.run()
    return losses, teacher_before, state_of(trainer.teacher_network)


@pytest.mark.slow
def test_compiled_mean_teacher_matches_eager():
    eager, _, eager_teacher = _mean_teacher(False)
    compiled, before, teacher = _mean_teacher(True)
    assert len(compiled) == len(eager) == 2
    for a, b in zip(eager, compiled):
        for k in ("loss", "loss_sup", "loss_uncl", "loss_fecl"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    assert any(not torch.equal(before[k], teacher[k]) for k in before)  # the EMA reached the compiled student
    for k in teacher:
        torch.testing.assert_close(teacher[k], eager_teacher[k], rtol=1e-3, atol=1e-4)  # fused kernels reorder sums


@pytest.mark.slow
def test_compiled_co_training_compiles_network_b_and_matches_eager():
    runs = {}
    for compile in (False, True):
        monai.utils.set_determinism(0)
        trainer = co_trainer(
            "cps", loaders=make_loaders(), nets=(make_net(0), make_net(1)), max_epochs=1, compile=compile
        )
        losses = record_losses(trainer)
        trainer.run()
        runs[compile] = (losses, trainer)
    (eager, _), (compiled, trainer) = runs[False], runs[True]
    assert unwrap_module(trainer.network_b) is not trainer.network_b  # network B runs through torch.compile
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)


def test_bundles_pass_compile_to_the_trainers():
    for train in sorted(REPO.glob("bundles/*/configs/train.json")):
        config = json.loads(train.read_text())
        assert config["compile"] is False, train  # opt-in
        assert "@compile" in config["train"]["trainer"]["compile"], train
    for co in sorted(REPO.glob("bundles/*/configs/co_training.json")):
        assert "@compile" in json.loads(co.read_text())["train#trainer"]["compile"], co
