"""Tests for ibot.checkpoint: every supported format is built synthetically with a tiny timm ViT."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import warnings

import pytest
import torch
from conftest import REPO
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ibot import checkpoint as ck
from ibot.checkpoint import (
    CheckpointFormatError,
    CheckpointKeyError,
    CorruptCheckpointError,
    LoadReport,
    StateDictMismatchError,
    UntrustedCheckpointError,
    build_backbone,
    describe_backbone,
    export_backbone,
    extract_backbone_state_dict,
    load_backbone,
    load_file,
    load_state_dict_report,
    map_weight_norm_keys,
    save_file,
)

EMBED = 32


def tiny_vit(img_size: int | tuple[int, int] = 32, num_classes: int = 0, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(img_size=img_size, patch_size=8, embed_dim=EMBED, depth=2, num_heads=2,
                             num_classes=num_classes)


def tiny_description() -> dict:
    """The description of :func:`tiny_vit` (width 32 is no preset's: its head count must be given)."""
    return describe_backbone(tiny_vit())


def backbone_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    sd = {k: v.clone() for k, v in tiny_vit(seed=seed).state_dict().items()}
    for v in sd.values():  # make every tensor distinct from a fresh model's (pos_embed/cls_token init may be zeros)
        if v.is_floating_point():
            v.add_(torch.randn_like(v) * 0.1)
    return sd


def head_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "head.mlp.0.weight": torch.randn(64, EMBED, generator=g), "head.mlp.0.bias": torch.randn(64, generator=g),
        "head.mlp.2.weight": torch.randn(64, 64, generator=g), "head.mlp.2.bias": torch.randn(64, generator=g),
        "head.mlp.4.weight": torch.randn(16, 64, generator=g), "head.mlp.4.bias": torch.randn(16, generator=g),
        "head.last_layer.weight_g": torch.ones(128, 1), "head.last_layer.weight_v": torch.randn(128, 16, generator=g),
        "head.last_layer2.weight_g": torch.ones(128, 1), "head.last_layer2.weight_v": torch.randn(128, 16, generator=g),
    }


def official_full(teacher_module_prefix: bool = False) -> tuple[dict, dict, dict]:
    """Official iBOT ``main_ibot.py`` save_dict layout; returns (ckpt, teacher backbone, student backbone)."""
    teacher_bb, student_bb = backbone_sd(1), backbone_sd(2)
    student_bb["masked_embed"] = torch.randn(1, EMBED)
    student = {f"module.backbone.{k}": v for k, v in student_bb.items()}
    student.update({f"module.{k}": v for k, v in head_sd(3).items()})
    tprefix = "module." if teacher_module_prefix else ""
    teacher = {f"{tprefix}backbone.{k}": v for k, v in teacher_bb.items()}
    teacher.update({f"{tprefix}{k}": v for k, v in head_sd(4).items()})
    ckpt = {
        "student": student, "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "weight_decay": 0.04, "params": [0, 1]}]},
        "epoch": 3,
        "args": argparse.Namespace(arch="vit_tiny", out_dim=128, patch_out_dim=128, shared_head=False),
        "ibot_loss": {"center": torch.randn(1, 128), "center2": torch.randn(1, 1, 128)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
    return ckpt, teacher_bb, student_bb


def assert_same_tensors(got: dict, want: dict) -> None:
    assert list(got) == list(want) or set(got) == set(want), sorted(set(got) ^ set(want))
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


# ------------------------------------------------------------------------------------------------------ load_file
def test_load_file_refuses_namespace_pickle(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(official_full()[0], path)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_file(path)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert str(path) in msg
    assert "argparse.Namespace" in msg and info.value.global_name == "argparse.Namespace"
    assert "trusted=True" in msg and "--trust-checkpoint" in msg
    assert "executes pickled code" in msg


def test_load_file_trusted_accepts_namespace(tmp_path):
    ckpt, teacher_bb, _ = official_full()
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    loaded = load_file(path, trusted=True)
    assert loaded["args"] == ckpt["args"]
    assert loaded["epoch"] == 3
    assert_same_tensors(loaded["teacher"], ckpt["teacher"])


def test_load_file_tensor_only_needs_no_trust(tmp_path):
    sd = backbone_sd()
    torch.save({"state_dict": sd, "epoch": 1}, tmp_path / "a.pth")
    loaded = load_file(tmp_path / "a.pth")
    assert loaded["epoch"] == 1
    assert_same_tensors(loaded["state_dict"], sd)


def test_load_file_missing(tmp_path):
    path = tmp_path / "nope" / "ckpt.pth"
    with pytest.raises(FileNotFoundError, match="nope/ckpt.pth"):
        load_file(path)
    with pytest.raises(FileNotFoundError, match="x.safetensors"):
        load_file(tmp_path / "x.safetensors")


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_load_file_corrupt(tmp_path, damage, trusted):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": backbone_sd()}, path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint at all" * 3,
                      "empty": b""}[damage])
    with pytest.raises(CorruptCheckpointError, match="bad.pth") as info:
        load_file(path, trusted=trusted)
    assert "truncated" in str(info.value)
    assert not isinstance(info.value, UntrustedCheckpointError)


def test_load_file_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    save_file(backbone_sd(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptCheckpointError, match="bad.safetensors"):
        load_file(path)


# ------------------------------------------------------------------------------------------------------ save_file
def test_save_file_roundtrip_creates_dirs_and_leaves_no_temp(tmp_path):
    sd = backbone_sd()
    path = tmp_path / "deep" / "er" / "w.pth"
    save_file({"state_dict": sd}, path)
    assert os.listdir(path.parent) == ["w.pth"]
    assert_same_tensors(load_file(path)["state_dict"], sd)


def test_save_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_file({"a": torch.ones(1)}, tmp_path / "m.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "m.pth").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0o600


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    old = {"state_dict": backbone_sd(0)}
    save_file(old, path)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_file({"state_dict": backbone_sd(1)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.pth"]
    assert_same_tensors(load_file(path)["state_dict"], old["state_dict"])


def test_safetensors_roundtrip_and_refuses_nested(tmp_path):
    sd = backbone_sd()
    sd["tied"] = sd["pos_embed"]  # shared storage: safetensors alone would refuse
    path = tmp_path / "w.safetensors"
    save_file(sd, path)
    assert os.listdir(tmp_path) == ["w.safetensors"]
    assert_same_tensors(load_file(path), sd)
    with pytest.raises(TypeError, match="flat dict"):
        save_file({"state_dict": sd}, tmp_path / "nested.safetensors")
    assert not (tmp_path / "nested.safetensors").exists()
    assert os.listdir(tmp_path) == ["w.safetensors"]


# --------------------------------------------------------------------------------------- extract_backbone_state_dict
@pytest.mark.parametrize("teacher_module_prefix", [False, True])
def test_extract_official_full_defaults_to_teacher(tmp_path, caplog, teacher_module_prefix):
    ckpt, teacher_bb, student_bb = official_full(teacher_module_prefix)
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    with caplog.at_level(logging.INFO, logger="ibot.checkpoint"):
        got = extract_backbone_state_dict(load_file(path, trusted=True))
    assert_same_tensors(got, teacher_bb)
    assert "masked_embed" not in got
    assert "head.mlp.* (6)" in caplog.text and "head.last_layer.* (2)" in caplog.text
    assert "head.last_layer2.* (2)" in caplog.text
    assert_same_tensors(extract_backbone_state_dict(ckpt, "teacher"), teacher_bb)


def test_extract_official_full_student(tmp_path):
    ckpt, _, student_bb = official_full()
    got = extract_backbone_state_dict(ckpt, key="student")
    assert_same_tensors(got, student_bb)
    assert "masked_embed" in got


def test_extract_official_backbone_only_file(tmp_path):
    _, _, student_bb = official_full()
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": student_bb}, path)  # official extract_backbone_weights.py output (student)
    ckpt = load_file(path)
    assert_same_tensors(extract_backbone_state_dict(ckpt), student_bb)
    assert_same_tensors(extract_backbone_state_dict(ckpt, key="state_dict"), student_bb)


def test_wrong_key_raises_listing_keys():
    ckpt, _, student_bb = official_full()
    with pytest.raises(CheckpointKeyError) as info:
        extract_backbone_state_dict(ckpt, key="ema")
    msg = str(info.value)
    for k in ("student", "teacher", "ibot_loss", "args"):
        assert repr(k) in msg
    assert msg.startswith("Checkpoint key 'ema' not found")
    # the official load_pretrained_weights trap: --checkpoint_key teacher on a {'state_dict': ...} file
    with pytest.raises(KeyError, match=r"'teacher' not found; top-level keys: \['state_dict'\].*key=None"):
        extract_backbone_state_dict({"state_dict": student_bb}, key="teacher")


def test_no_backbone_weights_raises_listing_keys():
    with pytest.raises(CheckpointFormatError, match=r"top-level keys: \['epoch', 'optimizer'\]"):
        extract_backbone_state_dict({"optimizer": {"state": {}}, "epoch": 3})
    with pytest.raises(CheckpointFormatError, match="head / non-backbone"):
        extract_backbone_state_dict({"teacher": head_sd()})
    with pytest.raises(CheckpointFormatError):
        extract_backbone_state_dict([1, 2])


def test_extract_dino_flat(tmp_path):
    sd = backbone_sd()
    path = tmp_path / "dino_vits16_pretrain.pth"
    torch.save(sd, path)
    assert_same_tensors(extract_backbone_state_dict(load_file(path)), sd)


def test_extract_dino_flat_with_projection_head_drops_it(caplog):
    sd = backbone_sd()
    with caplog.at_level(logging.INFO, logger="ibot.checkpoint"):
        got = extract_backbone_state_dict({**sd, **head_sd()})
    assert_same_tensors(got, sd)
    assert "dropped 10 non-backbone keys" in caplog.text


def test_extract_timm_with_classifier_head_and_load(tmp_path):
    model = tiny_vit(num_classes=10, seed=5)
    sd = model.state_dict()
    assert "head.weight" in sd and "norm.weight" in sd
    path = tmp_path / "timm.pth"
    save_file(sd, path)
    got = extract_backbone_state_dict(load_file(path))
    assert_same_tensors(got, sd)  # timm classifier head is kept: it is not an iBOT projection head
    target = tiny_vit()
    with pytest.raises(StateDictMismatchError, match="unexpected: head.weight"):
        load_state_dict_report(target, got)
    report = load_state_dict_report(target, got, ignore=("head.*",))
    assert report.ignored == ["head.weight", "head.bias"] and report.ok
    for k, v in target.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_extract_mmengine_style_backbone_prefix(tmp_path):
    sd = backbone_sd()
    state = {f"backbone.{k}": v for k, v in sd.items()}
    state.update({"neck.0.weight": torch.randn(4, 4), "decode_head.conv_seg.weight": torch.randn(3, 4, 1, 1),
                  "data_preprocessor.mean": torch.zeros(3, 1, 1)})
    path = tmp_path / "iter_160000.pth"
    torch.save({"meta": {"epoch": 1, "iter": 160000}, "state_dict": state, "optimizer": {"state": {}}}, path)
    assert_same_tensors(extract_backbone_state_dict(load_file(path)), sd)


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_extract_model_wrapper(wrapper):
    sd = backbone_sd()
    ckpt = {wrapper: {f"module.{k}": v for k, v in sd.items()}, "epoch": 799}
    assert_same_tensors(extract_backbone_state_dict(ckpt), sd)


def test_extract_our_format_equals_official(tmp_path):
    ckpt, teacher_bb, _ = official_full()
    ckpt["teacher"] = {k.replace("module.", ""): v for k, v in ckpt["teacher"].items()}
    path = tmp_path / "ours.pth"
    save_file(ckpt, path)
    assert_same_tensors(extract_backbone_state_dict(load_file(path, trusted=True)), teacher_bb)


# ------------------------------------------------------------------------------------------------- export_backbone
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_backbone_roundtrip(tmp_path, suffix):
    ckpt, teacher_bb, _ = official_full()
    src = tmp_path / "checkpoint.pth"
    torch.save(ckpt, src)
    with pytest.raises(UntrustedCheckpointError):
        export_backbone(src, tmp_path / f"x{suffix}")
    assert not (tmp_path / f"x{suffix}").exists()
    dst = tmp_path / "out" / f"backbone{suffix}"
    with pytest.raises(CheckpointFormatError, match="head count"):  # width 32: not in the weights
        export_backbone(src, dst, trusted=True)
    returned = export_backbone(src, dst, trusted=True, model=tiny_description())
    assert_same_tensors(returned, teacher_bb)
    assert sorted(os.listdir(dst.parent)) == [dst.name]
    loaded = load_file(dst)  # weights_only=True works: tensors only
    if suffix == ".pth":
        assert list(loaded) == ["schema", "state_dict", "model", "source"]
        assert loaded["model"] == tiny_description() and loaded["source"]["checkpoint_key"] == "teacher"
    assert_same_tensors(extract_backbone_state_dict(loaded), teacher_bb)
    model = tiny_vit(seed=9)
    report = load_state_dict_report(model, extract_backbone_state_dict(loaded))
    assert report.ok and report.loaded == len(teacher_bb)
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher_bb[k]), k


def test_export_backbone_default_key_on_backbone_file_is_loud(tmp_path):
    sd = backbone_sd()
    save_file({"state_dict": sd}, tmp_path / "bb.pth")
    with pytest.raises(CheckpointKeyError, match="state_dict"):
        export_backbone(tmp_path / "bb.pth", tmp_path / "out.pth")
    assert_same_tensors(export_backbone(tmp_path / "bb.pth", tmp_path / "out.pth", key=None,
                                        model=tiny_description()), sd)


# ---------------------------------------------------------------------------------------- load_state_dict_report
def test_pos_embed_resize_32_to_64():
    sd = backbone_sd()
    assert sd["pos_embed"].shape == (1, 17, EMBED)
    model = tiny_vit(img_size=64)
    report = load_state_dict_report(model, sd)
    assert report.resized == ["pos_embed"] and report.ok
    assert model.pos_embed.shape == (1, 65, EMBED)
    want = resample_abs_pos_embed(sd["pos_embed"], new_size=[8, 8], num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)
    assert torch.equal(model.pos_embed.detach(), want)
    assert torch.equal(model.pos_embed.detach()[:, 0], sd["pos_embed"][:, 0])  # class token untouched
    assert torch.equal(model.blocks[0].attn.qkv.weight.detach(), sd["blocks.0.attn.qkv.weight"])
    assert "(1, 17, 32) -> (1, 65, 32)" in str(report)


def test_pos_embed_resize_non_square_grid():
    sd = backbone_sd()
    model = tiny_vit(img_size=(32, 64))
    assert tuple(model.patch_embed.grid_size) == (4, 8)
    report = load_state_dict_report(model, sd)
    assert report.resized == ["pos_embed"]
    want = resample_abs_pos_embed(sd["pos_embed"], new_size=[4, 8], num_prefix_tokens=1, interpolation="bicubic",
                                  antialias=False)
    assert model.pos_embed.shape == (1, 33, EMBED) and torch.equal(model.pos_embed.detach(), want)


def test_pos_embed_resize_inside_wrapper_module():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_vit(img_size=64)

    sd = {f"backbone.{k}": v for k, v in backbone_sd().items()}
    model = Wrapper()
    assert load_state_dict_report(model, sd).resized == ["backbone.pos_embed"]
    assert model.backbone.pos_embed.shape == (1, 65, EMBED)


def test_pos_embed_mismatch_without_resize_is_an_error():
    model = tiny_vit(img_size=64)
    before = model.pos_embed.detach().clone()
    with pytest.raises(StateDictMismatchError, match=r"mismatched: pos_embed \(checkpoint \(1, 17, 32\)"):
        load_state_dict_report(model, backbone_sd(), resize_pos_embed=False)
    assert torch.equal(model.pos_embed.detach(), before)  # strict failure leaves the model untouched
    report = load_state_dict_report(model, backbone_sd(), resize_pos_embed=False, strict=False)
    assert report.mismatched == ["pos_embed"] and not report.resized


def test_strict_report_lists_missing_and_unexpected(caplog):
    sd = backbone_sd()
    sd.pop("norm.weight")
    sd["extra.thing"] = torch.ones(2)
    model = tiny_vit(seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_report(model, sd)
    assert "missing: norm.weight" in str(info.value) and "unexpected: extra.thing" in str(info.value)
    assert info.value.report.missing == ["norm.weight"] and info.value.report.unexpected == ["extra.thing"]
    assert_same_tensors(model.state_dict(), before)

    with caplog.at_level(logging.WARNING, logger="ibot.checkpoint"):
        report = load_state_dict_report(model, sd, strict=False)
    assert isinstance(report, LoadReport)
    assert report.missing == ["norm.weight"] and report.unexpected == ["extra.thing"] and not report.ok
    assert "missing: norm.weight" in caplog.text and "unexpected: extra.thing" in caplog.text
    assert torch.equal(model.cls_token.detach(), sd["cls_token"])
    assert torch.equal(model.norm.weight.detach(), before["norm.weight"])


def test_ignore_masked_embed_for_student_backbone():
    _, _, student_bb = official_full()
    model = tiny_vit()
    with pytest.raises(StateDictMismatchError, match="unexpected: masked_embed"):
        load_state_dict_report(model, student_bb)
    report = load_state_dict_report(model, student_bb, ignore=("masked_embed",))
    assert report.ignored == ["masked_embed"] and report.ok
    assert report.loaded == len(student_bb) - 1


def test_report_str_is_readable():
    report = LoadReport(missing=["a"], unexpected=["b", "c"], resized=[], ignored=["masked_embed"], loaded=5)
    text = str(report)
    assert text.splitlines()[0] == ("LoadReport: 5 tensors loaded, 1 missing, 2 unexpected, 0 shape-mismatched, "
                                    "0 resized, 1 ignored")
    assert "  missing: a" in text and "  unexpected: c" in text and "  ignored: masked_embed" in text


# ------------------------------------------------------------------------------------------ map_weight_norm_keys
def _weight_norm_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = nn.Sequential(nn.Linear(4, 8), torch.nn.utils.weight_norm(nn.Linear(8, 6, bias=False)))
    torch.manual_seed(1)
    new = nn.Sequential(nn.Linear(4, 8), torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 6, bias=False)))
    return old, new


def test_map_weight_norm_keys_both_directions():
    old, new = _weight_norm_pair()
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert "1.weight_g" in old_sd and "1.parametrizations.weight.original1" in new_sd

    to_new = map_weight_norm_keys(old_sd, new)
    assert set(to_new) == set(new_sd)
    new.load_state_dict(to_new)
    x = torch.randn(3, 4)
    assert torch.allclose(new(x), old(x))

    to_old = map_weight_norm_keys(new_sd)  # default: old (official) naming
    assert set(to_old) == set(old_sd)
    assert torch.equal(to_old["1.weight_v"], new_sd["1.parametrizations.weight.original1"])
    assert set(map_weight_norm_keys(new_sd, old_sd.keys())) == set(old_sd)
    assert map_weight_norm_keys(old_sd) == dict(old_sd)  # already old: unchanged


def test_load_state_dict_report_maps_weight_norm_automatically():
    old, new = _weight_norm_pair()
    report = load_state_dict_report(new, old.state_dict())
    assert report.ok and report.loaded == 4
    x = torch.randn(3, 4)
    assert torch.allclose(new(x), old(x))


def test_module_public_api():
    for name in ck.__all__:
        assert getattr(ck, name).__doc__, name


# ------------------------------------------------------------------------------------ tools/convert_checkpoint.py
def convert_tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", REPO / "tools" / "convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's tokens (B, 1 + N, D), final norm applied, and the [CLS] output (B, D)."""
    with torch.no_grad():
        model.eval()
        return [*model.get_intermediate_layers(x, len(model.blocks)), model(x)]


def test_converted_timm_and_official_files_load_without_flags(tmp_path):
    """tools/convert_checkpoint.py writes described files: load_backbone rebuilds each model from the file alone
    and its features equal the source weights' in a model built by hand."""
    import timm

    tool = convert_tool()
    # a timm-format flat state dict (classifier included) of a preset shape (vit_tiny: width 192, 12 blocks)
    torch.manual_seed(3)
    timm_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    torch.save(timm_vit.state_dict(), tmp_path / "timm.pth")
    tool.main([str(tmp_path / "timm.pth"), str(tmp_path / "timm_backbone.pth")])  # inferred: no flags
    tool.main([str(tmp_path / "timm.pth"), str(tmp_path / "timm_described.pth"), "--timm", "vit_tiny_patch16_224"])
    assert load_file(tmp_path / "timm_backbone.pth")["model"] == load_file(tmp_path / "timm_described.pth")["model"]
    # an official full checkpoint (pickles a Namespace: trust), width 32: its head count is given
    ckpt, teacher_bb, _ = official_full()
    torch.save(ckpt, tmp_path / "official.pth")
    with pytest.raises(CheckpointFormatError, match="--num-heads"):
        tool.main([str(tmp_path / "official.pth"), str(tmp_path / "official_backbone.pth"), "--trust-checkpoint"])
    tool.main([str(tmp_path / "official.pth"), str(tmp_path / "official_backbone.safetensors"),
               "--trust-checkpoint", "--num-heads", "2"])
    for dst, want_desc, weights, x in (
        ("timm_backbone.pth", describe_backbone(timm_vit), timm_vit.state_dict(), torch.randn(2, 3, 224, 224)),
        ("official_backbone.safetensors", tiny_description(), teacher_bb, torch.randn(2, 3, 32, 32)),
    ):
        assert want_desc["arch"] == ("vit_tiny" if dst.startswith("timm") else None)
        model, report = load_backbone(tmp_path / dst)
        assert report.described and report.model == want_desc and report.load.ok, dst
        by_hand = build_backbone(want_desc)
        by_hand.load_state_dict({k: v for k, v in weights.items() if not k.startswith("head.")})
        for got, want in zip(features(model, x), features(by_hand, x), strict=True):
            assert torch.equal(got, want), dst
    # the timm model itself computes the same tokens (same parameter names and blocks)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        timm_tokens = timm_vit.eval().forward_features(x)
    torch.testing.assert_close(features(load_backbone(tmp_path / "timm_backbone.pth")[0], x)[-2], timm_tokens)
