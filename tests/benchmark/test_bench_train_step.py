"""benchmarks/bench_train_step.py: the step breakdown names every part of a DyCON step and adds up to the step."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_step.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["mean_teacher", "dycon"])
def test_breakdown_covers_the_step(mode):
    args = argparse.Namespace(
        mode=mode, device="cpu", batch=2, patch=[16, 16, 16], channels=[4, 8, 16], embedding_dim=8, grid=4,
        iters=2, warmup=0, threads=0, amp=False, breakdown=True,
    )  # fmt: skip
    result = _bench().run_mode(args)
    parts = result["breakdown"]["parts_s"]
    expected = {"student_forward", "teacher_forward", "backward", "optimizer_step", "ema_update", "data_labeled"}
    expected |= {"loss_uncl", "loss_fecl", "projection_head"} if mode == "dycon" else {"loss_consistency"}
    assert expected <= set(parts), sorted(parts)
    step = result["breakdown"]["s_per_iter_profiled"]
    top = sum(v for k, v in parts.items() if k != "projection_head")
    assert all(v >= 0 for v in parts.values()) and top == pytest.approx(step, rel=0.05)
    assert parts["projection_head"] <= parts["student_forward"] + parts["teacher_forward"] if mode == "dycon" else True


@pytest.mark.parametrize("mode", ["cps", "cps_dycon", pytest.param("dual_cce", marks=pytest.mark.slow)])
def test_co_training_breakdown_covers_the_step(mode):
    args = argparse.Namespace(
        mode=mode, device="cpu", batch=2, patch=[32, 32, 32] if mode == "dual_cce" else [16, 16, 16],
        channels=[4, 8, 16], embedding_dim=8, grid=4, iters=1, warmup=0, threads=0, amp=False, breakdown=True,
    )  # fmt: skip
    result = _bench().run_mode(args)
    parts = result["breakdown"]["parts_s"]
    expected = {"network_a_forward", "network_b_forward", "loss_sup", "loss_cps", "backward", "optimizer_step"}
    expected |= {"cps": set(), "cps_dycon": {"loss_uncl", "loss_fecl"}}.get(
        mode, {"loss_efs", "loss_une", "loss_pgl", "loss_cr"}
    )
    assert expected <= set(parts), sorted(parts)
    assert "teacher_forward" not in parts and "ema_update" not in parts
    step = result["breakdown"]["s_per_iter_profiled"]
    top = sum(v for k, v in parts.items() if k != "projection_head")
    assert top == pytest.approx(step, rel=0.05)
    assert result["losses"]["loss_cps"] > 0


@pytest.mark.slow
def test_compile_mode_times_the_compiled_trainer_beside_eager(capsys):
    """``--compile`` runs every mode eager and with ``compile=True`` in the same run and prints the ratio."""
    rc = _bench().main(["--quick", "--modes", "mean_teacher", "--compile", "--iters", "1", "--warmup", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mean_teacher+compile" in out and "compiled / eager" in out
    import json

    summary = json.loads(out.strip().splitlines()[-1])
    assert set(summary["compile"]) == {"supervised", "mean_teacher"}
    assert all(v["time_ratio"] > 0 for v in summary["compile"].values())
    assert summary["results"]["mean_teacher+compile"]["first_iter_s"] > 0


def test_floor_mode_runs_dycon_with_fecl_at_its_floor():
    """``dycon_floor``: DyCON's step with FeCL's value 0 and its gradient the floor's products, every other part kept."""
    args = argparse.Namespace(
        mode="dycon_floor", device="cpu", batch=2, patch=[16, 16, 16], channels=[4, 8, 16], embedding_dim=8, grid=4,
        iters=1, warmup=0, threads=0, amp=False, breakdown=True,
    )  # fmt: skip
    result = _bench().run_mode(args)
    parts = result["breakdown"]["parts_s"]
    assert {"loss_uncl", "loss_fecl", "projection_head", "teacher_forward", "ema_update"} <= set(parts)
    assert result["losses"]["loss_fecl"] == 0.0 and result["losses"]["loss_uncl"] != 0.0


def test_floor_products_are_the_two_gradient_products_of_the_exponentials():
    import torch

    floor = _bench().fecl_floor_module()
    g = torch.Generator().manual_seed(0)
    zn = torch.nn.functional.normalize(torch.randn(2, 10, 4, generator=g, dtype=torch.float64), dim=2)
    e = torch.bmm(zn, zn.transpose(1, 2)).exp()
    expected = torch.bmm(e, zn) + torch.bmm(e.transpose(1, 2), zn)
    for chunk in (3, 10):
        assert torch.allclose(floor.floor_products(zn, zn, chunk), expected)
    emb = torch.randn(2, 10, 4, generator=g, requires_grad=True)
    loss = floor.FloorFeCLLoss(hard_negatives="none")(emb, (torch.arange(10) % 2).repeat(2, 1))
    loss.backward()
    assert loss.item() == 0.0 and emb.grad.abs().sum() > 0
