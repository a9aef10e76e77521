"""End to end on CPU through the launch scripts: tools/dist_train.sh -> checkpoint -> tools/dist_test.sh -> metrics,
then --resume, for the ViT-S Cascade Mask R-CNN config (COCO bbox + segm) and the ViT-S UperNet config (mIoU on
ADE20K-format data and on CamVid as a custom dataset). Real images and annotations from ../shared/data; the models
are the real configs with narrow widths, tiny images and 1-2 iterations (set with --cfg-options), and the backbone
is initialised from a checkpoint in the pre-training engine's format. Without a GPU the scripts fall back to one
process without a launcher (documented in dist_train.sh)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_data_path

from ibot.checkpoint import load_file, save_file
from ibot.model import build_student_teacher

ROOT = REPO
DET_CONFIG = "det/configs/cascade-mask-rcnn_vit-s16-ibot_deconv-fpn_4conv1fc-giou_ld0.8_8xb4-ms-crop-1x_coco.py"
SEG_CONFIG = "seg/configs/upernet_vit-s16-ibot_deconv-ln_ld0.9_4xb4-160k_ade20k-512x512.py"
CAMVID_CONFIG = "seg/configs/upernet_vit-s16-ibot_deconv-ln_ld0.9_2xb8-20k_camvid-352x480.py"
TINY_WIDTH = 32  # neck / head channels


# ------------------------------------------------------------------------------------------------------ helpers
def data_dir(name: str, *required: str) -> Path:
    """``../shared/data/<name>``; fails (never skips) when it or a required entry is missing."""
    for entry in required:
        shared_data_path(name, entry)
    return shared_data_path(name)


def launch(*args: str, timeout: int = 400) -> str:
    """Run a launcher script from the repository root (or, for ``-m``, a Python module); returns its output,
    fails with the tail on error."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONWARNINGS="ignore")
    cmd = [sys.executable, *args] if args[0] == "-m" else ["bash", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:3])} ... exited {proc.returncode}:\n{out[-8000:]}")
    return out


def cfg_options(opts: dict) -> list[str]:
    return ["--cfg-options", *(f"{k}={v}" for k, v in opts.items())]


def loader(split: str, root: Path, **dataset) -> dict:
    opts = {f"{split}.dataset.data_root": root, f"{split}.num_workers": 0, f"{split}.persistent_workers": False}
    opts.update({f"{split}.dataset.{k}": v for k, v in dataset.items()})
    return opts


def assert_backbone_initialised(log: str, grid_tokens: int) -> None:
    match = re.search(r"backbone initialised from .*\nLoadReport: (\d+) tensors loaded, (\d+) missing, "
                      r"(\d+) unexpected", log)
    assert match, "no backbone initialisation report in the log"
    assert int(match.group(1)) > 100 and match.group(2) == "0" and match.group(3) == "0", match.group(0)
    assert f"resized: pos_embed ((1, 197, 192) -> (1, {grid_tokens}, 192))" in log


@pytest.fixture(scope="module")
def pretrain_checkpoint(tmp_path_factory) -> str:
    """A checkpoint in the pre-training engine's format (student / teacher / loss state / epoch)."""
    torch.manual_seed(0)
    student, teacher = build_student_teacher("vit_tiny", patch_size=16, drop_path_rate=0.0, out_dim=64,
                                             patch_out_dim=64)
    path = tmp_path_factory.mktemp("pretrain") / "checkpoint.pth"
    save_file({"student": student.state_dict(), "teacher": teacher.state_dict(),
               "ibot_loss": {"center": torch.zeros(1, 64), "center2": torch.zeros(1, 1, 64)}, "epoch": 1}, path)
    return str(path)


def backbone_options(checkpoint: str) -> dict:
    return {"model.backbone.arch": "vit_tiny", "model.backbone.drop_path_rate": 0.0,
            "model.backbone.init_cfg.checkpoint": checkpoint, "randomness.seed": 0,
            "default_hooks.logger.interval": 1}


# ---------------------------------------------------------------------------------------------------- detection
def det_options(coco: Path, checkpoint: str) -> dict:
    w = TINY_WIDTH
    opts = backbone_options(checkpoint)
    opts.update({
        "model.neck.in_channels": "[192,192,192,192]", "model.neck.out_channels": w,
        "model.rpn_head.in_channels": w, "model.rpn_head.feat_channels": w,
        "model.roi_head.bbox_roi_extractor.out_channels": w, "model.roi_head.mask_roi_extractor.out_channels": w,
        "model.roi_head.mask_head.in_channels": w, "model.roi_head.mask_head.conv_out_channels": w,
        "model.train_cfg.rpn_proposal.max_per_img": 64, "model.test_cfg.rpn.max_per_img": 64,
        # an untrained detector scores every class ~1/81: keep its boxes so COCO eval has results to score
        "model.test_cfg.rcnn.score_thr": 0.0, "model.test_cfg.rcnn.max_per_img": 20,
        "train_dataloader.batch_size": 2,
        "train_dataloader.dataset.pipeline.3.transforms.0.0.scales": "[(160,256)]",
        "train_dataloader.dataset.pipeline.3.transforms.1.0.scales": "[(160,256)]",
        "train_dataloader.dataset.pipeline.3.transforms.1.1.crop_size": "(96,128)",
        "train_dataloader.dataset.pipeline.3.transforms.1.2.scales": "[(160,256)]",
        "val_dataloader.dataset.pipeline.1.scale": "(256,160)", "test_dataloader.dataset.pipeline.1.scale": "(256,160)",
        "val_evaluator.ann_file": coco / "instances_train2017_small.json",
        "test_evaluator.ann_file": coco / "instances_train2017_small.json",
        "train_cfg.val_begin": 100,  # no validation while training: tools/dist_test.sh evaluates
    })
    for i in range(3):
        opts.update({f"model.roi_head.bbox_head.{i}.in_channels": w,
                     f"model.roi_head.bbox_head.{i}.conv_out_channels": w,
                     f"model.roi_head.bbox_head.{i}.fc_out_channels": 2 * w})
    for split, n in (("train_dataloader", 4), ("val_dataloader", 3), ("test_dataloader", 3)):
        opts.update(loader(split, coco, ann_file="instances_train2017_small.json",
                           **{"data_prefix.img": "train_2017_small/", "indices": n}))
    return opts


@pytest.mark.slow  # ~40 s; the default run trains and tests Cascade Mask R-CNN in the quick demo and resumes seg below
def test_det_dist_train_test_resume(pretrain_checkpoint, tmp_path) -> None:
    coco = data_dir("tiny_coco", "instances_train2017_small.json", "train_2017_small")
    work = tmp_path / "work"
    opts = det_options(coco, pretrain_checkpoint)
    log = launch("tools/dist_train.sh", DET_CONFIG, "1", "--work-dir", str(work),
                 *cfg_options({**opts, "train_cfg.max_epochs": 1}))
    assert "no CUDA device: running one process without a launcher" in log or torch.cuda.is_available()
    assert_backbone_initialised(log, 1 + 50 * 63)  # img_size (800, 1008) / 16
    assert (work / "epoch_1.pth").is_file()
    assert re.search(r"Epoch\(train\) +\[1\]\[2/2\].*loss: [0-9.]+ .*s2\.loss_mask", log), log[-3000:]

    # evaluation of the runner's checkpoint with COCO bbox + segm metrics, from another work dir and without
    # --trust-checkpoint: a runner checkpoint is recognised by its content, not its place
    metrics_file = tmp_path / "metrics.json"
    log = launch("tools/dist_test.sh", DET_CONFIG, str(work / "epoch_1.pth"), "1", "--work-dir", str(tmp_path / "eval"),
                 "--metrics-json", str(metrics_file), *cfg_options(opts))
    assert re.search(r"loaded checkpoint '.*epoch_1\.pth' into CascadeRCNN: (\d+) of \1 model tensors load; 0 missing",
                     log), log[-3000:]
    metrics = json.loads(metrics_file.read_text())
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, (key, metrics)

    # resume (auto: the latest checkpoint of the work dir) and train one more epoch
    log = launch("tools/dist_train.sh", DET_CONFIG, "1", "--work-dir", str(work), "--resume",
                 *cfg_options({**opts, "train_cfg.max_epochs": 2}))
    assert "resumed epoch: 1, iter: 2" in log
    meta = load_file(work / "epoch_2.pth", trusted=True)["meta"]
    assert (meta["epoch"], meta["iter"]) == (2, 4)


# ------------------------------------------------------------------------------------------------- segmentation
def seg_options(checkpoint: str | None, crop: int = 64) -> dict:
    """Tiny seg options; ``checkpoint=None``: the backbone and the head input widths come from --backbone."""
    w = TINY_WIDTH
    opts = backbone_options(checkpoint or "")
    if checkpoint is None:
        del opts["model.backbone.arch"], opts["model.backbone.init_cfg.checkpoint"]
    else:
        opts.update({"model.decode_head.in_channels": "[192,192,192,192]", "model.auxiliary_head.in_channels": 192})
    opts.update({
        "model.backbone.img_size": f"[{crop},{crop}]", "model.data_preprocessor.size": f"[{crop},{crop}]",
        "model.decode_head.channels": w, "model.auxiliary_head.channels": w,
        "model.test_cfg.crop_size": f"[{crop},{crop}]", "model.test_cfg.stride": f"[{crop * 2 // 3},{crop * 2 // 3}]",
        "train_dataloader.batch_size": 2, "train_dataloader.dataset.pipeline.2.scale": f"({2 * crop},{crop})",
        "train_dataloader.dataset.pipeline.3.crop_size": f"({crop},{crop})",
        "val_dataloader.dataset.pipeline.1.scale": f"({2 * crop},{crop})",
        "test_dataloader.dataset.pipeline.1.scale": f"({2 * crop},{crop})",
    })
    return opts


def test_seg_ade20k_dist_train_test_resume(pretrain_checkpoint, tmp_path) -> None:
    """The shape (ViT-Tiny in a ViT-S config) comes from the checkpoint: --backbone on train and test."""
    ade = data_dir("ade20k_sample", "images", "annotations")
    work = tmp_path / "work"
    opts = {**seg_options(None), "train_cfg.val_begin": 100}  # tools/dist_test.sh evaluates
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        opts.update(loader(split, ade, **{"data_prefix.img_path": "images", "data_prefix.seg_map_path": "annotations"}))
    backbone = ["--backbone", pretrain_checkpoint]
    log = launch("tools/dist_train.sh", SEG_CONFIG, "1", "--work-dir", str(work), *backbone,
                 *cfg_options({**opts, "train_cfg.max_iters": 2, "default_hooks.checkpoint.interval": 2}))
    assert_backbone_initialised(log, 1 + 4 * 4)  # img_size (64, 64) / 16
    assert (work / "iter_2.pth").is_file()
    assert re.search(r"Iter\(train\) +\[2/2\].*decode\.loss_ce: [0-9.]+ .*aux\.loss_ce", log), log[-3000:]

    metrics_file = tmp_path / "metrics.json"  # from another work dir, without --trust-checkpoint
    launch("tools/dist_test.sh", SEG_CONFIG, str(work / "iter_2.pth"), "1", "--work-dir", str(tmp_path / "eval"),
           "--metrics-json", str(metrics_file), *backbone, *cfg_options(opts))
    metrics = json.loads(metrics_file.read_text())
    assert metrics["schema"] == "ibot-suite/dense-metrics/1"
    assert {"aAcc", "mIoU", "mAcc"} <= set(metrics) and 0.0 <= metrics["mIoU"] <= 100.0, metrics

    log = launch("tools/dist_train.sh", SEG_CONFIG, "1", "--work-dir", str(work), "--resume", *backbone,
                 *cfg_options({**opts, "train_cfg.max_iters": 3, "default_hooks.checkpoint.interval": 3}))
    assert "resumed epoch: 0, iter: 2" in log
    assert load_file(work / "iter_3.pth", trusted=True)["meta"]["iter"] == 3


def test_seg_camvid_custom_dataset_train_val(pretrain_checkpoint, tmp_path) -> None:
    camvid = data_dir("camvid", "val", "valannot")
    opts = seg_options(pretrain_checkpoint)
    for split, n in (("train_dataloader", 4), ("val_dataloader", 2)):
        opts.update(loader(split, camvid, img_suffix=".jpg", indices=n,
                           **{"data_prefix.img_path": "val", "data_prefix.seg_map_path": "valannot"}))
    # the package entry point the suite launches (no tools/ path, no launcher script)
    log = launch("-m", "det.cli", "train", CAMVID_CONFIG, "--work-dir", str(tmp_path / "work"),
                 *cfg_options({**opts, "train_cfg.max_iters": 2, "train_cfg.val_interval": 2,
                               "default_hooks.checkpoint.interval": 2}))
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    assert re.search(r"\|\s+bicyclist\s+\|", log), log[-3000:]  # per-class table of the 11 CamVid classes
    match = re.search(r"Iter\(val\) \[2/2\]\s+aAcc: ([0-9.]+)\s+mIoU: ([0-9.]+)", log)
    assert match and 0.0 <= float(match.group(2)) <= 100.0, log[-3000:]


def test_multi_process_launch_without_gpu_fails_clearly(tmp_path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    runs = (("tools/dist_train.sh", [DET_CONFIG, "2"]), ("tools/dist_test.sh", [SEG_CONFIG, "x.pth", "2"]))
    for script, args in runs:
        proc = subprocess.run(["bash", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "no CUDA device is visible" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", "tools/dist_train.sh", DET_CONFIG], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
