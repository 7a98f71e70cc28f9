"""Semi-supervised Mean-Teacher trainer for MONAI with the DyCON losses (UnCL, FeCL) and its baselines."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.metrics import Metric
from monai.data import MetaTensor
from monai.data.utils import set_rnd
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.inferers import Inferer
from monai.transforms import Transform
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim.optimizer import Optimizer

from dycon_monai.losses import FeCLLoss, UnCLLoss, patch_entropy, patchify_embeddings, patchify_labels
from dycon_monai.networks.dycon_net import unwrap_module
from dycon_monai.utils.schedules import sigmoid_rampup

__all__ = [
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "MeanTeacherTrainer",
    "NonFiniteLossError",
    "loss_terms_transform",
    "method_weights",
]

#: every loss term the trainer puts on ``engine.state.output`` (``"loss"`` is the weighted total)
LOSS_TERMS = ("loss", "loss_sup", "loss_uncl", "loss_fecl", "loss_consistency")
#: all scalar entries of ``engine.state.output``
OUTPUT_SCALARS = (*LOSS_TERMS, "beta", "consistency_weight", "grad_norm")

#: method presets: the weights of the unlabeled terms for each named method (``method_weights``)
METHODS: dict[str, dict[str, float]] = {
    # labeled Dice+CE only; needs no unlabeled data and builds no teacher
    "supervised": {"uncl_weight": 0.0, "fecl_weight": 0.0, "consistency_weight": 0.0},
    # vanilla Mean Teacher: MSE between student and teacher softmax on unlabeled voxels
    "mean_teacher": {"uncl_weight": 0.0, "fecl_weight": 0.0, "consistency_weight": 0.1},
    # MT with UnCL as its consistency loss (paper Table 5: UnCL replaces the MT consistency)
    "mt_uncl": {"uncl_weight": 1.0, "fecl_weight": 0.0, "consistency_weight": 0.0},
    # MT (MSE consistency) plus FeCL (paper Table 6)
    "mt_fecl": {"uncl_weight": 0.0, "fecl_weight": 1.0, "consistency_weight": 0.1},
    # DyCON = MT + UnCL + FeCL, L = Dice + CE + eta * (UnCL + FeCL)
    "dycon": {"uncl_weight": 1.0, "fecl_weight": 1.0, "consistency_weight": 0.0},
}

_FORBIDDEN_UNLABELED_KEYS = (Keys.LABEL,)


def method_weights(method: str, eta: float = 1.0, consistency_weight: float | None = None) -> dict[str, float]:
    """Trainer keyword arguments that select a method by its loss terms.

    ========================  ===========  ===========  ===================
    method                    uncl_weight  fecl_weight  consistency_weight
    ========================  ===========  ===========  ===================
    ``supervised``            0            0            0
    ``mean_teacher``          0            0            0.1
    ``mt_uncl``               eta          0            0
    ``mt_fecl``               0            eta          0.1
    ``dycon``                 eta          eta          0 (optional term)
    ========================  ===========  ===========  ===================

    ``mean_teacher`` is the plain MSE consistency Mean Teacher (weight 0.1 with sigmoid ramp-up, as in the authors'
    code); in ``mt_uncl`` and ``dycon`` UnCL is the consistency loss (paper Table 5 compares "MT" with "MT+UnCL");
    ``mt_fecl`` keeps the MSE consistency and adds FeCL (paper Table 6). DyCON can add the MSE term on top by passing
    ``consistency_weight``.

    Args:
        method: one of :data:`METHODS`.
        eta: weight of UnCL and FeCL (``eta`` in SPEC, 1.0 in the paper).
        consistency_weight: override the MSE consistency weight of the preset (for every method but ``supervised``).

    Returns:
        ``{"uncl_weight", "fecl_weight", "consistency_weight"}`` for :class:`MeanTeacherTrainer`.

    Raises:
        ValueError: for an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}.")
    weights = dict(METHODS[method])
    for key in ("uncl_weight", "fecl_weight"):
        weights[key] = weights[key] * float(eta)
    if consistency_weight is not None and method != "supervised":
        weights["consistency_weight"] = float(consistency_weight)
    return weights


def loss_terms_transform(output: Any) -> dict[str, float]:
    """``output_transform`` for MONAI ``StatsHandler`` / ``TensorBoardStatsHandler``: every scalar term as a float.

    Accepts ``engine.state.output`` as a dict or as the decollated list of dicts (MONAI's default).
    """
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    if not isinstance(item, Mapping):
        return {}
    return {k: float(item[k]) for k in OUTPUT_SCALARS if k in item}


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient norm) of a training iteration is NaN or infinite.

    Attributes:
        iteration: the engine iteration (1-based).
        terms: ``{name: value}`` of the offending terms.
        labeled_cases: ``case_id`` values of the labeled batch.
        unlabeled_cases: ``case_id`` values of the unlabeled batch.
    """

    def __init__(
        self, message: str, iteration: int, terms: dict[str, float], labeled_cases: list, unlabeled_cases: list
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.terms = terms
        self.labeled_cases = labeled_cases
        self.unlabeled_cases = unlabeled_cases


def _case_ids(batch: Any) -> list:
    """``case_id`` values of a collated batch (falls back to the image file names)."""
    if not isinstance(batch, Mapping):
        return []
    ids = batch.get("case_id")
    if ids is None:
        image = batch.get(Keys.IMAGE)
        meta = getattr(image, "meta", None)
        ids = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if ids is None:
        return []
    if isinstance(ids, (str, bytes)):
        return [ids]
    if isinstance(ids, torch.Tensor):
        return ids.tolist()
    return list(ids)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class _SkipFirstBatches:
    """Iterable over ``loader`` whose first iterator starts ``skip`` batches in (resuming mid-cycle); later ones
    start at the beginning."""

    def __init__(self, loader: Iterable, skip: int) -> None:
        self.loader = loader
        self.skip = int(skip)
        self.dataset = getattr(loader, "dataset", None)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        it = iter(self.loader)
        skip, self.skip = self.skip, 0
        for _ in range(skip):
            try:
                next(it)
            except StopIteration:
                break
        return it


class MeanTeacherTrainer(SupervisedTrainer):
    """Mean-Teacher semi-supervised trainer with DyCON's UnCL and FeCL, as a MONAI ``SupervisedTrainer``.

    Each iteration draws a labeled batch ``{"image", "label", "case_id"}`` from ``train_data_loader`` (the engine's
    data, as in any MONAI trainer) and an unlabeled batch ``{"image", "case_id"}`` from ``unlabeled_data_loader``
    (cycled internally; an unlabeled batch that carries a ``"label"`` key is refused). The student (a
    :class:`~dycon_monai.networks.DyCONNet`) runs on the concatenated images; the teacher, an EMA copy of the whole
    student (backbone and head), runs without gradient on a perturbed view (Gaussian noise, std 0.1 clipped to
    +-0.2). The loss is::

        loss = loss_sup                                   Dice+CE (loss_function) on the labeled part
             + uncl_weight * loss_uncl                    UnCL(student, teacher) on the unlabeled part (or all)
             + fecl_weight * loss_fecl                    FeCL on k^3 patches of the student embeddings
             + consistency_weight * ramp(t) * loss_consistency   optional plain MT MSE consistency

    FeCL runs on the unlabeled part (``fecl_on="unlabeled"``, the paper's setting) with the teacher's argmax as
    patch labels, or on the whole batch (``fecl_on="all"``) with the ground truth for labeled samples (labels of
    unlabeled cases are never read); its hard negatives use the teacher's embeddings, its entropy
    weights the student's probabilities. A term whose weight is 0 is not computed; a method is a choice of weights
    (:func:`method_weights`). The teacher is updated by an :class:`~dycon_monai.handlers.EMATeacherHandler` (one with
    ``ema_decay`` is attached when the run starts unless ``train_handlers`` holds one).

    ``engine.state.output`` holds ``"image"``, ``"label"``, ``"pred"`` (labeled part) and the scalars
    ``"loss"`` (total), ``"loss_sup"``, ``"loss_uncl"``, ``"loss_fecl"``, ``"loss_consistency"`` (unweighted;
    0 when off), ``"beta"`` (UnCL's beta, 0 when off), ``"consistency_weight"`` (ramped) and ``"grad_norm"`` (before
    clipping; NaN when the step was skipped). With ``decollate=True`` (MONAI's default) the output is the list of
    per-sample dicts, each carrying the scalars; :func:`loss_terms_transform` reads either form, and the same floats
    are in ``engine.state.loss_terms``. Log them with ``StatsHandler(output_transform=loss_terms_transform)``.

    Non-finite losses: with ``on_nonfinite="raise"`` (default) a :class:`NonFiniteLossError` names the iteration, the
    offending terms and the labeled and unlabeled case ids; with ``"skip"`` the optimiser step (and the EMA update) is
    skipped, ``engine.state.nonfinite_skipped`` is incremented and a warning is logged.

    Reproducibility: with ``seed`` set (default 0) each data cycle (a pass over a loader) and each iteration reseeds
    the random generators from ``(seed, cycle)`` / ``(seed, iteration)``, including the MONAI random transforms of the
    loaders' datasets, and the loaders' positions are part of ``trainer.state_dict()``. So two runs with the same seed
    produce the same losses, and a run resumed from a checkpoint (:func:`dycon_monai.handlers.checkpoint_loader`)
    continues exactly as the uninterrupted run would, provided the random transforms use their own random state (all
    MONAI ``Rand*`` transforms do). ``seed=None`` leaves the generators alone.

    Args:
        device: torch device.
        max_epochs: number of epochs (total iterations = ``max_epochs * epoch_length``).
        train_data_loader: labeled loader (batches with ``"image"``, ``"label"``; ``"case_id"`` for messages).
        network: the student, a :class:`~dycon_monai.networks.DyCONNet` (any segmentation net if FeCL is off), possibly
            wrapped in ``DistributedDataParallel`` (the embedding pass goes through ``network(x, with_embeddings=True)``;
            with FeCL off the head gets no gradient, so DDP needs ``find_unused_parameters=True`` then).
        optimizer: optimiser over ``network.parameters()`` (backbone and head).
        loss_function: supervised loss on labeled logits, e.g. ``monai.losses.DiceCELoss(to_onehot_y=True,
            softmax=True)``.
        unlabeled_data_loader: unlabeled loader (batches with ``"image"`` and no ``"label"``); may be ``None`` when
            every unlabeled term is off (supervised method).
        teacher_network: the teacher; default: a deep copy of ``network`` (no gradients).
        uncl_loss: an ``UnCLLoss``; created with paper defaults when ``uncl_weight > 0`` and not given.
        fecl_loss: a ``FeCLLoss``; created with paper defaults when ``fecl_weight > 0`` and not given.
        uncl_weight: weight of UnCL (0 = off).
        fecl_weight: weight of FeCL (0 = off).
        consistency_weight: maximum weight of the MSE consistency (0 = off).
        consistency_rampup: sigmoid ramp-up length of the consistency weight, in iterations (0 = none).
        uncl_on: ``"unlabeled"`` (default) or ``"all"`` (the released code applies UnCL to the whole batch).
        fecl_on: ``"unlabeled"`` (default; the paper and the released script apply FeCL to the unlabeled part, with
            teacher pseudo-labels) or ``"all"`` (labeled samples join with their ground-truth patch labels).
        consistency_on: ``"unlabeled"`` or ``"all"`` for the MSE consistency.
        teacher_noise_std: std of the Gaussian noise added to the teacher's input.
        teacher_noise_clip: the noise is clipped to ``+-teacher_noise_clip``.
        teacher_transform: optional ``callable(images) -> images`` replacing the noise perturbation.
        teacher_mode: ``"train"`` (Mean-Teacher convention: dropout/batch statistics active) or ``"eval"``.
        fecl_grid_size: FeCL patch grid ``k`` (16 in the paper: 4096 patches); the tapped feature map must be at
            least ``k`` voxels per axis.
        fecl_label_threshold: a patch is foreground when its mean label exceeds this.
        grad_clip_norm: clip the gradient norm to this value (``None`` = no clipping).
        amp: automatic mixed precision with ``torch.autocast(device.type)``: float16 with a ``GradScaler`` on CUDA.
            On CPU it is ignored with a warning (float32) unless ``amp_kwargs`` names a ``dtype`` (e.g.
            ``torch.bfloat16``). The losses are always computed in float32.
        on_nonfinite: ``"raise"`` or ``"skip"``.
        seed: base seed of the reproducible data streams and per-iteration randomness, or ``None``.
        ema_decay: decay of the EMA handler attached automatically (``None``: do not attach one).
        epoch_length, non_blocking, prepare_batch, iteration_update, inferer, postprocessing, key_train_metric,
        additional_metrics, metric_cmp_fn, train_handlers, event_names, event_to_attr, decollate, optim_set_to_none,
        to_kwargs, amp_kwargs: as in :class:`monai.engines.SupervisedTrainer` (``prepare_batch`` applies to the
            labeled batch; the training forward calls the network directly, the inferer is kept for the API).

    Wiring example (what the bundle does)::

        import torch
        from monai.losses import DiceCELoss
        from monai.handlers import StatsHandler, TensorBoardStatsHandler, ValidationHandler
        from monai.networks.nets import UNet
        from dycon_monai.engines import MeanTeacherTrainer, loss_terms_transform, make_evaluator, method_weights
        from dycon_monai.handlers import (
            AtomicCheckpointSaver, BetaScheduleHandler, EMATeacherHandler, FeCLEpochHandler, checkpoint_dict,
            checkpoint_loader, latest_checkpoint,
        )
        from dycon_monai.losses import FeCLLoss, UnCLLoss
        from dycon_monai.networks import DyCONNet

        net = DyCONNet(UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2), embedding_dim=256)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        trainer = MeanTeacherTrainer(
            device=torch.device("cuda"), max_epochs=60, epoch_length=100,
            train_data_loader=labeled_loader, unlabeled_data_loader=unlabeled_loader,
            network=net, optimizer=opt, loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
            uncl_loss=UnCLLoss(), fecl_loss=FeCLLoss(gamma=0.5), **method_weights("dycon"),
            grad_clip_norm=None, amp=True, seed=0,
            train_handlers=[
                EMATeacherHandler(decay=0.99),
                BetaScheduleHandler(mode="paper", unit="iteration"),
                FeCLEpochHandler(),
                StatsHandler(output_transform=loss_terms_transform, tag_name="train"),
                TensorBoardStatsHandler(log_dir="runs/x", output_transform=loss_terms_transform),
            ],
        )
        evaluator = make_evaluator(net, val_loader, device=torch.device("cuda"), roi_size=(96, 96, 64))
        best = AtomicCheckpointSaver("runs/x/models", {"network": net.backbone}, save_final=False,
                                     save_key_metric=True, key_metric_filename="model.pt")
        best.attach(evaluator)
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
        # epoch-level and attached after validation, so a checkpoint includes that epoch's best-model tracking
        AtomicCheckpointSaver("runs/x/checkpoints", checkpoint_dict(trainer, best_saver=best),
                              save_interval=1, epoch_level=True).attach(trainer)
        last = latest_checkpoint("runs/x/checkpoints")
        if last is not None:                                   # resume
            checkpoint_loader(last, trainer, best_saver=best).attach(trainer)
        trainer.run()
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        unlabeled_data_loader: Iterable | None = None,
        teacher_network: nn.Module | None = None,
        uncl_loss: nn.Module | None = None,
        fecl_loss: nn.Module | None = None,
        uncl_weight: float = 1.0,
        fecl_weight: float = 1.0,
        consistency_weight: float = 0.0,
        consistency_rampup: float = 0,
        uncl_on: str = "unlabeled",
        consistency_on: str = "unlabeled",
        fecl_on: str = "unlabeled",
        teacher_noise_std: float = 0.1,
        teacher_noise_clip: float = 0.2,
        teacher_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        teacher_mode: str = "train",
        fecl_grid_size: int = 16,
        fecl_label_threshold: float = 0.5,
        grad_clip_norm: float | None = None,
        amp: bool = False,
        on_nonfinite: str = "raise",
        seed: int | None = 0,
        ema_decay: float | None = 0.99,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        # ---------------------------------------------------------------- argument checks
        for name, value in (("uncl_on", uncl_on), ("consistency_on", consistency_on), ("fecl_on", fecl_on)):
            if value not in ("unlabeled", "all"):
                raise ValueError(f"{name} must be 'unlabeled' or 'all', got {value!r}.")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}.")
        if teacher_mode not in ("train", "eval"):
            raise ValueError(f"teacher_mode must be 'train' or 'eval', got {teacher_mode!r}.")
        for name, value in (
            ("uncl_weight", uncl_weight),
            ("fecl_weight", fecl_weight),
            ("consistency_weight", consistency_weight),
            ("consistency_rampup", consistency_rampup),
            ("teacher_noise_std", teacher_noise_std),
            ("teacher_noise_clip", teacher_noise_clip),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None, got {grad_clip_norm!r}.")
        if isinstance(fecl_grid_size, bool) or int(fecl_grid_size) != fecl_grid_size or fecl_grid_size < 1:
            raise ValueError(f"fecl_grid_size must be a positive integer, got {fecl_grid_size!r}.")

        self.uncl_weight = float(uncl_weight)
        self.fecl_weight = float(fecl_weight)
        self.consistency_weight = float(consistency_weight)
        self.consistency_rampup = float(consistency_rampup)
        self.uncl_on = uncl_on
        self.consistency_on = consistency_on
        self.fecl_on = fecl_on
        self.teacher_noise_std = float(teacher_noise_std)
        self.teacher_noise_clip = float(teacher_noise_clip)
        self.teacher_transform = teacher_transform
        self.teacher_mode = teacher_mode
        self.fecl_grid_size = int(fecl_grid_size)
        self.fecl_label_threshold = float(fecl_label_threshold)
        self.grad_clip_norm = None if grad_clip_norm is None else float(grad_clip_norm)
        self.on_nonfinite = on_nonfinite
        self.seed = None if seed is None else int(seed)
        self.ema_decay = ema_decay
        self.ema_handler = None  # set by EMATeacherHandler.attach

        # ---------------------------------------------------------------- terms, losses, teacher
        self.uncl_active = self.uncl_weight > 0
        self.fecl_active = self.fecl_weight > 0
        self.consistency_active = self.consistency_weight > 0
        self.uncl_loss = (uncl_loss if uncl_loss is not None else UnCLLoss()) if self.uncl_active else uncl_loss
        self.fecl_loss = (fecl_loss if fecl_loss is not None else FeCLLoss()) if self.fecl_active else fecl_loss
        if not self.uncl_active:
            self.uncl_loss = None
        if not self.fecl_active:
            self.fecl_loss = None
        if self.fecl_active and not callable(getattr(unwrap_module(network), "forward_features", None)):
            raise TypeError(
                f"FeCL (fecl_weight={fecl_weight}) needs embeddings: network must be a DyCONNet (with forward_features), "
                f"got {type(network).__name__}. Wrap the backbone: DyCONNet(backbone, feature_layer, feature_channels)."
            )
        self.semi_supervised = self.uncl_active or self.fecl_active or self.consistency_active
        if self.semi_supervised and unlabeled_data_loader is None:
            active = [n for n, on in (("UnCL", self.uncl_active), ("FeCL", self.fecl_active)) if on]
            active += ["consistency"] if self.consistency_active else []
            raise ValueError(
                f"unlabeled_data_loader is None but the unlabeled terms {active} are on; pass the unlabeled loader "
                "(isles22_datalist(...)['training_unlabeled'] with unlabeled_train_transforms) or use "
                "method_weights('supervised')."
            )
        self.unlabeled_data_loader = unlabeled_data_loader if self.semi_supervised else None
        self._fecl_uses_teacher = self.fecl_active and bool(self.fecl_loss.uses_teacher)
        self._teacher_on_all = (
            (self._fecl_uses_teacher and fecl_on == "all")
            or (self.uncl_active and uncl_on == "all")
            or (self.consistency_active and consistency_on == "all")
        )
        if self.semi_supervised:
            if teacher_network is None:
                teacher_network = copy.deepcopy(unwrap_module(network))
            teacher_network.requires_grad_(False)
        self.teacher_network = teacher_network if self.semi_supervised else None
        if self.fecl_active:
            self._check_head_in_optimizer(network, optimizer)

        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=None,  # registered below, after the stream handlers
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.logger = logging.getLogger(type(self).__name__)
        device_type = self.state.device.type if self.state.device is not None else "cpu"
        self._device_type = device_type
        if amp and device_type == "cpu" and "dtype" not in self.amp_kwargs:
            warnings.warn(
                "amp=True on a CPU device: training runs in float32. CPU bfloat16 autocast gave nondeterministic losses "
                "and occasional NaN gradients in 3D convolutions in our tests; pass amp_kwargs={'dtype': "
                "torch.bfloat16} to use it anyway.",
                stacklevel=2,
            )
            self.amp = amp = False
        self.scaler = torch.amp.GradScaler("cuda") if (amp and device_type == "cuda") else None

        # ---------------------------------------------------------------- state (checkpointed)
        self.state.seed = self.seed
        for key in ("labeled_cycle", "labeled_position", "unlabeled_cycle", "unlabeled_position", "nonfinite_skipped"):
            setattr(self.state, key, 0)
            self.state_dict_user_keys.append(key)
        self.state.iteration_skipped = False
        self.state.loss_terms = {}
        self.state.nonfinite_log = []
        self._unlabeled_iter: Iterator | None = None
        self._fresh_run = False

        self.add_event_handler(Events.STARTED, self._on_started)
        self.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        self.add_event_handler(Events.GET_BATCH_COMPLETED, self._on_labeled_batch)
        self.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._on_labeled_cycle_end)
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    # ==================================================================== setup helpers
    @staticmethod
    def _check_head_in_optimizer(network: nn.Module, optimizer: Optimizer) -> None:
        head = getattr(unwrap_module(network), "head", None)
        if head is None:
            return
        in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in head.named_parameters() if id(p) not in in_opt]
        if missing:
            warnings.warn(
                f"the projection head parameters {missing[:3]} are not in the optimizer: FeCL will not train the "
                "head. Build the optimizer over network.parameters().",
                stacklevel=3,
            )

    def run(self) -> None:  # type: ignore[override]
        """Run training (continues from ``state`` when resumed). The AMP scaler is created in ``__init__`` for the
        engine's device type, so that checkpoints can hold it.

        Raises:
            ValueError: a loader that yields no batch (MONAI would skip the run with a warning only).
        """
        for name, loader in (
            ("train_data_loader", self.data_loader),
            ("unlabeled_data_loader", self.unlabeled_data_loader),
        ):
            if loader is not None and self._loader_len(loader) == 0:
                batch = getattr(loader, "batch_size", None)
                cases = len(getattr(loader, "dataset", ()) or ())
                raise ValueError(
                    f"{name} yields no batch: {cases} cases with batch_size={batch} and drop_last=True. Use at least "
                    "batch_size cases (e.g. a larger labeled_count) or a smaller batch_size."
                )
        Workflow.run(self)

    # ==================================================================== reproducible streams
    def _derive_seed(self, stream: str, index: int) -> int:
        seq = np.random.SeedSequence([int(self.seed), zlib.crc32(stream.encode()), int(index)])
        return int(seq.generate_state(1, dtype=np.uint32)[0])

    def _reseed_stream(self, stream: str, cycle: int, loader: Any) -> None:
        if self.seed is None:
            return
        s = self._derive_seed(stream, cycle)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed=self._derive_seed(stream + "-transforms", cycle))

    @staticmethod
    def _loader_len(loader: Any) -> int | None:
        try:
            return len(loader)
        except TypeError:
            return None

    def _on_started(self, engine: MeanTeacherTrainer) -> None:
        self._fresh_run = True
        self._unlabeled_iter = None
        if self.teacher_network is not None and self.ema_handler is None and self.ema_decay is not None:
            from dycon_monai.handlers.ema import EMATeacherHandler

            EMATeacherHandler(decay=self.ema_decay).attach(self)
            self.logger.info(f"attached EMATeacherHandler(decay={self.ema_decay}) to update the teacher.")
        elif self.teacher_network is not None and self.ema_handler is None:
            self.logger.warning("the teacher is not updated by any EMATeacherHandler (ema_decay=None).")

    def _on_epoch_started(self, engine: MeanTeacherTrainer) -> None:
        if not self._fresh_run:
            return
        self._fresh_run = False
        state = engine.state
        n = self._loader_len(self.data_loader)
        if n is not None and state.labeled_position >= n:
            state.labeled_cycle += 1
            state.labeled_position = 0
        self._reseed_stream("labeled", state.labeled_cycle, self.data_loader)
        if state.labeled_position > 0:
            state.dataloader = _SkipFirstBatches(self.data_loader, state.labeled_position)

    def _on_labeled_batch(self, engine: MeanTeacherTrainer) -> None:
        engine.state.labeled_position += 1

    def _on_labeled_cycle_end(self, engine: MeanTeacherTrainer) -> None:
        engine.state.labeled_cycle += 1
        engine.state.labeled_position = 0
        self._reseed_stream("labeled", engine.state.labeled_cycle, self.data_loader)

    def _open_unlabeled(self) -> None:
        state = self.state
        loader = self.unlabeled_data_loader
        n = self._loader_len(loader)
        if n is not None and state.unlabeled_position >= n:
            state.unlabeled_cycle += 1
            state.unlabeled_position = 0
        self._reseed_stream("unlabeled", state.unlabeled_cycle, loader)
        it = iter(loader)  # type: ignore[arg-type]
        for _ in range(state.unlabeled_position):
            try:
                next(it)
            except StopIteration:
                break
        self._unlabeled_iter = it

    def _next_unlabeled(self) -> Any:
        if self._unlabeled_iter is None:
            self._open_unlabeled()
        try:
            batch = next(self._unlabeled_iter)  # type: ignore[arg-type]
        except StopIteration:
            self.state.unlabeled_cycle += 1
            self.state.unlabeled_position = 0
            self._open_unlabeled()
            try:
                batch = next(self._unlabeled_iter)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("unlabeled_data_loader yields no batch; check the unlabeled datalist.") from None
        self.state.unlabeled_position += 1
        return batch

    # ==================================================================== per-iteration helpers
    def _check_unlabeled_batch(self, batch: Any) -> None:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"unlabeled batches must be dicts with an 'image' key, got {type(batch).__name__} "
                f"at iteration {self.state.iteration}."
            )
        leaked = [k for k in batch if k in _FORBIDDEN_UNLABELED_KEYS or str(k).startswith(f"{Keys.LABEL}_")]
        if leaked:
            raise ValueError(
                f"unlabeled batch at iteration {self.state.iteration} carries {leaked} (cases {_case_ids(batch)}): "
                "labels of unlabeled cases must never reach training. Build the unlabeled stream from "
                "isles22_datalist(...)['training_unlabeled'] (no 'label' key) with unlabeled_train_transforms."
            )
        if Keys.IMAGE not in batch:
            raise ValueError(
                f"unlabeled batch at iteration {self.state.iteration} has no 'image' key (keys {sorted(batch)})."
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device_type, **self.amp_kwargs)

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher_transform is not None:
            return self.teacher_transform(x)
        if self.teacher_noise_std == 0:
            return x
        noise = torch.randn_like(x) * self.teacher_noise_std
        return x + noise.clamp_(-self.teacher_noise_clip, self.teacher_noise_clip)

    def _consistency_ramp(self, iteration: int) -> float:
        return self.consistency_weight * sigmoid_rampup(max(iteration - 1, 0), self.consistency_rampup)

    def _nonfinite(self, bad: dict[str, float], labeled_ids: list, unlabeled_ids: list, detail: str = "") -> None:
        it = self.state.iteration
        terms = ", ".join(f"{k}={v}" for k, v in bad.items())
        msg = (
            f"non-finite loss at iteration {it} (epoch {self.state.epoch}): {terms}; labeled cases {labeled_ids}, "
            f"unlabeled cases {unlabeled_ids}.{detail}"
        )
        if self.on_nonfinite == "raise":
            raise NonFiniteLossError(
                msg + " Set on_nonfinite='skip' to skip such steps (they are counted and logged), lower the learning "
                "rate or set grad_clip_norm.",
                it,
                bad,
                labeled_ids,
                unlabeled_ids,
            )
        self.state.nonfinite_skipped += 1
        self.state.iteration_skipped = True
        record = {"iteration": it, "terms": bad, "labeled_cases": labeled_ids, "unlabeled_cases": unlabeled_ids}
        self.state.nonfinite_log = [*self.state.nonfinite_log[-99:], record]
        full = f"{msg} Skipped the optimizer step ({self.state.nonfinite_skipped} skipped so far)."
        self.logger.warning(full)
        warnings.warn(full, RuntimeWarning, stacklevel=2)

    # ==================================================================== the iteration
    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One semi-supervised step: forward student and teacher, compose the loss, check it, step.

        Returns:
            ``engine.state.output`` (see the class docstring for its keys).

        Raises:
            ValueError: no batch, a labeled batch without label, an unlabeled batch with a label key, mismatched
                image shapes, or a feature map smaller than the FeCL grid.
            NonFiniteLossError: a non-finite term with ``on_nonfinite="raise"``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        state = engine.state
        it = state.iteration
        state.iteration_skipped = False
        labeled_ids = _case_ids(batchdata)
        batch = engine.prepare_batch(batchdata, state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        if targets is None:
            raise ValueError(
                f"labeled batch at iteration {it} has no 'label' (cases {labeled_ids}); train_data_loader must yield "
                "{'image', 'label'} dicts."
            )
        unlabeled_ids: list = []
        x_u = None
        if self.semi_supervised:
            ubatch = self._next_unlabeled()
            self._check_unlabeled_batch(ubatch)
            unlabeled_ids = _case_ids(ubatch)
            x_u = _plain(ubatch[Keys.IMAGE]).to(state.device, non_blocking=engine.non_blocking)
            if x_u.shape[1:] != inputs.shape[1:]:
                raise ValueError(
                    f"unlabeled images {tuple(x_u.shape)} (cases {unlabeled_ids}) and labeled images "
                    f"{tuple(inputs.shape)} (cases {labeled_ids}) must share channels and patch size at iteration {it}."
                )
        if self.seed is not None:
            torch.manual_seed(self._derive_seed("iteration", it))

        n_l = inputs.shape[0]
        x_l = _plain(inputs)
        x = torch.cat([x_l, x_u.to(x_l.dtype)], dim=0) if x_u is not None else x_l
        state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        emb = None
        with self._autocast():
            if self.fecl_active:
                logits, emb = engine.network(x, with_embeddings=True, grid_size=self.fecl_grid_size)
            else:
                logits = engine.network(x)
        state.output[Keys.PRED] = logits[:n_l]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        # ------------------------------------------------------------ teacher (no gradient, perturbed input)
        t_logits = t_emb = None
        if self.teacher_network is not None:
            teacher = self.teacher_network
            teacher.train(self.teacher_mode == "train")
            with torch.no_grad():
                t_in = self._perturb(x if self._teacher_on_all else x[n_l:])
                with self._autocast():
                    if self._fecl_uses_teacher:
                        t_logits, t_emb = teacher(t_in, with_embeddings=True, grid_size=self.fecl_grid_size)
                    else:
                        t_logits = teacher(t_in)
            t_logits = t_logits.float()
        t_unl = None
        if t_logits is not None:
            t_unl = t_logits[n_l:] if self._teacher_on_all else t_logits

        # ------------------------------------------------------------ loss terms (float32)
        s_logits = logits.float()
        cons_w = self._consistency_ramp(it) if self.consistency_active else 0.0
        forward_detail = ""
        forward_bad = self._nonfinite_outputs(
            {
                "student_logits": s_logits,
                "student_embeddings": emb,
                "teacher_logits": t_logits,
                "teacher_embeddings": t_emb,
            }
        )
        if forward_bad:  # the losses would only propagate (or, in FeCL's input checks, reject) the NaN
            finite_images = torch.isfinite(x.detach()).flatten(1).all(dim=1).tolist()
            all_ids = list(labeled_ids) + list(unlabeled_ids)
            bad_images = [all_ids[i] if i < len(all_ids) else i for i, ok in enumerate(finite_images) if not ok]
            if bad_images:
                forward_bad = {"image": float("nan"), **forward_bad}
                forward_detail = f" Non-finite voxels in the input images of cases {bad_images}."
            nan = s_logits.new_full((), float("nan"))
            loss_sup = loss_uncl = loss_fecl = loss_cons = total = nan
        else:
            loss_sup, loss_uncl, loss_fecl, loss_cons = self._loss_terms(
                x, s_logits, emb, t_logits, t_unl, t_emb, targets, n_l
            )
            total = loss_sup + self.uncl_weight * loss_uncl + self.fecl_weight * loss_fecl + cons_w * loss_cons
        beta = float(getattr(self.uncl_loss, "beta", 0.0)) if self.uncl_active else 0.0
        terms = {
            "loss_sup": loss_sup,
            "loss_uncl": loss_uncl,
            "loss_fecl": loss_fecl,
            "loss_consistency": loss_cons,
        }
        state.output[Keys.LOSS] = total
        for k, v in terms.items():
            state.output[k] = v.detach()
        state.output["beta"] = torch.tensor(beta)
        state.output["consistency_weight"] = torch.tensor(cons_w)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        names = ["loss", *terms]
        stacked = torch.stack([total.detach(), *(v.detach() for v in terms.values())]).float().cpu().tolist()
        values = dict(zip(names, stacked))  # one device sync for all terms
        # when the forward pass is already non-finite, the loss terms were not computed: report the outputs
        bad = forward_bad or {k: v for k, v in values.items() if not math.isfinite(v)}
        grad_norm = float("nan")
        if bad:
            self._nonfinite(bad, labeled_ids, unlabeled_ids, forward_detail)
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        else:
            grad_norm = self._backward_and_step(engine, total, labeled_ids, unlabeled_ids)
        state.output["grad_norm"] = torch.tensor(grad_norm)
        state.loss_terms = {**values, "beta": beta, "consistency_weight": cons_w, "grad_norm": grad_norm}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return state.output

    @staticmethod
    def _nonfinite_outputs(outputs: dict[str, torch.Tensor | None]) -> dict[str, float]:
        """Network outputs holding NaN or inf, as ``{name: first bad value}``."""
        bad = {}
        for name, value in outputs.items():
            if value is None:
                continue
            value = value.detach()
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad[name] = float(value[~finite].flatten()[0])
        return bad

    def _loss_terms(
        self,
        x: torch.Tensor,
        s_logits: torch.Tensor,
        emb: torch.Tensor | None,
        t_logits: torch.Tensor | None,
        t_unl: torch.Tensor | None,
        t_emb: torch.Tensor | None,
        targets: torch.Tensor,
        n_l: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unweighted ``(loss_sup, loss_uncl, loss_fecl, loss_consistency)``; terms that are off are 0."""
        zero = s_logits.new_zeros(())
        loss_sup = self.loss_function(s_logits[:n_l], targets).mean()
        loss_uncl = loss_fecl = loss_cons = zero
        if self.uncl_active:
            if self.uncl_on == "all":
                loss_uncl = self.uncl_loss(s_logits, t_logits)
            else:
                loss_uncl = self.uncl_loss(s_logits[n_l:], t_unl)
        if self.consistency_active:
            if self.consistency_on == "all":
                s_c, t_c = s_logits, t_logits
            else:
                s_c, t_c = s_logits[n_l:], t_unl
            loss_cons = F.mse_loss(torch.softmax(s_c, dim=1), torch.softmax(t_c, dim=1))
        if self.fecl_active:
            loss_fecl = self._fecl_term(x, s_logits, emb, t_unl, t_emb, targets, n_l)
        return loss_sup, loss_uncl, loss_fecl, loss_cons

    def _fecl_term(
        self,
        x: torch.Tensor,
        s_logits: torch.Tensor,
        emb: torch.Tensor,
        t_unl: torch.Tensor | None,
        t_emb: torch.Tensor | None,
        targets: torch.Tensor,
        n_l: int,
    ) -> torch.Tensor:
        g = self.fecl_grid_size  # the networks returned embeddings already pooled onto the g^3 grid
        if s_logits.shape[1] > 2:
            raise ValueError(
                f"FeCL patch labels are binary (foreground when the mean label > {self.fecl_label_threshold}); the "
                f"network predicts {s_logits.shape[1]} classes. Use a 2-class output or fecl_weight=0."
            )
        # fecl_on="unlabeled" (paper): only the unlabeled part; "all": labeled samples with their ground truth too
        start = n_l if self.fecl_on == "unlabeled" else 0
        emb_p = patchify_embeddings(emb[start:].float(), g)
        labels = [] if start else [patchify_labels(_plain(targets).float(), g, self.fecl_label_threshold)]
        if t_unl is not None and s_logits.shape[0] > n_l:
            pseudo = t_unl.argmax(dim=1, keepdim=True).float()  # teacher pseudo-labels, never the unlabeled GT
            labels.append(patchify_labels(pseudo, g, self.fecl_label_threshold))
        patch_labels = torch.cat(labels, dim=0)
        t_emb_p = None
        if t_emb is not None:  # the teacher ran on the whole batch, or on its unlabeled part only
            t_emb_p = patchify_embeddings((t_emb[start:] if self._teacher_on_all else t_emb).float(), g)
        entropy = None
        if self.fecl_loss.uses_entropy:
            probs = torch.softmax(s_logits[start:].detach(), dim=1)
            entropy = patch_entropy(probs, g, gambling_temperature=self.fecl_loss.gambling_temperature)
        return self.fecl_loss(emb_p, patch_labels, teacher_embeddings=t_emb_p, patch_entropy=entropy)

    def _backward_and_step(
        self, engine: MeanTeacherTrainer, total: torch.Tensor, labeled_ids: list, unlabeled_ids: list
    ) -> float:
        params = [p for group in engine.optimizer.param_groups for p in group["params"]]
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.scaler is not None:
            self.scaler.unscale_(engine.optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if self.grad_clip_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm))
        elif grads:
            norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
        else:
            norm = 0.0
        if self.scaler is not None:
            # non-finite gradients are expected now and then with float16 loss scaling: the scaler skips those steps
            self.scaler.step(engine.optimizer)
            self.scaler.update()
            return norm
        if not math.isfinite(norm):
            self._nonfinite({"grad_norm": norm}, labeled_ids, unlabeled_ids)
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            return norm
        engine.optimizer.step()
        return norm
