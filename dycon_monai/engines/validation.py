"""Validation wiring: a MONAI ``SupervisedEvaluator`` with sliding-window inference and the DyCON metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import HausdorffDistance, MeanDice, MeanIoUHandler, SurfaceDistance, from_engine
from monai.inferers import SlidingWindowInferer
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

__all__ = ["VAL_KEY_METRIC", "make_evaluator", "validation_postprocessing"]

#: name of the key validation metric (best checkpoint by it)
VAL_KEY_METRIC = "val_mean_dice"


def validation_postprocessing(num_classes: int = 2) -> Compose:
    """Softmax + argmax one-hot of ``"pred"`` and one-hot of ``"label"`` (per decollated item)."""
    return Compose(
        [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=num_classes),
        ]
    )


def make_evaluator(
    network: nn.Module,
    val_data_loader: Iterable,
    device: str | torch.device,
    roi_size: Sequence[int],
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    num_classes: int = 2,
    amp: bool = False,
    val_handlers: Sequence | None = None,
    postprocessing: Callable | None = None,
    mode: str = "gaussian",
) -> SupervisedEvaluator:
    """A MONAI ``SupervisedEvaluator`` for the student with sliding-window inference and the DyCON metrics.

    Metrics (foreground only, mean over cases): ``val_mean_dice`` (key metric, ``MeanDice``), ``val_mean_iou``
    (``MeanIoUHandler``), ``val_hd95`` (``HausdorffDistance(percentile=95)``) and ``val_asd``
    (``SurfaceDistance``), the last two in voxels of the validation images (per-case millimetre tables come from
    ``dycon_monai.evaluation``). Cases where prediction or ground truth is empty give NaN distances, which MONAI's
    mean reduction leaves out. Attach an ``AtomicCheckpointSaver(..., save_key_metric=True)`` to keep the best model
    by Dice, and a ``monai.handlers.ValidationHandler`` to the trainer to run it.

    Args:
        network: the network to evaluate (its ``forward`` returns logits; a ``DyCONNet`` does).
        val_data_loader: validation loader (``"image"``, ``"label"`` whole volumes).
        device: torch device.
        roi_size: sliding-window size (the training patch size).
        sw_batch_size: windows per forward pass.
        overlap: window overlap.
        num_classes: output classes (one-hot size).
        amp: autocast during inference.
        val_handlers: more handlers (``StatsHandler``, ``TensorBoardStatsHandler``, ``CaseMetricsWriter``...).
        postprocessing: replaces :func:`validation_postprocessing`.
        mode: sliding-window blending (``"gaussian"`` or ``"constant"``).
    """
    pred_label = from_engine(["pred", "label"])
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_data_loader,
        network=network,
        inferer=SlidingWindowInferer(roi_size=tuple(roi_size), sw_batch_size=sw_batch_size, overlap=overlap, mode=mode),
        postprocessing=postprocessing if postprocessing is not None else validation_postprocessing(num_classes),
        key_val_metric={VAL_KEY_METRIC: MeanDice(include_background=False, output_transform=pred_label)},
        additional_metrics={
            "val_mean_iou": MeanIoUHandler(include_background=False, output_transform=pred_label),
            "val_hd95": HausdorffDistance(include_background=False, percentile=95, output_transform=pred_label),
            "val_asd": SurfaceDistance(include_background=False, output_transform=pred_label),
        },
        val_handlers=val_handlers,
        amp=amp,
    )
