from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from mt_helpers import assert_same_state, make_loaders, make_net, make_trainer, record_losses

from dycon_monai.handlers import AtomicCheckpointSaver, checkpoint_dict, checkpoint_loader, latest_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def _trainer(net=None, epoch_length=None):
    # 6 labeled cases in batches of 2: 3 batches per pass; epoch_length 4 makes epochs and passes disagree
    loaders = make_loaders(n_labeled=6, n_unlabeled=4)
    return make_trainer("dycon", max_epochs=2, loaders=loaders, net=net, epoch_length=epoch_length)


@pytest.mark.parametrize(
    "stop_at, epoch_length",
    [(3, None), (4, None), (5, 4)],
    ids=["epoch-boundary", "mid-epoch", "loader-wraps-inside-epoch"],
)
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, stop_at, epoch_length):
    full = _trainer(epoch_length=epoch_length)
    full_losses = record_losses(full)
    full.run()
    total = full.state.iteration
    assert total == 2 * (epoch_length or 3)

    first = _trainer(epoch_length=epoch_length)
    AtomicCheckpointSaver(tmp_path, checkpoint_dict(first), save_interval=1, n_saved=2, save_final=False).attach(first)
    first.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    first.run()
    assert latest_checkpoint(tmp_path).name == f"checkpoint_iteration={stop_at}.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"checkpoint_iteration={stop_at - 1}.pt",
        f"checkpoint_iteration={stop_at}.pt",
    ]

    # different initial weights: everything must come from the file
    resumed = _trainer(net=make_net(seed=123), epoch_length=epoch_length)
    checkpoint_loader(tmp_path, resumed).attach(resumed)
    resumed_losses = record_losses(resumed)
    resumed.run()
    assert resumed.state.iteration == total
    assert [r["iteration"] for r in resumed_losses] == list(range(stop_at + 1, total + 1))
    assert resumed_losses == full_losses[stop_at:]
    assert_same_state(full.network.state_dict(), resumed.network.state_dict())
    assert_same_state(full.teacher_network.state_dict(), resumed.teacher_network.state_dict())
    assert full.state_dict() == resumed.state_dict()


def test_checkpoint_holds_the_contract_keys_and_inference_weights_load_into_bare_backbone(tmp_path):
    trainer = make_trainer("dycon", max_epochs=1)
    sched = torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=1)
    saver = AtomicCheckpointSaver(tmp_path, checkpoint_dict(trainer, sched), save_interval=2)
    saver.attach(trainer)
    trainer.run()
    ckpt = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert set(ckpt) == {"network", "head", "teacher", "optimizer", "lr_scheduler", "trainer"}
    assert ckpt["trainer"]["iteration"] == 2
    bare = make_net(seed=7).backbone
    bare.load_state_dict(ckpt["network"])
    x = torch.randn(1, 1, 16, 16, 16)
    trainer.network.eval()
    bare.eval()
    torch.testing.assert_close(bare(x), trainer.network(x))


def test_checkpoint_loader_errors(tmp_path):
    trainer = make_trainer("dycon", max_epochs=1)
    with pytest.raises(FileNotFoundError, match="no checkpoint_"):
        checkpoint_loader(tmp_path, trainer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_loader(tmp_path / "missing.pt", trainer)
