"""UnCLLoss: paper Eq. 1 by hand, the beta=0 limit, the Eq. 2 gradient, teacher isolation, numerics, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dycon_monai.losses import UnCLLoss, uncl_voxel_terms


def _softmax_list(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    s = sum(e)
    return [v / s for v in e]


def test_value_matches_hand_computation():
    # B=1, C=2, two voxels; everything below is plain Python arithmetic on Eq. 1
    s = torch.tensor([[[1.0, -0.5], [0.0, 2.0]]])  # (1, 2, 2): class dim 1, spatial 2
    t = torch.tensor([[[0.2, 0.3], [0.1, -1.0]]])
    beta = 0.7
    total = 0.0
    for v in range(2):
        ps = _softmax_list([s[0, 0, v].item(), s[0, 1, v].item()])
        pt = _softmax_list([t[0, 0, v].item(), t[0, 1, v].item()])
        hs = -sum(p * math.log(p) for p in ps)
        ht = -sum(p * math.log(p) for p in pt)
        d = sum((a - b) ** 2 for a, b in zip(ps, pt))
        total += d / (math.exp(beta * hs) + math.exp(beta * ht)) + beta * (hs + ht)
    expected = total / 2
    got = UnCLLoss(beta=beta)(s, t)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_kl_distance_matches_hand_computation():
    s = torch.tensor([[[1.0], [-1.0], [0.5]]])  # (1, 3, 1)
    t = torch.tensor([[[0.0], [2.0], [0.1]]])
    ps = _softmax_list([1.0, -1.0, 0.5])
    pt = _softmax_list([0.0, 2.0, 0.1])
    hs = -sum(p * math.log(p) for p in ps)
    ht = -sum(p * math.log(p) for p in pt)
    kl = sum(b * (math.log(b) - math.log(a)) for a, b in zip(ps, pt))
    expected = kl / (math.exp(hs) + math.exp(ht)) + (hs + ht)
    assert UnCLLoss(beta=1.0, distance="kl")(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_beta_zero_is_half_the_class_summed_mse():
    s = torch.randn(2, 3, 4, 5, 6)
    t = torch.randn(2, 3, 4, 5, 6)
    ps, pt = s.softmax(1), t.softmax(1)
    class_summed_mse = (ps - pt).pow(2).sum(1).mean()
    assert UnCLLoss(beta=0.0)(s, t).item() == pytest.approx(0.5 * class_summed_mse.item(), rel=1e-6)
    # the same through torch's own MSE (mean over C as well, hence the factor C)
    assert UnCLLoss(beta=0.0)(s, t).item() == pytest.approx(0.5 * 3 * F.mse_loss(ps, pt).item(), rel=1e-6)


def _eq2_gradient(ps: torch.Tensor, pt: torch.Tensor, beta: float) -> torch.Tensor:
    """Paper Eq. 2 / supplementary Eq. 10 per voxel, with dH/dp_c = -(log p_c + 1), divided by the voxel count."""
    dh = -(torch.log(ps) + 1.0)
    h_s = -(ps * ps.log()).sum(1, keepdim=True)
    h_t = -(pt * pt.log()).sum(1, keepdim=True)
    w = torch.exp(beta * h_s) + torch.exp(beta * h_t)
    d = (ps - pt).pow(2).sum(1, keepdim=True)
    per_voxel = 2 * (ps - pt) / w - d * beta * dh * torch.exp(beta * h_s) / w**2 + beta * dh
    n_voxels = ps.numel() // ps.shape[1]
    return per_voxel / n_voxels


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0, 2.5])
def test_autograd_gradient_wrt_student_probabilities_equals_eq2(beta):
    torch.manual_seed(1)
    ps = torch.randn(2, 3, 4, 5, dtype=torch.float64).softmax(1).requires_grad_()
    pt = torch.randn(2, 3, 4, 5, dtype=torch.float64).softmax(1)
    loss = uncl_voxel_terms(ps, torch.log(ps), pt, torch.log(pt), beta).mean()
    (grad,) = torch.autograd.grad(loss, ps)
    torch.testing.assert_close(grad, _eq2_gradient(ps.detach(), pt, beta), rtol=1e-10, atol=1e-12)


def test_logit_gradient_is_eq2_through_the_softmax_jacobian():
    torch.manual_seed(2)
    s = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, dtype=torch.float64)
    beta = 0.8
    UnCLLoss(beta=beta)(s, t).backward()
    ps, pt = s.detach().softmax(1), t.softmax(1)
    g = _eq2_gradient(ps, pt, beta)
    expected = ps * (g - (ps * g).sum(1, keepdim=True))  # softmax Jacobian-vector product
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("distance", ["mse", "kl"])
@pytest.mark.parametrize("beta", [0.0, 0.6, 2.0])
def test_map_gradient_matches_the_voxel_terms_and_gradcheck(distance, beta):
    torch.manual_seed(4)
    s = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    upstream = torch.randn(2, 4, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad(UnCLLoss(beta=beta, distance=distance, reduction="none")(s, t), s, upstream)
    log_ps, log_pt = torch.log_softmax(s, 1), torch.log_softmax(t, 1)
    per_voxel = uncl_voxel_terms(log_ps.exp(), log_ps, log_pt.exp(), log_pt, beta, distance)
    (expected,) = torch.autograd.grad(per_voxel, s, upstream)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    small = s.detach()[:1, :, :2, :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: UnCLLoss(beta=beta, distance=distance)(x, t[:1, :, :2, :2]), (small,))


def test_no_gradient_reaches_the_teacher():
    s = torch.randn(2, 2, 3, 3, 3, requires_grad=True)
    t = torch.randn(2, 2, 3, 3, 3, requires_grad=True)
    UnCLLoss()(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_finite_for_huge_logits():
    s = torch.tensor([[[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]], requires_grad=True)
    t = torch.tensor([[[-1e4, 1e4, 3.0], [1e4, -1e4, -3.0]]])
    for distance in ("mse", "kl"):
        s.grad = None
        loss = UnCLLoss(beta=1.0, distance=distance)(s, t)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_finite_and_close_to_float32(dtype):
    torch.manual_seed(3)
    s32 = torch.randn(2, 2, 8, 8, 4) * 5
    t32 = torch.randn(2, 2, 8, 8, 4) * 5
    s = s32.to(dtype).requires_grad_()
    loss = UnCLLoss(beta=1.0)(s, t32.to(dtype))
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(s.grad.float()).all()
    ref = UnCLLoss(beta=1.0)(s.detach().float(), t32.to(dtype).float())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    big = ((torch.rand(1, 2, 4, 4) * 2 - 1) * 6e4).to(dtype)  # near the float16 range limit (65504)
    assert torch.isfinite(UnCLLoss()(big, -big))


def test_float16_gradient_survives_loss_scaling():
    # the per-voxel gradient of a mean over many voxels is below float16's range; an AMP loss scale must rescue it
    torch.manual_seed(5)
    s32 = torch.randn(1, 2, 32, 32, 16)
    t32 = torch.randn(1, 2, 32, 32, 16)
    s = s32.half().requires_grad_()
    (UnCLLoss()(s, t32.half()) * 65536.0).backward()
    x = s32.half().float().requires_grad_()
    (UnCLLoss()(x, t32.half().float()) * 65536.0).backward()
    torch.testing.assert_close(s.grad.float(), x.grad, rtol=2e-3, atol=1e-3)
    assert (s.grad != 0).float().mean() > 0.99


def test_reductions_and_per_call_beta():
    s = torch.randn(2, 2, 3, 4)
    t = torch.randn(2, 2, 3, 4)
    per_voxel = UnCLLoss(beta=0.5, reduction="none")(s, t)
    assert per_voxel.shape == (2, 3, 4)
    assert UnCLLoss(beta=0.5, reduction="sum")(s, t).item() == pytest.approx(per_voxel.sum().item(), rel=1e-6)
    assert UnCLLoss(beta=0.5)(s, t).item() == pytest.approx(per_voxel.mean().item(), rel=1e-6)
    loss = UnCLLoss(beta=3.0)
    assert loss(s, t, beta=0.5).item() == pytest.approx(per_voxel.mean().item(), rel=1e-6)
    loss.beta = 0.5  # what a schedule handler does
    assert loss(s, t).item() == pytest.approx(per_voxel.mean().item(), rel=1e-6)
    assert loss(s, t, beta=torch.tensor(0.5)).item() == pytest.approx(per_voxel.mean().item(), rel=1e-6)


def test_no_grad_mode_gives_the_same_value():
    s = torch.randn(2, 2, 3, 4, requires_grad=True)
    t = torch.randn(2, 2, 3, 4)
    with torch.no_grad():
        value = UnCLLoss()(s, t)
    assert not value.requires_grad
    assert value.item() == pytest.approx(UnCLLoss()(s, t).item(), rel=1e-7)


def test_forward_probs_matches_logits():
    s = torch.randn(1, 3, 5, 5)
    t = torch.randn(1, 3, 5, 5)
    loss = UnCLLoss(beta=0.9)
    assert loss.forward_probs(s.softmax(1), t.softmax(1)).item() == pytest.approx(loss(s, t).item(), rel=1e-5)


@pytest.mark.parametrize(
    "student_shape, teacher_shape, dtype, match",
    [
        ((2, 2), (2, 2), torch.float32, r"shape \(B, C, \*spatial\).*got shape \(2, 2\)"),
        ((2, 1, 4, 4), (2, 1, 4, 4), torch.float32, r"at least 2 channels.*\(2, 1, 4, 4\)"),
        ((2, 2, 4, 4), (2, 2, 4, 5), torch.float32, r"same shape.*student \(2, 2, 4, 4\) and teacher \(2, 2, 4, 5\)"),
        ((2, 3, 4, 4), (2, 2, 4, 4), torch.float32, r"same shape.*\(2, 3, 4, 4\).*\(2, 2, 4, 4\)"),
        ((2, 2, 4, 4), (2, 2, 4, 4), torch.int64, r"floating-point student logits, got dtype torch.int64"),
    ],
    ids=["rank", "channels", "spatial-mismatch", "channel-mismatch", "dtype"],
)
def test_bad_inputs_raise_clear_errors(student_shape, teacher_shape, dtype, match):
    s = torch.zeros(student_shape, dtype=dtype)
    t = torch.zeros(teacher_shape, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        UnCLLoss()(s, t)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="distance must be one of"):
        UnCLLoss(distance="l1")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got beta=-1.0"):
        UnCLLoss(beta=-1.0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got beta=nan"):
        UnCLLoss()(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), beta=float("nan"))
    with pytest.raises(ValueError):
        UnCLLoss(reduction="median")
