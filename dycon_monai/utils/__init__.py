"""Small utilities shared by the DyCON losses, handlers and bundles."""

from __future__ import annotations

from .schedules import (
    BETA_SCHEDULES,
    beta_schedule,
    fecl_reference_threshold,
    geometric_beta,
    paper_beta,
    sigmoid_rampup,
)

__all__ = [
    "BETA_SCHEDULES",
    "beta_schedule",
    "fecl_reference_threshold",
    "geometric_beta",
    "paper_beta",
    "sigmoid_rampup",
]
