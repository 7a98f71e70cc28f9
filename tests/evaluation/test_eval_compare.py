from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dycon_monai.evaluation import SUMMARY_METRIC_KEYS, summarize_cases
from dycon_monai.evaluation.compare import PAPER_RESULTS, compare_runs, load_run, main, paper_result
from dycon_monai.handlers.metrics_writer import METRICS_CSV_COLUMNS
from dycon_monai.utils.io import atomic_write_csv, atomic_write_json

REPO = Path(__file__).resolve().parents[2]


def _rows(dices):
    rows = []
    for i, d in enumerate(dices):
        rows.append(
            {
                "case_id": f"sub-{i:02d}",
                "dice": d,
                "iou": d / (2 - d),
                "hd95_mm": 10.0 * (1 - d) if d > 0 else float("nan"),
                "asd_mm": 2.0 * (1 - d) if d > 0 else float("nan"),
                "hd95_vox": 5.0 * (1 - d) if d > 0 else float("nan"),
                "asd_vox": 1.0 * (1 - d) if d > 0 else float("nan"),
                "abs_volume_diff_ml": 1.0,
                "abs_lesion_count_diff": 2,
                "lesion_f1": d,
                "label_volume_ml": [3.0, 15.0, 30.0][i % 3],
                "label_lesions": 1 + i % 2 * 5,
                "empty": "none" if d > 0 else "pred",
            }
        )
    return rows


def _write_run(run_dir: Path, dices, run_info=None, with_summary=True):
    rows = _rows(dices)
    atomic_write_csv(run_dir / "metrics.csv", rows, METRICS_CSV_COLUMNS)
    if with_summary:
        atomic_write_json(run_dir / "summary.json", summarize_cases(rows, run_info=run_info))
    return run_dir


def test_paper_table_holds_the_spec_numbers():
    assert PAPER_RESULTS[("isles22", "mean_teacher", 0.10)] == {"dice": 36.43, "iou": 24.01, "hd95": 21.80, "asd": 7.22}
    assert paper_result("ISLES22", "BCP", 0.1) == {"dice": 57.97, "iou": 44.32, "hd95": 30.09, "asd": 4.58}
    assert paper_result("isles22", "dycon", 0.1)["dice"] == 65.71
    assert paper_result("isles", "DyCON", 0.05)["dice"] == 61.48
    assert paper_result("isles22", "dycon", 0.2)["dice"] == 69.11
    assert paper_result("isles22", "mt", 0.1)["hd95"] == 21.80
    assert paper_result("isles22", "supervised", 0.1) is None
    assert paper_result("isles22", "dycon", None) is None


def test_report_with_paper_numbers_strata_and_chart(tmp_path):
    a = _write_run(tmp_path / "dycon10", [0.6, 0.7, 0.8, 0.0], {"method": "dycon", "labeled_fraction": 0.1})
    b = _write_run(tmp_path / "sup10", [0.3, 0.4, 0.5], {"method": "supervised", "labeled_fraction": "10%"})
    # metadata from run_info.json, per-case table only (summary computed from metrics.csv)
    c = _write_run(tmp_path / "mt5", [0.2, 0.3], with_summary=False)
    (c / "run_info.json").write_text(json.dumps({"method": "mean_teacher", "labeled_fraction": 5}))

    assert main([str(a), str(b), str(c), "--out", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    main_table = report.split("## All runs")[1].split("## Strata")[0]
    lines = {line.split("|")[1].strip(): line for line in main_table.splitlines() if line.startswith("| ")}
    assert "65.71" in lines["dycon10"] and "13.35" in lines["dycon10"] and "0.71" in lines["dycon10"]
    assert "52.50 ± 31.12" in lines["dycon10"]  # Dice % mean ± population std over 4 cases
    assert "(1 undef.)" in lines["dycon10"]  # the empty-prediction case has no HD95
    assert "| 10% |" in lines["sup10"] and "65.71" not in lines["sup10"]
    assert "29.22" in lines["mt5"] and "| 5% |" in lines["mt5"]
    assert "## Strata by lesion volume" in report and "## Strata by lesion distribution" in report
    assert "(n=2)" in report  # size strata counts
    assert "![Dice and HD95 per run](report.png)" in report
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_load_run_reads_metadata_in_order(tmp_path):
    run = _write_run(tmp_path / "r", [0.5], {"method": "dycon"})
    (run / "config.json").write_text(json.dumps({"method": "x", "labeled_fraction": 0.2, "dataset": "ISLES-22"}))
    r = load_run(run)
    assert r["method"] == "dycon" and r["labeled_fraction"] == 0.2 and r["dataset"] == "isles22"
    assert set(SUMMARY_METRIC_KEYS) <= set(r["summary"]["metrics"])


def test_missing_run_files_are_reported(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")]) == 2
    assert "neither summary.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([], tmp_path / "r.md")


def test_package_exports_resolve():
    import dycon_monai.evaluation as evaluation

    assert sorted(evaluation.__all__) == sorted(evaluation._EXPORTS)
    assert all(getattr(evaluation, name) is not None for name in evaluation.__all__)


def test_module_cli(tmp_path):
    run = _write_run(tmp_path / "run", [0.5, 0.6], {"method": "dycon", "labeled_fraction": 0.2})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "dycon_monai.evaluation.compare", str(run), "--out", str(tmp_path / "out.md")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr  # compare is not pre-imported by the package
    assert "69.11" in (tmp_path / "out.md").read_text()


def test_atomic_writes_follow_the_umask_and_leave_no_temporary_files(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "x.json", {"a": float("nan"), "b": [1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5]}
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
