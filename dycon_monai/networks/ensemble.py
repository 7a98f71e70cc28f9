"""Serving a co-trained pair: network A alone, or the average of both networks' probabilities."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProbabilityAverage"]


class ProbabilityAverage(nn.Module):
    """Average the softmax probabilities of several segmentation networks; return their log.

    ``forward(x) = log(mean_k softmax(net_k(x)))``, a ``(B, C, *spatial)`` tensor that any MONAI post-processing
    written for logits handles unchanged: its ``argmax`` is the argmax of the averaged probabilities and its softmax
    is exactly those probabilities (they sum to 1). The bundles' co-training inference uses it with
    ``serve_network="average"`` to serve both networks of a :class:`~dycon_monai.engines.CoTrainingTrainer`.

    Args:
        networks: two or more networks with the same input and output channels.

    Raises:
        ValueError: fewer than two networks.
    """

    def __init__(self, *networks: nn.Module) -> None:
        super().__init__()
        if len(networks) < 2:
            raise ValueError(f"ProbabilityAverage needs at least two networks, got {len(networks)}.")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logs = [torch.log_softmax(net(x).float(), dim=1) for net in self.networks]
        n = torch.tensor(float(len(logs)), device=x.device)
        return torch.logsumexp(torch.stack(logs, dim=0), dim=0) - torch.log(n)
