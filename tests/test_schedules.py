"""Beta schedules and ramps at t = 0, T/2, T (and beyond), plus the FeCL reference threshold."""

from __future__ import annotations

import math

import pytest

from dycon_monai.utils import beta_schedule, fecl_reference_threshold, geometric_beta, paper_beta, sigmoid_rampup


def test_paper_beta_at_0_half_and_total():
    total = 6000
    assert paper_beta(0, total) == pytest.approx(1.0)
    assert paper_beta(total / 2, total) == pytest.approx(math.exp(-0.05))
    assert paper_beta(total, total) == pytest.approx(math.exp(-0.1))
    # a decay fast enough to hit the floor
    assert paper_beta(total, total, beta_max=1.0, beta_min=0.1, lam=5.0) == pytest.approx(0.1)
    assert paper_beta(total / 2, total, lam=0.3) == pytest.approx(math.exp(-0.15))


def test_geometric_beta_at_0_half_total_and_beyond():
    total = 100
    assert geometric_beta(0, total) == pytest.approx(5.0)
    assert geometric_beta(total / 2, total) == pytest.approx(math.sqrt(5.0 * 0.5))
    assert geometric_beta(total, total) == pytest.approx(0.5)
    assert geometric_beta(3 * total, total) == pytest.approx(0.5)


def test_sigmoid_rampup_at_0_half_length_and_beyond():
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(20, 40) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(40, 40) == 1.0
    assert sigmoid_rampup(400, 40) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0 and sigmoid_rampup(7, 0) == 1.0


def test_fecl_reference_threshold():
    assert fecl_reference_threshold(0) == pytest.approx(0.3 + 0.2 * math.exp(-5.0))
    assert fecl_reference_threshold(750) == pytest.approx(0.3 + 0.2 * math.exp(-1.25))
    assert fecl_reference_threshold(1500) == pytest.approx(0.5)
    assert fecl_reference_threshold(10**6) == pytest.approx(0.5)


def test_beta_schedule_dispatch_and_errors():
    assert beta_schedule("paper", 30, 60, lam=0.3) == paper_beta(30, 60, lam=0.3)
    assert beta_schedule("geometric", 30, 60, beta_max=2.0, beta_min=1.0) == geometric_beta(30, 60, 2.0, 1.0)
    with pytest.raises(ValueError, match="unknown beta schedule mode='linear'"):
        beta_schedule("linear", 0, 10)
    with pytest.raises(ValueError, match="unexpected arguments"):
        beta_schedule("geometric", 0, 10, lam=0.1)
    with pytest.raises(ValueError, match="total must be a finite number > 0, got total=0.0"):
        paper_beta(0, 0)
    with pytest.raises(ValueError, match="t must be a finite number >= 0, got t=-1.0"):
        geometric_beta(-1, 10)
    with pytest.raises(ValueError, match="beta_max > 0 and beta_min > 0"):
        geometric_beta(1, 10, beta_max=1.0, beta_min=0.0)
