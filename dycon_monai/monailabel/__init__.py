"""MONAI Label integration: uncertainty-driven active learning with DyCON's voxel entropy.

The entropy and ranking functions (:mod:`dycon_monai.monailabel.entropy`) and the app preparation function
(:mod:`dycon_monai.monailabel.app`) need only PyTorch. The app MONAI Label starts is
:class:`dycon_monai.monailabel.server_app.DyCONApp`. The MONAI Label classes (``DyCONEntropyScoring``,
``MostUncertainStrategy``, ``with_dycon_active_learning``, ``DyCONActiveLearningMixin``) are loaded on first access from
:mod:`dycon_monai.monailabel.tasks`, which needs the ``monailabel`` package (see ``docs/monailabel.md``).
"""

from __future__ import annotations

import importlib
from typing import Any

from dycon_monai.monailabel.app import prepare_app
from dycon_monai.monailabel.entropy import (
    mean_voxel_entropy,
    most_uncertain,
    rank_by_entropy,
    study_entropy,
    voxel_entropy,
)

__all__ = [
    "voxel_entropy",
    "mean_voxel_entropy",
    "study_entropy",
    "rank_by_entropy",
    "most_uncertain",
    "prepare_app",
    "DyCONEntropyScoring",
    "MostUncertainStrategy",
    "DyCONActiveLearningMixin",
    "with_dycon_active_learning",
]

_LAZY = {"DyCONEntropyScoring", "MostUncertainStrategy", "DyCONActiveLearningMixin", "with_dycon_active_learning"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            module = importlib.import_module("dycon_monai.monailabel.tasks")
        except ImportError as e:
            raise ImportError(
                f"dycon_monai.monailabel.{name} needs MONAI Label (`pip install monailabel==0.8.5`, best in its own "
                f"environment: `make monailabel-env`, see docs/monailabel.md); importing it failed: {e}"
            ) from e
        return getattr(module, name)
    raise AttributeError(f"module 'dycon_monai.monailabel' has no attribute {name!r}")
