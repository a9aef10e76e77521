"""``python -m det.cli train|test`` logic (tools/train.py and tools/test.py are shims): dispatch, data root,
checkpoint trust, resume, AMP, and --backbone shaping the config from a backbone file."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader

from det import cli
from ibot.checkpoint import UntrustedCheckpointError, describe_backbone, save_backbone
from ibot.compat.mmengine import is_trusted
from ibot.vit import build_vit

ROOT = REPO
DET = ROOT / "det/configs/cascade-mask-rcnn_vit-s16-ibot_deconv-fpn_4conv1fc-giou_ld0.8_8xb4-ms-crop-1x_coco.py"
DET_SIMPLE = ROOT / ("det/configs/cascade-mask-rcnn_vit-b16-ibot_simple-fpn-win14_4conv1fc-giou_ld0.75_8xb2-ms-crop-1x_"
                     "coco.py")
SEG = ROOT / "seg/configs/upernet_vit-s16-ibot_deconv-ln_ld0.9_4xb4-160k_ade20k-512x512.py"
SEG_LINEAR = ROOT / "seg/configs/linear_vit-s16-ibot_frozen-ln_4xb4-160k_ade20k-512x512.py"


def args(config: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    cli.add_common_args(parser)
    ns = parser.parse_args([str(config)])
    for k, v in kw.items():
        setattr(ns, k, v)
    return ns


def test_dispatch_by_default_scope(tmp_path) -> None:
    assert cli.toolkit_of(Config.fromfile(DET)) == "mmdet"
    assert cli.toolkit_of(Config.fromfile(SEG)) == "mmseg"
    bare = tmp_path / "bare.py"
    bare.write_text("model = dict(type='X')\n")
    with pytest.raises(ValueError, match="default_scope"):
        cli.load_config(args(bare))


def test_load_config_work_dir_and_data_root(tmp_path) -> None:
    cfg = cli.load_config(args(DET))
    assert cfg.work_dir == os.path.join("./work_dirs", DET.stem) and cfg.launcher == "none"
    cfg = cli.load_config(args(DET, work_dir=str(tmp_path), data_root="/datasets/coco2017",
                               cfg_options={"train_cfg.max_epochs": 1}))
    assert cfg.work_dir == str(tmp_path) and cfg.train_cfg.max_epochs == 1
    assert cfg.data_root == "/datasets/coco2017/"
    assert cfg.train_dataloader.dataset.data_root == "/datasets/coco2017/"
    assert cfg.val_dataloader.dataset.data_root == "/datasets/coco2017/"
    assert cfg.val_evaluator.ann_file == "/datasets/coco2017/annotations/instances_val2017.json"
    assert cfg.train_dataloader.dataset.ann_file == "annotations/instances_train2017.json"  # relative: unchanged
    seg = cli.load_config(args(SEG, data_root="/data/ADEChallengeData2016"))
    assert seg.test_dataloader.dataset.data_root == "/data/ADEChallengeData2016"


def test_checkpoint_trust_rules(tmp_path) -> None:
    """Trust comes from --trust-checkpoint alone, per named file; no directory (the work dir included) grants it."""
    inside, outside = tmp_path / "work" / "epoch_1.pth", tmp_path / "elsewhere" / "epoch_1.pth"
    pretrained = tmp_path / "full_checkpoint.pth"
    assert cli.trust_checkpoints(False, [str(inside), str(outside), str(pretrained)]) == []
    assert not is_trusted(inside) and not is_trusted(outside) and not is_trusted(pretrained)
    assert cli.trust_checkpoints(True, [str(outside), str(pretrained), ""]) == [str(outside), str(pretrained)]
    assert is_trusted(outside) and is_trusted(pretrained) and not is_trusted(inside)
    assert not hasattr(cli, "_inside")


def test_runner_checkpoint_loads_from_anywhere_without_the_flag(tmp_path) -> None:
    """What mmengine's runner writes (HistoryBuffer, numpy arrays / scalars) is recognised by content."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    path = tmp_path / "downloaded" / "iter_16000.pth"
    path.parent.mkdir()
    buf = HistoryBuffer()
    buf.update(2.0)
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"best": np.float64(0.5)},
                "message_hub": {"log_scalars": {"loss": buf}}}, path)
    cli.load_config(args(SEG, work_dir=str(tmp_path / "work")))  # installs the checkpoint policy
    assert not is_trusted(path)
    cli.preflight_checkpoints([str(path)])
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert ckpt["message_hub"]["log_scalars"]["loss"].mean() == 2.0 and ckpt["meta"]["best"] == 0.5
    with pytest.raises(SystemExit, match="does not exist"):
        cli.preflight_checkpoints([str(tmp_path / "missing.pth")])


def test_object_pickling_checkpoint_needs_the_flag(tmp_path) -> None:
    path = tmp_path / "work" / "epoch_1.pth"  # inside the work dir: no difference
    path.parent.mkdir()
    torch.save({"state_dict": {}, "args": argparse.Namespace(arch="vit_small")}, path)
    cli.load_config(args(SEG, work_dir=str(tmp_path / "work")))
    with pytest.raises(UntrustedCheckpointError, match="argparse.Namespace.*--trust-checkpoint"):
        cli.preflight_checkpoints([str(path)])
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    cli.trust_checkpoints(True, [str(path)])
    cli.preflight_checkpoints([str(path)])
    assert CheckpointLoader.load_checkpoint(str(path))["args"].arch == "vit_small"


def test_resume_auto_finds_the_latest_checkpoint(tmp_path) -> None:
    cfg = cli.load_config(args(SEG, work_dir=str(tmp_path)))
    cli.resolve_resume(cfg, "auto")
    assert cfg.resume is True and cfg.load_from is None  # nothing yet: train from the start
    (tmp_path / "iter_2.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_2.pth"))
    cli.resolve_resume(cfg, "auto")
    assert cfg.load_from == str(tmp_path / "iter_2.pth")
    cli.resolve_resume(cfg, "/somewhere/iter_8.pth")
    assert cfg.load_from == "/somewhere/iter_8.pth"


def test_amp_switch(monkeypatch) -> None:
    cfg = cli.load_config(args(DET))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA"):
        cli.set_amp(cfg, "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cli.set_amp(cfg, "bf16")
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.dtype == "bfloat16"
    assert "loss_scale" not in cfg.optim_wrapper
    cli.set_amp(cfg, "fp16")
    assert cfg.optim_wrapper.dtype == "float16" and cfg.optim_wrapper.loss_scale == "dynamic"
    assert cfg.optim_wrapper.constructor == "ViTLayerDecayOptimWrapperConstructor"  # layer decay kept


# ----------------------------------------------------------------------------------------------------- --backbone
@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    """Described backbone files: ViT-Tiny/16 (a preset) and a 6-block, width-128, 4-head ViT/8 (none)."""
    out = tmp_path_factory.mktemp("backbones")
    for name, vit in (("tiny", build_vit("vit_tiny", patch_size=16, img_size=224)),
                      ("odd", build_vit("vit_tiny", patch_size=8, img_size=64, embed_dim=128, depth=6, num_heads=4))):
        save_backbone(out / f"{name}.pth", vit.state_dict(), describe_backbone(vit), {"kind": "test"})
    return {"tiny": out / "tiny.pth", "odd": out / "odd.pth"}


def backbone_of(cfg: Config) -> dict:
    return {k: cfg.model.backbone.get(k) for k in ("arch", "patch_size", "embed_dim", "depth", "num_heads")}


def test_backbone_shapes_det_configs(backbones) -> None:
    cfg = cli.load_config(args(DET, backbone=str(backbones["tiny"])))
    assert backbone_of(cfg) == {"arch": "vit_tiny", "patch_size": 16, "embed_dim": 192, "depth": 12, "num_heads": 3}
    assert cfg.model.neck.in_channels == [192] * 4 and cfg.model.neck.out_channels == 256  # only the input width
    assert cfg.model.backbone.init_cfg.checkpoint == str(backbones["tiny"])
    assert cfg.model.backbone.img_size == (800, 1008)  # the detector's grid: the file's pos_embed is resized
    # the ViTDet simple pyramid reads one map: its in_channels is one int
    simple = cli.load_config(args(DET_SIMPLE, backbone=str(backbones["odd"])))
    assert backbone_of(simple) == {"arch": None, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4}
    assert simple.model.neck.in_channels == 128
    # the shaped backbone takes the file's weights (a strict load)
    backbone = importlib.import_module("mmdet.registry").MODELS.build(
        {**cfg.model.backbone, "img_size": (64, 96), "pyramid_norm_cfg": dict(type="BN")})
    backbone.init_weights()
    report = backbone.load_report
    assert report.ok and report.loaded == 148 and report.ignored == ["norm.weight", "norm.bias"]  # det: no norm
    assert backbone.backbone_report.described


def test_backbone_shapes_seg_configs(backbones) -> None:
    cfg = cli.load_config(args(SEG, backbone=str(backbones["odd"])))
    assert backbone_of(cfg) == {"arch": None, "patch_size": 8, "embed_dim": 128, "depth": 6, "num_heads": 4}
    assert cfg.model.decode_head.in_channels == [128] * 4 and cfg.model.auxiliary_head.in_channels == 128
    assert cfg.model.decode_head.channels == 384  # UPerHead's own width is a recipe choice: kept
    backbone = importlib.import_module("mmseg.registry").MODELS.build(
        {**cfg.model.backbone, "img_size": (64, 64), "pyramid_norm_cfg": dict(type="BN")})
    backbone.init_weights()
    assert backbone.load_report.ok and backbone.out_indices == (1, 2, 3, 5)  # (3, 5, 7, 11) scaled to 6 blocks
    # linear probe: no auxiliary head; the conv-free head's channels are its concatenated input; still all frozen
    linear = cli.load_config(args(SEG_LINEAR, backbone=str(backbones["odd"])))
    assert linear.model.auxiliary_head is None
    assert linear.model.decode_head.in_channels == [128] * 4 and linear.model.decode_head.channels == 512
    assert linear.model.backbone.frozen_stages == 6
    tiny = cli.load_config(args(SEG_LINEAR, backbone=str(backbones["tiny"])))
    assert tiny.model.decode_head.channels == 768 and tiny.model.backbone.frozen_stages == 12


def test_backbone_cfg_options_win_and_test_sets_no_init(backbones) -> None:
    cfg = cli.load_config(args(DET, backbone=str(backbones["tiny"]), cfg_options={
        "model.neck.in_channels": [1, 2, 3, 4], "model.backbone.init_cfg.checkpoint": "other.pth"}))
    assert cfg.model.neck.in_channels == [1, 2, 3, 4] and cfg.model.backbone.init_cfg.checkpoint == "other.pth"
    assert cfg.model.backbone.embed_dim == 192
    default = Config.fromfile(DET).model.backbone.init_cfg.checkpoint
    test_cfg = cli.load_config(args(SEG, backbone=str(backbones["tiny"])), init_backbone=False)
    assert test_cfg.model.backbone.embed_dim == 192 and test_cfg.model.decode_head.in_channels == [192] * 4
    assert test_cfg.model.backbone.init_cfg.checkpoint == default  # test loads every weight from CHECKPOINT


def test_module_entry_point(tmp_path) -> None:
    with pytest.raises(SystemExit, match="usage: python -m det.cli"):
        cli.main([])
    with pytest.raises(SystemExit, match="usage: python -m det.cli"):
        cli.main(["evaluate", str(DET)])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for command in ("train", "test"):
        proc = subprocess.run([sys.executable, "-m", "det.cli", command, "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and f"usage: python -m det.cli {command}" in proc.stdout, proc.stderr
        assert "--backbone FILE" in proc.stdout
