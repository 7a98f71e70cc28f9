"""FeCLReferenceLoss(): checked against a direct, per-sample transcription of SPEC reference steps 1-5."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dycon_monai.losses import FeCLLoss, FeCLReferenceLoss


def transcribed_reference(emb, labels, teacher, tau, gamma, lambda_cross, epoch, ramp_length=1500.0):
    """SPEC "variant=reference", one sample at a time, one step per block, dense N x N."""
    thr = 0.3 + 0.2 * math.exp(-5.0 * (1.0 - min(epoch, ramp_length) / ramp_length) ** 2)
    anchor_losses, teacher_pairs = [], []
    for b in range(emb.shape[0]):
        z = F.normalize(emb[b], dim=1)
        m = labels[b]
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool)
        # 1. A = z z^T / tau, diagonal set to 0, minus the detached maximum of each column
        a = z @ z.T / tau
        a = torch.where(eye, torch.zeros_like(a), a)
        a = a - a.max(dim=0, keepdim=True).values.detach()
        # 2. E, neg_i, p_ij, Lmat on same-class off-diagonal pairs
        e = torch.exp(a)
        other = m[:, None] != m[None, :]
        neg = (e * other).sum(dim=1)
        p = e / (e + neg[:, None] + 1e-18)
        keep = (m[:, None] == m[None, :]) & ~eye
        l_mat = -torch.log(p + 1e-18) * keep
        # 3. focal factor (1 - p)^gamma, not detached
        l_mat = l_mat * (1.0 - p) ** gamma
        # 4. per-anchor normalisation by (same-class count - 1 + 1e-18)
        count = (m[:, None] == m[None, :]).sum(dim=1)
        anchor_losses.append(l_mat.sum(dim=1) / (count - 1 + 1e-18))
        # 5. teacher pairs of other classes above the threshold
        if teacher is not None:
            c = z @ F.normalize(teacher[b], dim=1).T
            sel = other & (c > thr)
            teacher_pairs.append(-torch.log(1.0 - c[sel] + 1e-18))
    loss = torch.cat(anchor_losses).mean()
    if teacher is not None:
        pairs = torch.cat(teacher_pairs)
        if pairs.numel():
            loss = loss + lambda_cross * pairs.mean()
    return loss


def _inputs(b=2, n=40, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    teacher = emb + 0.7 * torch.randn(b, n, d, generator=g, dtype=torch.float64)
    labels = (torch.rand(b, n, generator=g) < 0.25).long()
    labels[:, :2] = torch.tensor([0, 1])
    return emb, labels, teacher


@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0])
@pytest.mark.parametrize("with_teacher", [True, False])
@pytest.mark.parametrize("epoch, chunk_size", [(0, 7), (1500, 16), (400, 64)])
def test_reference_matches_transcription(gamma, with_teacher, epoch, chunk_size):
    emb, labels, teacher = _inputs()
    teacher = teacher if with_teacher else None
    loss = FeCLReferenceLoss(temperature=0.6, gamma=gamma, chunk_size=chunk_size, lambda_cross=0.7)
    loss.epoch = epoch
    x1 = emb.clone().requires_grad_()
    got = loss(x1, labels, teacher)
    got.backward()
    x2 = emb.clone().requires_grad_()
    ref = transcribed_reference(x2, labels, teacher, 0.6, gamma, 0.7, epoch)
    ref.backward()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-8, atol=1e-12)


def test_reference_teacher_term_is_active_and_grows_with_lambda():
    emb, labels, teacher = _inputs(seed=1)
    base = FeCLReferenceLoss(lambda_cross=0.0)(emb, labels, teacher)
    with_term = FeCLReferenceLoss(lambda_cross=1.0)(emb, labels, teacher)
    assert with_term.item() > base.item()
    assert base.item() == pytest.approx(FeCLReferenceLoss()(emb, labels).item(), rel=1e-12)


def test_reference_reductions_and_entropy_refused():
    emb, labels, teacher = _inputs(seed=2)
    per = FeCLReferenceLoss(reduction="none", chunk_size=9)(emb, labels, teacher)
    total = FeCLReferenceLoss(reduction="sum", chunk_size=9)(emb, labels, teacher)
    assert per.shape == labels.shape
    assert per.sum().item() == pytest.approx(total.item(), rel=1e-10)
    mean = FeCLReferenceLoss()(emb, labels)
    assert torch.isfinite(mean)
    with pytest.raises(ValueError, match="patch_entropy=None"):
        FeCLReferenceLoss()(emb, labels, patch_entropy=torch.rand(2, 40))
    assert FeCLReferenceLoss().uses_teacher and not FeCLReferenceLoss().uses_entropy
    assert not FeCLLoss(hard_negatives="none").uses_teacher and FeCLLoss().uses_entropy
    x = emb.clone().requires_grad_()
    FeCLReferenceLoss(reduction="none", chunk_size=9)(x, labels, teacher).sum().backward()
    y = emb.clone().requires_grad_()
    FeCLReferenceLoss(reduction="sum", chunk_size=9)(y, labels, teacher).backward()
    torch.testing.assert_close(x.grad, y.grad)


def test_reference_differs_from_paper_variant():
    emb, labels, teacher = _inputs(seed=3)
    ref = FeCLReferenceLoss(gamma=2.0)(emb, labels, teacher)
    paper = FeCLLoss(gamma=2.0)(emb, labels, teacher)
    assert not math.isclose(ref.item(), paper.item(), rel_tol=1e-3)
