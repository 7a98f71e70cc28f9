"""Choose a FeCL loss by name: ``"paper"`` (:class:`FeCLLoss`) or ``"reference"`` (:class:`FeCLReferenceLoss`).

The bundles' ``fecl_loss`` component is ``{"_target_": "dycon_monai.losses.fecl_loss", "variant": "@fecl_variant",
...}``, so ``--fecl_variant reference`` switches the class from the command line.
"""

from __future__ import annotations

import inspect
from typing import Any

from dycon_monai.losses.fecl import FeCLLoss
from dycon_monai.losses.fecl_base import FeCLBase
from dycon_monai.losses.fecl_reference import FeCLReferenceLoss

__all__ = ["FECL_LOSSES", "PAPER_ONLY", "fecl_loss"]

FECL_LOSSES: dict[str, type[FeCLBase]] = {"paper": FeCLLoss, "reference": FeCLReferenceLoss}
#: arguments of the paper's loss that the released code has no counterpart for
PAPER_ONLY = frozenset({"hard_negatives", "top_k", "use_entropy", "gambling_temperature"})


def fecl_loss(variant: str = "paper", **kwargs: Any) -> FeCLBase:
    """The FeCL loss ``variant`` built with ``kwargs``.

    For ``"reference"`` the paper-only arguments (:data:`PAPER_ONLY`: hard negatives, top-K, entropy weighting) are
    left out, since the released code has none of them; any other argument the class does not take is an error.

    Raises:
        ValueError: an unknown ``variant``.
        TypeError: an argument the chosen class does not take.
    """
    if variant not in FECL_LOSSES:
        raise ValueError(f"fecl_variant must be one of {sorted(FECL_LOSSES)}, got {variant!r}.")
    cls = FECL_LOSSES[variant]
    if cls is FeCLReferenceLoss:
        kwargs = {k: v for k, v in kwargs.items() if k not in PAPER_ONLY}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise TypeError(f"{cls.__name__} takes no argument(s) {unknown}; it takes {sorted(accepted)}.")
    return cls(**kwargs)
