"""Voxel entropy of class probabilities: the one implementation behind the entropy maps and the study scores.

``H(p) = -sum_c p_c log p_c`` over the channel axis (natural log), DyCON's uncertainty (paper Eq. 1), optionally
divided by ``log C`` so that it lies in ``[0, 1]`` whatever the number of classes. The evaluation's entropy maps
(:class:`~dycon_monai.evaluation.transforms.PredictionEntropyd`) and MONAI Label's study scores
(:mod:`dycon_monai.monailabel.entropy`) both call :func:`voxel_entropy`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["voxel_entropy"]

_ACTIVATIONS = ("softmax", "sigmoid", "none")


def _to_probabilities(values: torch.Tensor, activation: str) -> torch.Tensor:
    """Turn ``(B, C, *spatial)`` network outputs into class probabilities over dim 1 (two classes for sigmoid)."""
    values = values.float()
    if activation == "softmax":
        if values.shape[1] < 2:
            raise ValueError(
                f"activation='softmax' needs at least 2 channels, got shape {tuple(values.shape)}; "
                "use activation='sigmoid' for a single-channel (binary) output"
            )
        return torch.softmax(values, dim=1)
    if activation == "sigmoid":
        p = torch.sigmoid(values)
        if values.shape[1] == 1:
            return torch.cat([1.0 - p, p], dim=1)
        # independent binary channels: the entropy is summed over channels below through the (1-p, p) pairs
        return torch.stack([1.0 - p, p], dim=1).flatten(1, 2)
    if activation == "none":
        return values
    raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")


def voxel_entropy(
    values: torch.Tensor,
    activation: str = "softmax",
    normalize: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-voxel Shannon entropy of the class probabilities.

    Args:
        values: network outputs of shape ``(B, C, *spatial)`` (logits for ``"softmax"`` / ``"sigmoid"``,
            probabilities summing to 1 over dim 1 for ``"none"``).
        activation: ``"softmax"`` (default, DyCON's multi-class head), ``"sigmoid"`` (independent binary
            channels) or ``"none"`` (``values`` already are probabilities).
        normalize: divide by ``log C`` (``C`` = number of classes) so that the result lies in ``[0, 1]``.
        eps: added inside the logarithm.

    Returns:
        Entropy map of shape ``(B, *spatial)`` (natural logarithm, or normalised when ``normalize``).

    Raises:
        ValueError: if ``values`` has fewer than 3 dimensions, a wrong channel count for the activation, or
            ``activation="none"`` with probabilities that do not sum to 1 over the channels.
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor of shape (B, C, *spatial), got {type(values).__name__}")
    if values.ndim < 3:
        raise ValueError(f"values must have shape (B, C, *spatial), got shape {tuple(values.shape)}")
    probs = _to_probabilities(values, activation)
    if activation == "none":
        sums = probs.sum(dim=1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ValueError(
                "activation='none' expects probabilities that sum to 1 over dim 1; got sums in "
                f"[{float(sums.min()):.4f}, {float(sums.max()):.4f}] for shape {tuple(values.shape)}"
            )
    ent = -(probs * torch.log(probs.clamp_min(0.0) + eps)).sum(dim=1)
    if activation == "sigmoid" and values.shape[1] > 1:
        # C independent binary problems: average them so that the normalised value stays in [0, 1]
        ent = ent / values.shape[1]
        n_classes = 2
    else:
        n_classes = probs.shape[1]
    if normalize:
        ent = ent / math.log(n_classes) if n_classes > 1 else torch.zeros_like(ent)
    return ent.clamp_min(0.0)
