"""Benchmark harness: grid and command lines, resumable runner, report statistics recomputed independently."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from dycon_monai.benchmark import build_grid, run_grid, write_report
from dycon_monai.benchmark.grid import METHOD_CONFIGS, evaluate_command, train_command
from dycon_monai.benchmark.report import load_results

REPO = Path(__file__).resolve().parents[2]


def test_grid_order_names_and_upper_bound_last():
    grid = build_grid("dycon_la", ["supervised", "dycon"], [4, 8], [0, 1], upper_bound=True)
    names = [g.name for g in grid]
    assert names[:2] == ["dycon_la__supervised__n4__s0", "dycon_la__dycon__n4__s0"]
    assert names[-2:] == ["dycon_la__supervised__nall__s0", "dycon_la__supervised__nall__s1"]
    assert len(names) == len(set(names)) == 2 * 2 * 2 + 2
    assert len(build_grid("b", ["dycon"], [4], [0], upper_bound=False)) == 1
    with pytest.raises(ValueError):
        build_grid("b", ["dycon"], [0], [0])


def test_commands_use_the_bundle_configs_and_overrides(tmp_path):
    spec = build_grid("dycon_la", ["dycon"], [8], [2], upper_bound=False)[0]
    bundle = REPO / "bundles" / "dycon_la"
    train = train_command(spec, bundle, "/data", tmp_path, ["cpu_quick.json"], {"patch_size": [48, 48, 32]})
    ev = evaluate_command(spec, bundle, "/data", tmp_path, ["cpu_quick.json"], {})
    assert train[1:4] == ["-m", "monai.bundle", "run"]
    files = eval(train[train.index("--config_file") + 1])  # a Python list literal, as the bundle CLI reads it
    assert [Path(f).name for f in files] == ["train.json", "cpu_quick.json"]
    assert [Path(f).name for f in eval(ev[ev.index("--config_file") + 1])][-1] == "evaluate.json"
    for cmd in (train, ev):
        assert cmd[cmd.index("--method") + 1] == "dycon" and cmd[cmd.index("--labeled_count") + 1] == "8"
        assert cmd[cmd.index("--seed") + 1] == "2"
    assert train[train.index("--patch_size") + 1] == "[48,48,32]"
    assert ev[ev.index("--model_path") + 1].endswith("dycon_la__dycon__n8__s2/train/models/model.pt")
    assert ev[ev.index("--run_name") + 1] == "eval" and train[train.index("--run_name") + 1] == "train"


def test_co_training_methods_add_their_bundle_configs_after_the_chosen_ones(tmp_path):
    bundle = REPO / "bundles" / "dycon_la"
    expected = {
        "cps": ["train.json", "cpu_quick.json", "co_training.json"],
        "dual_cce": ["train.json", "cpu_quick.json", "co_training.json", "dual_cce.json"],
        "mean_teacher": ["train.json", "cpu_quick.json"],
    }
    for method, names in expected.items():
        spec = build_grid("dycon_la", [method], [4], [0], upper_bound=False)[0]
        train = train_command(spec, bundle, "/data", tmp_path, ["cpu_quick.json"], {})
        ev = evaluate_command(spec, bundle, "/data", tmp_path, ["cpu_quick.json"], {})
        assert [Path(f).name for f in eval(train[train.index("--config_file") + 1])] == names
        assert [Path(f).name for f in eval(ev[ev.index("--config_file") + 1])] == [*names, "evaluate.json"]
        assert all((bundle / "configs" / n).is_file() for n in names)


@pytest.mark.parametrize(
    "bundle", sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "train.json").is_file())
)
@pytest.mark.parametrize("method", ["dycon", "cps_dycon"])
def test_every_bundle_takes_the_harness_command_lines(bundle, method, tmp_path):
    """The harness's config lists and keys exist in every bundle (parsed, not run)."""
    from dycon_monai.bundle import DyconWorkflow

    root = REPO / "bundles" / bundle
    if method in METHOD_CONFIGS and not all((root / "configs" / n).is_file() for n in METHOD_CONFIGS[method]):
        pytest.skip(f"{bundle} has no co-training configs")
    spec = build_grid(bundle, [method], [4], [0], upper_bound=False)[0]
    for cmd in (train_command(spec, root, "/data", tmp_path), evaluate_command(spec, root, "/data", tmp_path)):
        files = eval(cmd[cmd.index("--config_file") + 1])
        keys = {
            a[2:]: cmd[i + 1]
            for i, a in enumerate(cmd)
            if a.startswith("--") and a[2:] not in ("config_file", "workflow_name")
        }
        parser = DyconWorkflow(config_file=files, logging_file=False, **keys).parser
        parser.parse()
        assert parser["method"] == method and str(parser["labeled_count"]) == "4"


# ------------------------------------------------------------------------------------- fabricated run folders

CASES = [f"c{i}" for i in range(5)]


def _dice(method: str, count, seed: int, case: int) -> float:
    base = {"supervised": 0.60, "dycon": 0.70}[method] if count != "all" else 0.90
    return base + 0.01 * seed + 0.02 * case + (0.005 * case * case if method == "dycon" else 0.0)


def _fabricate(out: Path, method: str, count, seed: int, nan_case: bool = False) -> None:
    name = f"b__{method}__n{count}__s{seed}"
    run = out / "runs" / name
    (run / "eval").mkdir(parents=True)
    with open(run / "eval" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["case_id", "dice", "hd95_mm", "asd_mm", "paper_dice"])
        w.writeheader()
        for i, c in enumerate(CASES):
            hd = "nan" if nan_case and i == 0 else 5.0 + i
            w.writerow(
                {"case_id": c, "dice": _dice(method, count, seed, i), "hd95_mm": hd, "asd_mm": 1.0, "paper_dice": ""}
            )
    (run / "eval" / "summary.json").write_text("{}")
    rec = {
        "run": {"bundle": "b", "method": method, "labeled_count": count, "seed": seed, "run_name": name},
        "status": "done",
        "steps": {"train": {"status": "done", "wall_s": 10.0}, "evaluate": {"status": "done", "wall_s": 2.0}},
    }
    (run / "harness_run.json").write_text(json.dumps(rec))


@pytest.fixture
def fabricated(tmp_path):
    for seed in range(3):
        for method in ("supervised", "dycon"):
            for count in (4, 8):
                _fabricate(tmp_path, method, count, seed, nan_case=(method == "dycon" and count == 4 and seed == 1))
        _fabricate(tmp_path, "supervised", "all", seed)
    (tmp_path / "runs" / "unfinished").mkdir()  # no outputs: not collected
    return tmp_path


def test_report_files_and_one_row_per_run_and_case(fabricated):
    write_report(fabricated)
    for name in ("results.csv", "report.md", "report.json", "report.png"):
        assert (fabricated / name).is_file(), name
    rows = load_results(fabricated / "results.csv")
    assert len(rows) == (3 * 2 * 2 + 3) * len(CASES)
    assert "all (upper bound)" in (fabricated / "report.md").read_text()


def _cell(summary, method, count):
    return next(e for e in summary["table"] if e["method"] == method and e["labeled_count"] == str(count))


def test_ci_cell_recomputed_from_the_per_case_rows(fabricated):
    summary = write_report(fabricated)
    rows = load_results(fabricated / "results.csv")
    per_seed = []
    for seed in range(3):
        v = [
            r["hd95_mm"]
            for r in rows
            if r["method"] == "dycon" and r["labeled_count"] == "4" and int(r["seed"]) == seed
        ]
        per_seed.append(np.nanmean(v))
    sd = np.std(per_seed, ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    cell = _cell(summary, "dycon", 4)["hd95_mm"]
    assert cell["mean"] == pytest.approx(np.mean(per_seed)) and cell["ci"] == pytest.approx(half)
    assert cell["nan_cases"] == 1
    stored = json.loads((fabricated / "report.json").read_text())
    assert _cell(stored, "dycon", 4)["hd95_mm"]["ci"] == pytest.approx(half)


def test_paired_wilcoxon_and_gap_recovered(fabricated):
    summary = write_report(fabricated)
    rows = load_results(fabricated / "results.csv")

    def case_means(method):
        return [
            np.mean(
                [r["dice"] for r in rows if r["method"] == method and r["labeled_count"] == "8" and r["case_id"] == c]
            )
            for c in CASES
        ]

    d = np.asarray(case_means("dycon")) - np.asarray(case_means("supervised"))
    test = _cell(summary, "dycon", 8)["vs"]["supervised"]
    assert test["diff"] == pytest.approx(d.mean())
    assert test["p"] == pytest.approx(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    assert test["n_cases"] == 5 and test["seeds"] == [0, 1, 2]
    sup = np.mean(case_means("supervised"))
    upper = np.mean([r["dice"] for r in rows if r["labeled_count"] == "all"])
    dyc = np.mean(case_means("dycon"))
    assert _cell(summary, "dycon", 8)["gap_recovered"] == pytest.approx((dyc - sup) / (upper - sup))
    assert _cell(summary, "dycon", 8)["vs"]["mean_teacher"]["diff"] is None  # reference absent


# ------------------------------------------------------------------------------------------ resumable runner

_FAKE_TRAIN = (
    "import pathlib, sys; d = pathlib.Path(sys.argv[1]) / 'train' / 'models'; d.mkdir(parents=True, exist_ok=True); "
    "(d / 'model.pt').write_text('w'); open(sys.argv[2], 'a').write('train\\n'); "
    "sys.exit(3 if 'fail' in sys.argv[1] else 0)"
)
_FAKE_EVAL = (
    "import pathlib, sys; d = pathlib.Path(sys.argv[1]) / 'eval'; d.mkdir(parents=True, exist_ok=True); "
    "(d / 'metrics.csv').write_text('case_id,dice\\nc0,0.5\\n'); (d / 'summary.json').write_text('{}'); "
    "open(sys.argv[2], 'a').write('eval\\n')"
)


def test_runner_skips_finished_runs_and_records_failures(tmp_path):
    calls = tmp_path / "calls.txt"

    def train_fn(spec, root):
        return [sys.executable, "-c", _FAKE_TRAIN, str(Path(root) / spec.name), str(calls)]

    def eval_fn(spec, root):
        return [sys.executable, "-c", _FAKE_EVAL, str(Path(root) / spec.name), str(calls)]

    grid = build_grid("b", ["supervised", "fail"], [2], [0], upper_bound=False)
    out = tmp_path / "bench"
    first = run_grid(grid, "b", "/data", out, train_fn=train_fn, evaluate_fn=eval_fn, progress=False)
    assert [r["status"] for r in first] == ["done", "failed"]
    assert calls.read_text().splitlines() == ["train", "eval", "train"]
    failed = json.loads((out / "runs" / "b__fail__n2__s0" / "harness_run.json").read_text())
    assert failed["failed_step"] == "train" and failed["steps"]["train"]["returncode"] == 3
    second = run_grid(grid, "b", "/data", out, train_fn=train_fn, evaluate_fn=eval_fn, progress=False)
    assert [r["status"] for r in second] == ["skipped", "failed"]
    assert calls.read_text().splitlines() == ["train", "eval", "train", "train"]
    harness = json.loads((out / "harness.json").read_text())
    assert harness["status"] == {"b__supervised__n2__s0": "skipped", "b__fail__n2__s0": "failed"}
    # a run trained earlier but not evaluated is only evaluated
    rec_path = out / "runs" / "b__supervised__n2__s0" / "harness_run.json"
    rec = json.loads(rec_path.read_text())
    rec["status"], rec["steps"]["evaluate"]["status"] = "running", "failed"
    rec_path.write_text(json.dumps(rec))
    run_grid(grid[:1], "b", "/data", out, train_fn=train_fn, evaluate_fn=eval_fn, progress=False)
    assert calls.read_text().splitlines()[-1] == "eval" and calls.read_text().count("train") == 3


# ------------------------------------------------------------------------------ the real bundle, end to end


@pytest.mark.slow
def test_tiny_grid_end_to_end_on_synthetic_la(synthetic_la, tmp_path):
    """Two methods, one seed, two iterations of the dycon_la bundle on the synthetic h5 stand-in."""
    sys.path.insert(0, str(REPO / "tests" / "bundles"))
    from bundle_overrides import LA_TINY

    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps(dict(LA_TINY, split_file=str(synthetic_la / "split.json"))))
    from dycon_monai.benchmark.cli import main

    out = tmp_path / "bench"
    args = ["run", "--bundle", str(REPO / "bundles" / "dycon_la"), "--dataset_dir", str(synthetic_la)]
    args += ["--out", str(out), "--methods", "supervised", "dycon", "--labeled_counts", "2", "--seeds", "0"]
    args += ["--no-upper_bound", "--configs", str(tiny)]
    assert main(args) == 0
    rows = load_results(out / "results.csv")
    assert len(rows) == 2 * 3  # 2 runs x 3 test cases
    summary = json.loads((out / "report.json").read_text())
    cell = _cell(summary, "dycon", 2)["dice"]
    assert cell["mean"] == pytest.approx(np.nanmean([r["dice"] for r in rows if r["method"] == "dycon"]))
    assert (out / "report.md").is_file() and (out / "report.png").is_file()
    assert main(args) == 0  # resumed: nothing left to run
    assert all(s == "skipped" for s in json.loads((out / "harness.json").read_text())["status"].values())
