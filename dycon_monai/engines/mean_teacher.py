"""Semi-supervised Mean-Teacher trainer for MONAI with the DyCON losses (UnCL, FeCL) and its baselines.

The trainer owns the student and teacher passes and the loss terms of one iteration; the shared step machinery
(batches, backward and step, AMP) is :class:`~dycon_monai.engines.semi_supervised.SemiSupervisedTrainer`, the data
streams (:mod:`dycon_monai.engines.streams`), the method presets (:mod:`dycon_monai.engines.methods`), the non-finite policy
(:mod:`dycon_monai.handlers.nonfinite`), the gradient norm (:mod:`dycon_monai.handlers.gradients`) and the EMA update
(:mod:`dycon_monai.handlers.ema`) live in their own modules and attach to the engine's events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim.optimizer import Optimizer
from torch.profiler import record_function

from dycon_monai.handlers.nonfinite import NonFiniteLossError, nonfinite_outputs
from dycon_monai.losses import FeCLLoss, UnCLLoss
from dycon_monai.networks.dycon_net import check_head_in_optimizer, unwrap_module
from dycon_monai.utils.schedules import sigmoid_rampup

from .methods import LOSS_TERMS, METHODS, OUTPUT_SCALARS, check_trainer_options, loss_terms_transform, method_weights
from .semi_supervised import SemiSupervisedTrainer
from .streams import as_plain_tensor
from .teacher import NoisyTeacher

__all__ = [
    "LOSS_TERMS",
    "METHODS",
    "OUTPUT_SCALARS",
    "MeanTeacherTrainer",
    "NonFiniteLossError",
    "loss_terms_transform",
    "method_weights",
]


class MeanTeacherTrainer(SemiSupervisedTrainer):
    """Mean-Teacher semi-supervised trainer with DyCON's UnCL and FeCL, as a MONAI ``SupervisedTrainer``.

    Each iteration draws a labeled batch from ``train_data_loader`` and an unlabeled one (no ``"label"`` key) from
    ``unlabeled_data_loader``; the student (a :class:`~dycon_monai.networks.DyCONNet`) runs on both, the teacher
    (:class:`~dycon_monai.engines.teacher.NoisyTeacher`, updated by an ``EMATeacherHandler``) on a perturbed view::

        loss = loss_sup                                   Dice+CE (loss_function) on the labeled part
             + uncl_weight * loss_uncl                    UnCL(student, teacher) on the unlabeled part (or all)
             + fecl_weight * loss_fecl                    FeCL on k^3 patches of the student embeddings
             + consistency_weight * ramp(t) * loss_consistency   optional plain MT MSE consistency

    A term whose weight is 0 is not computed; a method is a choice of weights (:func:`method_weights`).
    ``engine.state.output`` holds ``"image"``, ``"label"``, ``"pred"`` (labeled part) and the scalars of
    :data:`~dycon_monai.engines.OUTPUT_SCALARS` (also in ``engine.state.loss_terms``). ``docs/engines.md`` describes
    the streams, the non-finite policy, reproducibility and the wiring in Python.

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
        teacher_network, teacher_noise_std, teacher_noise_clip, teacher_transform, teacher_mode: the teacher's
            network (default: a copy of the student), input noise (std 0.1 clipped to +-0.2) or transform, and mode
            (:class:`~dycon_monai.engines.teacher.NoisyTeacher`).
        uncl_loss: an ``UnCLLoss``; created with paper defaults when ``uncl_weight > 0`` and not given.
        fecl_loss: a ``FeCLLoss``; created with paper defaults when ``fecl_weight > 0`` and not given. It owns the
            patch grid (``grid_size``; the tapped feature map must be at least that many voxels per axis), the patch
            label threshold and the entropy weights; the trainer hands it the maps.
        uncl_weight: weight of UnCL (0 = off).
        fecl_weight: weight of FeCL (0 = off).
        consistency_weight: maximum weight of the MSE consistency (0 = off).
        consistency_rampup: sigmoid ramp-up length of the consistency weight, in iterations (0 = none).
        uncl_on: ``"unlabeled"`` (default) or ``"all"`` (the released code applies UnCL to the whole batch).
        fecl_on: ``"unlabeled"`` (default; the paper and the released script apply FeCL to the unlabeled part, with
            teacher pseudo-labels) or ``"all"`` (labeled samples join with their ground-truth patch labels).
        consistency_on: ``"unlabeled"`` or ``"all"`` for the MSE consistency.
        grad_clip_norm: clip the gradient norm to this value (``None`` = no clipping); a
            :class:`~dycon_monai.handlers.GradientNormHandler` measures (and clips) it on ``StepEvents.GRADIENTS_READY``.
        amp: automatic mixed precision with ``torch.autocast(device.type)``: float16 with a ``GradScaler`` on CUDA.
            On CPU it is ignored with a warning (float32) unless ``amp_kwargs`` names a ``dtype`` (e.g.
            ``torch.bfloat16``). The losses are always computed in float32.
        on_nonfinite: ``"raise"`` or ``"skip"`` (a :class:`~dycon_monai.handlers.NonFiniteHandler` is attached).
        seed: base seed of the reproducible data streams and per-iteration randomness, or ``None``.
        ema_decay: decay of the EMA handler attached automatically (``None``: do not attach one).
        epoch_length, train_handlers, event_names, kwargs: as in :class:`monai.engines.SupervisedTrainer`
            (``non_blocking``, ``prepare_batch``, ``iteration_update``, ``inferer``, ``postprocessing``, metrics,
            ``decollate``, ``optim_set_to_none``, ``to_kwargs``, ``amp_kwargs``...); ``prepare_batch`` applies to the
            labeled batch; the training forward calls the network directly, the inferer is kept for the API.

    The bundle's ``train.json`` wires it with its handlers; ``docs/engines.md`` shows the same wiring in Python.
    """

    loss_terms = LOSS_TERMS

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
        grad_clip_norm: float | None = None,
        amp: bool = False,
        on_nonfinite: str = "raise",
        seed: int | None = 0,
        ema_decay: float | None = 0.99,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        **kwargs: Any,
    ) -> None:
        check_trainer_options(
            uncl_on=uncl_on, consistency_on=consistency_on, fecl_on=fecl_on, on_nonfinite=on_nonfinite,
            teacher_mode=teacher_mode, uncl_weight=uncl_weight, fecl_weight=fecl_weight,
            consistency_weight=consistency_weight, consistency_rampup=consistency_rampup,
            teacher_noise_std=teacher_noise_std, teacher_noise_clip=teacher_noise_clip,
        )  # fmt: skip
        self.uncl_weight = float(uncl_weight)
        self.fecl_weight = float(fecl_weight)
        self.consistency_weight = float(consistency_weight)
        self.consistency_rampup = float(consistency_rampup)
        self.uncl_on = uncl_on
        self.consistency_on = consistency_on
        self.fecl_on = fecl_on
        self.ema_decay = ema_decay
        self.ema_handler = None  # set by EMATeacherHandler.attach

        self.uncl_active = self.uncl_weight > 0
        self.fecl_active = self.fecl_weight > 0
        self.consistency_active = self.consistency_weight > 0
        self.uncl_loss = (uncl_loss if uncl_loss is not None else UnCLLoss()) if self.uncl_active else None
        self.fecl_loss = (fecl_loss if fecl_loss is not None else FeCLLoss()) if self.fecl_active else None
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
        self._fecl_uses_teacher = self.fecl_active and self.fecl_loss.uses_teacher
        self._teacher_on_all = (
            (self._fecl_uses_teacher and fecl_on == "all")
            or (self.uncl_active and uncl_on == "all")
            or (self.consistency_active and consistency_on == "all")
        )
        self.teacher = None
        if self.semi_supervised:
            self.teacher = NoisyTeacher(
                network, teacher_network, teacher_noise_std, teacher_noise_clip, teacher_transform, teacher_mode
            )
        self.teacher_network = self.teacher.network if self.teacher is not None else None
        if self.fecl_active:
            check_head_in_optimizer(network, optimizer)

        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            unlabeled_data_loader=unlabeled_data_loader if self.semi_supervised else None,
            grad_clip_norm=grad_clip_norm,
            amp=amp,
            on_nonfinite=on_nonfinite,
            seed=seed,
            epoch_length=epoch_length,
            train_handlers=train_handlers,
            event_names=event_names,
            **kwargs,
        )

    def _attach_own_handlers(self) -> None:
        self.add_event_handler(Events.STARTED, self._attach_default_ema)

    @property
    def fecl_grid_size(self) -> int | None:
        """FeCL's patch grid ``k`` (the networks pool their embeddings onto it), or ``None`` when FeCL is off."""
        return self.fecl_loss.grid_size if self.fecl_loss is not None else None

    def _attach_default_ema(self, engine: MeanTeacherTrainer) -> None:
        if self.teacher_network is not None and self.ema_handler is None and self.ema_decay is not None:
            from dycon_monai.handlers.ema import EMATeacherHandler

            EMATeacherHandler(decay=self.ema_decay).attach(self)
            self.logger.info(f"attached EMATeacherHandler(decay={self.ema_decay}) to update the teacher.")
        elif self.teacher_network is not None and self.ema_handler is None:
            self.logger.warning("the teacher is not updated by any EMATeacherHandler (ema_decay=None).")

    def _consistency_ramp(self, iteration: int) -> float:
        return self.consistency_weight * sigmoid_rampup(max(iteration - 1, 0), self.consistency_rampup)

    def _iteration(self, engine: MeanTeacherTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One semi-supervised step: forward student and teacher, compose the loss, check it, step.

        Returns:
            ``engine.state.output`` (see the class docstring for its keys).

        Raises:
            ValueError: no batch, a labeled batch without label, an unlabeled batch with a label key, mismatched
                image shapes, or a feature map smaller than the FeCL grid.
            NonFiniteLossError: a non-finite term with ``on_nonfinite="raise"``.
        """
        inputs, targets, x, n_l = self._draw_batches(engine, batchdata, unlabeled=self.semi_supervised)
        state = engine.state
        it = state.iteration
        labeled_ids, unlabeled_ids = state.batch_case_ids["labeled"], state.batch_case_ids["unlabeled"]

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        emb = None
        with self._autocast(), record_function("dycon/student_forward"):
            if self.fecl_active:
                logits, emb = engine.network(x, with_embeddings=True, grid_size=self.fecl_grid_size)
            else:
                logits = engine.network(x)
        state.output[Keys.PRED] = logits[:n_l]
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        t_logits = t_emb = None
        if self.teacher is not None:
            grid = self.fecl_grid_size if self._fecl_uses_teacher else None
            with record_function("dycon/teacher_forward"):
                t_logits, t_emb = self.teacher(x if self._teacher_on_all else x[n_l:], grid, self._autocast())
        t_unl = None if t_logits is None else (t_logits[n_l:] if self._teacher_on_all else t_logits)

        s_logits = logits.float()
        cons_w = self._consistency_ramp(it) if self.consistency_active else 0.0
        outputs = {"student_logits": s_logits, "student_embeddings": emb, "teacher_logits": t_logits}
        all_ids = [*labeled_ids, *unlabeled_ids]
        state.nonfinite_outputs, state.nonfinite_detail = nonfinite_outputs(
            {**outputs, "teacher_embeddings": t_emb}, x, all_ids
        )
        if state.nonfinite_outputs:  # the losses would only propagate (or, in FeCL's input checks, reject) the NaN
            nan = s_logits.new_full((), float("nan"))
            loss_sup = loss_uncl = loss_fecl = loss_cons = total = nan
        else:
            loss_sup, loss_uncl, loss_fecl, loss_cons = self._loss_terms(
                s_logits, emb, t_logits, t_unl, t_emb, targets, n_l
            )
            total = loss_sup + self.uncl_weight * loss_uncl + self.fecl_weight * loss_fecl + cons_w * loss_cons
        beta = float(self.uncl_loss.beta) if self.uncl_loss is not None else 0.0
        terms = {"loss_sup": loss_sup, "loss_uncl": loss_uncl, "loss_fecl": loss_fecl, "loss_consistency": loss_cons}
        return self._report_and_step(engine, total, terms, {"beta": beta, "consistency_weight": cons_w})

    def _loss_terms(
        self,
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
        with record_function("dycon/loss_sup"):
            loss_sup = self.loss_function(s_logits[:n_l], targets).mean()
        loss_uncl = loss_fecl = loss_cons = zero
        if self.uncl_active:
            s_u, t_u = (s_logits, t_logits) if self.uncl_on == "all" else (s_logits[n_l:], t_unl)
            with record_function("dycon/loss_uncl"):
                loss_uncl = self.uncl_loss(s_u, t_u)
        if self.consistency_active:
            s_c, t_c = (s_logits, t_logits) if self.consistency_on == "all" else (s_logits[n_l:], t_unl)
            with record_function("dycon/loss_consistency"):
                loss_cons = F.mse_loss(torch.softmax(s_c, dim=1), torch.softmax(t_c, dim=1))
        if self.fecl_active:
            # fecl_on="unlabeled" (paper): the unlabeled part only; "all": labeled samples with their ground truth too
            start = n_l if self.fecl_on == "unlabeled" else 0
            t_map = None if t_emb is None else (t_emb[start:] if self._teacher_on_all else t_emb).float()
            probs = torch.softmax(s_logits[start:].detach(), dim=1) if self.fecl_loss.uses_entropy else None
            truth = None if start else as_plain_tensor(targets)
            with record_function("dycon/loss_fecl"):
                loss_fecl = self.fecl_loss.from_predictions(emb[start:].float(), t_unl, truth, t_map, probs)
        return loss_sup, loss_uncl, loss_fecl, loss_cons
