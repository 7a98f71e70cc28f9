"""Run the grid, resumably: finished runs are skipped, a trained run that was not evaluated is only evaluated.

Each run folder holds ``train.log`` / ``eval.log`` (the bundle's output) and ``harness_run.json`` (the run, its
commands, status and wall time per step), written atomically after every step. The whole invocation is recorded in
``<out>/harness.json``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dycon_monai.utils.io import atomic_write_json

from .grid import RunSpec, evaluate_command, train_command

__all__ = ["RunResult", "is_finished", "read_harness_record", "run_grid"]

CommandFn = Callable[[RunSpec, str], list[str]]
RunResult = dict


def read_harness_record(run_dir: Path) -> dict[str, Any]:
    import json

    path = run_dir / "harness_run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def is_finished(run_dir: Path) -> bool:
    """Evaluation outputs present and the run recorded as done."""
    rec = read_harness_record(run_dir)
    return (
        rec.get("status") == "done"
        and (run_dir / "eval" / "metrics.csv").is_file()
        and (run_dir / "eval" / "summary.json").is_file()
    )


def _trained(run_dir: Path, rec: Mapping[str, Any]) -> bool:
    return (
        rec.get("steps", {}).get("train", {}).get("status") == "done"
        and (run_dir / "train" / "models" / "model.pt").is_file()
    )


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _step(cmd: list[str], log: Path, cwd: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd).returncode
    return rc, time.perf_counter() - t0


def _run_one(spec: RunSpec, run_dir: Path, commands: Mapping[str, list[str]], cwd: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = read_harness_record(run_dir)
    steps = dict(rec.get("steps", {})) if _trained(run_dir, rec) else {}
    rec = {"run": spec.as_dict(), "commands": dict(commands), "status": "running", "steps": steps}
    for step in ("train", "evaluate"):
        if steps.get(step, {}).get("status") == "done":
            continue
        atomic_write_json(run_dir / "harness_run.json", rec)
        log = run_dir / ("train.log" if step == "train" else "eval.log")
        rc, wall = _step(commands[step], log, cwd)
        steps[step] = {"status": "done" if rc == 0 else "failed", "returncode": rc, "wall_s": round(wall, 1)}
        if rc != 0:
            rec.update(status="failed", failed_step=step, log_tail=_tail(log))
            atomic_write_json(run_dir / "harness_run.json", rec)
            return rec
    rec["status"] = "done"
    atomic_write_json(run_dir / "harness_run.json", rec)
    return rec


def run_grid(
    grid: Sequence[RunSpec],
    bundle_dir: str | Path,
    dataset_dir: str,
    out: str | Path,
    configs: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
    stop_on_error: bool = False,
    dry_run: bool = False,
    train_fn: CommandFn | None = None,
    evaluate_fn: CommandFn | None = None,
    cwd: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every unfinished run of ``grid``; returns one record per run (``status`` done / failed / skipped).

    ``train_fn`` / ``evaluate_fn`` (``(spec, run_root) -> argv``) replace the bundle command lines (tests use it).
    """
    out = Path(out).absolute()
    run_root = out / "runs"
    run_root.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    cwd = Path(cwd or Path.cwd())

    def commands(spec: RunSpec) -> dict[str, list[str]]:
        if train_fn is not None and evaluate_fn is not None:
            return {"train": train_fn(spec, str(run_root)), "evaluate": evaluate_fn(spec, str(run_root))}
        args = (spec, bundle_dir, dataset_dir, run_root, configs, overrides)
        return {"train": train_command(*args), "evaluate": evaluate_command(*args)}

    record = {
        "bundle": str(bundle_dir),
        "dataset_dir": str(dataset_dir),
        "configs": list(configs),
        "overrides": overrides,
        "grid": [s.as_dict() for s in grid],
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if dry_run:
        for spec in grid:
            for step, cmd in commands(spec).items():
                print(f"# {spec.name} {step}\n{' '.join(cmd)}")
        return []
    atomic_write_json(out / "harness.json", record)
    from tqdm import tqdm

    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(grid), desc="benchmark grid", unit="run", disable=not progress)
    for i, spec in enumerate(grid, 1):
        run_dir = run_root / spec.name
        if is_finished(run_dir):
            results.append({"run": spec.as_dict(), "status": "skipped"})
            bar.write(f"[{i}/{len(grid)}] {spec.name}: finished earlier, skipped")
            bar.update(1)
            continue
        rec = _run_one(spec, run_dir, commands(spec), cwd)
        results.append(rec)
        walls = ", ".join(f"{k} {v.get('wall_s', 0):.0f} s" for k, v in rec["steps"].items())
        bar.write(f"[{i}/{len(grid)}] {spec.name}: {rec['status']} ({walls})")
        if rec["status"] == "failed":
            bar.write(f"  {rec.get('failed_step')} failed; last lines of its log:\n{rec.get('log_tail', '')}")
            if stop_on_error:
                break
        bar.update(1)
    bar.close()
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["status"] = {r["run"]["run_name"]: r["status"] for r in results}
    atomic_write_json(out / "harness.json", record)
    return results
