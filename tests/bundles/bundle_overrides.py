"""Top-level overrides shared by the bundle command-line tests."""

from __future__ import annotations

#: top-level overrides for a run of a few seconds on the 6 mm cohort (valid for train.json and inference.json)
TINY = {
    "device": "cpu",
    "dataset_name": "synthetic",
    "labeled_fraction": 0.25,
    "max_iterations": 2,
    "epoch_iterations": 2,
    "batch_size": 2,
    "patch_size": [32, 32, 32],
    "pixdim": [6.0, 6.0, 6.0],
    "fecl_grid_size": 4,
    "embedding_dim": 8,
    "network_def#channels": [4, 8, 16],
    "network_def#strides": [2, 2],
    "network_def#num_res_units": 0,
    "num_workers": 0,
    "sw_batch_size": 1,
    "sw_overlap": 0.25,
    "checkpoint_interval": 1,
    "log_interval": 1,
    "progress_bar": False,
}


def _dataset_tiny(dataset_name: str, patch_size: list[int], **more: object) -> dict:
    """Overrides for a run of a few seconds of a dataset bundle (LA, BraTS, Pancreas) on its synthetic stand-in."""
    return {
        "device": "cpu",
        "dataset_name": dataset_name,
        "labeled_count": 2,
        "max_iterations": 2,
        "epoch_iterations": 1,
        "batch_size": 2,
        "patch_size": patch_size,
        "fecl_grid_size": 4,
        "embedding_dim": 8,
        "network_def#channels": [4, 8, 16],
        "network_def#strides": [2, 2],
        "network_def#num_res_units": 0,
        "num_workers": 0,
        "sw_batch_size": 1,
        "checkpoint_interval": 1,
        "log_interval": 1,
        "progress_bar": False,
        "num_overlays": 1,
        **more,
    }


#: dycon_la on the synthetic h5 stand-in
LA_TINY = _dataset_tiny("synthetic_la", [32, 32, 16], pixdim=[2.5, 2.5, 2.5], sw_stride=[16, 16, 8])
#: dycon_brats19 on the 32 x 32 x 24 synthetic stand-in
BRATS_TINY = _dataset_tiny("synthetic_brats19", [16, 16, 16], sw_stride=[8, 8, 8])
#: dycon_pancreas on the 32 x 32 x 16 synthetic DICOM stand-in
PANCREAS_TINY = _dataset_tiny("synthetic_pancreas", [16, 16, 16], sw_stride=[8, 8, 8])
