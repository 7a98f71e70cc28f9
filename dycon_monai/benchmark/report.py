"""Collect finished runs into ``results.csv`` and summarise them: ``report.md``, ``report.json``, ``report.png``.

Statistics (see ``docs/benchmark.md``):

* per run, the mean of a metric over the test cases (NaN cases left out and counted);
* per method and labeled count, mean +- 95 % CI over seeds of those run means (Student t, ``sd`` with ``ddof=1``);
* paired against ``supervised`` and ``mean_teacher`` at the same labeled count: per test case, the metric
  averaged over the seeds both methods have, the mean difference, and the Wilcoxon signed-rank p-value over cases;
* gap recovered: ``(dice_method - dice_supervised) / (dice_upper - dice_supervised)`` with seed-mean Dice.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dycon_monai.utils.io import atomic_save_figure, atomic_write_csv, atomic_write_json, atomic_write_text

from .grid import ALL
from .runner import is_finished, read_harness_record

__all__ = [
    "RESULT_COLUMNS",
    "collect_results",
    "gap_recovered",
    "mean_ci",
    "paired_test",
    "seed_means",
    "summarize",
    "write_report",
]

METRICS = ("dice", "hd95_mm", "asd_mm")
PAPER_METRICS = ("paper_dice", "paper_hd95_mm", "paper_asd_mm")
RESULT_COLUMNS = (
    ("bundle", "method", "labeled_count", "seed", "run_name", "case_id")
    + METRICS
    + PAPER_METRICS
    + ("train_s", "eval_s")
)
REFERENCES = ("supervised", "mean_teacher")


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def collect_results(out: str | Path) -> list[dict[str, Any]]:
    """One row per finished run and test case, from ``<out>/runs/*/eval/metrics.csv`` and ``harness_run.json``."""
    rows: list[dict[str, Any]] = []
    for run_dir in sorted((Path(out) / "runs").glob("*")):
        if not run_dir.is_dir() or not is_finished(run_dir):
            continue
        rec = read_harness_record(run_dir)
        run, steps = rec["run"], rec.get("steps", {})
        with open(run_dir / "eval" / "metrics.csv", newline="") as f:
            for case in csv.DictReader(f):
                row = {k: run.get(k) for k in ("bundle", "method", "labeled_count", "seed", "run_name")}
                row["case_id"] = case["case_id"]
                for key in METRICS + PAPER_METRICS:
                    row[key] = _float(case.get(key)) if case.get(key) not in (None, "") else float("nan")
                row["train_s"] = steps.get("train", {}).get("wall_s")
                row["eval_s"] = steps.get("evaluate", {}).get("wall_s")
                rows.append(row)
    return rows


def _key(count: Any) -> str:
    return str(count)


def seed_means(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[tuple[str, str], dict[int, dict]]:
    """``{(method, count): {seed: {"mean", "n", "n_nan"}}}``: the metric averaged over each run's defined cases."""
    values: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        values[(r["method"], _key(r["labeled_count"]), int(r["seed"]))].append(_float(r[metric]))
    out: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for (method, count, seed), v in values.items():
        arr = np.asarray(v, dtype=float)
        ok = np.isfinite(arr)
        out[(method, count)][seed] = {
            "mean": float(arr[ok].mean()) if ok.any() else float("nan"),
            "n": int(ok.sum()),
            "n_nan": int((~ok).sum()),
        }
    return dict(out)


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and half-width of the t confidence interval of ``values`` (finite ones); ``ci`` is None for n < 2."""
    from scipy import stats

    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    n = int(arr.size)
    if n == 0:
        return {"mean": None, "ci": None, "n": 0}
    if n < 2:
        return {"mean": float(arr.mean()), "ci": None, "n": 1}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return {"mean": float(arr.mean()), "ci": half, "n": n}


def _case_means(rows: Sequence[Mapping[str, Any]], method: str, count: str, metric: str, seeds: set[int]) -> dict:
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and _key(r["labeled_count"]) == count and int(r["seed"]) in seeds:
            acc[r["case_id"]].append(_float(r[metric]))
    return {c: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in acc.items()}


def paired_test(
    rows: Sequence[Mapping[str, Any]], method: str, reference: str, labeled_count: Any, metric: str = "dice"
) -> dict[str, Any]:
    """Method minus reference per test case (seed-averaged over shared seeds); Wilcoxon signed-rank over cases."""
    from scipy import stats

    count = _key(labeled_count)
    seeds_of = defaultdict(set)
    for r in rows:
        seeds_of[(r["method"], _key(r["labeled_count"]))].add(int(r["seed"]))
    shared = seeds_of[(method, count)] & seeds_of[(reference, count)]
    if not shared or method == reference:
        return {"diff": None, "p": None, "n_cases": 0, "seeds": sorted(shared)}
    a = _case_means(rows, method, count, metric, shared)
    b = _case_means(rows, reference, count, metric, shared)
    cases = [c for c in sorted(a) if c in b and math.isfinite(a[c]) and math.isfinite(b[c])]
    d = np.asarray([a[c] - b[c] for c in cases], dtype=float)
    out: dict[str, Any] = {"diff": float(d.mean()) if d.size else None, "p": None, "n_cases": len(cases)}
    out["seeds"] = sorted(shared)
    if int(np.count_nonzero(d)) >= 2:
        out["p"] = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def gap_recovered(dice_method: float | None, dice_supervised: float | None, dice_upper: float | None) -> float | None:
    """Share of the supervised-to-upper-bound Dice gap a method recovers (None without a positive gap)."""
    if None in (dice_method, dice_supervised, dice_upper):
        return None
    gap = dice_upper - dice_supervised
    return None if gap <= 0 else float((dice_method - dice_supervised) / gap)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Table data of the report: one entry per (method, labeled count) with statistics, tests and gap recovered."""
    means = {m: seed_means(rows, m) for m in METRICS + PAPER_METRICS}
    upper = means["dice"].get(("supervised", ALL))
    upper_dice = mean_ci([s["mean"] for s in upper.values()])["mean"] if upper else None
    table = []
    for method, count in sorted(means["dice"], key=lambda k: (k[1] == ALL, _sort_count(k[1]), k[0])):
        entry: dict[str, Any] = {"method": method, "labeled_count": count}
        for metric in METRICS + PAPER_METRICS:
            per_seed = means[metric].get((method, count), {})
            entry[metric] = mean_ci([s["mean"] for s in per_seed.values()])
            entry[metric]["per_seed"] = {str(k): v["mean"] for k, v in sorted(per_seed.items())}
            entry[metric]["nan_cases"] = int(sum(v["n_nan"] for v in per_seed.values()))
        entry["seeds"] = sorted(int(s) for s in means["dice"][(method, count)])
        if count != ALL:
            entry["vs"] = {ref: paired_test(rows, method, ref, count, "dice") for ref in REFERENCES if ref != method}
            sup = means["dice"].get(("supervised", count))
            sup_dice = mean_ci([s["mean"] for s in sup.values()])["mean"] if sup else None
            entry["gap_recovered"] = gap_recovered(entry["dice"]["mean"], sup_dice, upper_dice)
        table.append(entry)
    return {"table": table, "upper_bound_dice": upper_dice, "n_rows": len(rows)}


def _sort_count(count: str) -> float:
    return float("inf") if count == ALL else float(count)


def _fmt(stat: Mapping[str, Any], digits: int) -> str:
    if stat.get("mean") is None:
        return "n/a"
    ci = "n/a" if stat.get("ci") is None else f"{stat['ci']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} +- {ci}"


def _p(test: Mapping[str, Any] | None) -> str:
    if not test or test.get("diff") is None:
        return "n/a"
    p = "n/a" if test.get("p") is None else f"{test['p']:.3g}"
    return f"{test['diff']:+.3f} (p={p})"


def _paper(entry: Mapping[str, Any]) -> str:
    """The paper-convention means (no CI, to keep the table narrow) as ``Dice / HD95 / ASD``."""
    dice, hd95, asd = (entry.get(m, {}).get("mean") for m in PAPER_METRICS)
    if dice is None:
        return "n/a"
    return f"{dice:.3f} / {hd95:.2f} / {asd:.2f}"


def render_markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        "# Benchmark report",
        "",
        "Mean +- 95 % CI over seeds (t distribution) of the per-run mean over test cases. Paired columns: Dice of",
        "the method minus the reference, per test case averaged over the shared seeds, with the Wilcoxon signed-rank",
        "p-value over test cases. Gap recovered: share of the supervised-to-upper-bound Dice gap. Paper convention:",
        "the same predictions scored as the DyCON evaluation code does (medpy hd95, directed ASD, see metric_policy).",
        "",
        "| labeled | method | seeds | Dice | HD95 (mm) | ASD (mm) | paper convention Dice / HD95 / ASD | NaN cases (Dice/HD95/ASD) "
        "| vs supervised | vs mean_teacher | gap recovered |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary["table"]:
        vs = e.get("vs", {})
        gap = e.get("gap_recovered")
        nan = "/".join(str(e[m]["nan_cases"]) for m in METRICS)
        label = "all (upper bound)" if e["labeled_count"] == ALL else e["labeled_count"]
        lines.append(
            f"| {label} | {e['method']} | {len(e['seeds'])} | {_fmt(e['dice'], 3)} | {_fmt(e['hd95_mm'], 2)} "
            f"| {_fmt(e['asd_mm'], 2)} | {_paper(e)} | {nan} | {_p(vs.get('supervised'))} "
            f"| {_p(vs.get('mean_teacher'))} | {'n/a' if gap is None else f'{gap:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


def plot_report(summary: Mapping[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    by_method: dict[str, list] = defaultdict(list)
    for e in summary["table"]:
        if e["labeled_count"] != ALL and e["dice"]["mean"] is not None:
            by_method[e["method"]].append((float(e["labeled_count"]), e["dice"]["mean"], e["dice"]["ci"] or 0.0))
    counts: set[float] = set()
    for method, pts in sorted(by_method.items()):
        pts.sort()
        x, y, ci = (np.asarray(v) for v in zip(*pts))
        counts |= set(x.tolist())
        ax.plot(x, y, marker="o", label=method)
        ax.fill_between(x, y - ci, y + ci, alpha=0.15)
    if summary.get("upper_bound_dice") is not None:
        ax.axhline(summary["upper_bound_dice"], ls="--", color="k", label="supervised, all labels")
    ax.set_xticks(sorted(counts))
    ax.set_xlabel("labeled training cases")
    ax.set_ylabel("test Dice (mean over seeds, 95 % CI)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = atomic_save_figure(fig, path)
    plt.close(fig)
    return out


def write_report(out: str | Path) -> dict[str, Any]:
    """Write ``results.csv``, ``report.json``, ``report.md`` and ``report.png`` under ``out``; returns the summary."""
    out = Path(out)
    rows = collect_results(out)
    atomic_write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    summary = summarize(rows)
    atomic_write_json(out / "report.json", summary)
    atomic_write_text(out / "report.md", render_markdown(summary))
    if rows:
        plot_report(summary, out / "report.png")
    return summary


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``results.csv`` (numbers as floats), e.g. to recompute a report cell."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in METRICS + PAPER_METRICS:
            r[k] = _float(r[k])
    return rows
