"""Input checks and shared pieces of the losses that compare two networks' predictions (the co-training losses).

Each takes logits (or maps) of two networks of the same shape ``(B, C, *spatial)``: :func:`validate_pair` checks
them and names the owner, the argument and the shapes; :func:`compute_dtype` is the precision the losses compute in;
:func:`normalized_entropy` and :func:`batch_percentile` give the entropy thresholds of seed 003 (Eq. 9-10, 16).
"""

from __future__ import annotations

import math

import torch
from monai.utils import LossReduction

__all__ = [
    "batch_percentile",
    "check_percentile",
    "check_reduction",
    "compute_dtype",
    "normalized_entropy",
    "validate_pair",
]


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half / bfloat16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def validate_pair(owner: str, a: torch.Tensor, b: torch.Tensor, names: tuple[str, str], min_channels: int) -> None:
    """Check two ``(B, C, *spatial)`` floating tensors of equal shape with ``C >= min_channels``."""
    for name, x in zip(names, (a, b)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{owner} {name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim < 3:
            raise ValueError(
                f"{owner} expects {name} of shape (B, C, *spatial) with at least one spatial dim, "
                f"got shape {tuple(x.shape)} (ndim={x.ndim})."
            )
        if not x.is_floating_point():
            raise ValueError(f"{owner} expects floating-point {name}, got dtype {x.dtype} (shape {tuple(x.shape)}).")
    if a.shape != b.shape:
        raise ValueError(
            f"{owner} {names[0]} and {names[1]} must have the same shape, got {names[0]} {tuple(a.shape)} "
            f"and {names[1]} {tuple(b.shape)}."
        )
    if a.shape[1] < min_channels:
        raise ValueError(
            f"{owner} needs at least {min_channels} channels (softmax over dim 1), got {names[0]} of shape "
            f"{tuple(a.shape)}; for a single sigmoid channel x pass torch.cat([torch.zeros_like(x), x], 1)."
        )


def check_reduction(owner: str, reduction: LossReduction | str) -> str:
    try:
        return LossReduction(reduction).value
    except ValueError:
        options = [r.value for r in LossReduction]
        raise ValueError(f"{owner} reduction must be one of {options}, got reduction={reduction!r}.") from None


def normalized_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Per-voxel entropy ``-sum_c p_c log_C p_c`` in ``[0, 1]`` from ``(B, C, *spatial)`` log-probabilities.

    For ``C = 2`` this is exactly Eq. 9 (``log_2``); for ``C > 2`` the base-``C`` log keeps the range ``[0, 1]``.
    Returns ``(B, *spatial)``.
    """
    return -(log_probs.exp() * log_probs).sum(dim=1) / math.log(log_probs.shape[1])


def batch_percentile(values: torch.Tensor, gamma: float) -> torch.Tensor:
    """The ``gamma``-th percentile (``0 <= gamma <= 100``) of all entries, with linear interpolation between order
    statistics (numpy's default ``"linear"`` method). Sort based, so unlike ``torch.quantile`` it has no size limit."""
    flat = values.detach().reshape(-1).sort().values
    pos = (flat.numel() - 1) * float(gamma) / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, flat.numel() - 1)
    frac = pos - lo
    return flat[lo] + (flat[hi] - flat[lo]) * frac


def check_percentile(owner: str, gamma: float | None, name: str) -> float | None:
    if gamma is None:
        return None
    g = float(gamma)
    if not (math.isfinite(g) and 0.0 <= g <= 100.0):
        raise ValueError(f"{owner} {name} must be in [0, 100], got {name}={gamma}.")
    return g
