"""Co-training for MONAI: two networks taught by each other's predictions, with DyCON's and seed 003's losses.

:class:`CoTrainingTrainer` is the dual-network sibling of :class:`~dycon_monai.engines.MeanTeacherTrainer`: the same
labeled / unlabeled streams, non-finite policy, gradient norm, AMP and checkpointing
(:class:`~dycon_monai.engines.semi_supervised.SemiSupervisedTrainer`), but no teacher: network A (``network``) and
network B (``network_b``) both learn, in one optimiser step per iteration. The methods are presets of its weights
(:mod:`dycon_monai.engines.co_methods`); ``docs/engines.md`` describes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim.optimizer import Optimizer
from torch.profiler import record_function

from dycon_monai.handlers.nonfinite import nonfinite_outputs
from dycon_monai.losses import (
    CrossPseudoSupervisionLoss,
    FeCLLoss,
    KLUncertaintyLoss,
    PrototypeContrastiveLoss,
    SubnetConsistencyLoss,
    UnCLLoss,
    prototype_weight,
)
from dycon_monai.networks.dycon_net import check_head_in_optimizer, unwrap_module
from dycon_monai.utils.schedules import sigmoid_rampup

from .co_methods import CO_LOSS_TERMS
from .methods import check_trainer_options
from .semi_supervised import SemiSupervisedTrainer
from .streams import as_plain_tensor

__all__ = ["CoTrainingTrainer"]

#: ``pgl_schedule`` -> exponent of ``prototype_weight`` (``None``: constant weight)
_PGL_SCHEDULES = {"paper": 4.0, "rampup": -4.0, "constant": None}
_WEIGHTS = ("cps_weight", "efs_weight", "une_weight", "pgl_weight", "cr_weight", "uncl_weight", "fecl_weight")


def _in_optimizer(network: nn.Module, optimizer: Optimizer, name: str) -> None:
    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in network.named_parameters() if id(p) not in in_opt]
    if missing:
        raise ValueError(
            f"CoTrainingTrainer: {len(missing)} parameters of {name} (e.g. {missing[:3]}) are not in the optimizer; "
            "build it over both networks: itertools.chain(network.parameters(), network_b.parameters())."
        )


def _at(features: torch.Tensor, *logits: torch.Tensor) -> list[torch.Tensor]:
    """``logits`` resized (trilinear, no gradient needed: the prototype loss only reads them) to the spatial size of
    the embedding map ``features``."""
    size = tuple(features.shape[2:])
    if all(tuple(x.shape[2:]) == size for x in logits):
        return list(logits)
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[features.ndim - 2]
    return [F.interpolate(x.detach(), size=size, mode=mode, align_corners=False) for x in logits]


class CoTrainingTrainer(SemiSupervisedTrainer):
    """Co-training of two segmentation networks (the same or different backbones) as a MONAI ``SupervisedTrainer``.

    Each iteration runs both networks on the labeled and the unlabeled batch and takes one optimiser step over both::

        loss = loss_sup                               Dice+CE of A and of B on the labeled part
             + cr_weight * loss_cr                    consistency of A and B on the labeled part (seed 003 Eq. 2)
             + cps_weight * ramp(t) * loss_cps        cross pseudo supervision on the unlabeled part (Eq. 8)
             + efs_weight * loss_efs                  entropy-filtered supervision (Eq. 9-11)
             + une_weight * loss_une                  KL uncertainty loss, both directions (Eq. 13-15)
             + pgl_weight * lambda_c(t) * loss_pgl    prototype-guided contrast (Eq. 16-20)
             + uncl_weight * loss_uncl                UnCL(A, B) + UnCL(B, A): dual entropy (DyCON supp. Sec. 3.3)
             + fecl_weight * loss_fecl                FeCL on each network's embeddings with the other's pseudo-labels

    A term whose weight is 0 is not computed. Whatever a term takes as a target from the other network (pseudo-labels,
    probabilities, embeddings) is detached, so each network learns only through its own predictions.
    ``engine.state.output`` holds ``"image"``, ``"label"``, ``"pred"`` (network A's labeled logits), ``"pred_b"`` and
    the scalars of :data:`~dycon_monai.engines.CO_OUTPUT_SCALARS`.

    Args:
        device, max_epochs, train_data_loader, loss_function, unlabeled_data_loader, grad_clip_norm, amp,
            on_nonfinite, seed, epoch_length, train_handlers, event_names, kwargs: as in
            :class:`~dycon_monai.engines.MeanTeacherTrainer`.
        network: network A (served by inference, evaluation and MONAI Label unless the bundle averages both).
        network_b: network B. FeCL needs both to be :class:`~dycon_monai.networks.DyCONNet` (embeddings on the
            FeCL grid); the prototype loss needs both to give embedding maps (``with_embeddings=True``).
        optimizer: one optimiser over the parameters of both networks (checked).
        cps_weight, efs_weight, une_weight, pgl_weight, cr_weight, uncl_weight, fecl_weight: the term weights
            (:func:`~dycon_monai.engines.co_training_weights` gives them per method).
        cps_rampup: sigmoid ramp-up length of the CPS weight, in iterations (0 = none).
        pgl_schedule: ``"paper"`` multiplies ``pgl_weight`` by seed 003's ``lambda_c(t) = 0.1 exp(4 (1 - t/T)^2)`` as
            printed (:func:`~dycon_monai.losses.prototype_weight`; it falls from 5.46 to 0.1), ``"rampup"`` by the
            usual ramp-up reading ``0.1 exp(-4 (1 - t/T)^2)`` (0.002 rising to 0.1), ``"constant"`` by nothing.
        cps_loss, efs_loss, une_loss, pgl_loss, cr_loss, uncl_loss, fecl_loss: the loss modules; built with the
            papers' defaults when their term is on and they are not given (EFS: a
            :class:`~dycon_monai.losses.CrossPseudoSupervisionLoss` with the 70th entropy percentile, seed 003's LA
            value). The prototype loss gets the embedding maps and the logits resized to their size.
        uncl_on, fecl_on: ``"unlabeled"`` (default) or ``"all"`` (labeled samples join; FeCL then uses their
            ground truth).
    """

    loss_terms = CO_LOSS_TERMS

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        network_b: nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        unlabeled_data_loader: Iterable | None = None,
        cps_weight: float = 1.0,
        efs_weight: float = 0.0,
        une_weight: float = 0.0,
        pgl_weight: float = 0.0,
        cr_weight: float = 0.0,
        uncl_weight: float = 0.0,
        fecl_weight: float = 0.0,
        cps_rampup: float = 0.0,
        pgl_schedule: str = "paper",
        cps_loss: nn.Module | None = None,
        efs_loss: nn.Module | None = None,
        une_loss: nn.Module | None = None,
        pgl_loss: nn.Module | None = None,
        cr_loss: nn.Module | None = None,
        uncl_loss: nn.Module | None = None,
        fecl_loss: nn.Module | None = None,
        uncl_on: str = "unlabeled",
        fecl_on: str = "unlabeled",
        grad_clip_norm: float | None = None,
        amp: bool = False,
        on_nonfinite: str = "raise",
        seed: int | None = 0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        **kwargs: Any,
    ) -> None:
        weights = dict(
            zip(_WEIGHTS, (cps_weight, efs_weight, une_weight, pgl_weight, cr_weight, uncl_weight, fecl_weight))
        )
        check_trainer_options(
            on_nonfinite=on_nonfinite, uncl_on=uncl_on, fecl_on=fecl_on, cps_rampup=cps_rampup, **weights
        )
        if pgl_schedule not in _PGL_SCHEDULES:
            raise ValueError(f"pgl_schedule must be one of {sorted(_PGL_SCHEDULES)}, got {pgl_schedule!r}.")
        if not isinstance(network_b, nn.Module):
            raise TypeError(f"CoTrainingTrainer network_b must be a torch.nn.Module, got {type(network_b).__name__}.")
        if unwrap_module(network_b) is unwrap_module(network):
            raise ValueError("CoTrainingTrainer network and network_b are the same module; pass two networks.")
        for name, w in weights.items():
            setattr(self, name, float(w))
        self.cps_rampup = float(cps_rampup)
        self.pgl_schedule = pgl_schedule
        self.uncl_on, self.fecl_on = uncl_on, fecl_on
        self.network_b = network_b
        self.teacher_network = None  # no EMA teacher: an EMATeacherHandler in a shared handler list does nothing
        on = {name[: -len("_weight")]: float(w) > 0 for name, w in weights.items()}
        self.active = on
        self.cps_loss = (cps_loss or CrossPseudoSupervisionLoss()) if on["cps"] else None
        self.efs_loss = (efs_loss or CrossPseudoSupervisionLoss(entropy_percentile=70.0)) if on["efs"] else None
        self.une_loss = (une_loss or KLUncertaintyLoss()) if on["une"] else None
        self.pgl_loss = (pgl_loss or PrototypeContrastiveLoss()) if on["pgl"] else None
        self.cr_loss = (cr_loss or SubnetConsistencyLoss()) if on["cr"] else None
        self.uncl_loss = (uncl_loss or UnCLLoss()) if on["uncl"] else None
        self.fecl_loss = (fecl_loss or FeCLLoss()) if on["fecl"] else None
        for needs, term in ((on["fecl"], "FeCL"), (on["pgl"], "the prototype loss")):
            for name, net in (("network", network), ("network_b", network_b)):
                if needs and not callable(getattr(unwrap_module(net), "forward_features", None)):
                    raise TypeError(
                        f"{term} needs embeddings: {name} must be a DyCONNet (with forward_features), got "
                        f"{type(unwrap_module(net)).__name__}."
                    )
        self.semi_supervised = any(on[k] for k in ("cps", "efs", "une", "pgl", "uncl", "fecl"))
        if self.semi_supervised and unlabeled_data_loader is None:
            raise ValueError(
                "unlabeled_data_loader is None but unlabeled terms are on "
                f"{sorted(k for k in on if on[k] and k != 'cr')}; pass the unlabeled loader."
            )
        _in_optimizer(unwrap_module(network), optimizer, "network")
        _in_optimizer(unwrap_module(network_b), optimizer, "network_b")
        if on["fecl"]:
            check_head_in_optimizer(network_b, optimizer)
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
        if self.compile:  # MONAI's SupervisedTrainer compiled `network`; network B goes the same way
            self.network_b = torch.compile(network_b, **(kwargs.get("compile_kwargs") or {}))

    @property
    def fecl_grid_size(self) -> int | None:
        """FeCL's patch grid ``k``, or ``None`` when FeCL is off."""
        return self.fecl_loss.grid_size if self.fecl_loss is not None else None

    def cps_ramp(self, iteration: int) -> float:
        """The CPS weight at ``iteration`` (1-based): ``cps_weight`` times the sigmoid ramp-up."""
        return self.cps_weight * sigmoid_rampup(max(iteration - 1, 0), self.cps_rampup)

    def pgl_ramp(self, iteration: int) -> float:
        """The prototype-loss weight at ``iteration``: ``pgl_weight`` times ``lambda_c(t)`` of ``pgl_schedule``."""
        exponent = _PGL_SCHEDULES[self.pgl_schedule]
        if exponent is None:
            return self.pgl_weight
        total = int(self.state.max_epochs * self.state.epoch_length)
        return self.pgl_weight * prototype_weight(max(iteration - 1, 0), total, exponent=exponent)

    def _forward(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.active["pgl"]:  # full embedding maps; FeCL pools them onto its grid itself
            return net(x, with_embeddings=True)
        if self.active["fecl"]:
            return net(x, with_embeddings=True, grid_size=self.fecl_grid_size)
        return net(x), None

    def _iteration(self, engine: CoTrainingTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One co-training step: both networks forward, the loss terms, one backward and optimiser step.

        Raises:
            ValueError: as :meth:`MeanTeacherTrainer._iteration`.
            NonFiniteLossError: a non-finite term with ``on_nonfinite="raise"``.
        """
        inputs, targets, x, n_l = self._draw_batches(engine, batchdata, unlabeled=self.semi_supervised)
        state = engine.state
        it = state.iteration
        engine.network.train()
        self.network_b.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with self._autocast(), record_function("dycon/network_a_forward"):
            logits_a, emb_a = self._forward(engine.network, x)
        with self._autocast(), record_function("dycon/network_b_forward"):
            logits_b, emb_b = self._forward(self.network_b, x)
        state.output[Keys.PRED] = logits_a[:n_l]
        state.output["pred_b"] = logits_b[:n_l].detach()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)

        a, b = logits_a.float(), logits_b.float()
        emb_a = None if emb_a is None else emb_a.float()
        emb_b = None if emb_b is None else emb_b.float()
        ids = [*state.batch_case_ids["labeled"], *state.batch_case_ids["unlabeled"]]
        outputs = {"logits_a": a, "logits_b": b, "embeddings_a": emb_a, "embeddings_b": emb_b}
        state.nonfinite_outputs, state.nonfinite_detail = nonfinite_outputs(outputs, x, ids)
        cps_w = self.cps_ramp(it) if self.active["cps"] else 0.0
        pgl_w = self.pgl_ramp(it) if self.active["pgl"] else 0.0
        names = CO_LOSS_TERMS[1:]
        if state.nonfinite_outputs:  # the losses would only propagate (or reject) the NaN
            nan = a.new_full((), float("nan"))
            terms = dict.fromkeys(names, nan)
            total = nan
        else:
            terms = self._loss_terms(a, b, emb_a, emb_b, targets, n_l)
            scale = {"loss_sup": 1.0, "loss_cps": cps_w, "loss_pgl": pgl_w}
            scale.update({f"loss_{k}": getattr(self, f"{k}_weight") for k in ("cr", "efs", "une", "uncl", "fecl")})
            total = sum(scale[k] * terms[k] for k in names)
        beta = float(self.uncl_loss.beta) if self.uncl_loss is not None else 0.0
        return self._report_and_step(engine, total, terms, {"cps_weight": cps_w, "pgl_weight": pgl_w, "beta": beta})

    def _loss_terms(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        emb_a: torch.Tensor | None,
        emb_b: torch.Tensor | None,
        targets: torch.Tensor,
        n_l: int,
    ) -> dict[str, torch.Tensor]:
        """Every unweighted term of :data:`CO_LOSS_TERMS` (but the total); terms that are off are 0."""
        zero = a.new_zeros(())
        terms = dict.fromkeys(CO_LOSS_TERMS[1:], zero)
        with record_function("dycon/loss_sup"):
            terms["loss_sup"] = (
                self.loss_function(a[:n_l], targets).mean() + self.loss_function(b[:n_l], targets).mean()
            )
        if self.cr_loss is not None:
            with record_function("dycon/loss_cr"):
                terms["loss_cr"] = self.cr_loss(a[:n_l], b[:n_l])
        a_u, b_u = a[n_l:], b[n_l:]
        for name, loss in (("cps", self.cps_loss), ("efs", self.efs_loss)):
            if loss is not None:
                with record_function(f"dycon/loss_{name}"):
                    terms[f"loss_{name}"] = loss(a_u, b_u)
        if self.une_loss is not None:
            with record_function("dycon/loss_une"):
                terms["loss_une"] = self.une_loss(a_u, b_u) + self.une_loss(b_u, a_u)
        if self.pgl_loss is not None:
            with record_function("dycon/loss_pgl"):
                terms["loss_pgl"] = self.pgl_loss(emb_a[n_l:], emb_b[n_l:], *_at(emb_a, a_u, b_u))
        if self.uncl_loss is not None:
            s = 0 if self.uncl_on == "all" else n_l
            with record_function("dycon/loss_uncl"):
                terms["loss_uncl"] = self.uncl_loss(a[s:], b[s:]) + self.uncl_loss(b[s:], a[s:])
        if self.fecl_loss is not None:
            with record_function("dycon/loss_fecl"):
                terms["loss_fecl"] = self._fecl(a, b, emb_a, emb_b, targets, n_l) + self._fecl(
                    b, a, emb_b, emb_a, targets, n_l
                )
        return terms

    def _fecl(
        self,
        own: torch.Tensor,
        other: torch.Tensor,
        emb: torch.Tensor,
        other_emb: torch.Tensor,
        targets: torch.Tensor,
        n_l: int,
    ) -> torch.Tensor:
        """FeCL of one network's embeddings, with the other network's pseudo-labels on the unlabeled part (and its
        embeddings as the hard-negative bank of the released-code variant)."""
        start = n_l if self.fecl_on == "unlabeled" else 0
        probs = torch.softmax(own[start:].detach(), dim=1) if self.fecl_loss.uses_entropy else None
        bank = other_emb[start:].detach() if self.fecl_loss.uses_teacher else None
        truth = None if start else as_plain_tensor(targets)
        return self.fecl_loss.from_predictions(emb[start:], other[n_l:].detach(), truth, bank, probs)
