"""Run with the MONAI Label venv's Python: build MONAI Label's infer and train tasks of a bundle, print what they see."""

from __future__ import annotations

import json
import sys

from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

path = sys.argv[1]
t = BundleInferTask(path, {})
out = {
    "labels": t.labels,
    "dimension": t.dimension,
    "valid": bool(t.is_valid()),
    "pre": [type(x).__name__ for x in t.pre_transforms()],
    "inferer": type(t.inferer()).__name__,
}
tr = BundleTrainTask(path, {})
out["train_valid"] = bool(tr.is_valid())
print("PROBE", json.dumps(out))
