"""Command line of the benchmark harness: ``python -m dycon_monai.benchmark run|report``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .grid import build_grid
from .report import write_report
from .runner import run_grid

__all__ = ["main"]


def _overrides(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--override takes key=value items; got {item!r}")
        out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dycon_monai.benchmark", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the grid (finished runs are skipped), then write the report")
    run.add_argument("--bundle", required=True, help="bundle folder, e.g. bundles/dycon_la")
    run.add_argument("--dataset_dir", required=True)
    run.add_argument("--out", required=True, help="benchmark folder (runs/, results.csv, report.*)")
    run.add_argument("--methods", nargs="+", default=["supervised", "mean_teacher", "mt_uncl", "mt_fecl", "dycon"])
    run.add_argument("--labeled_counts", nargs="+", default=["4", "8"])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.add_argument(
        "--upper_bound",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train supervised on every training label (default on)",
    )
    run.add_argument(
        "--configs",
        nargs="*",
        default=[],
        help="override files after train.json (bundle configs/ names or paths), e.g. cpu_quick.json",
    )
    run.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="bundle keys for every run")
    run.add_argument("--stop_on_error", action="store_true")
    run.add_argument("--dry_run", action="store_true", help="print the commands only")
    rep = sub.add_parser("report", help="(re)write results.csv, report.md/.json/.png from finished runs")
    rep.add_argument("--out", required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "report":
        summary = write_report(args.out)
        print(f"{summary['n_rows']} result rows; wrote {Path(args.out) / 'report.md'}")
        return 0
    bundle = Path(args.bundle)
    if not (bundle / "configs" / "train.json").is_file():
        raise SystemExit(f"{bundle} is not a bundle folder (no configs/train.json)")
    grid = build_grid(bundle.name, args.methods, args.labeled_counts, args.seeds, args.upper_bound)
    results = run_grid(
        grid,
        bundle,
        args.dataset_dir,
        args.out,
        args.configs,
        _overrides(args.override),
        stop_on_error=args.stop_on_error,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        return 0
    summary = write_report(args.out)
    failed = [r["run"]["run_name"] for r in results if r["status"] == "failed"]
    print(
        f"{len(results)} runs ({len(failed)} failed); {summary['n_rows']} result rows; "
        f"report: {Path(args.out) / 'report.md'}"
    )
    if failed:
        print("failed runs: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0
