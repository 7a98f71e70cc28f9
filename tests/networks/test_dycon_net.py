from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import BasicUNet, DynUNet, UNet, VNet

from dycon_monai.losses import patchify_embeddings
from dycon_monai.networks import (
    DyCONNet,
    ProjectionHead,
    check_feature_grid,
    default_feature_layer,
    infer_feature_channels,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only add overhead


def _unet():
    return UNet(3, 1, 2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)


def _basic():
    return BasicUNet(3, 1, 2, features=(4, 4, 8, 16, 32, 4))


def test_projection_head_shapes_and_errors():
    head = ProjectionHead(3, 4, embedding_dim=16)
    assert head(torch.randn(2, 4, 6, 6, 6)).shape == (2, 16, 6, 6, 6)
    with pytest.raises(ValueError, match=r"expects features of shape \(B, 4, \*spatial\).*\(2, 5, 6, 6, 6\)"):
        head(torch.randn(2, 5, 6, 6, 6))
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        ProjectionHead(3, 4, embedding_dim=0)


@pytest.mark.parametrize("make, size", [(_unet, 16), (_basic, 32)], ids=["UNet", "BasicUNet"])
def test_forward_is_the_backbone_and_features_come_from_the_same_pass(make, size):
    net = DyCONNet(make(), embedding_dim=16)
    net.eval()
    x = torch.randn(2, 1, size, size, size)
    logits = net(x)
    torch.testing.assert_close(logits, net.backbone(x), rtol=0, atol=0)
    logits2, emb = net.forward_features(x)
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)
    assert emb.shape == (2, 16, size // 2, size // 2, size // 2)  # default feature layer: half resolution
    assert not any(m._forward_hooks for m in net.backbone.modules())  # the hook lives only during the call


def test_pooled_embeddings_equal_patchified_full_map_values_and_gradients():
    """Pooling before the affine 1x1x1 projection is exact: same patch embeddings and gradients as pooling after."""
    net = DyCONNet(_unet(), embedding_dim=16)
    x = torch.randn(2, 1, 32, 32, 32)
    weights = torch.randn(2, 4**3, 16)

    def run(grid_size):
        net.zero_grad()
        _, emb = net.forward_features(x, grid_size=grid_size)
        patches = patchify_embeddings(emb, 4)  # identity pooling when emb is already on the 4^3 grid
        (patches * weights).sum().backward()
        return patches.detach(), [None if p.grad is None else p.grad.clone() for p in net.parameters()]

    full, grads_full = run(None)
    pooled, grads_pooled = run(4)
    torch.testing.assert_close(pooled, full, rtol=1e-5, atol=1e-6)
    assert sum(g is not None for g in grads_full) > 0
    for g_pooled, g_full in zip(grads_pooled, grads_full):
        assert (g_pooled is None) == (g_full is None)
        if g_full is not None:
            torch.testing.assert_close(g_pooled, g_full, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"FeCL grid 32\^3 needs a feature map of at least 32 voxels"):
        net.forward_features(x, grid_size=32)


def test_default_feature_layers():
    unet = _unet()
    assert default_feature_layer(unet).name == "model.1.submodule.2"
    assert default_feature_layer(unet).channels == 4 and default_feature_layer(unet).downsample == 2
    level2 = default_feature_layer(unet, level=2)
    assert (level2.name, level2.channels, level2.downsample) == ("model.1.submodule.1.submodule.2", 8, 4)
    with pytest.raises(ValueError, match="decoder levels 1..2"):
        default_feature_layer(unet, level=3)
    assert default_feature_layer(_basic()).name == "upcat_2"
    vnet = default_feature_layer(VNet(3, 1, 2))
    assert (vnet.name, vnet.channels, vnet.downsample) == ("up_tr64", 64, 2)
    dyn = DynUNet(3, 1, 2, kernel_size=(3, 3, 3), strides=(1, 2, 2), upsample_kernel_size=(2, 2))
    with pytest.raises(TypeError, match="no default feature layer for DynUNet"):
        default_feature_layer(dyn)


def test_feature_maps_match_their_declared_size():
    x = torch.randn(1, 1, 32, 32, 32)
    for make, level in ((_unet, 1), (_unet, 2), (_basic, 1), (_basic, 2)):
        backbone = make()
        layer = default_feature_layer(backbone, level)
        net = DyCONNet(backbone, layer.name, layer.channels, embedding_dim=8)
        _, emb = net.forward_features(x)
        assert emb.shape[2:] == (32 // layer.downsample,) * 3


def test_explicit_layer_of_another_backbone_and_errors():
    dyn = DynUNet(3, 1, 2, kernel_size=(3, 3, 3), strides=(1, 2, 2), upsample_kernel_size=(2, 2), filters=(4, 8, 16))
    name = "upsamples.0"
    net = DyCONNet(dyn, name, embedding_dim=8)  # channels inferred from the block's last convolution
    assert net.feature_channels == infer_feature_channels(dict(dyn.named_modules())[name]) == 8
    _, emb = net.forward_features(torch.randn(1, 1, 16, 16, 16))
    assert emb.shape == (1, 8, 8, 8, 8)
    with pytest.raises(ValueError, match="feature_layer 'model.9' is not a module of UNet"):
        DyCONNet(_unet(), "model.9", 4)
    wrong = DyCONNet(_unet(), "model.1.submodule.2", 5, embedding_dim=8)
    with pytest.raises(ValueError, match="outputs 4 channels .* but feature_channels=5; pass feature_channels=4"):
        wrong.forward_features(torch.randn(1, 1, 16, 16, 16))


def test_check_feature_grid_message():
    check_feature_grid((2, 16, 16, 16, 16), 16)
    with pytest.raises(
        ValueError, match=r"FeCL grid 16\^3 .* layer 'L' gives \(8, 8, 8\) for input patches \(16, 16, 16\)"
    ):
        check_feature_grid((2, 16, 8, 8, 8), 16, "L", (2, 1, 16, 16, 16))


def test_teacher_copy_captures_its_own_features():
    net = DyCONNet(_unet(), embedding_dim=8)
    teacher = copy.deepcopy(net)
    with torch.no_grad():
        for p in teacher.head.parameters():
            p.add_(1.0)
    net.eval()
    teacher.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    _, e_s = net.forward_features(x)
    _, e_t = teacher.forward_features(x)
    assert not torch.allclose(e_s, e_t)
    _, e_s2 = net.forward_features(x)
    torch.testing.assert_close(e_s, e_s2)


@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
def test_torchscript_export_and_inference_weights_load_into_bare_backbone(tmp_path):
    net = DyCONNet(_unet(), embedding_dim=8)
    net.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    net.forward_features(x)
    scripted = torch.jit.script(net.backbone)
    torch.testing.assert_close(scripted(x), net(x))
    traced = torch.jit.trace(net, x)  # the wrapper traces as a plain segmentation net
    torch.testing.assert_close(traced(x), net(x))
    torch.save(net.backbone.state_dict(), tmp_path / "model.pt")
    bare = _unet()
    bare.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    bare.eval()
    torch.testing.assert_close(bare(x), net(x))


def test_encoder_feature_layer_is_the_bottleneck_upsampled_to_the_grid():
    """feature_layer='encoder' (the paper's setting): deepest encoder block, x2 upsampling, then up to the grid."""
    from monai.networks.nets import BasicUNet, VNet

    from dycon_monai.networks import encoder_feature_layer, resolve_feature_layer

    unet = UNet(3, 1, 2, channels=(4, 8, 16, 32, 64), strides=(2, 2, 2, 2), num_res_units=0)
    layer = encoder_feature_layer(unet)
    assert layer.name == "model.1.submodule.1.submodule.1.submodule.1.submodule"
    assert (layer.channels, layer.downsample) == (64, 16)
    assert encoder_feature_layer(VNet(3, 1, 2)).name == "down_tr256"
    assert encoder_feature_layer(BasicUNet(3, 1, 2)).name == "down_4"
    assert resolve_feature_layer(unet, "decoder:2")[0] == "model.1.submodule.1.submodule.2"
    with pytest.raises(ValueError, match="decoder:<level>"):
        resolve_feature_layer(unet, "decoder:x")

    net = DyCONNet(unet, feature_layer="encoder", embedding_dim=8, head_kwargs={"dilations": (1, 1, 2, 2)})
    assert (net.feature_channels, net.feature_upsample, net.upsample_to_grid) == (64, 2.0, True)
    x = torch.randn(1, 1, 64, 64, 32)
    seen = []
    handle = net.head.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    logits, emb = net.forward_features(x, grid_size=4)
    # bottleneck 4x4x2 -> x2 = 8x8x4: the grid 4 needs no more
    assert seen[-1] == (1, 64, 8, 8, 4) and emb.shape == (1, 8, 4, 4, 4)
    net.forward_features(x, grid_size=6)  # 8x8x4 -> up to the grid along the last axis: 8x8x6
    assert seen[-1] == (1, 64, 8, 8, 6)
    handle.remove()
    torch.testing.assert_close(logits, unet(x))

    # an explicit layer is not resized unless asked, so a too-small map is an error as before
    plain = DyCONNet(unet, feature_layer=layer.name, feature_channels=64, embedding_dim=8)
    with pytest.raises(ValueError, match="needs a feature map of at least 4 voxels"):
        plain.forward_features(x, grid_size=4)
    with pytest.raises(ValueError, match="feature_upsample must be a number >= 1"):
        DyCONNet(unet, feature_layer="encoder", feature_upsample=0.5)
