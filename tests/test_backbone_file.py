"""Self-describing backbone files and the one loader (``ibot.checkpoint.load_backbone``): round trips in both file
formats, descriptions inferred from foreign files, and refusals that name the file and the fix."""
from __future__ import annotations

import argparse

import pytest
import torch

from ibot.checkpoint import (
    BACKBONE_SCHEMA,
    CheckpointFormatError,
    StateDictMismatchError,
    UntrustedCheckpointError,
    describe_backbone,
    export_backbone,
    load_backbone,
    load_file,
    read_backbone,
    save_backbone,
)
from ibot.vit import build_vit


def tiny(seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = dict(patch_size=8, img_size=32, depth=2, embed_dim=96, num_heads=3)
    return build_vit("vit_tiny", **{**shape, **kw}).eval()


def same_features(a: torch.nn.Module, b: torch.nn.Module, size: int = 32) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_described_file_round_trip(tmp_path, suffix) -> None:
    model = tiny()
    desc = describe_backbone(model)
    assert desc == {"family": "vit", "arch": None, "patch_size": 8, "img_size": 32, "embed_dim": 96, "depth": 2,
                    "num_heads": 3}
    path = tmp_path / f"b{suffix}"
    save_backbone(path, model.state_dict(), desc, {"kind": "test", "epoch": 3})
    if suffix == ".pth":
        raw = load_file(path)  # weights-only: tensors and plain values
        assert raw["schema"] == BACKBONE_SCHEMA and raw["model"] == desc and raw["source"]["epoch"] == 3
    loaded, report = load_backbone(path)
    assert report.described and report.model == desc and report.source == {"kind": "test", "epoch": 3}
    assert report.load.ok and report.load.loaded == len(model.state_dict()) and len(report.sha256) == 64
    assert same_features(model, loaded)  # 3 heads of 32: a head count no tensor reveals, taken from the file


def test_foreign_flat_file_is_described_from_its_tensors(tmp_path) -> None:
    model = tiny(embed_dim=128, num_heads=2)  # 64 channels per head: inferable
    sd = {**model.state_dict(), "head.weight": torch.randn(10, 128), "head.bias": torch.zeros(10)}
    torch.save({"model": sd}, tmp_path / "deit.pth")  # DeiT / MAE layout with a classifier
    loaded, report = load_backbone(tmp_path / "deit.pth")
    assert not report.described and report.model["num_heads"] == 2 and report.model["depth"] == 2
    assert sorted(report.load.ignored) == ["head.bias", "head.weight"]
    assert same_features(model, loaded)


def test_head_count_that_cannot_be_inferred_asks_for_it(tmp_path) -> None:
    model = tiny()  # width 96: not a multiple of 64
    torch.save(model.state_dict(), tmp_path / "flat.pth")
    with pytest.raises(CheckpointFormatError, match=r"flat\.pth.*num_heads"):
        load_backbone(tmp_path / "flat.pth")
    loaded, report = load_backbone(tmp_path / "flat.pth", overrides={"num_heads": 3})
    assert report.model["num_heads"] == 3 and same_features(model, loaded)


def test_checkpoint_of_another_depth_never_loads_partially(tmp_path) -> None:
    deeper = tiny(depth=3)
    save_backbone(tmp_path / "deep.pth", deeper.state_dict(), describe_backbone(deeper))
    target = tiny(depth=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(StateDictMismatchError, match=r"(?s)deep\.pth.*nothing was loaded.*blocks\.2"):
        load_backbone(tmp_path / "deep.pth", model=target)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in before.items())  # untouched
    with pytest.raises(StateDictMismatchError, match="deep.pth"):
        load_backbone(tmp_path / "deep.pth", overrides={"depth": 2})  # a flag contradicting the file


def test_official_full_checkpoint_needs_trust_and_exports_a_described_file(tmp_path) -> None:
    model = tiny(embed_dim=64, num_heads=1)
    sd = model.state_dict()
    src = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()},
                "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()},
                "args": argparse.Namespace(arch="vit_tiny")}, src)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        read_backbone(src)
    dst = tmp_path / "exported.pth"
    export_backbone(src, dst, trusted=True)
    raw = load_file(dst)  # no trust needed for the export
    assert raw["model"]["embed_dim"] == 64 and raw["source"]["checkpoint_key"] == "teacher"
    loaded, report = load_backbone(dst)
    assert report.described and same_features(model, loaded)  # the teacher, not the zeroed student


def test_build_kwargs_resize_the_position_embedding(tmp_path) -> None:
    model = tiny()
    save_backbone(tmp_path / "b.pth", model.state_dict(), describe_backbone(model))
    loaded, report = load_backbone(tmp_path / "b.pth", img_size=48, pos_interp="size")
    assert report.load.resized == ["pos_embed"] and loaded.pos_embed.shape[1] == 1 + 36


def test_bad_description_names_the_file_and_the_key(tmp_path) -> None:
    model = tiny()
    torch.save({"schema": BACKBONE_SCHEMA, "state_dict": model.state_dict(), "model": {"family": "vit"}},
               tmp_path / "bad.pth")
    with pytest.raises(CheckpointFormatError, match=r"bad\.pth.*'model' lacks"):
        load_backbone(tmp_path / "bad.pth")
