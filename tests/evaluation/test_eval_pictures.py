from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dycon_monai.evaluation import plot_training_curves, read_scalar_logs, save_overlay, select_slices
from dycon_monai.evaluation.pictures import FN_COLOR, FP_COLOR, TP_COLOR


def _volume():
    shape = (32, 28, 20)
    label = np.zeros(shape, dtype=bool)
    label[8:14, 8:14, 5:9] = True  # lesion A (partly found)
    label[20:23, 18:21, 12:14] = True  # lesion B (missed)
    pred = np.zeros(shape, dtype=bool)
    pred[9:15, 8:14, 5:9] = True
    pred[3:5, 20:23, 6:8] = True  # false positive
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, shape).astype(np.float32) + 80 * label
    return image, label, pred


def test_select_slices_prefers_lesion_load():
    _, label, pred = _volume()
    assert select_slices(label, pred, n_slices=1) == [5]  # first of the four largest (tie -> lowest index)
    picked = select_slices(label, pred, n_slices=3)
    assert len(picked) == 3 and picked == sorted(picked)
    assert all(label[:, :, k].any() for k in picked)
    empty = np.zeros_like(label)
    assert len(select_slices(empty, empty, n_slices=3)) == 3


def _close(rgb, color, tol=0.25):
    return np.all(np.abs(rgb[..., :3] - np.asarray(color)) < tol, axis=-1)


def test_save_overlay_writes_a_png_with_tp_fp_fn_colours(tmp_path):
    import matplotlib.image as mpimg

    image, label, pred = _volume()
    entropy = torch.rand((1,) + image.shape)
    out = save_overlay(
        torch.from_numpy(image)[None], label, pred, tmp_path / "case.png", entropy=entropy, n_slices=3, alpha=1.0
    )
    assert out == tmp_path / "case.png" and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"
    rgb = mpimg.imread(out)
    assert rgb.shape[1] > rgb.shape[0] * 0.8  # three columns
    for color in (TP_COLOR, FP_COLOR, FN_COLOR):
        assert _close(rgb, color).sum() > 20, color


def test_save_overlay_without_entropy_and_shape_errors(tmp_path):
    image, label, pred = _volume()
    save_overlay(image, label, pred, tmp_path / "two.png", n_slices=2)
    assert (tmp_path / "two.png").is_file()
    with pytest.raises(ValueError, match="share the spatial shape"):
        save_overlay(image[:-1], label, pred, tmp_path / "bad.png")


def test_training_curves_from_tensorboard_and_jsonl(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    for it in range(30):
        writer.add_scalar("train/loss", 1.0 / (it + 1), it)
        writer.add_scalar("train/loss_uncl", 0.5 / (it + 1), it)
        writer.add_scalar("train/beta", 1.0 - it / 30, it)
    for ep in range(3):
        writer.add_scalar("val_mean_dice", 0.2 * (ep + 1), ep)
    writer.close()
    with open(tmp_path / "train_log.jsonl", "w") as f:
        for it in range(5):
            f.write(json.dumps({"iteration": it, "loss_fecl": 0.1 * it}) + "\n")
    (tmp_path / "metrics.csv").write_text("case_id,dice\na,0.5\n")  # per-case table: no step column, ignored

    series = read_scalar_logs(tmp_path)
    assert set(series) == {"train/loss", "train/loss_uncl", "train/beta", "val_mean_dice", "loss_fecl"}
    steps, values = series["val_mean_dice"]
    assert steps.tolist() == [0, 1, 2] and values == pytest.approx([0.2, 0.4, 0.6])

    counts = plot_training_curves(tmp_path, tmp_path / "curves.png")
    assert counts["train/loss"] == 30 and counts["loss_fecl"] == 5
    assert list(counts)[:3] == ["loss_fecl", "train/loss", "train/loss_uncl"]  # losses first
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_training_curves_without_logs_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no scalar logs"):
        plot_training_curves(tmp_path, tmp_path / "curves.png")
