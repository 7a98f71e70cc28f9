"""Mean voxel entropy and the active-learning ranking, on synthetic studies of known difficulty (no MONAI Label)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from dycon_monai.monailabel import (
    mean_voxel_entropy,
    most_uncertain,
    rank_by_entropy,
    study_entropy,
    voxel_entropy,
)


class IntensityThresholdNet(torch.nn.Module):
    """Two-class 'segmenter' whose confidence is known: logits = +-gain * (x - 0.5).

    Voxels far from the 0.5 threshold are predicted confidently; voxels near it are ambiguous. A study whose
    foreground/background contrast is low therefore has a higher mean voxel entropy, by construction.
    """

    def __init__(self, gain: float = 8.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-gain, gain]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([gain * 0.5, -gain * 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _study(contrast: float, shape: tuple[int, int, int] = (24, 24, 16), seed: int = 0) -> torch.Tensor:
    """A sphere 'lesion' at 0.5 + contrast/2 on a background at 0.5 - contrast/2, light noise; (1, *shape)."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    centre = [s / 2 for s in shape]
    r = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2).sqrt()
    img = torch.where(r < min(shape) / 3, 0.5 + contrast / 2, 0.5 - contrast / 2)
    img = img + 0.01 * torch.randn(shape, generator=g)
    return img[None]


def test_voxel_entropy_extremes_and_normalisation():
    uniform = torch.zeros(1, 3, 2, 2, 2)
    assert torch.allclose(voxel_entropy(uniform), torch.ones(1, 2, 2, 2))
    assert torch.allclose(voxel_entropy(uniform, normalize=False), torch.full((1, 2, 2, 2), math.log(3)))
    confident = torch.zeros(1, 2, 2, 2, 2)
    confident[:, 1] = 50.0
    assert float(voxel_entropy(confident).max()) < 1e-6
    # probabilities given directly
    p = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1, 1)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert float(voxel_entropy(p, activation="none")) == pytest.approx(expected, abs=1e-6)


def test_sigmoid_single_channel_matches_two_class_softmax():
    x = torch.randn(2, 1, 3, 4, 5)
    two = torch.cat([torch.zeros_like(x), x], dim=1)
    assert torch.allclose(voxel_entropy(x, activation="sigmoid"), voxel_entropy(two), atol=1e-6)


def test_invalid_inputs_name_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        voxel_entropy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least 2 channels"):
        voxel_entropy(torch.zeros(1, 1, 2, 2, 2))
    with pytest.raises(ValueError, match="sum to 1"):
        voxel_entropy(torch.full((1, 2, 2, 2, 2), 0.9), activation="none")
    with pytest.raises(ValueError, match="activation"):
        voxel_entropy(torch.zeros(1, 2, 2, 2, 2), activation="relu")
    with pytest.raises(ValueError, match="top_fraction"):
        mean_voxel_entropy(torch.zeros(1, 2, 2, 2, 2), top_fraction=0.0)
    with pytest.raises(ValueError, match="mask"):
        mean_voxel_entropy(torch.zeros(1, 2, 2, 2, 2), mask=torch.ones(1, 3, 3, 3))


def test_mean_voxel_entropy_mask_and_top_fraction():
    logits = torch.zeros(1, 2, 4, 4, 4)
    logits[:, 1, :2] = 30.0  # half of the voxels confident, half uniform
    assert float(mean_voxel_entropy(logits)) == pytest.approx(0.5, abs=1e-4)
    assert float(mean_voxel_entropy(logits, top_fraction=0.5)) == pytest.approx(1.0, abs=1e-4)
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    assert float(mean_voxel_entropy(logits, mask=mask)) == pytest.approx(0.0, abs=1e-4)
    assert float(mean_voxel_entropy(logits, mask=torch.zeros(1, 1, 4, 4, 4))) == 0.0


def test_ranking_follows_known_difficulty():
    """Lower contrast = harder study = higher score; the most uncertain study is the hardest one."""
    net = IntensityThresholdNet().eval()
    contrasts = {"easy": 0.9, "medium": 0.5, "hard": 0.2, "hardest": 0.05}
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=1, overlap=0.25)
    scores = {
        sid: study_entropy(net, _study(c, seed=i), inferer=inferer) for i, (sid, c) in enumerate(contrasts.items())
    }
    ranking = [sid for sid, _ in rank_by_entropy(scores)]
    assert ranking == ["hardest", "hard", "medium", "easy"], scores
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert most_uncertain(scores) == "hardest"
    # labeled studies are not candidates; a study just handed out can be excluded
    assert most_uncertain(scores, candidates=["easy", "medium", "hard"]) == "hard"
    assert most_uncertain(scores, exclude=["hardest"]) == "hard"
    assert most_uncertain(scores, candidates=["unscored"]) is None
    # without an inferer the network is called directly on the whole study: same ordering
    direct = {sid: study_entropy(net, _study(c, seed=i)) for i, (sid, c) in enumerate(contrasts.items())}
    assert [sid for sid, _ in rank_by_entropy(direct)] == ranking


def test_ranking_after_a_few_training_iterations():
    """A tiny network trained for a few steps on clean studies is least sure on the noisiest study."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for step in range(20):
        img = _study(0.8, shape=(16, 16, 12), seed=100 + step)
        label = (img[0] > 0.5).long()[None]
        loss = torch.nn.functional.cross_entropy(net(img[None]), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    g = torch.Generator().manual_seed(7)
    clean = _study(0.8, shape=(16, 16, 12), seed=1)
    noisy = clean + 0.4 * torch.randn(clean.shape, generator=g)
    scores = {"clean": study_entropy(net, clean), "noisy": study_entropy(net, noisy)}
    assert most_uncertain(scores) == "noisy", scores


def test_rank_by_entropy_is_deterministic_and_puts_nan_last():
    scores = {"b": 0.5, "a": 0.5, "c": float("nan"), "d": 0.9}
    ranked = rank_by_entropy(scores)
    assert [sid for sid, _ in ranked] == ["d", "a", "b", "c"]
    assert math.isnan(ranked[-1][1])
    assert rank_by_entropy([("x", 1), ("y", 2)]) == [("y", 2.0), ("x", 1.0)]
    with pytest.raises(TypeError, match="number"):
        rank_by_entropy({"x": "high"})


def test_import_does_not_need_monailabel():
    code = (
        "import sys, dycon_monai, dycon_monai.monailabel as m; "
        "assert 'monailabel' not in sys.modules, 'monailabel imported'; "
        "assert callable(m.mean_voxel_entropy)\n"
        "try:\n    import monailabel\nexcept ImportError:\n"
        "    try:\n        m.DyCONEntropyScoring\n    except ImportError as e:\n"
        "        assert 'make monailabel-env' in str(e)\n    else:\n        raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
