from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

import dycon_monai.handlers.checkpoint as ckpt_mod
from dycon_monai.handlers import AtomicCheckpointSaver, atomic_torch_save, latest_checkpoint


def _engine():
    return Engine(lambda e, b: None)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": torch.ones(3)}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": torch.zeros(3)}, path)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind


def test_interval_saves_prune_after_writing_and_latest(tmp_path):
    net = nn.Linear(2, 2)
    engine = _engine()
    saver = AtomicCheckpointSaver(
        tmp_path, {"network": net, "optimizer": torch.optim.SGD(net.parameters(), 0.1)}, save_interval=2, n_saved=2
    )
    (tmp_path / ".tmp-checkpoint_iteration=99.pt-123").write_bytes(b"stale")
    saver.attach(engine)
    assert not list(tmp_path.glob(".tmp-*"))  # stale temporary files from a killed run are removed
    engine.run([0] * 7, max_epochs=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint_final_iteration=7.pt", "checkpoint_iteration=4.pt", "checkpoint_iteration=6.pt"]
    assert latest_checkpoint(tmp_path).name == "checkpoint_final_iteration=7.pt"
    ckpt = torch.load(tmp_path / "checkpoint_iteration=6.pt", weights_only=True)
    assert set(ckpt) == {"network", "optimizer"}
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_key_metric_saves_bare_state_dict_on_improvement_only(tmp_path):
    net = nn.Linear(2, 2)
    metrics = iter([0.5, 0.4, 0.7, float("nan")])
    engine = _engine()

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metrics["val_mean_dice"] = next(metrics)
        with torch.no_grad():
            net.weight.fill_(e.state.epoch)

    saver = AtomicCheckpointSaver(
        tmp_path,
        {"network": net},
        save_final=False,
        save_key_metric=True,
        key_metric_name="val_mean_dice",
        key_metric_filename="model.pt",
    )
    saver.attach(engine)
    engine.run([0], max_epochs=4)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}  # a single entry is saved as the bare state_dict (bundle model.pt)
    assert torch.all(state["weight"] == 3)  # epoch 3 had the best Dice (0.7); NaN never replaces it
    assert saver.state_dict()["best_metric"] == 0.7
    fresh = AtomicCheckpointSaver(tmp_path, {"network": net}, save_key_metric=True)
    fresh.load_state_dict(saver.state_dict())
    assert fresh.best_metric == 0.7


def test_saver_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="non-empty save_dict"):
        AtomicCheckpointSaver(tmp_path, {})
    with pytest.raises(ValueError, match="n_saved must be >= 1"):
        AtomicCheckpointSaver(tmp_path, {"n": nn.Linear(1, 1)}, n_saved=0)
    saver = AtomicCheckpointSaver(tmp_path, {"n": nn.Linear(1, 1)}, save_final=False, save_key_metric=True)
    engine = _engine()
    saver.attach(engine)
    with pytest.raises(ValueError, match="key metric None is not in engine.state.metrics"):
        engine.run([0], max_epochs=1)
