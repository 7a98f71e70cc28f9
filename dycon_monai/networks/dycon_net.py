"""DyCON network wrapper: a MONAI segmentation backbone plus a projection head on one of its feature maps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, UNet, VNet
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.profiler import record_function

from .projection import ProjectionHead

__all__ = [
    "DyCONNet",
    "FeatureLayer",
    "check_feature_grid",
    "check_head_in_optimizer",
    "default_feature_layer",
    "encoder_feature_layer",
    "infer_feature_channels",
    "resolve_feature_layer",
    "unwrap_module",
]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` and ``torch.compile`` wrappers (nested in
    any order; the module itself otherwise), so that parameter names and identity are the plain network's."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # what torch.compile returns
            module = module._orig_mod
        else:
            return module


def check_head_in_optimizer(network: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Warn when the projection head of ``network`` (a :class:`DyCONNet`, possibly wrapped) is not optimised."""
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


@dataclass(frozen=True)
class FeatureLayer:
    """An intermediate layer of a backbone whose output feeds the projection head.

    Attributes:
        name: module name as in ``backbone.named_modules()``.
        channels: channels of that module's output.
        downsample: input size / feature-map size per spatial axis (1 = full resolution).
    """

    name: str
    channels: int
    downsample: int


def infer_feature_channels(module: nn.Module) -> int:
    """Output channels of ``module``, read from the last convolution it contains (in registration order).

    This holds for the decoder blocks of MONAI ``UNet``, ``BasicUNet``, ``VNet`` and ``DynUNet``, whose output is
    produced by their last convolution. Pass ``feature_channels`` explicitly for a layer where it does not hold;
    ``DyCONNet.forward_features`` checks the real channel count and says so if it differs.

    Raises:
        ValueError: when the module contains no convolution.
    """
    last = None
    for sub in module.modules():
        if isinstance(sub, _ConvNd):
            last = sub
    if last is None:
        raise ValueError(
            f"cannot infer the output channels of {type(module).__name__}: it contains no convolution; "
            "pass feature_channels explicitly."
        )
    return int(last.out_channels)


def default_feature_layer(backbone: nn.Module, level: int = 1) -> FeatureLayer:
    """The decoder layer of a MONAI backbone whose output is at ``1 / 2**level`` of the input resolution.

    The default, ``level=1``, is the last decoder block before the output layer, at half resolution: for the
    paper's patches (ISLES 96x96x64, BraTS/Pancreas 96^3, LA 112x112x80) that map is 48x48x32 or larger, so the
    16x16x16 FeCL grid averages at least 2 feature voxels per patch and axis (no upsampling by the adaptive pooling),
    while keeping more spatial detail for small lesions than the 1/4-resolution block (24x24x16 for ISLES, exactly
    the grid size along the last axis). ``level=2`` selects the 1/4-resolution block.

    Supported: MONAI ``UNet`` (``model.1.submodule.2`` for level 1, one more ``.1.submodule`` per level),
    ``BasicUNet`` (``upcat_2`` for level 1, ``upcat_3`` for level 2, ``upcat_4`` for level 3) and ``VNet``
    (``up_tr64`` for level 1, ``up_tr128`` for level 2, ``up_tr256`` for level 3). For any other backbone pass
    ``feature_layer`` (a name from ``backbone.named_modules()``) and ``feature_channels`` to :class:`DyCONNet`.

    Args:
        backbone: the segmentation network.
        level: decoder level; the feature map is ``1 / 2**level`` of the input size (for UNet: of the product of
            the first ``level`` strides).

    Returns:
        A :class:`FeatureLayer` with the module name, its output channels and its downsampling factor.

    Raises:
        ValueError: for a level the backbone does not have.
        TypeError: for an unsupported backbone type.
    """
    if isinstance(level, bool) or int(level) != level or level < 1:
        raise ValueError(f"feature level must be a positive integer (1 = half resolution), got {level!r}.")
    level = int(level)
    if isinstance(backbone, UNet):
        strides = list(backbone.strides)
        if level > len(strides) - 1:
            raise ValueError(
                f"UNet with strides {tuple(strides)} has decoder levels 1..{len(strides) - 1} below the output "
                f"layer, got level={level}."
            )
        name = "model" + ".1.submodule" * level + ".2"
        channels = int(backbone.channels[level - 1])
        # a per-axis stride sequence is summarised by its smallest entry (the coarsest guarantee)
        factors = [s if isinstance(s, int) else min(s) for s in strides[:level]]
        return FeatureLayer(name, channels, int(math.prod(factors)))
    if isinstance(backbone, BasicUNet):
        if level > 3:
            raise ValueError(f"BasicUNet has decoder levels 1..3 below the output block, got level={level}.")
        name = f"upcat_{level + 1}"
        module = dict(backbone.named_modules())[name]
        return FeatureLayer(name, infer_feature_channels(module), 2**level)
    if isinstance(backbone, VNet):
        names = {1: "up_tr64", 2: "up_tr128", 3: "up_tr256"}
        if level not in names:
            raise ValueError(f"VNet has decoder levels 1..3 below the output block, got level={level}.")
        module = dict(backbone.named_modules())[names[level]]
        return FeatureLayer(names[level], infer_feature_channels(module), 2**level)
    raise TypeError(
        f"no default feature layer for {type(backbone).__name__}; pass feature_layer=<name> and "
        "feature_channels=<int> to DyCONNet (names: [n for n, _ in backbone.named_modules()])."
    )


def encoder_feature_layer(backbone: nn.Module) -> FeatureLayer:
    """The deepest encoder layer (the bottleneck) of a MONAI backbone: the paper's FeCL feature source.

    DyCON (Sec. 3.2) takes the student's encoder features; the authors' released code projects the deepest,
    256-channel features (upsampled x2). Supported: ``UNet`` (``model`` + ``.1.submodule`` once per stride, the
    bottom block, ``channels[-1]`` channels), ``BasicUNet`` (``down_4``) and ``VNet`` (``down_tr256``).

    Raises:
        TypeError: for an unsupported backbone type (pass a module name as ``feature_layer`` instead).
    """
    if isinstance(backbone, UNet):
        strides = list(backbone.strides)
        factors = [s if isinstance(s, int) else min(s) for s in strides]
        return FeatureLayer(
            "model" + ".1.submodule" * len(strides), int(backbone.channels[-1]), int(math.prod(factors))
        )
    names = {BasicUNet: ("down_4", 16), VNet: ("down_tr256", 16)}
    for kind, (name, factor) in names.items():
        if isinstance(backbone, kind):
            module = dict(backbone.named_modules())[name]
            return FeatureLayer(name, infer_feature_channels(module), factor)
    raise TypeError(
        f"no encoder feature layer known for {type(backbone).__name__}; pass feature_layer=<module name> and "
        "feature_channels=<int> to DyCONNet (names: [n for n, _ in backbone.named_modules()])."
    )


def resolve_feature_layer(backbone: nn.Module, feature_layer: str | None) -> tuple[str, int | None, bool]:
    """Resolve a ``feature_layer`` choice to ``(module name, channels or None, is_encoder)``.

    Choices: ``"encoder"`` (the deepest encoder block, :func:`encoder_feature_layer`; the paper's setting),
    ``"decoder"`` or ``"decoder:L"`` (the decoder block at ``1 / 2**L`` resolution, :func:`default_feature_layer`;
    ``"decoder"`` = ``"decoder:1"``, the half-resolution block), ``None`` (= ``"decoder"``), or any module name of
    ``backbone.named_modules()`` (channels then inferred by the caller).
    """
    if feature_layer is None or feature_layer == "decoder":
        layer = default_feature_layer(backbone)
        return layer.name, layer.channels, False
    if feature_layer == "encoder":
        layer = encoder_feature_layer(backbone)
        return layer.name, layer.channels, True
    if isinstance(feature_layer, str) and feature_layer.startswith("decoder:"):
        level = feature_layer.split(":", 1)[1]
        if not level.isdigit():
            raise ValueError(f"feature_layer {feature_layer!r}: expected 'decoder:<level>' with an integer level.")
        layer = default_feature_layer(backbone, int(level))
        return layer.name, layer.channels, False
    return feature_layer, None, False


def check_feature_grid(
    feature_shape: Sequence[int], grid_size: int, layer: str = "feature layer", input_shape: Sequence[int] | None = None
) -> None:
    """Check that a feature (or embedding) map is at least ``grid_size`` voxels along every spatial axis.

    FeCL averages the embedding map onto a ``grid_size^d`` patch grid with adaptive average pooling; a smaller map
    would be silently upsampled (patches repeating the same voxels), so this is an error.

    Args:
        feature_shape: ``(B, C, *spatial)`` of the map.
        grid_size: the FeCL grid ``k``.
        layer: name of the tapped layer, for the message.
        input_shape: ``(B, C, *spatial)`` of the network input, for the message.

    Raises:
        ValueError: when any spatial size is below ``grid_size``.
    """
    spatial = tuple(int(s) for s in feature_shape[2:])
    if min(spatial) < grid_size:
        where = f" for input patches {tuple(input_shape[2:])}" if input_shape is not None else ""
        ratio = ""
        if input_shape is not None:
            factors = [max(1, round(i / s)) for i, s in zip(input_shape[2:], spatial)]
            ratio = f" (patch >= {[grid_size * f for f in factors]})"
        raise ValueError(
            f"FeCL grid {grid_size}^{len(spatial)} needs a feature map of at least {grid_size} voxels per axis, but "
            f"layer '{layer}' gives {spatial}{where}: use larger patches{ratio}, a higher-resolution feature layer, "
            "or a smaller fecl_grid_size."
        )


class DyCONNet(nn.Module):
    """A segmentation backbone with a projection head on one of its intermediate feature maps.

    ``forward(x)`` returns the backbone's logits only, so inference, sliding-window evaluation, TorchScript export of
    ``net.backbone`` and MONAI Label see a plain segmentation network; ``forward_features(x)`` returns the logits and
    the FeCL embeddings ``(B, embedding_dim, *feature_spatial)`` computed by :class:`ProjectionHead` on the output of
    the module named ``feature_layer`` (captured by a forward hook registered for that call only, so the backbone
    runs once and carries no hook otherwise).

    Inference weights are ``net.backbone.state_dict()``: they load into the bare backbone (the bundle's
    ``network_def``) without the head.

    Args:
        backbone: a MONAI (or any) segmentation network mapping ``(B, C_in, *spatial)`` to logits ``(B, C, *spatial)``.
        feature_layer: which feature map feeds the head (:func:`resolve_feature_layer`): ``"encoder"`` (the deepest
            encoder block, the paper's setting), ``"decoder"`` / ``"decoder:L"`` (a decoder block; ``None`` means
            ``"decoder"``, the half-resolution block) for ``UNet``, ``BasicUNet``, ``VNet``, or any module name in
            ``backbone.named_modules()``.
        feature_channels: output channels of that module; ``None`` infers them (:func:`infer_feature_channels`).
        feature_upsample: trilinear upsampling factor applied to the feature map before the head; ``None`` = 2 for
            ``"encoder"`` (the released code upsamples its deepest features x2) and 1 otherwise.
        upsample_to_grid: when the (upsampled) map is smaller than the FeCL grid along an axis, interpolate it up to
            the grid size there (otherwise that is an error, :func:`check_feature_grid`); ``None`` = on for
            ``"encoder"`` (a bottleneck of a 96x96x64 patch is 6x6x4), off otherwise.
        embedding_dim: embedding size ``D`` (256 in the paper).
        spatial_dims: number of spatial dimensions.
        head_kwargs: extra keyword arguments for :class:`ProjectionHead` (``aspp_channels``, ``norm_type``, ...).

    Example::

        from monai.networks.nets import UNet
        from dycon_monai.networks import DyCONNet

        unet = UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
        net = DyCONNet(unet, feature_layer="model.1.submodule.2", feature_channels=16)
        logits = net(x)                             # (B, 2, H, W, D)
        logits, emb = net.forward_features(x)       # emb: (B, 256, H/2, W/2, D/2)
        torch.save(net.backbone.state_dict(), "model.pt")   # loads into the bare UNet
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_layer: str | None = None,
        feature_channels: int | None = None,
        embedding_dim: int = 256,
        spatial_dims: int = 3,
        head_kwargs: dict | None = None,
        feature_upsample: float | None = None,
        upsample_to_grid: bool | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"DyCONNet backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        self.feature_choice = feature_layer
        feature_layer, preset_channels, is_encoder = resolve_feature_layer(backbone, feature_layer)
        if feature_channels is None:
            feature_channels = preset_channels
        if feature_upsample is None:
            feature_upsample = 2 if is_encoder else 1
        if not (isinstance(feature_upsample, (int, float)) and feature_upsample >= 1):
            raise ValueError(f"DyCONNet feature_upsample must be a number >= 1, got {feature_upsample!r}.")
        self.feature_upsample = float(feature_upsample)
        self.upsample_to_grid = is_encoder if upsample_to_grid is None else bool(upsample_to_grid)
        modules = dict(backbone.named_modules())
        if feature_layer not in modules or feature_layer == "":
            candidates = [n for n in modules if n]
            raise ValueError(
                f"DyCONNet feature_layer {feature_layer!r} is not a module of {type(backbone).__name__}; "
                f"choose one of backbone.named_modules(), e.g. {candidates[:12]}{' ...' if len(candidates) > 12 else ''}."
            )
        if feature_channels is None:
            feature_channels = infer_feature_channels(modules[feature_layer])
        self.backbone = backbone
        self.feature_layer = feature_layer
        self.feature_channels = int(feature_channels)
        self.embedding_dim = int(embedding_dim)
        self.spatial_dims = int(spatial_dims)
        self.head = ProjectionHead(spatial_dims, self.feature_channels, embedding_dim, **(head_kwargs or {}))
        reference = next(backbone.parameters(), None)
        if reference is not None:  # a backbone already moved to a device: put the new head beside it
            self.head.to(device=reference.device, dtype=reference.dtype)

    def forward(
        self, x: torch.Tensor, with_embeddings: bool = False, grid_size: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits of the backbone, ``(B, C, *spatial)`` (identical to ``self.backbone(x)``).

        ``with_embeddings=True`` returns :meth:`forward_features` (with ``grid_size``) instead; trainers call it that
        way so that a ``DistributedDataParallel`` wrapper around the network sees the embedding pass as its forward.
        """
        if with_embeddings:
            return self.forward_features(x, grid_size=grid_size)
        return self.backbone(x)

    def forward_features(self, x: torch.Tensor, grid_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and FeCL embeddings from a single backbone pass.

        The feature map is captured by a forward hook that exists only during this call, so the backbone stays a
        plain module (``torch.jit.script(net.backbone)``, pickling and ``copy.deepcopy`` see no hook).

        Args:
            x: ``(B, C_in, *spatial)`` input.
            grid_size: when given, the embeddings come back already averaged onto FeCL's ``grid_size^d`` patch grid:
                equal to ``patchify_embeddings`` of the full map at a fraction of the cost (see
                :class:`ProjectionHead`), after checking that the feature map has at least ``grid_size`` voxels per
                axis (:func:`check_feature_grid`).

        Returns:
            ``(logits (B, C, *spatial), embeddings (B, embedding_dim, *feature_spatial))``; with ``grid_size`` the
            embeddings are ``(B, embedding_dim, grid_size, ...)``.

        Raises:
            RuntimeError: when the feature layer did not run during the forward pass.
            ValueError: when its output does not have ``feature_channels`` channels or is smaller than ``grid_size``.
        """
        captured: list[torch.Tensor] = []
        module = self.backbone.get_submodule(self.feature_layer)
        handle = module.register_forward_hook(lambda _m, _a, out: captured.append(out))
        try:
            logits = self.backbone(x)
        finally:
            handle.remove()
        features = captured[-1] if captured else None
        if features is None:
            raise RuntimeError(
                f"DyCONNet feature layer '{self.feature_layer}' did not run in {type(self.backbone).__name__}.forward; "
                "choose a module on the forward path."
            )
        if not isinstance(features, torch.Tensor) or features.ndim != self.spatial_dims + 2:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(
                f"DyCONNet feature layer '{self.feature_layer}' must output a (B, C, *spatial) tensor with "
                f"{self.spatial_dims} spatial dims, got {shape}."
            )
        if features.shape[1] != self.feature_channels:
            raise ValueError(
                f"DyCONNet feature layer '{self.feature_layer}' outputs {features.shape[1]} channels "
                f"(shape {tuple(features.shape)}) but feature_channels={self.feature_channels}; pass "
                f"feature_channels={features.shape[1]}."
            )
        features = self._resize_features(features, grid_size)
        if grid_size is not None:
            check_feature_grid(features.shape, grid_size, self.feature_layer, x.shape)
        with record_function("dycon/projection_head"):
            return logits, self.head(features, grid_size=grid_size)

    def _resize_features(self, features: torch.Tensor, grid_size: int | None) -> torch.Tensor:
        """Upsample the tapped map by ``feature_upsample`` and, with ``upsample_to_grid``, up to the FeCL grid."""
        spatial = [int(s) for s in features.shape[2:]]
        size = [int(round(s * self.feature_upsample)) for s in spatial]
        if grid_size is not None and self.upsample_to_grid:
            size = [max(s, int(grid_size)) for s in size]
        if size == spatial:
            return features
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[self.spatial_dims]
        return F.interpolate(features, size=size, mode=mode, align_corners=False)
