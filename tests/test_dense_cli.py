"""tools/train.py and tools/test.py logic (dense/cli.py): dispatch, data root, checkpoint trust, resume, AMP."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner.checkpoint import CheckpointLoader

from det import cli
from ibot.checkpoint import UntrustedCheckpointError
from ibot.compat.mmengine import is_trusted

ROOT = Path(__file__).resolve().parents[1]
DET = ROOT / "det/configs/cascade-mask-rcnn_vit-s16-ibot_deconv-fpn_4conv1fc-giou_ld0.8_8xb4-ms-crop-1x_coco.py"
SEG = ROOT / "seg/configs/upernet_vit-s16-ibot_deconv-ln_ld0.9_4xb4-160k_ade20k-512x512.py"


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
    cfg = cli.load_config(args(DET, work_dir=str(tmp_path / "work")))
    inside, outside = tmp_path / "work" / "epoch_1.pth", tmp_path / "elsewhere" / "epoch_1.pth"
    pretrained = tmp_path / "full_checkpoint.pth"
    assert cli.trust_checkpoints(cfg, False, [str(inside), str(outside)], [str(pretrained)]) == [str(inside)]
    assert is_trusted(inside) and not is_trusted(outside) and not is_trusted(pretrained)
    assert cli.trust_checkpoints(cfg, True, [str(outside)], [str(pretrained)]) == [str(outside), str(pretrained)]
    assert is_trusted(outside) and is_trusted(pretrained)


def test_runner_checkpoint_outside_work_dir_needs_the_flag(tmp_path) -> None:
    from mmengine.logging.history_buffer import HistoryBuffer

    path = tmp_path / "downloaded" / "iter_16000.pth"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, path)
    cfg = cli.load_config(args(SEG, work_dir=str(tmp_path / "work")))
    assert cli.trust_checkpoints(cfg, False, [str(path)]) == []
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        CheckpointLoader.load_checkpoint(str(path), map_location="cpu")


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
