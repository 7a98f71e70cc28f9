"""Co-training networks: serving the average of both networks' probabilities, and the patch check of the pair."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ProbabilityAverage", "check_patch_divisible"]


class ProbabilityAverage(nn.Module):
    """Average the softmax probabilities of several segmentation networks; return their log.

    ``forward(x) = log(mean_k softmax(net_k(x)))``, a ``(B, C, *spatial)`` tensor that any MONAI post-processing
    written for logits handles unchanged: its ``argmax`` is the argmax of the averaged probabilities and its softmax
    is exactly those probabilities (they sum to 1). The bundles' co-training inference uses it with
    ``serve_network="average"`` to serve both networks of a :class:`~dycon_monai.engines.CoTrainingTrainer`.

    Args:
        networks: a sequence of two or more networks with the same input and output channels.

    Raises:
        ValueError: fewer than two networks.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        networks = list(networks)
        if len(networks) < 2:
            raise ValueError(f"ProbabilityAverage needs at least two networks, got {len(networks)}.")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logs = [torch.log_softmax(net(x).float(), dim=1) for net in self.networks]
        n = torch.tensor(float(len(logs)), device=x.device)
        return torch.logsumexp(torch.stack(logs, dim=0), dim=0) - torch.log(n)


def check_patch_divisible(patch_size: Sequence[int], factor: int, network: str) -> None:
    """Refuse a training / sliding-window patch that ``network`` cannot take: every side must be a multiple of
    ``factor`` (its total downsampling, e.g. 32 for MONAI's ``FlexibleUNet`` with a ResNet encoder).

    Raises:
        ValueError: naming the patch, the network and the nearest sizes that work.
    """
    sizes = [int(s) for s in patch_size]
    if any(s % factor for s in sizes):
        down = [max(factor, s // factor * factor) for s in sizes]
        up = [-(-s // factor) * factor for s in sizes]
        choices = f"{down} or {up}" if down != up else f"{up}"
        raise ValueError(
            f"patch_size {sizes} does not suit {network}: every side must be a multiple of {factor}; "
            f"use e.g. {choices} (--patch_size)."
        )
