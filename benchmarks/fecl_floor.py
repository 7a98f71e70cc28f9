"""FeCL's floor: the work no implementation of the paper's loss (DyCON Eq. 3-6) can skip at given sizes.

Per chunk of ``chunk`` anchors: the student similarities ``z z^T`` and their exponentials, the teacher similarities
``z zt^T`` (needed for the top-K hard negatives) and their exponentials, and the two gradient products ``G z`` (to
the anchors) and ``G^T z`` (to the other patches), with the exponentials standing in for ``G``. No masks, no top-K,
no log-sum-exp, no focal weights: what is left when everything but the matrix products and exponentials is free.

:class:`FloorFeCLLoss` is a benchmark device, not a loss: a :class:`~dycon_monai.losses.FeCLLoss` (same inputs, same
patch preparation) whose value is 0 and whose gradient is the floor's ``G z + G^T z``, so a training step with it
costs what DyCON's step would cost if FeCL ran at its floor (``bench_train_step.py --modes dycon_floor``).
Used by ``bench_losses.py`` (the floor row) and ``bench_train_step.py``, which load this file by its path (the
benchmarks are scripts, not a package).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dycon_monai.losses import FeCLLoss

__all__ = ["FloorFeCLLoss", "floor_call", "floor_products"]


@torch.no_grad()
def floor_products(zn: torch.Tensor, ztn: torch.Tensor | None, chunk: int) -> torch.Tensor:
    """The floor's products on L2-normalised ``(B, N, D)`` embeddings; returns ``G z + G^T z`` as ``(B, N, D)``."""
    grad = torch.zeros_like(zn)
    zn_t = zn.transpose(1, 2)
    zt_t = ztn.transpose(1, 2) if ztn is not None else None
    for i0 in range(0, zn.shape[1], chunk):
        zc = zn[:, i0 : i0 + chunk]
        g = torch.bmm(zc, zn_t).exp_()  # student similarities and their exponentials
        if zt_t is not None:
            torch.bmm(zc, zt_t).exp_()  # teacher similarities for the top-K hard negatives
        grad[:, i0 : i0 + chunk] += torch.bmm(g, zn)  # gradient product for the anchors
        grad.baddbmm_(g.transpose(1, 2), zc)  # gradient product for the other patches
    return grad


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zn, ztn, chunk):  # type: ignore[override]
        ctx.save_for_backward(floor_products(zn, ztn, chunk))
        return zn.new_zeros(())

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None


class FloorFeCLLoss(FeCLLoss):
    """Benchmark only: :class:`FeCLLoss` with its loss replaced by :func:`floor_products` (value 0, floor gradient)."""

    def _loss(self, zn, ztn, labels, pos_count, entropy):  # type: ignore[override]
        return _Floor.apply(zn, ztn if self.uses_teacher else None, self.chunk_size)


def floor_call(emb: torch.Tensor, teacher: torch.Tensor, chunk: int):
    """Zero-argument callable: normalise ``(B, N, D)`` embeddings and run the floor's products once."""

    def call() -> None:
        floor_products(F.normalize(emb, dim=2), F.normalize(teacher, dim=2), chunk)

    return call
