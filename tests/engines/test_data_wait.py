"""DataWaitHandler: the share of step time spent waiting for labeled and unlabeled batches."""

from __future__ import annotations

import logging
import time

import pytest
from monai.data import DataLoader, Dataset
from monai.transforms import Lambda
from mt_helpers import make_cases, make_trainer

from dycon_monai.handlers import DataWaitHandler

pytestmark = pytest.mark.usefixtures("one_thread")


def _loaders(delay: float):
    def slow(item):
        time.sleep(delay)
        return item

    lab = DataLoader(Dataset(make_cases(4, True, 0), Lambda(slow)), batch_size=2)
    unl = DataLoader(Dataset(make_cases(4, False, 1, prefix="unl"), Lambda(slow)), batch_size=2)
    return lab, unl


def test_slow_loaders_show_as_wait_and_both_streams_are_counted(caplog):
    trainer = make_trainer("mean_teacher", max_epochs=3, loaders=_loaders(0.05))
    handler = DataWaitHandler(skip=1, warn_share=0.05)
    handler.attach(trainer)
    with caplog.at_level(logging.INFO):
        trainer.run()
    s = trainer.state.data_wait
    assert s["iterations"] == 5  # 3 epochs x 2 batches, the first skipped
    # every batch is 2 items x 50 ms, fetched on the main process
    assert s["labeled_s"] == pytest.approx(5 * 0.1, rel=0.5) and s["unlabeled_s"] == pytest.approx(5 * 0.1, rel=0.5)
    assert 0 < s["share"] < 1 and s["step_s"] > s["labeled_s"] + s["unlabeled_s"]
    assert any("data wait" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_fast_loaders_wait_little_and_supervised_has_no_unlabeled_wait():
    trainer = make_trainer("supervised", max_epochs=2, loaders=_loaders(0.0))
    DataWaitHandler(skip=0, warn_share=None).attach(trainer)
    trainer.run()
    s = trainer.state.data_wait
    assert s["iterations"] == 4 and s["unlabeled_s"] == 0.0 and s["share"] < 0.5
    with pytest.raises(ValueError, match="skip must be >= 0"):
        DataWaitHandler(skip=-1)
