from __future__ import annotations

import pytest
import torch
from ignite.handlers import ProgressBar
from monai.data import DataLoader, Dataset
from monai.handlers import TensorBoardStatsHandler, ValidationHandler
from mt_helpers import make_cases, make_trainer

from dycon_monai.engines import VAL_KEY_METRIC, loss_terms_transform, make_evaluator
from dycon_monai.handlers import AtomicCheckpointSaver, checkpoint_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


class _Writer:
    """Stands in for a SummaryWriter: records scalar tags."""

    def __init__(self):
        self.tags = []

    def add_scalar(self, tag, value, step):
        self.tags.append(tag)

    def flush(self):
        pass

    def close(self):
        pass


def test_validation_best_checkpoint_tensorboard_and_progress_bar(tmp_path):
    trainer = make_trainer("dycon", max_epochs=2)
    val = DataLoader(Dataset(make_cases(2, True, 5, size=24, prefix="val")), batch_size=1)
    evaluator = make_evaluator(trainer.network, val, device="cpu", roi_size=(16, 16, 16), sw_batch_size=2)
    best = AtomicCheckpointSaver(
        tmp_path / "models",
        {"network": trainer.network.backbone},
        save_final=False,
        save_key_metric=True,
        key_metric_filename="model.pt",
    )
    best.attach(evaluator)
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    writer = _Writer()
    TensorBoardStatsHandler(summary_writer=writer, output_transform=loss_terms_transform).attach(trainer)
    ProgressBar(persist=False).attach(trainer, output_transform=loss_terms_transform)
    saver = AtomicCheckpointSaver(tmp_path / "ckpt", checkpoint_dict(trainer, best_saver=best), save_interval=2)
    saver.attach(trainer)
    trainer.run()

    metrics = evaluator.state.metrics
    assert set(metrics) == {VAL_KEY_METRIC, "val_mean_iou", "val_hd95", "val_asd"}
    assert 0.0 <= metrics[VAL_KEY_METRIC] <= 1.0
    assert (tmp_path / "models" / "model.pt").is_file()
    assert best.best_metric is not None
    assert {"loss", "loss_sup", "loss_uncl", "loss_fecl", "loss_consistency", "beta"} <= set(writer.tags)
    ckpt = torch.load(tmp_path / "ckpt" / "checkpoint_iteration=4.pt", weights_only=True)
    assert ckpt["best_saver"]["best_metric"] == best.best_metric
