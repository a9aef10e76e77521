"""The shared dense backbone / neck (dense/): registration, feature maps, pyramids, windows, freezing."""
from __future__ import annotations

import pytest
import torch

import det
from det.backbone import DeconvPyramid, default_out_indices, iBOTViTBackbone, window_attention
from det.neck import SimpleFeaturePyramid


def tiny(**kw) -> iBOTViTBackbone:
    args = dict(arch=None, embed_dim=32, depth=4, num_heads=2, img_size=(32, 48), drop_path_rate=0.0,
                pyramid_norm_cfg=dict(type="BN"))
    args.update(kw)
    torch.manual_seed(0)
    return iBOTViTBackbone(**args)


@pytest.mark.parametrize("toolkit", ["mmdet", "mmseg"])
def test_registered_in_both_toolkits(toolkit: str) -> None:
    import importlib

    reg = importlib.import_module(f"{toolkit}.registry")
    assert reg.MODELS.get("iBOTViTBackbone") is iBOTViTBackbone
    assert reg.MODELS.get("SimpleFeaturePyramid") is SimpleFeaturePyramid
    assert reg.MODELS.get("LN2d") is det.LayerNorm2d
    assert reg.OPTIM_WRAPPER_CONSTRUCTORS.get("ViTLayerDecayOptimWrapperConstructor") is \
        det.ViTLayerDecayOptimWrapperConstructor
    assert det.register_modules((toolkit,)) == [toolkit]  # idempotent


def test_default_out_indices_scale_with_depth() -> None:
    assert default_out_indices(12) == (3, 5, 7, 11)
    assert default_out_indices(24) == (7, 11, 15, 23)  # BEiT-L / iBOT ViT-L
    assert default_out_indices(4) == (0, 1, 2, 3)
    assert tiny().out_indices == (0, 1, 2, 3)


def test_deconv_pyramid_strides_and_structure() -> None:
    model = tiny().eval()
    x = torch.randn(2, 3, 64, 96)  # not the stored 32x48: pos_embed is resized at run time
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    level4, level8, level16, level32 = model.pyramid.scales
    assert [type(m).__name__ for m in level4] == ["ConvTranspose2d", "BatchNorm2d", "GELU", "ConvTranspose2d"]
    assert [type(m).__name__ for m in level8] == ["ConvTranspose2d"]
    assert isinstance(level16, torch.nn.Identity)
    assert isinstance(level32, torch.nn.MaxPool2d) and level32.kernel_size == 2
    # patch 8: the official variant (ConvT, identity, MaxPool 2, MaxPool 4)
    p8 = DeconvPyramid(32, 8, (4, 8, 16, 32), dict(type="BN"))
    assert [type(m).__name__ for m in p8.scales] == ["Sequential", "Identity", "MaxPool2d", "MaxPool2d"]
    assert p8.scales[3].kernel_size == 4


@pytest.mark.parametrize("out_with_norm", [False, True])
def test_feature_maps_match_core_api(out_with_norm: bool) -> None:
    model = tiny(out_with_norm=out_with_norm, pyramid=None).eval()
    x = torch.randn(1, 3, 48, 64)
    ours = model(x)
    ref = model.vit.feature_maps(x, model.out_indices, norm=out_with_norm)
    assert len(ours) == 4
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    # without the final norm the LayerNorm is removed (no unused parameters under DDP)
    assert isinstance(model.vit.norm, torch.nn.Identity) != out_with_norm


def test_runtime_pos_embed_resize_changes_output_per_grid() -> None:
    model = tiny(pyramid=None).eval()
    with torch.no_grad():
        model.vit.pos_embed.normal_()
    x = torch.randn(1, 3, 64, 64)
    out = model(x)[-1]
    with torch.no_grad():  # a different stored grid resized to the same input must change the result
        model.vit.pos_embed.mul_(2)
    assert not torch.allclose(out, model(x)[-1])


def test_window_covering_the_grid_equals_global_attention() -> None:
    torch.manual_seed(0)
    model = tiny(pyramid=None).eval()
    blk = model.vit.blocks[0]
    x = torch.randn(2, 1 + 4 * 6, 32)
    glob = blk.attn(x)
    torch.testing.assert_close(window_attention(blk.attn, x, (4, 6), 6), glob)  # one padded window (6x6)
    # smaller windows: same shape, different values, finite gradients
    x.requires_grad_()
    local = window_attention(blk.attn, x, (4, 6), 3)
    assert local.shape == glob.shape and not torch.allclose(local, glob)
    local.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_windowed_blocks_and_grad_checkpointing() -> None:
    x = torch.randn(2, 3, 64, 80)
    ref = tiny(pyramid=None, window_size=3, window_block_indices=(0, 2))
    ckpt = tiny(pyramid=None, window_size=3, window_block_indices=(0, 2), grad_checkpointing=True)
    ckpt.load_state_dict(ref.state_dict())
    outs = [m.train()(x) for m in (ref, ckpt)]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    for m, o in zip((ref, ckpt), outs):
        sum(t.sum() for t in o).backward()
    for (name, p), q in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    glob = tiny(pyramid=None)
    glob.load_state_dict(ref.state_dict())
    assert not torch.allclose(glob.train()(x)[0], outs[0][0])


def test_frozen_stages() -> None:
    model = tiny(frozen_stages=2)
    model.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"vit.cls_token", "vit.pos_embed", "vit.patch_embed.proj.weight"} <= frozen
    assert any(n.startswith("vit.blocks.1.") for n in frozen) and not any(n.startswith("vit.blocks.2.") for n in frozen)
    assert not model.vit.blocks[1].training and model.vit.blocks[2].training
    linear = tiny(frozen_stages=4, pyramid=None, out_with_norm=True).train()
    assert not any(p.requires_grad for p in linear.parameters())
    assert not linear(torch.randn(1, 3, 32, 32))[0].requires_grad


def test_simple_feature_pyramid() -> None:
    neck = SimpleFeaturePyramid(in_channels=32, out_channels=16, num_outs=5)
    feats = neck((torch.randn(2, 32, 8, 10),))
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]
    assert all(f.shape[:2] == (2, 16) for f in feats)
    assert type(neck.stages[0][1]).__name__ == "LayerNorm2d"
    bn = SimpleFeaturePyramid(in_channels=32, out_channels=16, num_outs=4, norm_cfg=dict(type="BN"))
    assert len(bn(torch.randn(1, 32, 4, 4))) == 4


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unknown arch"):
        iBOTViTBackbone(arch="vit_huge")
    with pytest.raises(ValueError, match="window_size"):
        tiny(window_block_indices=(0,))
    with pytest.raises(ValueError, match="out_indices"):
        tiny(out_indices=(4,))
    with pytest.raises(ValueError, match="SimpleFeaturePyramid"):
        tiny(pyramid="simple")
