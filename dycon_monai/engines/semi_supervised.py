"""The part every semi-supervised trainer shares: streams, non-finite policy, gradient norm, AMP, one step.

:class:`SemiSupervisedTrainer` is a ``monai.engines.SupervisedTrainer`` that draws a labeled and an unlabeled batch
per iteration (:class:`~dycon_monai.engines.streams.LabeledUnlabeledStreams`), checks the loss terms an iteration
reports (:class:`~dycon_monai.handlers.NonFiniteHandler`), measures and clips the gradient norm
(:class:`~dycon_monai.handlers.GradientNormHandler`) and takes the optimiser step. The Mean-Teacher
(:mod:`dycon_monai.engines.mean_teacher`) and co-training (:mod:`dycon_monai.engines.co_training`) trainers subclass
it and write only their forward passes and loss terms.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils.enums import CommonKeys as Keys
from torch.profiler import record_function

from dycon_monai.handlers.gradients import GradientNormHandler, StepEvents
from dycon_monai.handlers.nonfinite import NonFiniteHandler

from .streams import LabeledUnlabeledStreams, as_plain_tensor, check_loaders_yield, derive_seed

__all__ = ["SemiSupervisedTrainer"]


class SemiSupervisedTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` with a second, unlabeled data stream and the shared step machinery.

    Subclasses set :attr:`loss_terms` (the names the non-finite policy checks) and implement ``_iteration`` with
    :meth:`_draw_batches` and :meth:`_report_and_step`. ``unlabeled_data_loader`` may be ``None`` (a supervised
    run); the other arguments are those of :class:`~dycon_monai.engines.MeanTeacherTrainer`.
    """

    #: the loss-term names of ``engine.state.loss_terms`` that the non-finite policy checks
    loss_terms: tuple[str, ...] = ("loss",)

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Any,
        unlabeled_data_loader: Iterable | None = None,
        grad_clip_norm: float | None = None,
        amp: bool = False,
        on_nonfinite: str = "raise",
        seed: int | None = 0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        **kwargs: Any,
    ) -> None:
        gradient_handler = GradientNormHandler(grad_clip_norm)
        self.grad_clip_norm = gradient_handler.clip_norm
        self.on_nonfinite = on_nonfinite
        self.seed = None if seed is None else int(seed)
        self.unlabeled_data_loader = unlabeled_data_loader
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            train_handlers=None,  # registered below, after the stream and step handlers
            amp=amp,
            event_names=[*(event_names or []), StepEvents],
            **kwargs,
        )
        self.logger = logging.getLogger(type(self).__name__)
        device_type = self.state.device.type if self.state.device is not None else "cpu"
        self._device_type = device_type
        if amp and device_type == "cpu" and "dtype" not in self.amp_kwargs:
            warnings.warn(
                "amp=True on a CPU device: training runs in float32. CPU bfloat16 autocast gave nondeterministic losses "
                "and occasional NaN gradients in 3D convolutions in our tests; pass amp_kwargs={'dtype': "
                "torch.bfloat16} to use it anyway.",
                stacklevel=3,
            )
            self.amp = amp = False
        self.scaler = torch.amp.GradScaler("cuda") if (amp and device_type == "cuda") else None

        self.state.seed = self.seed
        self.state.loss_terms = {}
        self.streams = LabeledUnlabeledStreams(self.unlabeled_data_loader, seed=self.seed)
        self.streams.attach(self)
        gradient_handler.attach(self)
        NonFiniteHandler(on_nonfinite, terms=self.loss_terms).attach(self)
        self._attach_own_handlers()
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def _attach_own_handlers(self) -> None:
        """Handlers of the subclass that must run before the ``train_handlers`` (none here)."""

    def run(self) -> None:  # type: ignore[override]
        """Run training (continues from ``state`` when resumed).

        Raises:
            ValueError: a loader that yields no batch (MONAI would skip the run with a warning only).
        """
        check_loaders_yield(train_data_loader=self.data_loader, unlabeled_data_loader=self.unlabeled_data_loader)
        Workflow.run(self)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._device_type, **self.amp_kwargs)

    def _draw_batches(
        self, engine: SemiSupervisedTrainer, batchdata: dict[str, torch.Tensor], unlabeled: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Start an iteration: ``(labeled inputs, labels, labeled + unlabeled images, number labeled)``.

        Resets the iteration's non-finite bookkeeping, seeds the iteration's randomness and puts ``"image"`` /
        ``"label"`` on ``engine.state.output``.

        Raises:
            ValueError: no batch, a labeled batch without label, an unlabeled batch with a label key or with other
                channels / patch size (:meth:`LabeledUnlabeledStreams.next_batch`).
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        state = engine.state
        state.iteration_skipped = False
        state.nonfinite_outputs, state.nonfinite_detail = {}, ""
        with record_function("dycon/data_unlabeled"):
            inputs, targets, x_u = self.streams.next_batch(engine, batchdata, unlabeled=unlabeled)
        if self.seed is not None:
            torch.manual_seed(derive_seed(self.seed, "iteration", state.iteration))
        x_l = as_plain_tensor(inputs)
        x = torch.cat([x_l, x_u.to(x_l.dtype)], dim=0) if x_u is not None else x_l
        state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        return inputs, targets, x, int(inputs.shape[0])

    def _report_and_step(
        self,
        engine: SemiSupervisedTrainer,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        scalars: dict[str, float],
    ) -> dict:
        """Finish an iteration: put the loss terms on ``state.output`` / ``state.loss_terms``, let the non-finite
        policy see them (``LOSS_COMPLETED``), then backward and step (or skip), ``MODEL_COMPLETED``.

        Args:
            total: the weighted total loss.
            terms: ``{name: unweighted term}`` (tensors; detached copies go on the output).
            scalars: schedule values of the iteration (weights, ``beta``...), logged beside the terms.
        """
        state = engine.state
        state.output[Keys.LOSS] = total
        for k, v in terms.items():
            state.output[k] = v.detach()
        for k, v in scalars.items():
            state.output[k] = torch.tensor(v)
        state.output["grad_norm"] = torch.tensor(float("nan"))
        stacked = torch.stack([total.detach(), *(v.detach() for v in terms.values())]).float().cpu().tolist()
        values = dict(zip(("loss", *terms), stacked))  # one device sync for all terms
        state.loss_terms = {**values, **scalars, "grad_norm": float("nan")}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)  # NonFiniteHandler: raise, or mark the step skipped

        if state.iteration_skipped:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        else:
            self._backward_and_step(engine, total)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return state.output

    def _backward_and_step(self, engine: SemiSupervisedTrainer, total: torch.Tensor) -> None:
        with record_function("dycon/backward"):
            if self.scaler is not None:
                self.scaler.scale(total).backward()
            else:
                total.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)  # e.g. gradient averaging across processes
        if self.scaler is not None:
            self.scaler.unscale_(engine.optimizer)
        engine.fire_event(StepEvents.GRADIENTS_READY)  # GradientNormHandler, then NonFiniteHandler
        if self.scaler is not None:
            # non-finite gradients are expected now and then with float16 loss scaling: the scaler skips those steps
            self.scaler.step(engine.optimizer)
            self.scaler.update()
        elif engine.state.iteration_skipped:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        else:
            with record_function("dycon/optimizer_step"):
                engine.optimizer.step()
