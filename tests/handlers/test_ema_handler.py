from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from dycon_monai.handlers import EMATeacherHandler, ema_decay_at, ema_update_


def _pair():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = copy.deepcopy(student)
    return student, teacher


def test_warmup_decay():
    assert ema_decay_at(0, 0.99) == 0.0
    assert ema_decay_at(1, 0.99) == 0.5
    assert ema_decay_at(9, 0.99) == pytest.approx(0.9)
    assert ema_decay_at(1000, 0.99) == 0.99
    with pytest.raises(ValueError, match="EMA step must be >= 0"):
        ema_decay_at(-1, 0.99)


def test_update_math_and_buffers():
    student, teacher = _pair()
    t0 = copy.deepcopy(teacher.state_dict())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student[1].running_mean.fill_(3.0)
    ema_update_(teacher, student, 0.9)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * t0[name] + 0.1 * dict(student.named_parameters())[name])
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)
    with pytest.raises(ValueError, match="the teacher must be a copy"):
        ema_update_(nn.Linear(3, 5), nn.Linear(3, 4), 0.5)


def test_handler_on_an_engine_skips_skipped_iterations():
    student, teacher = _pair()

    def step(engine, batch):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(1.0)
        engine.state.iteration_skipped = engine.state.iteration == 2

    engine = Engine(step)
    handler = EMATeacherHandler(decay=0.99, teacher=teacher, student=student)
    handler.attach(engine)
    with pytest.raises(ValueError, match="already has an EMATeacherHandler"):
        EMATeacherHandler(teacher=teacher, student=student).attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.ema_decay))
    engine.run([0, 0, 0], max_epochs=1)
    # iteration 1 copies (decay 0), iteration 2 is skipped (decay value unchanged), iteration 3 uses step 2
    assert seen[0] == 0.0 and seen[1] == 0.0 and seen[2] == pytest.approx(ema_decay_at(2, 0.99))


def test_handler_needs_teacher_and_valid_decay():
    with pytest.raises(ValueError, match="decay must be in"):
        EMATeacherHandler(decay=1.5)
    with pytest.raises(ValueError, match="needs a teacher and a student"):
        EMATeacherHandler().attach(Engine(lambda e, b: None))
