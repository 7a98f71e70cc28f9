"""Study-level uncertainty from DyCON's voxel entropy, and the ranking used for active learning.

Everything here is plain PyTorch: it imports without MONAI Label, so the numbers that drive the MONAI Label scoring
method (:mod:`dycon_monai.monailabel.tasks`) are tested in the main environment.

The per-voxel uncertainty is the Shannon entropy that DyCON's UnCL loss uses (paper Eq. 1),
``H(p) = -sum_c p_c log p_c`` of the softmax probabilities, optionally divided by ``log C`` so that it lies in
``[0, 1]`` whatever the number of classes. A study's score is the mean of that map over its voxels (or, with
``top_fraction``, over its most uncertain voxels only, which keeps small lesions from being drowned by a large,
confidently predicted background).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

__all__ = [
    "voxel_entropy",
    "mean_voxel_entropy",
    "study_entropy",
    "rank_by_entropy",
    "most_uncertain",
]

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


def mean_voxel_entropy(
    values: torch.Tensor,
    activation: str = "softmax",
    normalize: bool = True,
    top_fraction: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Study-level uncertainty: the mean voxel entropy of each sample.

    Args:
        values: network outputs ``(B, C, *spatial)``; see :func:`voxel_entropy`.
        activation: see :func:`voxel_entropy`.
        normalize: see :func:`voxel_entropy`.
        top_fraction: if given (in ``(0, 1]``), average only the ``ceil(top_fraction * voxels)`` most uncertain
            voxels of each sample instead of all of them.
        mask: optional ``(B, *spatial)`` or ``(B, 1, *spatial)`` boolean/0-1 mask of the voxels to average over
            (e.g. the body or brain); voxels outside it are ignored. A sample with an empty mask scores 0.

    Returns:
        Tensor of shape ``(B,)``.
    """
    ent = voxel_entropy(values, activation=activation, normalize=normalize)
    flat = ent.flatten(1)
    if mask is not None:
        m = mask
        if m.ndim == ent.ndim + 1 and m.shape[1] == 1:
            m = m[:, 0]
        if tuple(m.shape) != tuple(ent.shape):
            raise ValueError(
                f"mask must have shape {tuple(ent.shape)} (or with a singleton channel), got {tuple(mask.shape)}"
            )
        m = m.flatten(1).to(flat.device).bool()
    else:
        m = None
    if top_fraction is not None and not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")
    scores = []
    for b in range(flat.shape[0]):
        row = flat[b] if m is None else flat[b][m[b]]
        if row.numel() == 0:
            scores.append(flat.new_zeros(()))
            continue
        if top_fraction is not None:
            k = max(1, math.ceil(top_fraction * row.numel()))
            row = torch.topk(row, k, sorted=False).values
        scores.append(row.mean())
    return torch.stack(scores)


@torch.no_grad()
def study_entropy(
    network: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module,
    image: torch.Tensor,
    inferer: Callable[..., torch.Tensor] | None = None,
    activation: str = "softmax",
    normalize: bool = True,
    top_fraction: float | None = None,
) -> float:
    """Run ``network`` on one study and return its mean voxel entropy.

    Args:
        network: maps ``(1, C_in, *spatial)`` images to ``(1, C, *spatial)`` outputs (logits by default).
        image: channel-first image of one study, ``(C_in, *spatial)`` (no batch dimension).
        inferer: optional MONAI-style inferer called as ``inferer(inputs, network)`` (e.g. a
            ``SlidingWindowInferer``); ``None`` calls ``network(inputs)`` directly.
        activation: see :func:`voxel_entropy`.
        normalize: see :func:`voxel_entropy`.
        top_fraction: see :func:`mean_voxel_entropy`.

    Returns:
        The study's score as a Python float.
    """
    x = torch.as_tensor(image)
    if x.ndim < 3:
        raise ValueError(f"image must be channel-first (C, *spatial) without a batch dimension, got {tuple(x.shape)}")
    if isinstance(network, torch.nn.Module):
        param = next(iter(network.parameters()), None)
        if param is not None:
            x = x.to(param.device)
    x = x[None]
    out = inferer(x, network) if inferer is not None else network(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return float(mean_voxel_entropy(out, activation=activation, normalize=normalize, top_fraction=top_fraction)[0])


def rank_by_entropy(scores: Mapping[str, float] | Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Order studies from most to least uncertain.

    Args:
        scores: ``{study_id: score}`` or ``(study_id, score)`` pairs. Non-finite scores (NaN) rank last.

    Returns:
        ``[(study_id, score), ...]`` sorted by decreasing score; ties broken by study id so the order is
        deterministic.
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else list(scores)
    for sid, value in items:
        if not isinstance(sid, str):
            raise TypeError(f"study ids must be strings, got {sid!r} ({type(sid).__name__})")
        if not isinstance(value, (int, float)):
            raise TypeError(f"score of study {sid!r} must be a number, got {value!r}")

    def key(item: tuple[str, float]) -> tuple[int, float, str]:
        sid, value = item
        finite = math.isfinite(float(value))
        return (0 if finite else 1, -float(value) if finite else 0.0, sid)

    return [(sid, float(v)) for sid, v in sorted(items, key=key)]


def most_uncertain(
    scores: Mapping[str, float],
    candidates: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
) -> str | None:
    """The study to annotate next: the highest-scoring candidate not in ``exclude``.

    Args:
        scores: ``{study_id: score}``.
        candidates: studies that may be picked (e.g. the unlabeled ones); ``None`` means every key of ``scores``.
            Candidates without a score are not picked.
        exclude: studies to skip (e.g. ones just handed to another annotator).

    Returns:
        The chosen study id, or ``None`` when no candidate has a score.
    """
    allowed = set(scores) if candidates is None else set(candidates)
    skip = set(exclude)
    for sid, value in rank_by_entropy({k: v for k, v in scores.items() if k in allowed and k not in skip}):
        if math.isfinite(value):
            return sid
    return None
