"""Projection head that maps an intermediate feature map to FeCL embeddings (DyCON, Sec. 3.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import SimpleASPP
from monai.networks.layers.factories import Conv
from torch import nn

from dycon_monai.losses.patches import pool_to_grid

__all__ = ["ProjectionHead"]


class ProjectionHead(nn.Module):
    """ASPP followed by a ``1x1x1`` convolution to ``embedding_dim`` channels.

    DyCON computes its Focal Entropy-aware Contrastive Loss (FeCL) on embeddings produced by a projection head
    "ASPP + 1x1x1 conv" applied to an intermediate feature map of the segmentation network (paper Sec. 3.2;
    docs/losses.md). The spatial size is preserved, so the patch grid is laid over the same field of view as the feature map.
    The output is not normalised; FeCL L2-normalises each pooled patch embedding itself.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the tapped feature map.
        embedding_dim: output channels ``D`` (256 in the paper).
        aspp_channels: output channels of each ASPP branch (the ASPP output has ``len(kernel_sizes)`` times as
            many). Defaults to ``in_channels``.
        kernel_sizes: kernel size of each ASPP branch (MONAI ``SimpleASPP``).
        dilations: dilation of each ASPP branch.
        norm_type: normalisation inside the ASPP branches (MONAI ``Norm`` name), e.g. ``"BATCH"`` or ``"INSTANCE"``.
        acti_type: activation inside the ASPP branches (MONAI ``Act`` name).

    Shapes:
        input ``(B, in_channels, *spatial)`` -> output ``(B, embedding_dim, *spatial)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embedding_dim: int = 256,
        aspp_channels: int | None = None,
        kernel_sizes: Sequence[int] = (1, 3, 3, 3),
        dilations: Sequence[int] = (1, 2, 4, 6),
        norm_type: tuple | str | None = "BATCH",
        acti_type: tuple | str | None = "LEAKYRELU",
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("embedding_dim", embedding_dim)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"ProjectionHead {name} must be a positive integer, got {value!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"ProjectionHead spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        aspp_channels = int(in_channels if aspp_channels is None else aspp_channels)
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.embedding_dim = int(embedding_dim)
        self.aspp = SimpleASPP(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            conv_out_channels=aspp_channels,
            kernel_sizes=kernel_sizes,
            dilations=dilations,
            norm_type=norm_type,
            acti_type=acti_type,
        )
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.proj = conv_type(aspp_channels * len(kernel_sizes), embedding_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, grid_size: int | None = None) -> torch.Tensor:
        """Map ``(B, in_channels, *spatial)`` features to ``(B, embedding_dim, *spatial)`` embeddings.

        Args:
            x: ``(B, in_channels, *spatial)`` features.
            grid_size: when given, return the embeddings already averaged onto FeCL's ``grid_size^d`` patch grid,
                ``(B, embedding_dim, grid_size, ...)``. The final 1x1x1 projection is affine, so projecting the
                averaged ASPP output equals averaging the projected map (``patchify_embeddings`` of the full map),
                while the projection runs on ``grid_size^d`` positions instead of the whole map.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ProjectionHead expects features of shape (B, {self.in_channels}, *spatial) with "
                f"{self.spatial_dims} spatial dims, got {tuple(x.shape)}."
            )
        features = self.aspp(x)
        if grid_size is not None:
            features = pool_to_grid(features, grid_size)
        return self.proj(features)
