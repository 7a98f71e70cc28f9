"""The benchmark grid: bundle x methods x labeled counts x seeds (+ the fully supervised upper bound), and the
bundle command lines of each run.

Every run goes through the bundle's own configs: ``train.json`` plus the chosen override files for training, the
same plus ``evaluate.json`` for the test split. A co-training method (``cps``, ``cps_dycon``, ``dual_cce``) adds the
bundle's ``co_training.json`` (and ``dual_cce.json``) after the chosen files, as a user would on the command line. Run folders live in ``<out>/runs/<run_name>/`` with ``train/`` and
``eval/`` below; the name is ``<bundle>__<method>__n<count>__s<seed>`` (``nall`` for the upper bound).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dycon_monai.bundle.workflow import WORKFLOW_NAME

__all__ = ["METHOD_CONFIGS", "RunSpec", "build_grid", "evaluate_command", "format_value", "run_name", "train_command"]

UPPER_BOUND_METHOD = "supervised"
#: the bundle config files a co-training method needs on top of ``train.json`` and the chosen ones
METHOD_CONFIGS: dict[str, tuple[str, ...]] = {
    "cps": ("co_training.json",),
    "cps_dycon": ("co_training.json",),
    "dual_cce": ("co_training.json", "dual_cce.json"),
}
ALL = "all"


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    bundle: str
    method: str
    labeled_count: int | str
    seed: int

    @property
    def name(self) -> str:
        return run_name(self)

    @property
    def upper_bound(self) -> bool:
        return self.labeled_count == ALL

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), run_name=self.name)


def run_name(spec: RunSpec) -> str:
    """``<bundle>__<method>__n<count>__s<seed>``."""
    return f"{spec.bundle}__{spec.method}__n{spec.labeled_count}__s{spec.seed}"


def _count(value: Any) -> int | str:
    if str(value).lower() == ALL:
        return ALL
    n = int(value)
    if n < 1:
        raise ValueError(f"labeled counts must be positive integers or 'all'; got {value!r}")
    return n


def build_grid(
    bundle: str,
    methods: Sequence[str],
    labeled_counts: Iterable[Any],
    seeds: Iterable[int],
    upper_bound: bool = True,
) -> list[RunSpec]:
    """Runs in order: for each seed, each labeled count, each method; the upper-bound runs (supervised, every
    training label, one per seed) last."""
    if not methods:
        raise ValueError("give at least one method")
    counts = [_count(c) for c in labeled_counts]
    seeds = [int(s) for s in seeds]
    grid = [RunSpec(bundle, m, c, s) for s in seeds for c in counts if c != ALL for m in methods]
    if upper_bound or ALL in counts:
        grid += [RunSpec(bundle, UPPER_BOUND_METHOD, ALL, s) for s in seeds]
    seen: set[str] = set()
    return [r for r in grid if not (r.name in seen or seen.add(r.name))]


def format_value(value: Any) -> str:
    """A value as MONAI's bundle command line (python-fire) reads it back: lists without spaces, JSON-like."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _config_files(bundle_dir: Path, configs: Sequence[str], evaluate: bool, method: str) -> str:
    names = ["train.json", *configs, *METHOD_CONFIGS.get(method, ())] + (["evaluate.json"] if evaluate else [])
    paths = [str(p if Path(p).is_absolute() else bundle_dir / "configs" / p) for p in names]
    return "[" + ",".join(repr(p) for p in paths) + "]"


def _common(spec: RunSpec, dataset_dir: str, overrides: Mapping[str, Any]) -> list[str]:
    args = ["--dataset_dir", str(dataset_dir), "--method", spec.method]
    args += ["--labeled_count", format_value(spec.labeled_count), "--seed", str(spec.seed)]
    for key, value in overrides.items():
        args += [f"--{key}", format_value(value)]
    return args


def train_command(
    spec: RunSpec,
    bundle_dir: str | Path,
    dataset_dir: str,
    run_root: str | Path,
    configs: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """``python -m monai.bundle run`` of ``train.json`` (+ ``configs``) into ``<run_root>/<name>/train``."""
    bundle_dir = Path(bundle_dir).absolute()
    return (
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            _config_files(bundle_dir, configs, False, spec.method),
        ]
        + ["--workflow_name", WORKFLOW_NAME, "--bundle_root", str(bundle_dir)]
        + _common(spec, dataset_dir, overrides or {})
        + ["--output_dir", str(Path(run_root).absolute() / spec.name), "--run_name", "train", "--overwrite", "True"]
    )


def evaluate_command(
    spec: RunSpec,
    bundle_dir: str | Path,
    dataset_dir: str,
    run_root: str | Path,
    configs: Sequence[str] = (),
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """``python -m monai.bundle run`` of ``train.json`` (+ ``configs``) + ``evaluate.json`` on the trained model."""
    bundle_dir = Path(bundle_dir).absolute()
    run = Path(run_root).absolute() / spec.name
    return (
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            _config_files(bundle_dir, configs, True, spec.method),
        ]
        + ["--workflow_name", WORKFLOW_NAME, "--bundle_root", str(bundle_dir)]
        + _common(spec, dataset_dir, overrides or {})
        + ["--model_path", str(run / "train" / "models" / "model.pt")]
        + ["--output_dir", str(run), "--run_name", "eval", "--overwrite", "True"]
    )
