"""Helpers for training one model on several ``torch.distributed`` processes (``torchrun``).

Meant to be called from a bundle config expression (``"$dycon_monai.utils.dist..."``), as ``multi_gpu_train.json``
does:

- :func:`attach_gradient_sync` averages the student's gradients over the ranks after every backward pass, so that
  every rank takes the same optimiser step (and builds the same EMA teacher).
- :func:`check_identical_across_ranks` checks that the weights are bit-identical on every rank at the end of a run.

Everything here also works in a single process (world size 1).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dycon_monai.utils.io import atomic_write_json

__all__ = [
    "GradientSyncHandler",
    "attach_gradient_sync",
    "broadcast_from_rank0",
    "check_identical_across_ranks",
    "rank_and_world_size",
    "trained_modules",
]

logger = logging.getLogger(__name__)


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_from_rank0(payload: Any) -> Any:
    """Return rank 0's ``payload`` on every rank (identity when not distributed)."""
    _, world = rank_and_world_size()
    if world == 1:
        return payload
    box = [payload]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _module_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def trained_modules(trainer: Any) -> dict[str, torch.nn.Module]:
    """The networks of ``trainer`` that must stay identical across ranks: ``{"student": network}``, plus
    ``"teacher"`` (a Mean-Teacher trainer with a teacher) and ``"network_b"`` (a co-training trainer)."""
    out = {"student": trainer.network}
    for name, attr in (("teacher", "teacher_network"), ("network_b", "network_b")):
        module = getattr(trainer, attr, None)
        if module is not None:
            out[name] = module
    return out


def check_identical_across_ranks(
    modules: Mapping[str, torch.nn.Module], run_dir: str | os.PathLike | None = None
) -> dict[str, list[str]]:
    """Check that each module has bit-identical weights on every ``torch.distributed`` rank.

    Each rank hashes the module's ``state_dict``; the hashes are gathered and compared. Rank 0 writes them to
    ``<run_dir>/distributed_check.json``.

    Args:
        modules: name -> module, e.g. ``{"teacher": @train#trainer.teacher_network}``.
        run_dir: where rank 0 writes the result (optional).

    Returns:
        Name -> the hash on each rank.

    Raises:
        RuntimeError: a module differs between ranks.
    """
    rank, world = rank_and_world_size()
    result: dict[str, list[str]] = {}
    for name, module in modules.items():
        inner = module.module if hasattr(module, "module") else module
        local = _module_digest(inner)
        gathered: list[Any] = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(gathered, local)
        else:
            gathered = [local]
        result[name] = [str(g) for g in gathered]
    if rank == 0 and run_dir is not None:
        summary = {name: {"identical": len(set(h)) == 1, "ranks": len(h), "sha256": h} for name, h in result.items()}
        atomic_write_json(Path(run_dir) / "distributed_check.json", summary)
    differing = [name for name, hashes in result.items() if len(set(hashes)) != 1]
    if differing:
        raise RuntimeError(f"Weights differ between ranks for: {', '.join(differing)} ({result}).")
    logger.info("Weights identical on all %d ranks: %s", world, ", ".join(result))
    return result


def _broadcast_module(module: torch.nn.Module) -> None:
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


def attach_gradient_sync(trainer: Any) -> Any:
    """Train ``trainer.network`` data-parallel over the ``torch.distributed`` ranks (gloo on CPU, nccl on GPU).

    Does what ``DistributedDataParallel`` does for a plain network, for a Mean-Teacher trainer that calls
    ``network.forward_features`` (which a DDP wrapper does not expose): now, rank 0's student and teacher weights and
    buffers are broadcast to every rank; after every backward pass (MONAI's ``IterationEvents.BACKWARD_COMPLETED``,
    before the optimiser step) the gradients are averaged over the ranks with one ``all_reduce`` and the floating
    buffers (e.g. BatchNorm running statistics of the projection head) are averaged too. Every rank then takes the
    same optimiser step, so the students, and the EMA teachers built from them, stay identical on all ranks.

    A parameter that has a gradient on some ranks but not on others gets a zero gradient where it has none.
    Non-finite losses must stop the run (``on_nonfinite="raise"``): a rank that skipped its backward pass would
    leave the others waiting in ``all_reduce``.

    Args:
        trainer: a ``MeanTeacherTrainer`` (or any MONAI trainer) whose ``network`` is not wrapped.

    Returns:
        ``trainer``.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
    """
    from monai.engines.utils import IterationEvents

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            "attach_gradient_sync needs torch.distributed: start with torchrun and call "
            "torch.distributed.init_process_group first (multi_gpu_train.json does)."
        )
    network = trainer.network
    if getattr(trainer, "on_nonfinite", "raise") != "raise":
        raise ValueError(
            f"multi-process training needs on_nonfinite='raise', got {trainer.on_nonfinite!r}: a rank that skips a "
            "step would leave the others waiting."
        )
    world = torch.distributed.get_world_size()
    _broadcast_module(network)
    teacher = getattr(trainer, "teacher_network", None)
    if teacher is not None:
        _broadcast_module(teacher)
    network_b = getattr(trainer, "network_b", None)  # the second network of a CoTrainingTrainer
    trained = [network] if network_b is None else [network, network_b]
    if network_b is not None:
        _broadcast_module(network_b)
    params = [p for net in trained for p in net.parameters()]

    def sync(engine: Any) -> None:
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
        torch.distributed.all_reduce(has_grad)
        grads = []
        for p, n in zip(params, has_grad.tolist()):
            if n == 0:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= world
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
        for buf in (b for net in trained for b in net.buffers()):
            if buf.is_floating_point():
                torch.distributed.all_reduce(buf.data)
                buf.data /= world

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, sync)
    logger.info("Gradients averaged over %d ranks after every backward pass", world)
    return trainer


class GradientSyncHandler:
    """:func:`attach_gradient_sync` as one entry of a trainer's ``train_handlers`` (``multi_gpu_train.json``)."""

    def attach(self, engine: Any) -> None:
        """Broadcast rank 0's weights now and average the gradients after every backward pass of ``engine``."""
        attach_gradient_sync(engine)
