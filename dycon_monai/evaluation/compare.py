"""Compare evaluated runs in one markdown report, with the DyCON paper's numbers beside them.

Usage::

    python -m dycon_monai.evaluation.compare RUN_DIR [RUN_DIR ...] --out report.md [--plot report.png]

Each ``RUN_DIR`` holds what :class:`~dycon_monai.handlers.metrics_writer.CaseMetricsWriter` writes
(``summary.json``, ``metrics.csv``; see ``docs/evaluation.md``). Run metadata (``method``, ``labeled_fraction``,
``dataset``) is read from ``summary.json["run"]``, else ``run_info.json``, else ``config.json`` in ``RUN_DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dycon_monai.evaluation._io import read_metrics_csv
from dycon_monai.evaluation.strata import DISTRIBUTION_STRATA, SIZE_STRATA, summarize_cases
from dycon_monai.utils.io import atomic_save_figure, atomic_write_text
from dycon_monai.utils.run_record import read_run_record

__all__ = [
    "PAPER_RESULTS",
    "METHOD_ALIASES",
    "RunResult",
    "load_run",
    "paper_result",
    "render_report",
    "plot_comparison",
    "compare_runs",
    "main",
]

#: DyCON paper (CVPR 2025) numbers: (dataset, method, labeled fraction) -> Dice %, IoU %, HD95, ASD.
#: ISLES'22 from Table 1; BraTS'19, LA and Pancreas-CT from Tables 2-4 (DyCON rows). The paper states no distance
#: unit; as the project specification decides, reports put these beside our voxel columns.
PAPER_RESULTS: dict[tuple[str, str, float], dict[str, float | None]] = {
    ("isles22", "mean_teacher", 0.05): {"dice": 29.22, "iou": 20.41, "hd95": 20.18, "asd": 8.55},
    ("isles22", "bcp", 0.05): {"dice": 53.53, "iou": 41.12, "hd95": 37.06, "asd": 6.91},
    ("isles22", "dycon", 0.05): {"dice": 61.48, "iou": 48.80, "hd95": 17.61, "asd": 0.75},
    ("isles22", "mean_teacher", 0.10): {"dice": 36.43, "iou": 24.01, "hd95": 21.80, "asd": 7.22},
    ("isles22", "bcp", 0.10): {"dice": 57.97, "iou": 44.32, "hd95": 30.09, "asd": 4.58},
    ("isles22", "dycon", 0.10): {"dice": 65.71, "iou": 51.09, "hd95": 13.35, "asd": 0.71},
    ("isles22", "mean_teacher", 0.20): {"dice": 37.70, "iou": 26.33, "hd95": 19.00, "asd": 6.45},
    ("isles22", "bcp", 0.20): {"dice": 60.35, "iou": 46.41, "hd95": 29.63, "asd": 3.64},
    ("isles22", "dycon", 0.20): {"dice": 69.11, "iou": 54.74, "hd95": 10.58, "asd": 0.52},
    ("brats19", "dycon", 0.10): {"dice": 87.05, "iou": 77.73, "hd95": 7.41, "asd": 1.14},
    ("la", "dycon", 0.10): {"dice": 92.77, "iou": 86.21, "hd95": 4.20, "asd": 1.23},
    ("pancreas", "dycon", 0.20): {"dice": 84.81, "iou": 73.86, "hd95": 5.41, "asd": 1.44},
}

#: Spellings accepted for the methods that have paper numbers (lower-cased, ``-`` and spaces as ``_``).
METHOD_ALIASES: dict[str, str] = {
    "mt": "mean_teacher",
    "meanteacher": "mean_teacher",
    "mean_teacher": "mean_teacher",
    "dycon": "dycon",
    "mt_uncl_fecl": "dycon",
    "bcp": "bcp",
}
_DATASET_ALIASES = {"isles": "isles22", "isles22": "isles22", "isles_22": "isles22", "isles2022": "isles22"}


class RunResult(dict):
    """One run: ``dir``, ``name``, ``method``, ``labeled_fraction``, ``dataset``, ``summary`` (as in summary.json)."""


def _norm(s: Any) -> str:
    return str(s).strip().lower().replace("-", "_").replace(" ", "_")


def _fraction(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(str(v).strip().rstrip("%"))
    except ValueError:
        return None
    if str(v).strip().endswith("%") or f > 1.0:
        f /= 100.0
    return f


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}.")
    return obj


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read one run folder (``summary.json`` and/or ``metrics.csv`` plus metadata).

    Raises:
        FileNotFoundError: if the folder has neither ``summary.json`` nor ``metrics.csv``.
    """
    run_dir = Path(run_dir)
    summary_path, csv_path = run_dir / "summary.json", run_dir / "metrics.csv"
    summary: dict[str, Any] | None = _read_json(summary_path) if summary_path.is_file() else None
    if summary is None or "metrics" not in summary:
        if not csv_path.is_file():
            raise FileNotFoundError(f"{run_dir}: neither summary.json (with 'metrics') nor metrics.csv found.")
        run_part = (summary or {}).get("run", {})
        summary = summarize_cases(read_metrics_csv(csv_path), run_info=run_part)
    meta: dict[str, Any] = read_run_record(run_dir, scalars_only=True)  # run_info.json over config.json
    meta.update(summary.get("run") or {})  # summary.json["run"] overrides both
    return RunResult(
        dir=str(run_dir),
        name=str(meta.get("name") or run_dir.name),
        method=str(meta.get("method", "unknown")),
        labeled_fraction=_fraction(meta.get("labeled_fraction")),
        dataset=_DATASET_ALIASES.get(_norm(meta.get("dataset", "isles22")), _norm(meta.get("dataset", "isles22"))),
        summary=summary,
    )


def paper_result(dataset: str, method: str, labeled_fraction: float | None) -> dict[str, float | None] | None:
    """The paper's numbers for a setting, or ``None`` when the paper has none."""
    if labeled_fraction is None:
        return None
    key = METHOD_ALIASES.get(_norm(method))
    ds = _DATASET_ALIASES.get(_norm(dataset), _norm(dataset))
    for (d, m, f), res in PAPER_RESULTS.items():
        if d == ds and m == key and math.isclose(f, labeled_fraction, abs_tol=1e-6):
            return res
    return None


def _fmt(stat: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    s = f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"
    if stat.get("n_undefined"):
        s += f" ({stat['n_undefined']} undef.)"
    return s


def _pct(f: float | None) -> str:
    return "?" if f is None else f"{100 * f:g}%"


def _paper(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def render_report(runs: Sequence[RunResult], plot_name: str | None = None) -> str:
    """Markdown report: all runs with the paper's numbers, strata tables, empty-case counts and the chart."""
    lines = [
        "# Evaluation report",
        "",
        "Per-case metrics averaged over cases (mean ± std, population std). Dice and IoU in %, distances in mm "
        "(image spacing) and in voxels. Paper columns: DyCON (CVPR 2025) Tables 1-4 for the same dataset, method "
        "and labeled fraction; their distances sit beside our voxel columns. 'undef.': cases whose distance is "
        "undefined because exactly one of prediction and ground truth is empty (left out of the mean).",
        "",
        "## All runs",
        "",
        "| run | method | labeled | n | Dice % | IoU % | HD95 mm | ASD mm | HD95 vox | ASD vox | lesion F1 "
        "| abs vol diff ml | abs count diff | paper Dice % | paper IoU % | paper HD95 | paper ASD |",
        "|" + "---|" * 17,
    ]
    for r in runs:
        m = r["summary"]["metrics"]
        p = paper_result(r["dataset"], r["method"], r["labeled_fraction"]) or {}
        lines.append(
            f"| {r['name']} | {r['method']} | {_pct(r['labeled_fraction'])} | {r['summary'].get('n_cases', '?')} "
            f"| {_fmt(m.get('dice'), 100)} | {_fmt(m.get('iou'), 100)} | {_fmt(m.get('hd95_mm'))} "
            f"| {_fmt(m.get('asd_mm'))} | {_fmt(m.get('hd95_vox'))} | {_fmt(m.get('asd_vox'))} "
            f"| {_fmt(m.get('lesion_f1'), 1, 3)} | {_fmt(m.get('abs_volume_diff_ml'))} "
            f"| {_fmt(m.get('abs_lesion_count_diff'), 1, 1)} | {_paper(p.get('dice'))} | {_paper(p.get('iou'))} "
            f"| {_paper(p.get('hd95'))} | {_paper(p.get('asd'))} |"
        )
    for axis, names, caption in (
        ("size", SIZE_STRATA, "lesion volume (small < 12 ml <= medium < 24 ml <= large)"),
        ("distribution", DISTRIBUTION_STRATA, "lesion distribution (single = 1 lesion, scattered > 1)"),
    ):
        lines += [
            "",
            f"## Strata by {caption}",
            "",
            "Dice % (mean ± std) and HD95 in voxels per stratum; n = cases in the stratum.",
            "",
            "| run | method | labeled | " + " | ".join(f"{s} Dice % | {s} HD95 vox" for s in names) + " |",
            "|" + "---|" * (3 + 2 * len(names)),
        ]
        for r in runs:
            st = r["summary"].get("strata", {}).get(axis, {})
            cells = []
            for s in names:
                g = st.get(s, {})
                gm = g.get("metrics", {})
                cells.append(f"{_fmt(gm.get('dice'), 100)} (n={g.get('n', 0)}) | {_fmt(gm.get('hd95_vox'))}")
            lines.append(f"| {r['name']} | {r['method']} | {_pct(r['labeled_fraction'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Empty cases",
        "",
        "| run | both empty | only label empty | only prediction empty | distance undefined |",
        "|---|---|---|---|---|",
    ]
    for r in runs:
        e = r["summary"].get("empty_policy", {})
        lines.append(
            f"| {r['name']} | {e.get('n_both_empty', '?')} | {e.get('n_empty_label_only', '?')} "
            f"| {e.get('n_empty_pred_only', '?')} | {e.get('n_distance_undefined', '?')} |"
        )
    lines += ["", "Empty policy: both empty: Dice 1, distances 0; one empty: Dice 0, distances undefined."]
    if plot_name:
        lines += ["", f"![Dice and HD95 per run]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot_comparison(runs: Sequence[RunResult], out_png: str | os.PathLike, dpi: int = 100) -> Path:
    """Bar chart: Dice % and HD95 (voxels) per run with std error bars, the paper's value as a hatched bar."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["name"] for r in runs]
    x = np.arange(len(runs))
    width = 0.38
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(runs) + 3), 4.0), squeeze=False)
    for ax, key, paper_key, scale, label in (
        (axes[0, 0], "dice", "dice", 100.0, "Dice %"),
        (axes[0, 1], "hd95_vox", "hd95", 1.0, "HD95 (voxels)"),
    ):
        means, stds, paper = [], [], []
        for r in runs:
            st = r["summary"]["metrics"].get(key) or {}
            means.append(np.nan if st.get("mean") is None else st["mean"] * scale)
            stds.append(0.0 if st.get("std") is None else st["std"] * scale)
            p = paper_result(r["dataset"], r["method"], r["labeled_fraction"]) or {}
            paper.append(np.nan if p.get(paper_key) is None else p[paper_key])
        ax.bar(x - width / 2, means, width, yerr=stds, capsize=3, label="this run", color="tab:blue")
        if not np.all(np.isnan(paper)):
            ax.bar(x + width / 2, paper, width, label="paper", color="white", edgecolor="tab:gray", hatch="//")
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f"{n}\n{r['method']} {_pct(r['labeled_fraction'])}" for n, r in zip(names, runs)], fontsize=8
        )
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_save_figure(fig, out_png, dpi=dpi)
    finally:
        plt.close(fig)


def compare_runs(
    run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, plot: str | os.PathLike | None = None
) -> tuple[Path, Path]:
    """Write the markdown report ``out`` and the bar chart ``plot`` (default: ``out`` with ``.png``)."""
    if not run_dirs:
        raise ValueError("compare_runs: give at least one run folder.")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out)
    plot_path = Path(plot) if plot is not None else out.with_suffix(".png")
    plot_comparison(runs, plot_path)
    rel = os.path.relpath(plot_path, out.parent if str(out.parent) else ".")
    atomic_write_text(out, render_report(runs, plot_name=rel))
    return out, plot_path


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dycon_monai.evaluation.compare",
        description="Compare evaluated runs (summary.json / metrics.csv) in a markdown report with the paper's numbers.",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by CaseMetricsWriter")
    parser.add_argument("--out", required=True, help="markdown report path, e.g. report.md")
    parser.add_argument("--plot", default=None, help="bar chart PNG path (default: the report path with .png)")
    args = parser.parse_args(argv)
    try:
        out, plot = compare_runs(args.run_dirs, args.out, args.plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
