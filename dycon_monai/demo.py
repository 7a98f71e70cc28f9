"""End-to-end demo on the synthetic cohort: build the data, train with the bundle, evaluate, print the metrics.

``make demo`` runs ``python -m dycon_monai.demo``. Every step goes through the public entry points, so the demo is
also a worked example of them:

1. ``make_synthetic_cohort`` writes a small ISLES'22-layout cohort (``<out>/data``; reused when it already holds the
   same cohort);
2. ``python -m monai.bundle run --config_file "['.../train.json', '.../demo.json']" --workflow_name
   dycon_monai.bundle.DyconWorkflow --dataset_dir <out>/data`` trains
   (DyCON by default, ``--method supervised`` for the baseline) on CPU with a progress bar, into a new run folder
   ``<out>/<method>_<time>``;
3. the same command with ``evaluate.json`` evaluates the best model on the held-out test cases, writing
   ``metrics.csv``, ``summary.json``, overlay PNGs and entropy maps into ``<run>/eval_test``;
4. the metrics table is printed, with the training curves saved as ``<run>/training_curves.png``.

Arguments that the demo does not know are passed on to the training command, e.g.
``python -m dycon_monai.demo --max_iterations 100``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dycon_monai.bundle.workflow import WORKFLOW_NAME
from dycon_monai.utils.run_record import read_run_record

__all__ = ["BUNDLE_DIR", "format_metrics_table", "main", "prepare_cohort", "run_bundle"]

#: the bundle folder inside a source checkout (``bundles/dycon_isles``)
BUNDLE_DIR = Path(__file__).resolve().parent.parent / "bundles" / "dycon_isles"

_TABLE_ROWS = (
    ("Dice", "dice", None),
    ("IoU", "iou", None),
    ("HD95 (mm)", "hd95_mm", "hd95_vox"),
    ("ASD (mm)", "asd_mm", "asd_vox"),
)


def _config(name: str, bundle_dir: Path) -> str:
    return str(bundle_dir / "configs" / name)


def _config_list(names: Sequence[str], bundle_dir: Path) -> str:
    return "[" + ",".join(repr(_config(n, bundle_dir)) for n in names) + "]"


def prepare_cohort(data_dir: Path, cases: int, seed: int, spacing: float) -> Path:
    """Build the synthetic cohort in ``data_dir``, or reuse it when it already holds the same cohort.

    Raises:
        FileExistsError: ``data_dir`` holds a different cohort or other data.
    """
    from dycon_monai.data import make_synthetic_cohort

    summary = data_dir / "synthetic_cohort.json"
    if summary.is_file():
        info = json.loads(summary.read_text())
        same = int(info.get("cases", -1)) == cases and int(info.get("seed", -1)) == seed
        same = same and all(math.isclose(float(s), spacing) for s in info.get("spacing", [None]))
        if same:
            print(
                f"[demo] reusing the synthetic cohort in {data_dir} ({cases} cases, {spacing:g} mm, seed {seed})",
                flush=True,
            )
            return data_dir
        raise FileExistsError(
            f"{data_dir} holds a different synthetic cohort ({info.get('cases')} cases, spacing {info.get('spacing')}, "
            f"seed {info.get('seed')}); remove it or pass --out to another folder."
        )
    if data_dir.exists() and any(data_dir.iterdir()):
        raise FileExistsError(f"{data_dir} is not empty and holds no synthetic cohort; pass --out to another folder.")
    print(
        f"[demo] building a synthetic ISLES'22-like cohort: {cases} cases at {spacing:g} mm in {data_dir}", flush=True
    )
    make_synthetic_cohort(data_dir, cases=cases, seed=seed, spacing=spacing, lesion_free=0)
    return data_dir


def run_bundle(config_names: Sequence[str], overrides: Sequence[str], bundle_dir: Path = BUNDLE_DIR) -> None:
    """Run ``python -m monai.bundle run`` with the given configs and ``--key value`` overrides, streaming its output.

    Raises:
        subprocess.CalledProcessError: the bundle command failed (its output is above the error).
    """
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        _config_list(config_names, bundle_dir),
        "--workflow_name",
        WORKFLOW_NAME,
        *overrides,
    ]
    shown = ["python", *cmd[1:4], *(f'"{c}"' if c.startswith("[") else c for c in cmd[4:])]
    print("[demo] $ " + " ".join(shown), flush=True)
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    subprocess.run(cmd, check=True, env=env)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def format_metrics_table(summary: dict) -> str:
    """The metrics of an evaluation ``summary.json`` as a plain-text table (mean +- std over cases)."""
    metrics = summary.get("metrics", {})
    lines = [f"{'metric':<11}{'mean':>9}{'std':>9}   {'in voxels':>18}   cases"]
    for label, key, vox in _TABLE_ROWS:
        m = metrics.get(key, {})
        text = f"{label:<11}{_fmt(m.get('mean')):>9}{_fmt(m.get('std')):>9}   "
        if vox is not None:
            v = metrics.get(vox, {})
            text += f"{_fmt(v.get('mean')) + ' +- ' + _fmt(v.get('std')):>18}   "
        else:
            text += f"{'':>18}   "
        n, undefined = m.get("n", 0), m.get("n_undefined", 0)
        text += f"{n}" + (f" ({undefined} undefined: empty mask)" if undefined else "")
        lines.append(text)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of the demo; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dycon_monai.demo",
        description="Synthetic-data demo of the dycon_isles bundle: build data, train, evaluate, print metrics.",
    )
    parser.add_argument("--out", default="demo_runs", help="demo folder (data and runs), default demo_runs")
    parser.add_argument("--method", default="dycon", help="training method (dycon, supervised, mean_teacher, ...)")
    parser.add_argument("--cases", type=int, default=40, help="synthetic cases (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="cohort and training seed (default 0)")
    parser.add_argument("--spacing", type=float, default=3.0, help="synthetic voxel spacing in mm (default 3)")
    parser.add_argument("--bundle", default=str(BUNDLE_DIR), help="bundle folder (default: bundles/dycon_isles)")
    args, extra = parser.parse_known_args(argv)

    start = time.monotonic()
    out = Path(args.out).absolute()
    bundle_dir = Path(args.bundle).absolute()
    if not (bundle_dir / "configs" / "train.json").is_file():
        parser.error(f"no bundle at {bundle_dir} (expected configs/train.json); pass --bundle")
    data_dir = prepare_cohort(out / "data", args.cases, args.seed, args.spacing)
    t_data = time.monotonic()

    run_name = f"{args.method}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = out / run_name
    common = ["--dataset_dir", str(data_dir), "--seed", str(args.seed)]
    run_bundle(
        ["train.json", "demo.json"],
        [*common, "--output_dir", str(out), "--run_name", run_name, "--method", args.method, *extra],
        bundle_dir,
    )
    t_train = time.monotonic()

    model = run_dir / "models" / "model.pt"
    run_bundle(
        ["train.json", "demo.json", "evaluate.json"],
        [*common, "--output_dir", str(run_dir), "--run_name", "eval_test", "--model_path", str(model)],
        bundle_dir,
    )
    t_eval = time.monotonic()

    eval_dir = run_dir / "eval_test"
    summary = json.loads((eval_dir / "summary.json").read_text())
    curves = run_dir / "training_curves.png"
    try:
        from dycon_monai.evaluation import plot_training_curves

        plot_training_curves(run_dir, curves)
    except Exception as err:  # the pictures are a convenience; the metrics are already written
        print(f"[demo] could not draw the training curves: {type(err).__name__}: {err}")
        curves = None

    info = read_run_record(run_dir)
    print()
    print(
        f"[demo] held-out synthetic test cases: {summary.get('n_cases')} | method {args.method} | "
        f"{info.get('labeled_cases')} labeled + {info.get('unlabeled_cases')} unlabeled training cases | "
        f"{info.get('max_iterations')} iterations"
    )
    print(format_metrics_table(summary))
    print()
    print(f"[demo] per-case metrics : {eval_dir / 'metrics.csv'}")
    print(f"[demo] summary          : {eval_dir / 'summary.json'}")
    print(f"[demo] overlays (PNG)   : {eval_dir / 'overlays'}")
    print(f"[demo] entropy maps     : {eval_dir / 'entropy'}")
    print(f"[demo] model weights    : {model}")
    if curves is not None:
        print(f"[demo] training curves  : {curves}")
    print(f"[demo] TensorBoard logs : tensorboard --logdir {run_dir}")
    print(
        f"[demo] time: data {t_data - start:.0f} s, training {t_train - t_data:.0f} s, "
        f"evaluation {t_eval - t_train:.0f} s, total {time.monotonic() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
