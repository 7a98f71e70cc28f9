"""Semi-supervised benchmark harness: a grid of bundle x methods x labeled counts x seeds, run through the bundle's
own train and evaluate configs, and a report with confidence intervals and paired tests (``docs/benchmark.md``).

    python -m dycon_monai.benchmark run --bundle bundles/dycon_la --dataset_dir D --out bench --configs cpu_quick.json
    python -m dycon_monai.benchmark report --out bench
"""

from .grid import RunSpec, build_grid, evaluate_command, train_command
from .report import collect_results, summarize, write_report
from .runner import run_grid

__all__ = [
    "RunSpec",
    "build_grid",
    "collect_results",
    "evaluate_command",
    "run_grid",
    "summarize",
    "train_command",
    "write_report",
]
