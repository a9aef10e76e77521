"""Layer-wise lr decay constructor: groups, lr scales and weight decay against hand-computed values."""
from __future__ import annotations

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import det  # noqa: F401  (registers the constructor in mmdet and mmseg)
from det.backbone import iBOTViTBackbone
from det.optim import get_layer_id

LR, WD, RATE, DEPTH = 1e-3, 0.05, 0.5, 3


class Detector(nn.Module):
    def __init__(self, frozen_stages: int = -1) -> None:
        super().__init__()
        self.backbone = iBOTViTBackbone(arch=None, embed_dim=16, depth=DEPTH, num_heads=2, out_with_norm=True,
                                        pyramid_norm_cfg=dict(type="BN"), frozen_stages=frozen_stages)
        self.neck = nn.Conv2d(16, 8, 1)
        self.head = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))


def build(toolkit: str, model: nn.Module, **paramwise):
    cfg = dict(type="OptimWrapper", constructor="ViTLayerDecayOptimWrapperConstructor",
               optimizer=dict(type="AdamW", lr=LR, weight_decay=WD), paramwise_cfg=dict(layer_decay_rate=RATE,
                                                                                     **paramwise))
    with DefaultScope.overwrite_default_scope(toolkit):
        return build_optim_wrapper(model, cfg)


def settings(wrapper) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr, weight decay) as the optimizer will use them."""
    out = {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            assert name not in out, f"{name} in two groups"
            out[name] = (group["lr"], group["weight_decay"])
    return out


# Hand-computed for depth 3, rate 0.5: lr = base * 0.5 ** (3 + 1 - layer_id);
# layer 0 = embeddings, 1..3 = blocks 0..2, 4 = everything else.
EXPECTED = {
    "backbone.vit.cls_token": (LR / 16, 0.0),
    "backbone.vit.pos_embed": (LR / 16, 0.0),
    "backbone.vit.patch_embed.proj.weight": (LR / 16, WD),
    "backbone.vit.patch_embed.proj.bias": (LR / 16, 0.0),
    "backbone.vit.blocks.0.norm1.weight": (LR / 8, 0.0),
    "backbone.vit.blocks.0.attn.qkv.weight": (LR / 8, WD),
    "backbone.vit.blocks.0.attn.qkv.bias": (LR / 8, 0.0),
    "backbone.vit.blocks.1.mlp.fc1.weight": (LR / 4, WD),
    "backbone.vit.blocks.2.mlp.fc2.weight": (LR / 2, WD),
    "backbone.vit.blocks.2.norm2.bias": (LR / 2, 0.0),
    "backbone.vit.norm.weight": (LR, 0.0),
    "backbone.pyramid.scales.0.0.weight": (LR, WD),
    "backbone.pyramid.scales.0.1.weight": (LR, 0.0),  # BN scale: 1-D
    "neck.weight": (LR, WD),
    "neck.bias": (LR, 0.0),
    "head.0.weight": (LR, WD),
    "head.1.weight": (LR, 0.0),
}


@pytest.mark.parametrize("toolkit", ["mmdet", "mmseg"])
def test_groups_match_hand_computed_scales(toolkit: str) -> None:
    model = Detector()
    got = settings(build(toolkit, model))
    assert set(got) == {n for n, _ in model.named_parameters()}
    for name, (lr, wd) in EXPECTED.items():
        assert got[name] == (pytest.approx(lr), wd), name


def test_official_embedding_decay_is_opt_in() -> None:
    got = settings(build("mmdet", Detector(), decay_embeddings=True))
    assert got["backbone.vit.pos_embed"][1] == WD and got["backbone.vit.cls_token"][1] == WD
    assert got["backbone.vit.blocks.0.norm1.weight"][1] == 0.0


def test_frozen_parameters_are_left_out_and_steps_work() -> None:
    model = Detector(frozen_stages=1)
    wrapper = build("mmseg", model)
    got = settings(wrapper)
    assert "backbone.vit.blocks.0.attn.qkv.weight" not in got and "backbone.vit.pos_embed" not in got
    assert got["backbone.vit.blocks.1.attn.qkv.weight"] == (pytest.approx(LR / 4), WD)
    feats = model.backbone(torch.randn(2, 3, 32, 32))
    wrapper.update_params(sum(f.mean() for f in feats) + model.neck(feats[2]).mean())
    state = wrapper.state_dict()  # resume path: groups (with names) survive a round trip
    build("mmseg", Detector(frozen_stages=1)).load_state_dict(state)


def test_layer_id_rules() -> None:
    assert get_layer_id("backbone.vit.pos_embed", 12) == 0
    assert get_layer_id("module.backbone.vit.blocks.11.attn.proj.weight", 12) == 12
    assert get_layer_id("backbone.blocks.3.norm1.weight", 12) == 4  # official (unwrapped) naming
    assert get_layer_id("backbone.vit.norm.weight", 12) == 13
    assert get_layer_id("roi_head.bbox_head.0.shared_convs.0.conv.weight", 12) == 13


def test_bad_paramwise_cfg_raises() -> None:
    with pytest.raises(ValueError, match="unknown paramwise_cfg"):
        build("mmdet", Detector(), layer_decay=0.9)
    with pytest.raises(ValueError, match="num_layers=12 but the backbone has 3"):
        build("mmdet", Detector(), num_layers=12)
