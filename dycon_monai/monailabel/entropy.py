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

from dycon_monai.evaluation.entropy import voxel_entropy

__all__ = [
    "voxel_entropy",
    "mean_voxel_entropy",
    "study_entropy",
    "rank_by_entropy",
    "most_uncertain",
]


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
