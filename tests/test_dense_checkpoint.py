"""Backbone initialisation of the det / seg backbones from every supported checkpoint format."""
from __future__ import annotations

import argparse
import importlib
import importlib.util

import pytest
import torch
from conftest import REPO
from timm.layers import resample_abs_pos_embed

import det  # noqa: F401  (registers the backbone in mmdet and mmseg)
from ibot.checkpoint import (
    BACKBONE_SCHEMA,
    CheckpointFormatError,
    StateDictMismatchError,
    UntrustedCheckpointError,
    describe_backbone,
    load_file,
    save_backbone,
    save_file,
)
from ibot.compat.mmengine import trust_checkpoint
from ibot.model import build_student_teacher
from ibot.vit import build_vit

GRID = (4, 6)  # img_size (64, 96) with patch 16: the checkpoint's 14x14 pos_embed must be resized to this


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Our pre-training format and the official full format, with a teacher that differs from the student."""
    torch.manual_seed(0)
    student, teacher = build_student_teacher("vit_tiny", patch_size=16, img_size=224, drop_path_rate=0.0,
                                             out_dim=64, patch_out_dim=64)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    d = tmp_path_factory.mktemp("ckpt")
    ours = d / "pretrain_checkpoint.pth"
    save_file({"student": student.state_dict(), "teacher": teacher.state_dict(),
               "ibot_loss": {"center": torch.zeros(1, 64), "center2": torch.zeros(1, 1, 64)}, "epoch": 1}, ours)
    official = d / "official_checkpoint.pth"
    torch.save({"student": {f"module.{k}": v for k, v in student.state_dict().items()},
                "teacher": teacher.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
                "args": argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=64),
                "ibot_loss": {"center": torch.zeros(1, 64), "center2": torch.zeros(1, 1, 64)}}, official)
    return dict(ours=str(ours), official=str(official), student=student.state_dict(),
                teacher=teacher.state_dict())


def build(toolkit: str, checkpoint: str, **kw):
    reg = importlib.import_module(f"{toolkit}.registry")
    cfg = dict(type="iBOTViTBackbone", arch="vit_tiny", img_size=(64, 96), drop_path_rate=0.0,
               out_with_norm=toolkit == "mmseg", pyramid_norm_cfg=dict(type="BN"),
               init_cfg=dict(type="Pretrained", checkpoint=checkpoint, **kw))
    model = reg.MODELS.build(cfg)
    model.init_weights()
    return model


def assert_loaded(model, source: dict[str, torch.Tensor], prefix: str = "backbone.") -> None:
    report = model.load_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == [], str(report)
    assert report.resized == ["pos_embed"]
    assert report.details["pos_embed"] == "(1, 197, 192) -> (1, 25, 192)"
    own = model.vit.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "cls_token"):
        torch.testing.assert_close(own[key], source[prefix + key], msg=key)
    want_pos = resample_abs_pos_embed(source[prefix + "pos_embed"], list(GRID), [14, 14], num_prefix_tokens=1,
                                      antialias=False)  # bicubic as the official mmcv_custom loader
    torch.testing.assert_close(own["pos_embed"], want_pos)


@pytest.mark.parametrize("toolkit", ["mmdet", "mmseg"])
def test_pretrain_engine_checkpoint_initialises_backbone(pretrained, toolkit: str) -> None:
    model = build(toolkit, pretrained["ours"])
    assert_loaded(model, pretrained["teacher"])  # the teacher by default, as the official recipes
    if toolkit == "mmseg":  # out_with_norm: the final LayerNorm is loaded
        torch.testing.assert_close(model.vit.norm.weight, pretrained["teacher"]["backbone.norm.weight"])
    else:  # det: no final norm, its weights are reported as ignored, not silently dropped
        assert {"norm.weight", "norm.bias"} <= set(model.load_report.ignored)
    assert model(torch.randn(1, 3, 64, 96))[0].shape == (1, 192, 16, 24)


def test_student_key_ignores_the_mask_token(pretrained) -> None:
    model = build("mmdet", pretrained["ours"], checkpoint_key="student")
    assert_loaded(model, pretrained["student"])
    assert "masked_embed" in model.load_report.ignored


@pytest.mark.parametrize("toolkit", ["mmdet", "mmseg"])
def test_official_full_checkpoint_needs_trust(pretrained, toolkit: str, tmp_path) -> None:
    path = tmp_path / "checkpoint.pth"  # a fresh path: trust is per file and process-wide
    path.write_bytes(open(pretrained["official"], "rb").read())
    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace") as err:
        build(toolkit, str(path))
    assert "--trust-checkpoint" in str(err.value)
    trust_checkpoint(path)
    assert_loaded(build(toolkit, str(path)), pretrained["teacher"])


def test_timm_and_dino_flat_state_dicts(pretrained, tmp_path) -> None:
    import timm

    timm_sd = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).state_dict()
    save_file(timm_sd, tmp_path / "timm.safetensors")
    model = build("mmseg", str(tmp_path / "timm.safetensors"))
    assert_loaded(model, timm_sd, prefix="")
    assert {"head.weight", "head.bias"} <= set(model.load_report.ignored)
    dino = {k[len("backbone."):]: v for k, v in pretrained["teacher"].items() if k.startswith("backbone.")}
    torch.save(dino, tmp_path / "dino_deittiny16_pretrain.pth")
    assert_loaded(build("mmdet", str(tmp_path / "dino_deittiny16_pretrain.pth")), dino, prefix="")


def test_mmengine_checkpoint_of_this_backbone(pretrained, tmp_path) -> None:
    det_backbone = build("mmdet", pretrained["ours"])
    sd = {f"backbone.{k}": v for k, v in det_backbone.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save({"meta": {"epoch": 1}, "state_dict": sd}, tmp_path / "epoch_1.pth")
    again = build("mmdet", str(tmp_path / "epoch_1.pth"))
    assert again.load_report.missing == [] and again.load_report.resized == []
    assert any(k.startswith("pyramid.") for k in det_backbone.state_dict())  # dropped: not part of the ViT
    torch.testing.assert_close(again.vit.blocks[3].mlp.fc1.weight, det_backbone.vit.blocks[3].mlp.fc1.weight)
    # a det backbone has no final norm: a seg backbone that wants one refuses the file, naming it and the keys
    with pytest.raises(StateDictMismatchError, match=r"epoch_1\.pth[\s\S]*missing: norm\.weight") as err:
        build("mmseg", str(tmp_path / "epoch_1.pth"))
    assert err.value.report.missing == ["norm.weight", "norm.bias"]


def test_mismatching_checkpoints_fail_loudly(pretrained, tmp_path) -> None:
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointFormatError, match=r"resnet\.pth.*not a ViT backbone"):
        build("mmdet", str(tmp_path / "resnet.pth"))
    extra = {k[len("backbone."):]: v for k, v in pretrained["teacher"].items() if k.startswith("backbone.")}
    extra["blocks.12.mlp.fc1.weight"] = torch.zeros(1)  # a 13th block: a deeper model
    torch.save(extra, tmp_path / "deeper.pth")
    with pytest.raises(StateDictMismatchError, match="blocks.12") as err:  # always strict
        build("mmseg", str(tmp_path / "deeper.pth"))
    assert err.value.report.unexpected == ["blocks.12.mlp.fc1.weight"]
    with pytest.raises(ValueError, match=r"unsupported keys \['strict'\]"):  # strictness is not optional
        build("mmseg", str(tmp_path / "deeper.pth"), strict=False)


@pytest.mark.parametrize("toolkit", ["mmdet", "mmseg"])
@pytest.mark.parametrize("shape", [dict(depth=6), dict(arch="vit_small")], ids=["shallower", "wider"])
def test_init_refuses_a_checkpoint_of_another_size(pretrained, toolkit: str, shape: dict, tmp_path) -> None:
    """A 12-block ViT-Tiny file into a 6-block or a ViT-S backbone: nothing is loaded, the error names the file and
    the fix (before: the matching tensors loaded and the rest stayed random)."""
    vit = build_vit("vit_tiny", patch_size=16, img_size=224)
    save_backbone(tmp_path / "tiny.pth", vit.state_dict(), describe_backbone(vit), {"kind": "test"})
    reg = importlib.import_module(f"{toolkit}.registry")
    init = dict(type="Pretrained", checkpoint=str(tmp_path / "tiny.pth"))
    cfg = dict(type="iBOTViTBackbone", img_size=(64, 96), drop_path_rate=0.0, out_with_norm=toolkit == "mmseg",
               pyramid_norm_cfg=dict(type="BN"), init_cfg=init, **{"arch": "vit_tiny", **shape})
    model = reg.MODELS.build(cfg)
    before = {k: v.clone() for k, v in model.vit.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as err:
        model.init_weights()
    msg = str(err.value)
    assert str(tmp_path / "tiny.pth") in msg and "described as" in msg
    assert f"--backbone {tmp_path / 'tiny.pth'}" in msg and "model.backbone.arch" in msg
    report = err.value.report
    if "depth" in shape:
        assert report.unexpected and all(k.split(".")[1] in map(str, range(6, 12)) for k in report.unexpected)
    else:
        assert "blocks.0.attn.qkv.weight" in report.mismatched
    assert all(torch.equal(v, before[k]) for k, v in model.vit.state_dict().items())  # nothing was loaded


def test_convert_checkpoint_tool(pretrained, tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src = tmp_path / "official.pth"  # a fresh path: not on the allow-list
    src.write_bytes(open(pretrained["official"], "rb").read())
    with pytest.raises(UntrustedCheckpointError):
        tool.main([str(src), str(tmp_path / "out.pth")])
    sd = tool.main([str(src), str(tmp_path / "out.pth"), "--trust-checkpoint"])
    assert "masked_embed" not in sd and not any(k.startswith("head") for k in sd)
    loaded = load_file(tmp_path / "out.pth")  # weights-only: no trust needed
    assert loaded["schema"] == BACKBONE_SCHEMA and set(loaded["state_dict"]) == set(sd)
    assert set(loaded) == {"schema", "state_dict", "model", "source"} and loaded["model"]["arch"] == "vit_tiny"
    assert_loaded(build("mmdet", str(tmp_path / "out.pth")), pretrained["teacher"])
    student = tool.main([pretrained["ours"], str(tmp_path / "student.safetensors"), "--key", "student"])
    want = pretrained["student"]["backbone.blocks.0.norm1.weight"]
    torch.testing.assert_close(student["blocks.0.norm1.weight"], want)
