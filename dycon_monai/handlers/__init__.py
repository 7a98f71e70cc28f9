"""Ignite handlers for DyCON training: EMA teacher, schedules, gradient norm, non-finite policy, checkpoints, metrics,
data wait."""

from __future__ import annotations

from .checkpoint import (
    AtomicCheckpointSaver,
    TrainingCheckpointHandler,
    atomic_torch_save,
    checkpoint_dict,
    checkpoint_loader,
    latest_checkpoint,
)
from .ema import EMATeacherHandler, ema_decay_at, ema_update_
from .gradients import GradientNormHandler, StepEvents, gradient_norm
from .metrics_writer import CaseMetricsWriter
from .nonfinite import NonFiniteHandler, NonFiniteLossError
from .progress import IterationLimitHandler, LossProgressBar
from .schedule import BetaScheduleHandler, FeCLEpochHandler, ScheduleHandler
from .timing import DataWaitHandler

__all__ = [
    "AtomicCheckpointSaver",
    "BetaScheduleHandler",
    "CaseMetricsWriter",
    "DataWaitHandler",
    "EMATeacherHandler",
    "FeCLEpochHandler",
    "GradientNormHandler",
    "IterationLimitHandler",
    "LossProgressBar",
    "NonFiniteHandler",
    "NonFiniteLossError",
    "ScheduleHandler",
    "StepEvents",
    "TrainingCheckpointHandler",
    "atomic_torch_save",
    "checkpoint_dict",
    "checkpoint_loader",
    "ema_decay_at",
    "ema_update_",
    "gradient_norm",
    "latest_checkpoint",
]
