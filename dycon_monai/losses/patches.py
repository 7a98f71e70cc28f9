"""Patch preparation for FeCL: pooling feature maps, labels and entropy onto a ``k^d`` grid of patches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["patch_entropy", "patchify_embeddings", "patchify_labels", "pool_to_grid"]


def pool_to_grid(x: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Adaptive average pooling of ``(B, C, *spatial)`` onto ``grid_size`` per spatial dim (1, 2 or 3 dims).

    The one pooling that defines FeCL's patches: :func:`patchify_embeddings`, :func:`patchify_labels`,
    :func:`patch_entropy` and :class:`~dycon_monai.networks.ProjectionHead` (when asked for pooled embeddings) use it.
    """
    spatial = x.ndim - 2
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if spatial not in pools:
        raise ValueError(f"expected a (B, C, *spatial) tensor with 1-3 spatial dims, got shape {tuple(x.shape)}.")
    return pools[spatial](x, (grid_size,) * spatial)


def _check_grid(grid_size: int, where: str) -> int:
    if isinstance(grid_size, bool) or int(grid_size) != grid_size or grid_size < 1:
        raise ValueError(f"{where}: grid_size must be a positive integer, got {grid_size!r}.")
    return int(grid_size)


def patchify_embeddings(emb_map: torch.Tensor, grid_size: int = 16) -> torch.Tensor:
    """Average an embedding map onto a ``grid_size^d`` grid of patches (paper Sec. 3.2, ``k x k x k`` patches).

    Args:
        emb_map: ``(B, D, *spatial)`` embeddings from the projection head (1-3 spatial dims).
        grid_size: patches per spatial dimension ``k`` (16 in the paper: 4096 patches in 3D).

    Returns:
        ``(B, N, D)`` patch embeddings, ``N = grid_size ** len(spatial)``, NOT L2-normalised (the loss normalises).
        Patch ``n`` is the flattened (C-order) grid index, identical to :func:`patchify_labels` and
        :func:`patch_entropy`.
    """
    grid_size = _check_grid(grid_size, "patchify_embeddings")
    if not isinstance(emb_map, torch.Tensor) or emb_map.ndim not in (3, 4, 5):
        shape = tuple(emb_map.shape) if isinstance(emb_map, torch.Tensor) else type(emb_map).__name__
        raise ValueError(
            f"patchify_embeddings expects emb_map of shape (B, D, *spatial) with 1-3 spatial dims, got {shape}."
        )
    if not emb_map.is_floating_point():
        raise ValueError(f"patchify_embeddings expects a floating emb_map, got dtype {emb_map.dtype}.")
    pooled = pool_to_grid(emb_map, grid_size)
    return pooled.flatten(2).transpose(1, 2)


def patchify_labels(
    label: torch.Tensor, grid_size: int = 16, threshold: float = 0.5, spatial_dims: int = 3
) -> torch.Tensor:
    """Patch class labels on the same grid as :func:`patchify_embeddings` (paper Sec. 3.2, patched masks).

    A single-channel (binary) label is averaged per patch and the patch is foreground (1) if the mean exceeds
    ``threshold``. A multi-channel label ``(B, C, *spatial)`` with ``C > 1`` is read as one-hot / soft class scores:
    each patch gets the argmax of the per-class means.

    Args:
        label: ``(B, 1, *spatial)``, ``(B, *spatial)`` (binary, values in ``[0, 1]``) or ``(B, C, *spatial)`` one-hot.
        grid_size: patches per spatial dimension.
        threshold: foreground threshold on the patch mean (binary labels).
        spatial_dims: number of spatial dims (3 for volumes), used to tell ``(B, *spatial)`` from
            ``(B, C, *spatial)``.

    Returns:
        ``(B, N)`` int64 patch classes.

    Raises:
        ValueError: on a rank that fits neither layout, or binary label values outside ``[0, 1]`` (e.g. BraTS
            labels {0, 1, 2, 4}: map them to binary or one-hot first).
    """
    grid_size = _check_grid(grid_size, "patchify_labels")
    if not isinstance(label, torch.Tensor):
        raise ValueError(f"patchify_labels expects a torch.Tensor label, got {type(label).__name__}.")
    if label.ndim == spatial_dims + 1:
        label = label.unsqueeze(1)
    elif label.ndim != spatial_dims + 2:
        raise ValueError(
            f"patchify_labels expects label of shape (B, 1, *spatial), (B, *spatial) or one-hot (B, C, *spatial) with "
            f"{spatial_dims} spatial dims, got shape {tuple(label.shape)}."
        )
    x = label.detach().float()
    if x.shape[1] == 1:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"patchify_labels expects a binary label with values in [0, 1], got values in [{lo}, {hi}] "
                f"(shape {tuple(label.shape)}); map multi-class labels to binary or one-hot (B, C, *spatial) first."
            )
        pooled = pool_to_grid(x, grid_size)
        return (pooled.flatten(1) > threshold).long()
    pooled = pool_to_grid(x, grid_size)
    return pooled.flatten(2).argmax(dim=1)


@torch.no_grad()
def patch_entropy(
    probs: torch.Tensor, grid_size: int = 16, gambling_temperature: float = 1.0, eps: float = 1e-8
) -> torch.Tensor:
    """Normalised gambling-softmax entropy per patch, ``Hn`` in paper Eq. 4-5.

    Per voxel, ``p_h = softmax(log(p) / T_g + (1 - max_c p))`` (Eq. 5); the added term is the same for every class,
    so ``p_h`` is ``p^(1/T_g)`` renormalised. Its entropy is divided by ``log C`` (values in ``[0, 1]``) and averaged
    over each patch of the ``grid_size^d`` grid.

    Args:
        probs: ``(B, C, *spatial)`` student probabilities (after softmax), ``C >= 2``.
        grid_size: patches per spatial dimension.
        gambling_temperature: ``T_g > 0`` (1.0: plain softmax entropy).
        eps: lower clamp on probabilities before the log.

    Returns:
        ``(B, N)`` detached entropies in ``[0, 1]``, in the patch order of :func:`patchify_embeddings`.
    """
    grid_size = _check_grid(grid_size, "patch_entropy")
    if not isinstance(probs, torch.Tensor) or probs.ndim not in (3, 4, 5):
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"patch_entropy expects probs of shape (B, C, *spatial) with 1-3 spatial dims, got {shape}.")
    if not probs.is_floating_point():
        raise ValueError(f"patch_entropy expects floating probabilities, got dtype {probs.dtype}.")
    if probs.shape[1] < 2:
        raise ValueError(
            f"patch_entropy needs C >= 2 class probabilities (softmax over dim 1), got shape {tuple(probs.shape)}."
        )
    if not gambling_temperature > 0:
        raise ValueError(f"patch_entropy gambling_temperature must be > 0, got {gambling_temperature}.")
    p = probs.float()
    logits = p.clamp_min(eps).log() / gambling_temperature + (1.0 - p.amax(dim=1, keepdim=True))
    log_q = F.log_softmax(logits, dim=1)
    ent = -(log_q.exp() * log_q).sum(dim=1, keepdim=True) / math.log(p.shape[1])
    return pool_to_grid(ent.clamp_(0.0, 1.0), grid_size).flatten(1)
