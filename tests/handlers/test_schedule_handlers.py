from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from dycon_monai.handlers import BetaScheduleHandler, FeCLEpochHandler, ScheduleHandler
from dycon_monai.losses import FeCLReferenceLoss, UnCLLoss
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
    loss = FeCLReferenceLoss()
    engine = _engine()
    FeCLEpochHandler(loss).attach(engine)
    seen = []
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.append(loss.epoch))
    engine.run([0, 0], max_epochs=3)
    assert seen == [0, 1, 2]
    assert engine.state.fecl_epoch == 2


def test_fecl_epoch_counts_released_code_epochs_isles_10_percent():
    """ISLES'22 fold at 10 %: 200 training cases -> 20 labeled, 4 per labeled batch -> 5-iteration epochs."""
    import math

    from dycon_monai.utils.schedules import fecl_reference_threshold

    per_epoch = 20 // 4
    loss = FeCLReferenceLoss()
    engine = _engine()
    FeCLEpochHandler(loss, iterations_per_epoch=per_epoch).attach(engine)
    thresholds = {}
    engine.add_event_handler(
        Events.ITERATION_STARTED, lambda e: thresholds.__setitem__(e.state.iteration, (loss.epoch, None))
    )
    engine.run(range(6000), max_epochs=1)
    # iterations 1..5 are released-code epoch 0, 6..10 epoch 1, ..., iteration 6000 is epoch 1199
    assert [thresholds[i][0] for i in (1, 5, 6, 10, 11)] == [0, 0, 1, 1, 2]
    assert thresholds[6000][0] == 1199 and engine.state.fecl_epoch == 1199
    expected = 0.3 + 0.2 * math.exp(-5.0 * (1.0 - 1199 / 1500) ** 2)
    assert fecl_reference_threshold(loss.epoch, loss.ramp_length) == pytest.approx(expected)
    assert expected == pytest.approx(0.46353, abs=1e-4)  # vs 0.3016 if t counted 200-iteration intervals (epoch 29)
    with pytest.raises(ValueError, match="iterations_per_epoch must be >= 1"):
        FeCLEpochHandler(loss, iterations_per_epoch=0)
