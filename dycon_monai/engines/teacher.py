"""The Mean-Teacher teacher: a frozen copy of the student that sees a perturbed view of the batch.

Its weights follow the student through an :class:`~dycon_monai.handlers.EMATeacherHandler`; this module owns how
it is built and how it is run (input perturbation, train/eval mode, no gradient, float32 outputs).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from dycon_monai.networks.dycon_net import unwrap_module

__all__ = ["NoisyTeacher"]


class NoisyTeacher:
    """Runs ``network`` (default: a deep copy of the unwrapped ``student``, without gradients) on a perturbed input.

    Args:
        student: the student network (possibly wrapped in ``DistributedDataParallel``).
        network: the teacher network; default: ``copy.deepcopy`` of the student.
        noise_std: std of the Gaussian noise added to the input (0: no noise).
        noise_clip: the noise is clipped to ``+-noise_clip``.
        transform: optional ``callable(images) -> images`` replacing the noise.
        mode: ``"train"`` (Mean-Teacher convention: dropout / batch statistics active) or ``"eval"``.
    """

    def __init__(
        self,
        student: nn.Module,
        network: nn.Module | None = None,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mode: str = "train",
    ) -> None:
        self.network = network if network is not None else copy.deepcopy(unwrap_module(student))
        self.network.requires_grad_(False)
        self.noise_std = float(noise_std)
        self.noise_clip = float(noise_clip)
        self.transform = transform
        self.mode = mode

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's view of ``x``: ``transform(x)``, or ``x`` plus clipped Gaussian noise."""
        if self.transform is not None:
            return self.transform(x)
        if self.noise_std == 0:
            return x
        noise = torch.randn_like(x) * self.noise_std
        return x + noise.clamp_(-self.noise_clip, self.noise_clip)

    def __call__(
        self,
        x: torch.Tensor,
        grid_size: int | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 logits of the perturbed ``x`` and, with a FeCL ``grid_size``, the embeddings on that grid."""
        self.network.train(self.mode == "train")
        with torch.no_grad():
            x_t = self.perturb(x)
            with autocast if autocast is not None else contextlib.nullcontext():
                if grid_size is not None:
                    logits, emb = self.network(x_t, with_embeddings=True, grid_size=grid_size)
                else:
                    logits, emb = self.network(x_t), None
        return logits.float(), emb
