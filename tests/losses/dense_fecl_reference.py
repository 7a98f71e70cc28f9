"""Deliberately naive dense FeCL (paper variant), the yardstick for the chunked production loss.

Written straight from SPEC.md with full ``(B, N, N)`` tensors, linear-space exponentials and autograd for the
gradient; no chunking, no log-space tricks, no hand-written backward. It shares no code with
``dycon_monai.losses.fecl``. ``benchmarks/bench_losses.py`` imports it by path as the dense baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dense_paper_fecl"]


def dense_paper_fecl(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    teacher_embeddings: torch.Tensor | None = None,
    patch_entropy: torch.Tensor | None = None,
    *,
    temperature: float = 0.6,
    gamma: float = 0.5,
    hard_negatives: str = "denominator",
    top_k: int = 16,
    use_entropy: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Paper FeCL (SPEC "FeCL" section) with dense ``(B, N, N)`` matrices.

    Args:
        embeddings: ``(B, N, D)`` student patch embeddings.
        labels: ``(B, N)`` integer patch classes.
        teacher_embeddings: optional ``(B, N, D)`` teacher patch embeddings (no gradient).
        patch_entropy: optional ``(B, N)`` normalised entropies in ``[0, 1]``.
        temperature, gamma, hard_negatives, top_k, use_entropy: as in ``FeCLLoss``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    z = F.normalize(embeddings, dim=2)
    bsz, n, _ = z.shape
    cos = z @ z.transpose(1, 2)
    sim = cos / temperature
    s01 = ((cos + 1.0) / 2.0).clamp(0.0, 1.0).detach()

    same = labels[:, :, None] == labels[:, None, :]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)[None]
    pos = same & ~eye
    neg = ~same

    f_pos = (1.0 - s01) ** gamma
    if use_entropy and patch_entropy is not None:
        f_pos = f_pos * torch.exp(patch_entropy.detach())[:, None, :]
    f_neg = s01**gamma

    exp_sim = torch.exp(sim)
    neg_sum = (f_neg * exp_sim * neg).sum(dim=2)

    hard = torch.zeros(bsz, n, dtype=z.dtype, device=z.device)
    zt = F.normalize(teacher_embeddings.detach(), dim=2) if teacher_embeddings is not None else None
    if hard_negatives == "denominator" and zt is not None:
        t_sim = (z @ zt.transpose(1, 2)) / temperature
        t_sim = t_sim.masked_fill(~neg, float("-inf"))
        values, _ = t_sim.topk(min(top_k, n), dim=2)
        k_i = neg.sum(dim=2).clamp(max=top_k)
        hard = torch.where(k_i > 0, torch.exp(values).sum(dim=2) / k_i.clamp_min(1), torch.zeros_like(hard))

    denom = exp_sim + neg_sum[:, :, None] + hard[:, :, None]
    pair_loss = -torch.log(exp_sim / denom)
    n_pos = pos.sum(dim=2)
    per_anchor = (f_pos * pair_loss * pos).sum(dim=2) / n_pos.clamp_min(1)

    if reduction == "none":
        return per_anchor
    if reduction == "sum":
        total = per_anchor.sum()
    else:
        qualifies = n_pos > 0
        sample_means = []
        for b in range(bsz):
            if qualifies[b].any():
                sample_means.append(per_anchor[b][qualifies[b]].mean())
        total = torch.stack(sample_means).mean() if sample_means else z.sum() * 0.0
    return total
