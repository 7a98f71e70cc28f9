"""Post-transform that stores a voxel-wise entropy map next to the prediction, for overlays and uncertainty maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from dycon_monai.evaluation.entropy import voxel_entropy

__all__ = ["prediction_entropy", "PredictionEntropyd"]


def prediction_entropy(probs: torch.Tensor, normalize: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Entropy over the channel axis of channel-first probabilities ``(C, *spatial)`` -> ``(1, *spatial)``.

    :func:`~dycon_monai.evaluation.entropy.voxel_entropy` of one item (with ``normalize`` divided by ``log C``, in
    [0, 1]). A single channel is read as a foreground probability (binary entropy).
    """
    if probs.ndim < 2:
        raise ValueError(f"prediction_entropy: expected (C, *spatial) probabilities, got shape {tuple(probs.shape)}.")
    p = probs.float()
    if p.shape[0] == 1:
        p = torch.cat([1 - p, p], dim=0)
    return voxel_entropy(p[None], activation="none", normalize=normalize, eps=eps)


class PredictionEntropyd(MapTransform):
    """Write the normalised entropy of ``keys`` (channel-first probabilities) to ``entropy_key``.

    Place it after ``Activationsd(softmax=True)`` and before ``AsDiscreted(argmax=True)`` in an evaluator's
    post-transforms; :class:`~dycon_monai.handlers.metrics_writer.CaseMetricsWriter` draws and saves it.

    Args:
        keys: the prediction key (one key).
        entropy_key: where to store the ``(1, *spatial)`` entropy map.
        normalize: divide by ``log C`` (values in [0, 1]).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        entropy_key: str = "entropy",
        normalize: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.entropy_key = entropy_key
        self.normalize = normalize

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.entropy_key] = prediction_entropy(torch.as_tensor(d[key]), self.normalize)
        return d
