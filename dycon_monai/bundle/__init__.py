"""What the bundles in ``bundles/`` run on: the workflow, run folders, the run record, model files and inputs.

Every bundle command names the workflow::

    python -m monai.bundle run --config_file bundles/dycon_isles/configs/train.json \\
        --workflow_name dycon_monai.bundle.DyconWorkflow --dataset_dir DIR

The functions are called from the bundle configs (``"$dycon_monai.bundle.plan_run_dir(...)"``).
"""

from __future__ import annotations

from dycon_monai.utils.run_record import (
    CONFIG_FILENAME,
    DATALIST_FILENAME,
    RUN_INFO_FILENAME,
    read_run_record,
    summarize_datalists,
    training_run_info,
    write_run_record,
)

from .inputs import find_images
from .models import check_model_path, publish_model
from .overrides import TRACKING_KEYS, check_override_keys
from .run_dir import make_run_dir, plan_run_dir
from .workflow import WORKFLOW_KEY, WORKFLOW_NAME, DyconWorkflow, require_workflow

__all__ = [
    "CONFIG_FILENAME",
    "DATALIST_FILENAME",
    "RUN_INFO_FILENAME",
    "TRACKING_KEYS",
    "WORKFLOW_KEY",
    "WORKFLOW_NAME",
    "DyconWorkflow",
    "check_model_path",
    "check_override_keys",
    "find_images",
    "make_run_dir",
    "plan_run_dir",
    "publish_model",
    "read_run_record",
    "require_workflow",
    "summarize_datalists",
    "training_run_info",
    "write_run_record",
]
