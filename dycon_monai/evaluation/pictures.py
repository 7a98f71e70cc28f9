"""Pictures: per-case overlays (TP green, FP red, FN blue, entropy beside) and training curves from a run's logs.

All figures are drawn with matplotlib's ``Agg`` backend (no display needed) and saved atomically.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from dycon_monai.evaluation.metrics import as_binary_mask
from dycon_monai.utils.io import atomic_save_figure

__all__ = [
    "TP_COLOR",
    "FP_COLOR",
    "FN_COLOR",
    "select_slices",
    "save_overlay",
    "read_scalar_logs",
    "read_tensorboard_scalars",
    "plot_training_curves",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

TP_COLOR = (0.0, 0.8, 0.0)
FP_COLOR = (1.0, 0.0, 0.0)
FN_COLOR = (0.0, 0.35, 1.0)
_STEP_KEYS = ("iteration", "global_step", "step", "epoch")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.float().numpy()
    return np.asarray(x, dtype=np.float32)


def _spatial_volume(x: ArrayLike, name: str) -> np.ndarray:
    """(*spatial) or (C, *spatial) -> 3D array (first channel)."""
    arr = _to_numpy(x)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected shape (H, W, D) or (C, H, W, D), got {tuple(arr.shape)}.")
    return arr


def select_slices(label: np.ndarray, pred: np.ndarray | None = None, n_slices: int = 3, axis: int = -1) -> list[int]:
    """Indices along ``axis`` of the ``n_slices`` slices with most lesion, kept apart, in increasing order.

    Slices are ranked by true-lesion voxels (by predicted voxels when the label is empty; middle slices when both
    are empty). Picked slices are at least ``extent // n_slices`` apart (``extent``: from the first to the last
    lesion slice) while enough lesion slices exist, so that they show different parts of the lesion load.
    """
    axis = axis % label.ndim
    depth = label.shape[axis]
    n = max(1, min(n_slices, depth))
    other = tuple(i for i in range(label.ndim) if i != axis)
    score = label.sum(axis=other).astype(np.float64)
    if score.sum() == 0 and pred is not None:
        score = pred.sum(axis=other).astype(np.float64)
    if score.sum() == 0:
        return sorted({int(round(v)) for v in np.linspace(depth / (n + 1), depth * n / (n + 1), n)})
    order = np.argsort(-score, kind="stable")
    lesion_slices = np.flatnonzero(score > 0)
    gap = max(1, (int(lesion_slices[-1] - lesion_slices[0]) + 1) // n)
    picked: list[int] = []
    for idx in order:
        if score[idx] <= 0:
            break
        if all(abs(int(idx) - p) >= gap for p in picked):
            picked.append(int(idx))
        if len(picked) == n:
            break
    for idx in order:  # not enough separated lesion slices: fill with the next best
        if len(picked) == n:
            break
        if int(idx) not in picked:
            picked.append(int(idx))
    return sorted(picked)


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def save_overlay(
    image: ArrayLike,
    label: ArrayLike,
    pred: ArrayLike,
    path: str | os.PathLike,
    entropy: ArrayLike | None = None,
    n_slices: int = 3,
    title: str | None = None,
    axis: int = -1,
    alpha: float = 0.6,
    dpi: int = 100,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Save a PNG of the slices with most lesion: image, overlay (TP green, FP red, FN blue) and entropy.

    Each row is one slice along ``axis`` (the last axis: axial for RAS-oriented volumes). Columns: the image, the
    image with the overlay (legend gives the voxel counts of the whole volume), and the entropy map with a
    colour bar when ``entropy`` is given. Slices are drawn transposed with the origin at the bottom, so an
    RAS volume appears in neurological convention (patient right on the right, anterior up).

    Args:
        image: ``(H, W, D)`` or ``(C, H, W, D)`` intensities (the first channel is drawn).
        label: ground truth, any layout accepted by :func:`~dycon_monai.evaluation.metrics.as_binary_mask`.
        pred: prediction, same layouts (discrete).
        path: output PNG path (written atomically).
        entropy: optional ``(H, W, D)`` or ``(1, H, W, D)`` voxel-wise entropy.
        n_slices: number of slices (rows).
        title: figure title (for example the case id and its Dice).
        axis: slicing axis.
        alpha: overlay opacity.
        dpi: resolution.
        spacing: voxel size per axis; sets the in-plane aspect ratio (square pixels when ``None``).

    Returns:
        the written path.
    """
    plt = _pyplot()
    img = _spatial_volume(image, "image")
    lab = as_binary_mask(label, "label", 3)
    prd = as_binary_mask(pred, "pred", 3)
    if not img.shape == lab.shape == prd.shape:
        raise ValueError(
            f"save_overlay: image, label and pred must share the spatial shape, got {img.shape}, {lab.shape}, {prd.shape}."
        )
    ent = None
    if entropy is not None:
        ent = _spatial_volume(entropy, "entropy")
        if ent.shape != img.shape:
            raise ValueError(f"save_overlay: entropy shape {ent.shape} differs from image shape {img.shape}.")
    slices = select_slices(lab, prd, n_slices, axis)
    in_plane = [i for i in range(3) if i != axis % 3]
    aspect = 1.0 if spacing is None else float(spacing[in_plane[1]]) / float(spacing[in_plane[0]])
    vmin, vmax = _window(img)
    tp, fp, fn = lab & prd, prd & ~lab, lab & ~prd
    ncols = 3 if ent is not None else 2
    fig, axes = plt.subplots(len(slices), ncols, figsize=(3.2 * ncols, 3.2 * len(slices)), squeeze=False)
    # normalised entropy (<= 1) keeps the fixed scale [0, 1]; other maps use their own maximum
    e_max = float(np.nanmax(ent)) if ent is not None and ent.size else 1.0
    e_max = 1.0 if e_max <= 1.0 + 1e-6 else e_max
    e_im = None
    for r, k in enumerate(slices):

        def sl(a: np.ndarray, k: int = k) -> np.ndarray:
            return np.take(a, k, axis=axis).T

        axes[r, 0].imshow(sl(img), cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect)
        axes[r, 0].set_ylabel(f"slice {k}")
        axes[r, 1].imshow(sl(img), cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect)
        rgba = np.zeros(sl(img).shape + (4,), dtype=np.float32)
        for mask, color in ((tp, TP_COLOR), (fp, FP_COLOR), (fn, FN_COLOR)):
            m = sl(mask)
            rgba[m, :3] = color
            rgba[m, 3] = alpha
        axes[r, 1].imshow(rgba, origin="lower", interpolation="nearest", aspect=aspect)
        if ent is not None:
            e_im = axes[r, 2].imshow(sl(ent), cmap="inferno", vmin=0.0, vmax=e_max, origin="lower", aspect=aspect)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    axes[0, 0].set_title("image")
    axes[0, 1].set_title("overlay")
    if ent is not None:
        axes[0, 2].set_title("entropy")
        fig.colorbar(e_im, ax=axes[:, 2].tolist(), fraction=0.046, pad=0.02)
    from matplotlib.patches import Patch

    handles = [
        Patch(color=TP_COLOR, label=f"TP ({int(tp.sum())} vox)"),
        Patch(color=FP_COLOR, label=f"FP ({int(fp.sum())} vox)"),
        Patch(color=FN_COLOR, label=f"FN ({int(fn.sum())} vox)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.01))
    if title:
        fig.suptitle(title)
    try:
        return atomic_save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def read_tensorboard_scalars(run_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar series of the TensorBoard event files under ``run_dir`` (searched recursively).

    The same tag in several event files (a resumed run) is merged, sorted by step; for a repeated step the value
    written last wins.

    Returns:
        ``{tag: (steps, values)}``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float, float]]] = {}
    for f in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series.setdefault(tag, []).extend((e.step, e.wall_time, e.value) for e in acc.Scalars(tag))
    return {tag: _merge(points) for tag, points in series.items()}


def _merge(points: list[tuple[int, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    latest: dict[int, tuple[float, float]] = {}
    for step, wall, value in points:
        if step not in latest or wall >= latest[step][0]:
            latest[step] = (wall, value)
    steps = np.array(sorted(latest), dtype=np.int64)
    return steps, np.array([latest[s][1] for s in steps], dtype=np.float64)


def _records_to_series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    out: dict[str, list[tuple[int, float, float]]] = {}
    for i, rec in enumerate(records):
        step_key = next((k for k in _STEP_KEYS if k in rec), None)
        if step_key is None:
            continue
        try:
            step = int(float(rec[step_key]))
        except (TypeError, ValueError):
            continue
        for k, v in rec.items():
            if k in _STEP_KEYS or k in ("wall_time", "time"):
                continue
            try:
                val = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(val):
                out.setdefault(k, []).append((step, float(i), val))
    return out


def read_scalar_logs(run_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scalar series of a run: TensorBoard event files, plus ``*.jsonl`` and ``*.csv`` logs with a step column.

    A JSONL / CSV log is one record per line with a step field (``iteration``, ``global_step``, ``step`` or
    ``epoch``) and numeric fields named by tag, e.g. ``{"iteration": 10, "loss": 0.8, "loss_uncl": 0.1}``.
    Files without a step column (such as the per-case ``metrics.csv``) are ignored. Tags found in several
    sources are merged.
    """
    run_dir = Path(run_dir)
    series: dict[str, list[tuple[int, float, float]]] = {}
    for tag, (steps, values) in read_tensorboard_scalars(run_dir).items():
        series.setdefault(tag, []).extend((int(s), 0.0, float(v)) for s, v in zip(steps, values))
    for f in sorted(run_dir.rglob("*.jsonl")):
        records = []
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(rec, dict):
                        records.append(rec)
        for tag, pts in _records_to_series(records).items():
            series.setdefault(tag, []).extend(pts)
    for f in sorted(run_dir.rglob("*.csv")):
        with open(f, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not any(k in reader.fieldnames for k in _STEP_KEYS):
                continue
            for tag, pts in _records_to_series(list(reader)).items():
                series.setdefault(tag, []).extend(pts)
    return {tag: _merge(points) for tag, points in series.items()}


def _tag_order(tag: str) -> tuple[int, str]:
    t = tag.lower()
    if "loss" in t:
        return (0, t)
    if any(w in t for w in ("dice", "iou", "hd95", "asd", "metric", "val")):
        return (2, t)
    return (1, t)


def _ema(values: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(values)
    acc = values[0]
    for i, v in enumerate(values):
        acc = weight * acc + (1 - weight) * v
        out[i] = acc
    return out


def plot_training_curves(
    run_dir: str | os.PathLike,
    out_png: str | os.PathLike,
    tags: Sequence[str] | None = None,
    smoothing: float = 0.6,
    ncols: int = 3,
    dpi: int = 100,
) -> dict[str, int]:
    """Plot every scalar series of a run (each loss term, beta, validation Dice ...) into one PNG.

    One panel per tag: losses first, then schedules, then validation metrics. Long noisy series are drawn faint
    with an exponential moving average (``smoothing``) on top.

    Args:
        run_dir: the run folder (TensorBoard event files and/or JSONL / CSV logs anywhere below it).
        out_png: output path (written atomically).
        tags: only these tags (default: all).
        smoothing: EMA weight in [0, 1); 0 disables smoothing.
        ncols: panels per row.
        dpi: resolution.

    Returns:
        ``{tag: number of points}`` of the plotted series.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no scalar logs (or none of ``tags``).
    """
    series = read_scalar_logs(run_dir)
    if tags is not None:
        missing = [t for t in tags if t not in series]
        if missing:
            raise FileNotFoundError(f"{run_dir}: tags {missing} not found; available: {sorted(series)}.")
        series = {t: series[t] for t in tags}
    if not series:
        raise FileNotFoundError(
            f"{run_dir}: no scalar logs found (TensorBoard events.out.tfevents.* or *.jsonl / *.csv with a step column)."
        )
    names = sorted(series, key=_tag_order)
    plt = _pyplot()
    ncols = max(1, min(ncols, len(names)))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        steps, values = series[name]
        if smoothing > 0 and len(values) > 20:
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(steps, _ema(values, smoothing), color="tab:blue", linewidth=1.5)
        else:
            ax.plot(steps, values, color="tab:blue", marker="o" if len(values) <= 20 else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xlabel("step")
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"training curves: {Path(run_dir).name}")
    fig.tight_layout()
    try:
        atomic_save_figure(fig, out_png, dpi=dpi)
    finally:
        plt.close(fig)
    return {name: int(len(series[name][0])) for name in names}
