from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from dycon_monai.handlers import BetaScheduleHandler, FeCLEpochHandler, ScheduleHandler
from dycon_monai.losses import FeCLLoss, UnCLLoss
from dycon_monai.utils.schedules import geometric_beta, paper_beta


def _engine():
    return Engine(lambda e, b: None)


def test_beta_per_iteration_over_the_run_length():
    loss = UnCLLoss()
    engine = _engine()
    BetaScheduleHandler(loss, mode="geometric", unit="iteration").attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append((e.state.iteration, loss.beta)))
    engine.run([0] * 5, max_epochs=2)  # 10 iterations
    assert seen[0] == (1, geometric_beta(0, 10))
    assert seen[-1] == (10, pytest.approx(geometric_beta(9, 10)))
    assert engine.state.beta == loss.beta


def test_beta_per_epoch_with_total_and_kwargs():
    loss = UnCLLoss()
    engine = _engine()
    BetaScheduleHandler(loss, mode="paper", total=4, unit="epoch", lam=0.3).attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(loss.beta))
    engine.run([0] * 2, max_epochs=3)
    assert seen == [pytest.approx(paper_beta(t, 4, lam=0.3)) for t in range(3)]


def test_schedule_handlers_without_a_target_do_nothing_and_bad_args():
    engine = _engine()
    engine.uncl_loss = None
    engine.fecl_loss = None
    BetaScheduleHandler().attach(engine)  # UnCL off in this trainer: no-op
    FeCLEpochHandler().attach(engine)
    engine.run([0], max_epochs=1)
    with pytest.raises(ValueError, match="unknown beta schedule mode='cosine'"):
        BetaScheduleHandler(mode="cosine")
    with pytest.raises(ValueError, match="schedule unit must be one of"):
        ScheduleHandler(UnCLLoss(), "beta", float, unit="step")
    with pytest.raises(ValueError, match="has no attribute 'gamma2'"):
        ScheduleHandler(UnCLLoss(), "gamma2", float).attach(_engine())


def test_fecl_epoch_handler_sets_zero_based_epoch():
    loss = FeCLLoss(variant="reference")
    engine = _engine()
    FeCLEpochHandler(loss).attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(loss.epoch))
    engine.run([0, 0], max_epochs=3)
    assert seen == [0, 1, 2]
    assert engine.state.fecl_epoch == 2
