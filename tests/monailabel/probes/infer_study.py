"""Run with the MONAI Label venv's Python: one inference of a bundle's MONAI Label infer task on an image."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
from monailabel.tasks.infer.bundle import BundleInferTask

task = BundleInferTask(sys.argv[1], {})
result, _ = task({"image": sys.argv[2], "device": "cpu"})
# a NIfTI study comes back as the path of the written label; a DICOM series folder as the label array itself (MONAI
# Label's writer leaves DICOM-SEG conversion to the datastore)
seg = np.asarray(result) if isinstance(result, np.ndarray) else np.asarray(nib.load(result).dataobj)
print("INFER", json.dumps({"shape": list(seg.shape), "values": sorted(set(np.unique(seg).tolist()))}))
