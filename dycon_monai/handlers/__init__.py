"""Ignite handlers for DyCON training: EMA teacher, schedules, atomic checkpoints (and per-case metrics)."""

from __future__ import annotations

from .checkpoint import AtomicCheckpointSaver, atomic_torch_save, checkpoint_dict, checkpoint_loader, latest_checkpoint
from .ema import EMATeacherHandler, ema_decay_at, ema_update_
from .metrics_writer import CaseMetricsWriter
from .schedule import BetaScheduleHandler, FeCLEpochHandler, ScheduleHandler

__all__ = [
    "AtomicCheckpointSaver",
    "BetaScheduleHandler",
    "CaseMetricsWriter",
    "EMATeacherHandler",
    "FeCLEpochHandler",
    "ScheduleHandler",
    "atomic_torch_save",
    "checkpoint_dict",
    "checkpoint_loader",
    "ema_decay_at",
    "ema_update_",
    "latest_checkpoint",
]
