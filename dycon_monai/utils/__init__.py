"""Small utilities shared by the DyCON losses, handlers and bundles."""

from __future__ import annotations

from .flags import as_bool
from .schedules import (
    BETA_SCHEDULES,
    LR_SCHEDULES,
    beta_schedule,
    fecl_reference_threshold,
    geometric_beta,
    lr_scheduler,
    paper_beta,
    sigmoid_rampup,
)

__all__ = [
    "BETA_SCHEDULES",
    "LR_SCHEDULES",
    "as_bool",
    "beta_schedule",
    "fecl_reference_threshold",
    "geometric_beta",
    "lr_scheduler",
    "paper_beta",
    "sigmoid_rampup",
]
