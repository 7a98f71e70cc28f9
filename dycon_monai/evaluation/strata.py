"""Lesion strata (paper Fig. 7) and summaries of per-case metric rows.

The DyCON paper (Sec. 4.2, Fig. 7) splits the ISLES'22 test set into *small* (12 scans), *medium* (3) and
*large* (7) lesion cases "based on voxel area", and into *scattered* (73 %) and *non-scattered* (27 %) cases, but
does not state the thresholds. We pick volume thresholds that reproduce the paper's proportions
(12/22 = 55 %, 3/22 = 14 %, 7/22 = 32 %) on the 247 lesion-bearing ISLES'22 cases of the published reference
splits: small < 1500 voxels (54.7 % of cases), medium 1500-3000 voxels (14.6 %), large >= 3000 voxels (30.8 %).
At the bundle's 2 mm isotropic resampling one voxel is 0.008 ml, so the thresholds are 12 ml and 24 ml.
Strata are assigned in ml (resolution independent) by default; :func:`size_stratum` also takes voxel counts.

Distribution: *single* (one 26-connected lesion) vs *scattered* (more than one). Lesion-free cases form their own
group (``lesion_free``) in both stratifications.

Metric policies (``metric_policy``): ``"monai"`` (MONAI's Dice, IoU, symmetric HD95 / ASD with our empty policy),
``"paper"`` (the DyCON authors' medpy convention, keys prefixed ``paper_``) or ``"both"``. Their key lists live
here, in a module without torch or MONAI, so that summaries of a ``metrics.csv`` stay light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from dycon_monai.evaluation.definitions import CASE_METRIC_KEYS, EMPTY_POLICY, SUMMARY_METRIC_KEYS

__all__ = [
    "METRIC_POLICIES",
    "MONAI_ONLY_METRIC_KEYS",
    "PAPER_CONVENTION",
    "PAPER_METRIC_KEYS",
    "case_metric_keys",
    "check_metric_policy",
    "summary_metric_keys",
    "SIZE_THRESHOLDS_ML",
    "SIZE_THRESHOLDS_VOXELS",
    "SIZE_STRATA",
    "DISTRIBUTION_STRATA",
    "size_stratum",
    "distribution_stratum",
    "describe",
    "summarize_cases",
    "strata_tables",
]

#: (small/medium, medium/large) boundaries in ml; small < 12 <= medium < 24 <= large.
SIZE_THRESHOLDS_ML: tuple[float, float] = (12.0, 24.0)
#: The same boundaries in voxels of 2 mm isotropic images (0.008 ml per voxel), the basis of the choice.
SIZE_THRESHOLDS_VOXELS: tuple[int, int] = (1500, 3000)
SIZE_STRATA: tuple[str, ...] = ("small", "medium", "large", "lesion_free")
DISTRIBUTION_STRATA: tuple[str, ...] = ("single", "scattered", "lesion_free")


#: Accepted values of ``metric_policy``.
METRIC_POLICIES: tuple[str, ...] = ("monai", "paper", "both")
#: Keys of the MONAI set that the ``"paper"`` policy leaves out (the rest of CASE_METRIC_KEYS is policy-free).
MONAI_ONLY_METRIC_KEYS: tuple[str, ...] = ("dice", "iou", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox")
#: Keys of the paper convention, in the column order of ``metrics.csv``.
PAPER_METRIC_KEYS: tuple[str, ...] = (
    "paper_dice",
    "paper_jaccard",
    "paper_hd95_mm",
    "paper_asd_mm",
    "paper_hd95_vox",
    "paper_asd_vox",
)
#: The paper convention in words; written into ``summary.json["paper_convention"]``.
PAPER_CONVENTION: dict[str, str] = {
    "source": "the DyCON authors' evaluation code (medpy.metric.binary dc, jc, hd95, asd), reimplemented",
    "paper_dice": "2|P&G| / (|P|+|G|) (medpy dc)",
    "paper_jaccard": "|P&G| / |P|G| (medpy jc)",
    "paper_hd95": "95th percentile of the surface distances of both directions pooled, pred->label and "
    "label->pred (medpy hd95)",
    "paper_asd": "mean distance from the prediction surface to the label surface, directed pred->label (medpy asd)",
    "surface": "mask minus its 6-connected erosion; Euclidean distance transform with the voxel spacing",
    "units": "_mm with the image spacing, _vox with unit spacing (the authors pass no spacing)",
    "empty": "prediction or label empty (both included): dice = jaccard = hd95 = asd = 0",
    "averaging": "every case counts: no value is undefined",
}


def check_metric_policy(metric_policy: str) -> str:
    """Return ``metric_policy`` if it is one of :data:`METRIC_POLICIES`, else raise ``ValueError``."""
    if metric_policy not in METRIC_POLICIES:
        raise ValueError(f"metric_policy must be one of {list(METRIC_POLICIES)}, got {metric_policy!r}.")
    return metric_policy


def case_metric_keys(metric_policy: str = "both") -> tuple[str, ...]:
    """Keys of :func:`~dycon_monai.evaluation.case_metrics` for a policy, in ``metrics.csv`` column order.

    ``"monai"``: ``CASE_METRIC_KEYS``; ``"both"``: ``CASE_METRIC_KEYS`` then :data:`PAPER_METRIC_KEYS`;
    ``"paper"``: :data:`PAPER_METRIC_KEYS` then the policy-free keys of ``CASE_METRIC_KEYS`` (lesion-wise,
    volumes, sizes, ``empty``).
    """
    check_metric_policy(metric_policy)
    if metric_policy == "monai":
        return CASE_METRIC_KEYS
    if metric_policy == "both":
        return CASE_METRIC_KEYS + PAPER_METRIC_KEYS
    return PAPER_METRIC_KEYS + tuple(k for k in CASE_METRIC_KEYS if k not in MONAI_ONLY_METRIC_KEYS)


def summary_metric_keys(metric_policy: str = "both") -> tuple[str, ...]:
    """Keys averaged in ``summary.json["metrics"]``: ``SUMMARY_METRIC_KEYS``, without MONAI's under ``"paper"``.

    (The paper keys are summarised apart, in ``summary.json["paper_metrics"]``.)
    """
    check_metric_policy(metric_policy)
    if metric_policy == "paper":
        return tuple(k for k in SUMMARY_METRIC_KEYS if k not in MONAI_ONLY_METRIC_KEYS)
    return SUMMARY_METRIC_KEYS


def size_stratum(
    volume_ml: float | None = None,
    voxels: int | None = None,
    thresholds_ml: Sequence[float] = SIZE_THRESHOLDS_ML,
    thresholds_voxels: Sequence[int] = SIZE_THRESHOLDS_VOXELS,
) -> str:
    """Lesion-size stratum of a case from its true lesion volume (give exactly one of ``volume_ml``, ``voxels``).

    Returns:
        ``"small"``, ``"medium"``, ``"large"``, or ``"lesion_free"`` for a volume of 0.
    """
    if (volume_ml is None) == (voxels is None):
        raise ValueError(f"size_stratum: give exactly one of volume_ml and voxels, got {volume_ml=} and {voxels=}.")
    value, (low, high) = (volume_ml, thresholds_ml) if volume_ml is not None else (voxels, thresholds_voxels)
    if not low < high:
        raise ValueError(f"size_stratum: thresholds must be increasing, got ({low}, {high}).")
    if value <= 0:
        return "lesion_free"
    if value < low:
        return "small"
    return "medium" if value < high else "large"


def distribution_stratum(num_lesions: int) -> str:
    """``"single"`` for one lesion, ``"scattered"`` for several, ``"lesion_free"`` for none."""
    if num_lesions < 0:
        raise ValueError(f"distribution_stratum: num_lesions must be >= 0, got {num_lesions}.")
    if num_lesions == 0:
        return "lesion_free"
    return "single" if num_lesions == 1 else "scattered"


def _as_float(v: Any) -> float:
    if v is None or v == "":
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def describe(values: Iterable[Any], median: bool = False) -> dict[str, Any]:
    """Mean and population std (``ddof=0``) over the defined values, and their median on request.

    Args:
        values: numbers; ``None``, ``""``, NaN and text count as undefined.
        median: also return ``"median"`` (after ``"std"``).

    Returns:
        ``{"mean", "std", "n", "n_undefined"}`` (``{"mean", "std", "median", "n", "n_undefined"}`` with
        ``median=True``) where ``n`` counts the defined (finite) values and ``n_undefined`` the NaN / missing ones
        (for example distances of cases with one empty mask). ``mean``, ``std`` and ``median`` are ``None`` when
        no value is defined.
    """
    arr = np.array([_as_float(v) for v in values], dtype=np.float64)
    ok = np.isfinite(arr)
    n = int(ok.sum())
    out: dict[str, Any] = {"mean": None, "std": None}
    if n:
        out = {"mean": float(arr[ok].mean()), "std": float(arr[ok].std())}
    if median:
        out["median"] = float(np.median(arr[ok])) if n else None
    out.update(n=n, n_undefined=int(arr.size - n))
    return out


def _case_groups(row: Mapping[str, Any], thresholds_ml: Sequence[float]) -> tuple[str, str]:
    size = row.get("size_stratum") or size_stratum(
        volume_ml=_as_float(row["label_volume_ml"]), thresholds_ml=thresholds_ml
    )
    dist = row.get("distribution_stratum") or distribution_stratum(int(_as_float(row["label_lesions"])))
    return str(size), str(dist)


def strata_tables(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = SUMMARY_METRIC_KEYS,
    thresholds_ml: Sequence[float] = SIZE_THRESHOLDS_ML,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per-stratum metric tables.

    Args:
        rows: per-case dicts holding the metric keys plus ``label_volume_ml`` and ``label_lesions`` (as produced by
            :func:`~dycon_monai.evaluation.case_metrics`), or precomputed ``size_stratum`` / ``distribution_stratum``.
        metrics: metric keys to describe.
        thresholds_ml: size boundaries in ml.

    Returns:
        ``{"size": {stratum: {"n": cases, "case_ids": [...], "metrics": {key: describe(...)}}},
        "distribution": {...}}``; every stratum is present, empty ones with ``n`` 0.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {"size": {}, "distribution": {}}
    groups = [_case_groups(r, thresholds_ml) for r in rows]
    for axis, names, idx in (("size", SIZE_STRATA, 0), ("distribution", DISTRIBUTION_STRATA, 1)):
        for name in names:
            members = [r for r, g in zip(rows, groups) if g[idx] == name]
            out[axis][name] = {
                "n": len(members),
                "case_ids": [str(r.get("case_id", "")) for r in members],
                "metrics": {k: describe(r.get(k) for r in members) for k in metrics},
            }
    return out


def _rows_policy(rows: Sequence[Mapping[str, Any]]) -> str:
    has_paper = any(k in r for r in rows for k in PAPER_METRIC_KEYS)
    has_monai = any(k in r for r in rows for k in MONAI_ONLY_METRIC_KEYS)
    if has_paper:
        return "both" if has_monai else "paper"
    return "monai"


def summarize_cases(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] | None = None,
    thresholds_ml: Sequence[float] = SIZE_THRESHOLDS_ML,
    run_info: Mapping[str, Any] | None = None,
    metric_policy: str | None = None,
) -> dict[str, Any]:
    """The content of a run's ``summary.json`` from its per-case rows.

    Args:
        rows: per-case dicts (``metrics.csv`` rows).
        metrics: keys for ``summary["metrics"]`` and the strata; default :func:`summary_metric_keys` of the policy.
        thresholds_ml: size strata boundaries in ml.
        run_info: run metadata, stored as ``summary["run"]``.
        metric_policy: ``"monai"``, ``"paper"`` or ``"both"``; ``None`` reads it from the rows (paper set present
            when a row has a ``paper_`` key, MONAI set when a row has ``dice`` ... ``asd_vox``).

    Returns:
        dict with ``format_version``, ``run`` (``run_info``), ``metric_policy``, ``n_cases``, ``metrics``
        (``describe`` per key), ``strata`` (:func:`strata_tables` plus their definitions; paper keys included
        under ``"paper"`` / ``"both"``) and ``empty_policy`` (the policy and how many cases it touched); under
        ``"paper"`` / ``"both"`` also ``paper_metrics`` (mean, std, median, n, n_undefined per paper key) and
        ``paper_convention`` (:data:`PAPER_CONVENTION`).
    """
    policy = _rows_policy(rows) if metric_policy is None else check_metric_policy(metric_policy)
    metrics = tuple(summary_metric_keys(policy) if metrics is None else metrics)
    paper = policy != "monai"
    strata_metrics = metrics + (PAPER_METRIC_KEYS if paper else ())
    empty = [str(r.get("empty", "none")) for r in rows]
    undefined = {k: sum(1 for r in rows if k in r and math.isnan(_as_float(r.get(k)))) for k in ("hd95_mm", "asd_mm")}
    out: dict[str, Any] = {
        "format_version": 1,
        "run": dict(run_info or {}),
        "metric_policy": policy,
        "n_cases": len(rows),
        "metrics": {k: describe(r.get(k) for r in rows) for k in metrics},
    }
    if paper:
        out["paper_metrics"] = {k: describe((r.get(k) for r in rows), median=True) for k in PAPER_METRIC_KEYS}
        out["paper_convention"] = dict(PAPER_CONVENTION)
    out.update(
        {
            "strata": {
                "definitions": {
                    "size_thresholds_ml": list(thresholds_ml),
                    "size_thresholds_voxels_at_2mm": [round(t / 0.008) for t in thresholds_ml],
                    "size": "small < t0 <= medium < t1 <= large (true lesion volume, ml); lesion_free = 0",
                    "distribution": "single = 1, scattered > 1 true 26-connected lesions; lesion_free = 0",
                },
                **strata_tables(rows, strata_metrics, thresholds_ml),
            },
            "empty_policy": {
                **EMPTY_POLICY,
                "n_both_empty": empty.count("both"),
                "n_empty_label_only": empty.count("label"),
                "n_empty_pred_only": empty.count("pred"),
                "n_distance_undefined": undefined["hd95_mm"],
            },
        }
    )
    return out
