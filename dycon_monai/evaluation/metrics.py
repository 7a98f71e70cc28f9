"""Per-case segmentation metrics for binary lesion masks.

Overlap and surface metrics come from MONAI (``compute_dice``, ``compute_iou``, ``compute_hausdorff_distance``,
``compute_average_surface_distance``); the ISLES'22 challenge measures (absolute volume difference, absolute
lesion-count difference, lesion-wise F1) are computed on 26-connected components from ``scipy.ndimage.label``.

Empty policy (see ``docs/evaluation.md``), applied before MONAI is called, because MONAI itself returns ``nan``
or ``inf`` with a warning for empty masks:

* prediction and ground truth both empty: Dice 1, IoU 1, HD95 0, ASD 0, lesion F1 1;
* exactly one of them empty: Dice 0, IoU 0, lesion F1 0, HD95 and ASD undefined (``nan``). Undefined distances are
  left out of means and standard deviations, and their number is reported next to every mean
  (``n_undefined`` in ``summary.json``).

Volume difference and lesion-count difference are always defined.

Beside MONAI's set, :func:`case_metrics` computes (``metric_policy="both"``, the default) the convention of the
DyCON authors' evaluation code, which uses medpy, in keys prefixed ``paper_`` (:data:`PAPER_METRIC_KEYS`):

* ``paper_dice`` / ``paper_jaccard``: medpy ``dc`` / ``jc``;
* ``paper_hd95_*``: medpy ``hd95``, one 95th percentile of the surface distances of BOTH directions pooled
  (prediction -> label and label -> prediction), not MONAI's larger of two directed percentiles;
* ``paper_asd_*``: medpy ``asd``, the DIRECTED mean distance from the prediction's surface to the label's;
* empty masks: when the prediction or the label is empty, all four are 0 (Dice and Jaccard included when both
  are empty; the authors' ISLES'22 loop scores an empty prediction ``(0, 0, 0, 0)`` and their per-case function
  sets the distances to 0 for an empty label).

The surface distances are computed here (``scipy.ndimage``), with medpy's definitions (surface = mask minus its
6-connected erosion, Euclidean distance transform with the voxel spacing); medpy itself only checks them in the
tests. Every ``paper_`` value is defined (never NaN), so their means average over all cases, as the paper does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
)
from scipy import ndimage

from dycon_monai.evaluation.definitions import CASE_METRIC_KEYS, EMPTY_POLICY, SUMMARY_METRIC_KEYS
from dycon_monai.evaluation.strata import (
    METRIC_POLICIES,
    MONAI_ONLY_METRIC_KEYS,
    PAPER_CONVENTION,
    PAPER_METRIC_KEYS,
    case_metric_keys,
    check_metric_policy,
)

__all__ = [
    "CASE_METRIC_KEYS",
    "SUMMARY_METRIC_KEYS",
    "EMPTY_POLICY",
    "METRIC_POLICIES",
    "MONAI_ONLY_METRIC_KEYS",
    "PAPER_CONVENTION",
    "PAPER_METRIC_KEYS",
    "case_metric_keys",
    "case_metrics",
    "directed_surface_distances",
    "paper_case_metrics",
    "lesion_components",
    "lesion_detection_counts",
    "as_binary_mask",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# MONAI 1.5+ passes a deprecated argument to itself inside get_mask_edges; that notice is not about our inputs.
_MONAI_INTERNAL_NOTICE = r".*always_return_as_numpy.*"


def as_binary_mask(x: ArrayLike, name: str, spatial_ndim: int | None = None) -> np.ndarray:
    """Return a boolean spatial mask from a discrete segmentation.

    Accepted layouts: spatial only ``(*spatial)``; channel-first with one channel ``(1, *spatial)`` holding
    0/1 (or class indices, foreground = non-zero); channel-first one-hot ``(C, *spatial)`` with ``C >= 2``
    (foreground = argmax over channels is not 0).

    Args:
        x: numpy array or torch tensor (``MetaTensor`` included).
        name: what ``x`` is (``"pred"``, ``"label"``), used in error messages.
        spatial_ndim: number of spatial dimensions; defaults to 3 when ``x`` has 3 or 4 dimensions.

    Raises:
        ValueError: if the layout is not one of the above, or a single-channel input is not discrete
            (for example probabilities or logits: apply ``AsDiscrete(argmax=True)`` or a threshold first).
    """
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu()
        arr = arr.as_tensor().numpy() if hasattr(arr, "as_tensor") else arr.numpy()
    else:
        arr = np.asarray(x)
    if spatial_ndim is None:
        spatial_ndim = 3 if arr.ndim in (3, 4) else arr.ndim
    if arr.ndim == spatial_ndim + 1:
        if arr.shape[0] == 1:
            arr = arr[0]
        else:
            return np.argmax(arr, axis=0) != 0
    elif arr.ndim != spatial_ndim:
        raise ValueError(
            f"{name}: expected shape (*spatial) or (C, *spatial) with {spatial_ndim} spatial dims, got {tuple(arr.shape)}."
        )
    if arr.dtype == bool:
        return arr
    if arr.size and not (np.all(arr >= 0) and np.all(np.floor(arr) == arr)):
        raise ValueError(
            f"{name}: expected a discrete mask (0/1 or class indices), got values in "
            f"[{float(arr.min()):.4g}, {float(arr.max()):.4g}] with shape {tuple(arr.shape)}; "
            "apply AsDiscrete(argmax=True) or a threshold before computing metrics."
        )
    return arr != 0


def _spacing_tuple(spacing: float | Sequence[float] | np.ndarray | torch.Tensor | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing: expected {ndim} values (one per spatial axis), got {sp.tolist()}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing: expected positive finite values in mm, got {sp.tolist()}.")
    return tuple(float(s) for s in sp)


def _full_structure(ndim: int) -> np.ndarray:
    """Full 3 x 3 (x 3) structuring element: 26-connectivity in 3D, 8-connectivity in 2D."""
    return np.ones((3,) * ndim, dtype=bool)


def lesion_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label the connected lesions of a boolean mask (26-connectivity in 3D).

    Returns:
        ``(labels, n)``: an int array with 0 for background and 1..n for the lesions, and n.
    """
    labels, n = ndimage.label(mask, structure=_full_structure(mask.ndim))
    return labels, int(n)


def lesion_detection_counts(pred: np.ndarray, label: np.ndarray) -> dict[str, int]:
    """Lesion-wise detection counts in the ISLES'22 sense (26-connected components).

    * TP: true lesions (components of ``label``) overlapped by at least one predicted voxel;
    * FN: true lesions with no predicted voxel;
    * FP: predicted components that overlap no true voxel.

    A single predicted blob spanning three true lesions gives TP=3; three predicted fragments on one true
    lesion give TP=1 and FP=0. ``TP + FN`` is the number of true lesions; ``FP`` counts predicted components.

    Returns:
        dict with ``tp``, ``fp``, ``fn``, ``n_label`` and ``n_pred`` (component counts).
    """
    lab_cc, n_lab = lesion_components(label)
    pred_cc, n_pred = lesion_components(pred)
    overlap = pred & label
    hit_true = np.unique(lab_cc[overlap])
    hit_pred = np.unique(pred_cc[overlap])
    tp = int(np.count_nonzero(hit_true))
    fp = n_pred - int(np.count_nonzero(hit_pred))
    return {"tp": tp, "fp": fp, "fn": n_lab - tp, "n_label": n_lab, "n_pred": n_pred}


def _monai_distances(
    pred_t: torch.Tensor, label_t: torch.Tensor, spacing: tuple[float, ...] | None, percentile: float
) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MONAI_INTERNAL_NOTICE)
        hd = compute_hausdorff_distance(
            pred_t, label_t, include_background=True, percentile=percentile, spacing=spacing
        ).item()
        asd = compute_average_surface_distance(
            pred_t, label_t, include_background=True, symmetric=True, spacing=spacing
        )
    return float(hd), float(asd.item())


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels as medpy takes them: the mask minus its erosion by the 6-connected (face) structure."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def directed_surface_distances(
    source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Distance from every surface voxel of ``source`` to the nearest surface voxel of ``target``.

    The definition of medpy's surface distances (the building block of its ``hd95`` and ``asd``): surfaces are
    the masks minus their 6-connected erosion (voxels on the array border count as surface), distances are
    Euclidean with ``spacing`` per axis (``scipy.ndimage.distance_transform_edt(sampling=spacing)``). The work
    is done on the bounding box of both masks plus one voxel, which gives the same distances as the full array.

    Args:
        source: boolean mask ``(*spatial)``, not empty.
        target: boolean mask of the same shape, not empty.
        spacing: voxel size per axis (mm); ``None`` means 1 (distances in voxels).

    Returns:
        1-D float64 array, one distance per surface voxel of ``source`` (in C order).

    Raises:
        ValueError: on different shapes or an empty mask (the distance is undefined; :func:`paper_case_metrics`
            applies the paper's empty policy before calling this).
    """
    source, target = np.asarray(source, dtype=bool), np.asarray(target, dtype=bool)
    if source.shape != target.shape:
        raise ValueError(f"source and target must have the same shape, got {source.shape} and {target.shape}.")
    for name, m in (("source", source), ("target", target)):
        if not m.any():
            raise ValueError(f"{name} mask of shape {m.shape} is empty; surface distances are undefined for it.")
    sampling = None if spacing is None else _spacing_tuple(spacing, source.ndim)
    both = np.nonzero(source | target)
    box = tuple(slice(max(int(ax.min()) - 1, 0), int(ax.max()) + 2) for ax in both)
    src_surface, tgt_surface = _surface(source[box]), _surface(target[box])
    dist = ndimage.distance_transform_edt(~tgt_surface, sampling=sampling)
    return np.asarray(dist[src_surface], dtype=np.float64)


def paper_case_metrics(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The DyCON paper's per-case convention (its evaluation code calls medpy), on boolean masks.

    * ``paper_dice`` = ``2 |P & G| / (|P| + |G|)`` (medpy ``dc``), ``paper_jaccard`` = ``|P & G| / |P | G|``
      (medpy ``jc``);
    * ``paper_hd95_*`` = 95th percentile (numpy's linear interpolation) of the distances of both directions
      pooled, prediction -> label and label -> prediction (medpy ``hd95``);
    * ``paper_asd_*`` = mean distance from the prediction's surface to the label's (medpy ``asd``, directed);
    * ``_mm`` with ``spacing``, ``_vox`` with unit spacing (the authors pass no spacing: their tables are in
      voxels of their resampled images);
    * if the prediction or the label is empty, every value is 0 (Dice and Jaccard too, even when both are
      empty); see :data:`PAPER_CONVENTION`.

    Args:
        pred: boolean prediction ``(*spatial)``.
        label: boolean ground truth of the same shape.
        spacing: voxel size in mm per axis; ``None`` means 1 mm.

    Returns:
        dict with the keys of :data:`PAPER_METRIC_KEYS`, all finite floats.
    """
    p, g = np.asarray(pred, dtype=bool), np.asarray(label, dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f"pred and label must have the same shape, got pred {p.shape} and label {g.shape}.")
    if not p.any() or not g.any():
        return dict.fromkeys(PAPER_METRIC_KEYS, 0.0)
    sp = _spacing_tuple(spacing, p.ndim)
    inter = int(np.count_nonzero(p & g))
    out = {
        "paper_dice": 2.0 * inter / float(np.count_nonzero(p) + np.count_nonzero(g)),
        "paper_jaccard": inter / float(np.count_nonzero(p | g)),
    }
    units = (("mm", sp), ("vox", None)) if any(s != 1.0 for s in sp) else (("mm", None),)
    for unit, sampling in units:
        d_pg = directed_surface_distances(p, g, sampling)
        d_gp = directed_surface_distances(g, p, sampling)
        out[f"paper_hd95_{unit}"] = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
        out[f"paper_asd_{unit}"] = float(d_pg.mean())
    if "paper_hd95_vox" not in out:
        out["paper_hd95_vox"], out["paper_asd_vox"] = out["paper_hd95_mm"], out["paper_asd_mm"]
    return {k: out[k] for k in PAPER_METRIC_KEYS}


def case_metrics(
    pred: ArrayLike,
    label: ArrayLike,
    spacing: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
    percentile: float = 95.0,
    metric_policy: str = "both",
) -> dict[str, Any]:
    """Metrics of one case: MONAI overlap and surface metrics plus ISLES'22 lesion-wise measures.

    Args:
        pred: predicted mask, ``(*spatial)``, ``(1, *spatial)`` (0/1) or one-hot ``(C, *spatial)``.
        label: ground-truth mask in the same layouts, same spatial shape as ``pred``.
        spacing: voxel size in mm per spatial axis (a scalar means isotropic). ``None`` means 1 mm,
            so that the ``_mm`` values equal the ``_vox`` values.
        percentile: Hausdorff percentile of the MONAI set (95 gives HD95); the paper set is always HD95.
        metric_policy: which overlap and surface metrics: ``"monai"`` (the keys of :data:`CASE_METRIC_KEYS`),
            ``"paper"`` (the keys of :data:`PAPER_METRIC_KEYS` in place of MONAI's Dice, IoU, HD95 and ASD) or
            ``"both"`` (default: :data:`CASE_METRIC_KEYS` followed by :data:`PAPER_METRIC_KEYS`). The lesion-wise,
            volume and size keys are returned under every policy; :func:`case_metric_keys` gives the order.

    Returns:
        dict with the keys of :func:`case_metric_keys` for the policy; the MONAI set:

        * ``dice``, ``iou``: in [0, 1] (MONAI ``compute_dice`` / ``compute_iou``);
        * ``hd95_mm``, ``asd_mm``: symmetric 95th-percentile Hausdorff distance (MONAI: the larger of the two
          directed 95th percentiles) and symmetric average surface distance (MONAI: mean over the pooled
          surface distances of both directions), in mm using ``spacing``;
        * ``hd95_vox``, ``asd_vox``: the same with unit spacing (voxels), the unit of the paper tables;
        * ``abs_volume_diff_ml``: ``|V_pred - V_label|`` in ml (1 ml = 1000 mm^3);
        * ``abs_lesion_count_diff``: ``|#lesions_pred - #lesions_label|`` (26-connected components);
        * ``lesion_f1``: ``TP / (TP + (FP + FN) / 2)`` with the counts of :func:`lesion_detection_counts`;
          ``lesion_tp``, ``lesion_fp``, ``lesion_fn`` are returned too;
        * ``label_voxels``, ``pred_voxels``, ``label_volume_ml``, ``pred_volume_ml``, ``label_lesions``,
          ``pred_lesions``: sizes used by the strata;
        * ``empty``: ``"none"``, ``"both"``, ``"label"`` (only the ground truth is empty) or ``"pred"``.

        Empty policy: see the module docstring; undefined distances are ``nan``.

        The paper set (``paper_dice``, ``paper_jaccard``, ``paper_hd95_mm``, ``paper_asd_mm``, ``paper_hd95_vox``,
        ``paper_asd_vox``): see :func:`paper_case_metrics`; never ``nan``.

    Raises:
        ValueError: on mismatched shapes, non-discrete single-channel input, invalid spacing or an unknown
            ``metric_policy``.
    """
    check_metric_policy(metric_policy)
    spatial_ndim = None
    if spacing is not None and not np.isscalar(spacing):
        spatial_ndim = int(np.asarray(spacing.cpu() if isinstance(spacing, torch.Tensor) else spacing).size)
        if len(pred.shape) not in (spatial_ndim, spatial_ndim + 1):
            raise ValueError(
                f"spacing: expected one value per spatial axis of pred {tuple(pred.shape)}, got {list(np.ravel(spacing))}."
            )
    p = as_binary_mask(pred, "pred", spatial_ndim)
    g = as_binary_mask(label, "label", spatial_ndim)
    if p.shape != g.shape:
        raise ValueError(f"pred and label must have the same spatial shape, got pred {p.shape} and label {g.shape}.")
    sp = _spacing_tuple(spacing, p.ndim)
    voxel_ml = math.prod(sp) / 1000.0

    n_pred_vox = int(np.count_nonzero(p))
    n_label_vox = int(np.count_nonzero(g))
    counts = lesion_detection_counts(p, g)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]

    out: dict[str, Any] = {
        "abs_volume_diff_ml": abs(n_pred_vox - n_label_vox) * voxel_ml,
        "abs_lesion_count_diff": abs(counts["n_pred"] - counts["n_label"]),
        "lesion_tp": tp,
        "lesion_fp": fp,
        "lesion_fn": fn,
        "label_voxels": n_label_vox,
        "pred_voxels": n_pred_vox,
        "label_volume_ml": n_label_vox * voxel_ml,
        "pred_volume_ml": n_pred_vox * voxel_ml,
        "label_lesions": counts["n_label"],
        "pred_lesions": counts["n_pred"],
    }
    out["lesion_f1"] = 1.0 if tp + fp + fn == 0 else tp / (tp + 0.5 * (fp + fn))

    if metric_policy != "monai":
        out.update(paper_case_metrics(p, g, sp))
    if metric_policy == "paper":
        out["empty"] = _empty_kind(n_pred_vox, n_label_vox)
    elif n_pred_vox == 0 and n_label_vox == 0:
        out.update(dice=1.0, iou=1.0, hd95_mm=0.0, asd_mm=0.0, hd95_vox=0.0, asd_vox=0.0, empty="both")
    elif n_pred_vox == 0 or n_label_vox == 0:
        nan = float("nan")
        out.update(dice=0.0, iou=0.0, hd95_mm=nan, asd_mm=nan, hd95_vox=nan, asd_vox=nan)
        out["empty"] = _empty_kind(n_pred_vox, n_label_vox)
    else:
        pred_t = torch.from_numpy(p)[None, None].float()
        label_t = torch.from_numpy(g)[None, None].float()
        out["dice"] = float(compute_dice(pred_t, label_t, include_background=True).item())
        out["iou"] = float(compute_iou(pred_t, label_t, include_background=True).item())
        out["hd95_mm"], out["asd_mm"] = _monai_distances(pred_t, label_t, sp, percentile)
        if all(s == 1.0 for s in sp):
            out["hd95_vox"], out["asd_vox"] = out["hd95_mm"], out["asd_mm"]
        else:
            out["hd95_vox"], out["asd_vox"] = _monai_distances(pred_t, label_t, None, percentile)
        out["empty"] = "none"
    return {k: out[k] for k in case_metric_keys(metric_policy)}


def _empty_kind(n_pred_vox: int, n_label_vox: int) -> str:
    if n_pred_vox == 0 and n_label_vox == 0:
        return "both"
    if n_pred_vox == 0:
        return "pred"
    return "label" if n_label_vox == 0 else "none"
