"""DyconWorkflow: the same bundle run from ``monai.bundle run``, ``run_workflow`` and Python; what it refuses."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bundle_overrides import TINY
from monai.bundle import run, run_workflow

from dycon_monai.bundle import DyconWorkflow

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_isles"
TRAIN = str(BUNDLE / "configs" / "train.json")
WORKFLOW = "dycon_monai.bundle.DyconWorkflow"
RECORD = ["config.json", "datalist.json", "log.txt", "run_info.json"]


def _tiny(synthetic_cohort, out: Path, name: str) -> dict:
    return dict(TINY, dataset_dir=str(synthetic_cohort), output_dir=str(out), run_name=name, seed=5)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "models" / "model.pt", map_location="cpu")


def _file_handlers() -> list[logging.Handler]:
    handlers = logging.getLogger().handlers
    return [h for h in handlers if isinstance(h, logging.FileHandler) and h.baseFilename.endswith("log.txt")]


@pytest.mark.slow
def test_same_run_from_the_command_line_run_workflow_and_python(synthetic_cohort, tmp_path):
    overrides = _tiny(synthetic_cohort, tmp_path, "cli")
    args = json.dumps({"config_file": TRAIN, "workflow_name": WORKFLOW, **overrides})
    (tmp_path / "args.json").write_text(args)
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(tmp_path / "args.json")]
    proc = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    run_workflow(workflow_name=WORKFLOW, config_file=TRAIN, logging_file=False, **dict(overrides, run_name="api"))

    workflow = DyconWorkflow(config_file=TRAIN, logging_file=False, **dict(overrides, run_name="py"))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert workflow.run_dir == str(tmp_path / "py")

    reference = _weights(tmp_path / "cli")
    for name in ("cli", "api", "py"):
        run_dir = tmp_path / name
        assert sorted(p.name for p in run_dir.iterdir() if p.suffix in (".json", ".txt")) == RECORD
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["seed"] == 5 and info["run_dir"] == str(run_dir) and info["bundle_root"] == str(BUNDLE)
        assert info["overrides"]["run_name"] == name and info["config_files"] == [TRAIN]
        config = json.loads((run_dir / "config.json").read_text())
        assert config["max_iterations"] == 2 and config["workflow_class"] is None  # re-running names it again
        assert (run_dir / "models" / "checkpoint_final_iteration=2.pt").is_file()
        weights = _weights(run_dir)
        assert weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), f"{name} trained differently"
    assert "Run record" in (tmp_path / "cli" / "log.txt").read_text()  # logging.conf of the bundle: INFO
    assert not _file_handlers()  # every run closed its log file


def test_plain_config_workflow_is_refused_before_anything_is_written(synthetic_cohort, tmp_path):
    with pytest.raises(RuntimeError) as err:
        run(config_file=TRAIN, logging_file=False, **_tiny(synthetic_cohort, tmp_path, "plain"))
    cause = err.value.__cause__ or err.value
    assert "--workflow_name dycon_monai.bundle.DyconWorkflow" in str(cause)
    assert not any(tmp_path.iterdir())


def test_bundle_root_is_the_bundle_folder_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert DyconWorkflow(config_file=TRAIN, logging_file=False).parser["bundle_root"] == str(BUNDLE)
    given = DyconWorkflow(config_file=TRAIN, logging_file=False, bundle_root="elsewhere")
    assert given.parser["bundle_root"] == "elsewhere"  # an override is taken as given


def test_unknown_override_key_stops_at_construction():
    with pytest.raises(ValueError, match="--max_iteration: not defined .* Did you mean --max_iterations"):
        DyconWorkflow(config_file=TRAIN, logging_file=False, max_iteration=3)


def test_failure_logs_the_root_cause_and_writes_nothing(tmp_path, caplog):
    workflow = DyconWorkflow(
        config_file=TRAIN, logging_file=False, dataset_dir=str(tmp_path / "missing"), output_dir=str(tmp_path / "runs")
    )
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError):
        workflow.initialize()
    assert "error: DatasetNotFoundError: No readable ISLES'22 dataset" in caplog.text
    assert not (tmp_path / "runs").exists() and not _file_handlers()


@pytest.mark.slow
def test_finalize_publishes_the_model_only_when_asked(synthetic_cohort, tmp_path):
    bundle_copy = tmp_path / "bundle"
    for publish in (False, True):
        overrides = _tiny(synthetic_cohort, tmp_path / "runs", f"publish_{publish}")
        workflow = DyconWorkflow(
            config_file=TRAIN,
            logging_file=False,
            bundle_root=str(bundle_copy),
            publish_model_to_bundle=publish,
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        assert (bundle_copy / "models" / "model.pt").is_file() is publish
    published = torch.load(bundle_copy / "models" / "model.pt", map_location="cpu")
    trained = _weights(tmp_path / "runs" / "publish_True")
    assert all(torch.equal(published[k], trained[k]) for k in trained)
