"""The released-code FeCL (docs/losses.md, steps 1-5) as its own loss, for users who want to match those numbers."""

from __future__ import annotations

import math

import torch
from monai.utils import LossReduction
from torch.utils.checkpoint import checkpoint

from dycon_monai.losses.fecl_base import NEG_INF, FeCLBase
from dycon_monai.utils.schedules import fecl_reference_threshold

__all__ = ["FeCLReferenceLoss", "reference_fecl", "reference_rows"]


def reference_rows(
    zc: torch.Tensor,
    zn: torch.Tensor,
    ztn: torch.Tensor | None,
    labels_c: torch.Tensor,
    labels: torch.Tensor,
    col_max: torch.Tensor,
    pos_count_c: torch.Tensor,
    i0: int,
    tau: float,
    gamma: float,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-5 of the released code (docs/losses.md) for anchors ``i0 .. i0 + n``: per-anchor ``l_i``, teacher-term sum and pair count."""
    n = zc.shape[1]
    rows = torch.arange(n, device=zc.device)
    diag = torch.zeros(1, n, zn.shape[1], dtype=torch.bool, device=zc.device)
    diag[0, rows, rows + i0] = True
    same = labels_c.unsqueeze(2) == labels.unsqueeze(1)
    neg = ~same
    pos = same & ~diag
    # step 1: A = z z^T / tau, diagonal set to 0, minus the (detached) column max
    a = (torch.bmm(zc, zn.transpose(1, 2)) / tau).masked_fill(diag, 0.0) - col_max.unsqueeze(1)
    # step 2
    e = torch.exp(a)
    neg_sum = (e * neg).sum(dim=2, keepdim=True)
    p = e / (e + neg_sum + 1e-18)
    l_mat = -torch.log(p + 1e-18)
    # step 3: focal factor on same-class pairs, with gradient (base clamped so 0 ** (gamma - 1) never appears)
    if gamma != 0:
        base = torch.where(pos, 1.0 - p, torch.ones_like(p)).clamp_min(1e-12)
        l_mat = l_mat * base.pow(gamma)
    l_mat = torch.where(pos, l_mat, torch.zeros_like(l_mat))
    # step 4 (per anchor; the mean over all B*N anchors is taken by the caller)
    l_rows = l_mat.sum(dim=2) / (pos_count_c + 1e-18)
    # step 5: teacher term pieces
    if ztn is None:
        zeros = l_rows.new_zeros(l_rows.shape)
        return l_rows, zeros, zeros
    c_st = torch.bmm(zc, ztn.transpose(1, 2))
    valid = neg & (c_st.detach() > threshold)
    term = -torch.log((1.0 - c_st).clamp_min(0.0) + 1e-18)
    term = torch.where(valid, term, torch.zeros_like(term))
    return l_rows, term.sum(dim=2), valid.sum(dim=2).to(l_rows.dtype)


def reference_fecl(
    zn: torch.Tensor,
    ztn: torch.Tensor | None,
    labels: torch.Tensor,
    pos_count: torch.Tensor,
    *,
    temperature: float,
    gamma: float,
    threshold: float,
    lambda_cross: float,
    chunk_size: int,
    reduction: str,
) -> torch.Tensor:
    """The released code's FeCL (steps 1-5 of docs/losses.md) on normalised embeddings, one chunk of anchors at a time.

    Each chunk runs under ``torch.utils.checkpoint`` when a gradient is needed (its focal factor carries gradient, so
    the chunk is recomputed in the backward instead of kept).
    """
    bsz, n_all, _ = zn.shape
    tau, chunk = temperature, chunk_size
    # step 1's detached column maxima of A (diagonal set to 0), one chunk of rows at a time
    with torch.no_grad():
        col_max = zn.new_full((bsz, n_all), NEG_INF)
        for i0 in range(0, n_all, chunk):
            i1 = min(n_all, i0 + chunk)
            rows = torch.arange(i1 - i0, device=zn.device)
            a = torch.bmm(zn[:, i0:i1], zn.transpose(1, 2)).div_(tau)
            a[:, rows, rows + i0] = 0.0
            col_max = torch.maximum(col_max, a.amax(dim=1))
            del a
    pieces = []
    for i0 in range(0, n_all, chunk):
        i1 = min(n_all, i0 + chunk)
        args = (
            zn[:, i0:i1],
            zn,
            ztn,
            labels[:, i0:i1],
            labels,
            col_max,
            pos_count[:, i0:i1].to(zn.dtype),
            i0,
            tau,
            gamma,
            threshold,
        )
        if torch.is_grad_enabled() and zn.requires_grad:
            pieces.append(checkpoint(reference_rows, *args, use_reentrant=False))
        else:
            pieces.append(reference_rows(*args))
    l_rows = torch.cat([p[0] for p in pieces], dim=1)
    t_sum = torch.cat([p[1] for p in pieces], dim=1)
    t_cnt = torch.cat([p[2] for p in pieces], dim=1)
    count = t_cnt.sum()
    scale = lambda_cross / count if (ztn is not None and float(count) > 0) else None
    if reduction == LossReduction.NONE.value:
        return l_rows + scale * t_sum if scale is not None else l_rows
    total = l_rows.mean() if reduction == LossReduction.MEAN.value else l_rows.sum()
    if scale is not None:
        total = total + scale * t_sum.sum()
    return total


class FeCLReferenceLoss(FeCLBase):
    """FeCL as the DyCON authors' released code computes it (steps 1-5 of docs/losses.md), beside the paper's
    :class:`~dycon_monai.losses.FeCLLoss`.

    Per sample, with ``A = z z^T / tau`` (diagonal 0) minus its detached column maxima, ``p_ik = exp(A_ik) / (exp(A_ik)
    + sum_{q in N(i)} exp(A_iq))``, a focal factor ``(1 - p_ik)^gamma`` that carries gradient, and ``l_i`` the mean of
    ``-(1 - p_ik)^gamma log p_ik`` over the positives ``P(i)``. Its teacher term is ``lambda_cross`` times the mean of
    ``-log(1 - z_i . zt_l + 1e-18)`` over other-class pairs with ``z_i . zt_l > thr(epoch)``,
    ``thr(t) = 0.3 + 0.2 * exp(-5 (1 - min(t, R) / R)^2)`` (``epoch`` set by a ``FeCLEpochHandler``).

    Reduction: ``"mean"`` / ``"sum"`` of ``l_i`` over all anchors, plus the teacher term (a mean over pairs);
    ``"none"``: the ``(B, N)`` map in which each anchor carries its share of the teacher term, so
    ``none.sum() == sum``. There is no entropy weighting (the released code computes none into the loss): a
    ``patch_entropy`` is refused. Their scripts use ``gamma=2.0``. Each chunk of anchors runs under
    ``torch.utils.checkpoint`` when a gradient is needed. Inputs, map inputs and :meth:`from_predictions` are those of
    :class:`~dycon_monai.losses.fecl_base.FeCLBase`.

    Args:
        temperature: ``tau`` (0.6).
        gamma: focal exponent (2.0 in the released scripts).
        lambda_cross: weight of the teacher term.
        ramp_length: ``R`` of ``thr(t)`` (1500 in the released code).
        chunk_size, reduction, grid_size, label_threshold: as in :class:`~dycon_monai.losses.fecl_base.FeCLBase`.
    """

    def __init__(
        self,
        temperature: float = 0.6,
        gamma: float = 2.0,
        lambda_cross: float = 1.0,
        ramp_length: float = 1500,
        chunk_size: int = 256,
        reduction: LossReduction | str = LossReduction.MEAN,
        grid_size: int = 16,
        label_threshold: float = 0.5,
    ) -> None:
        super().__init__(temperature, gamma, chunk_size, reduction, grid_size, label_threshold)
        if not (math.isfinite(lambda_cross) and lambda_cross >= 0):
            raise ValueError(f"FeCLReferenceLoss lambda_cross must be a finite number >= 0, got {lambda_cross}.")
        if not (math.isfinite(ramp_length) and ramp_length >= 0):
            raise ValueError(f"FeCLReferenceLoss ramp_length must be a finite number >= 0, got {ramp_length}.")
        self.lambda_cross = float(lambda_cross)
        self.ramp_length = float(ramp_length)

    @property
    def uses_teacher(self) -> bool:
        """Always: the teacher term reads the teacher embeddings."""
        return True

    def _loss(
        self,
        zn: torch.Tensor,
        ztn: torch.Tensor | None,
        labels: torch.Tensor,
        pos_count: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> torch.Tensor:
        if entropy is not None:
            raise ValueError(
                "FeCLReferenceLoss has no entropy weighting (the released code does not use its gambling_uncertainty "
                "argument in the loss); pass patch_entropy=None, or use FeCLLoss for the entropy-aware positives of "
                "Eq. 4."
            )
        return reference_fecl(
            zn,
            ztn,
            labels,
            pos_count,
            temperature=self.temperature,
            gamma=self.gamma,
            threshold=fecl_reference_threshold(self.epoch, self.ramp_length),
            lambda_cross=self.lambda_cross,
            chunk_size=self.chunk_size,
            reduction=self.reduction,
        )
