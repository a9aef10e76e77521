"""Pretraining engine on CPU: data pipeline, single vs 2-process equality, SIGKILL + resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, shared_data_path
from mmengine.config import Config
from PIL import Image

from ibot.augment import MultiCropAugmentation
from ibot.checkpoint import BACKBONE_SCHEMA, load_backbone, load_file, read_backbone
from ibot.masking import MaskGenerator
from ibot.vit import build_vit
from pretrain.checkpointing import LEGACY_FORMAT, SCHEMA, latest_checkpoint, list_checkpoints, load_checkpoint
from pretrain.data import PretrainDataset, ResumableBatchSampler, collate, scan_images

ROOT = REPO
CONFIG = ROOT / "pretrain" / "configs" / "ibot_vit-tiny_cpu-test.py"
PY = sys.executable
#: The backbone of CONFIG: vit_tiny with these overrides, 32 px input, patch 8.
TINY = dict(patch_size=8, img_size=32, embed_dim=64, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """32 real CIFAR-10 images (4 classes × 8) in ImageNet layout."""
    cifar = shared_data_path("cifar10", "test")
    root = tmp_path_factory.mktemp("imgs")
    for cls in sorted(os.listdir(cifar))[:4]:
        (root / cls).mkdir()
        for f in sorted(os.listdir(cifar / cls))[:8]:
            shutil.copy(cifar / cls / f, root / cls / f)
    return root


@pytest.fixture(scope="module")
def one_process_run(image_root: Path, tmp_path_factory) -> Path:
    """The work dir of a finished 1-process run (2 epochs, a checkpoint after every iteration)."""
    work = tmp_path_factory.mktemp("runs") / "one"
    _finish(_run(work, image_root, resume=False))
    return work


def _run(work: Path, data: Path, *opts: str, nproc: int = 1, resume: bool = True) -> subprocess.Popen:
    base = ["data.root=" + str(data), "train.epochs=2", "data.batch_size_per_gpu=" + str(8 // nproc),
            "checkpoint.interval_iters=1", "checkpoint.keep_last=50", "log.interval=1", *opts]
    script = [str(ROOT / "tools" / "pretrain.py"), str(CONFIG), "--work-dir", str(work), "--device", "cpu"]
    if not resume:
        script.append("--no-resume")
    cmd = [PY, *script, "--cfg-options", *base]
    if nproc > 1:
        cmd = [PY, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29600 + os.getpid() % 300), *script, "--cfg-options", *base]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _losses(work: Path) -> list[tuple[int, float, float, float]]:
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["loss"], r["cls"], r["patch"]) for r in rows]


# ------------------------------------------------------------------ data


def test_sampler_ranks_partition_the_global_batch() -> None:
    one = ResumableBatchSampler(50, 8, seed=3)
    two = [ResumableBatchSampler(50, 4, rank=r, world=2, seed=3) for r in range(2)]
    assert one.batches_per_epoch == two[0].batches_per_epoch == 6  # 48 used, last 2 dropped
    for s in (one, *two):
        s.state.epoch = 1
    for b1, b20, b21 in zip(one, *two):
        assert sorted(b1) == sorted(b20 + b21) and not set(b20) & set(b21)
    one.state.batch = 4  # resuming mid-epoch: 2 batches left
    assert len(one) == 2
    s = ResumableBatchSampler(50, 8, seed=3)
    s.state.epoch = 1
    full = list(s)
    s.state.batch = 4
    assert list(s) == full[4:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(7, 8)


def test_samples_are_seeded_per_epoch_and_index(image_root: Path) -> None:
    paths, labels, classes = scan_images(str(image_root))
    assert len(paths) == 32 and classes == sorted(os.listdir(image_root)) and set(labels) == {0, 1, 2, 3}
    aug = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, local_crops_number=2)
    ds = PretrainDataset(paths, aug, MaskGenerator([0.0, 0.3], [0.0, 0.2]), 8, 2, seed=5)
    a, b, c = ds[(0, 3)], ds[(0, 3)], ds[(1, 3)]
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert not all(torch.equal(x, y) for x, y in zip(a[0], c[0]))
    before = torch.get_rng_state()
    ds[(0, 4)]
    assert torch.equal(before, torch.get_rng_state())  # the global RNG (drop path) is untouched
    crops, masks, n_bad = collate([ds[(0, i)] for i in range(3)])
    assert [tuple(x.shape) for x in crops] == [(3, 3, 32, 32)] * 2 + [(3, 3, 16, 16)] * 2
    assert [tuple(m.shape) for m in masks] == [(3, 4, 4)] * 2 and masks[0].dtype == torch.bool
    assert int(n_bad) == 0


def test_unreadable_files_are_skipped_and_counted_or_fail(tmp_path: Path, image_root: Path) -> None:
    paths, _, _ = scan_images(str(image_root))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    aug = MultiCropAugmentation(global_crop_size=32, local_crop_size=16)
    ds = PretrainDataset([str(bad)] + paths, aug, MaskGenerator(0.3), 8, 2, on_bad_file="skip")
    crops, masks, n_bad = ds[(0, 0)]
    assert n_bad == 1 and crops[0].shape == (3, 32, 32)
    ds = PretrainDataset([str(bad)] + paths, aug, MaskGenerator(0.3), 8, 2, on_bad_file="fail")
    with pytest.raises(RuntimeError, match="broken.jpg"):
        ds[(0, 0)]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_images(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        scan_images(str(tmp_path))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert len(scan_images(str(tmp_path), layout="flat")[0]) == 2  # a.png and broken.jpg


def test_configs_resolve() -> None:
    s = Config.fromfile(str(ROOT / "pretrain/configs/ibot_vit-s16_800e_in1k.py"))
    assert (s.model.shared_head, s.model.norm_last_layer, s.model.out_dim) == (True, False, 8192)
    assert s.augmentation.local_crops_number == 10 and tuple(s.augmentation.global_crops_scale) == (0.25, 1.0)
    assert list(s.masking.pred_ratio) == [0.0, 0.3] and list(s.masking.pred_ratio_var) == [0.0, 0.2]
    assert s.loss.teacher_temp == 0.07 and s.train.epochs == 800 and s.data.batch_size_per_gpu == 64
    b = Config.fromfile(str(ROOT / "pretrain/configs/ibot_vit-b16_400e_in1k.py"))
    assert b.model.arch == "vit_base" and b.train.epochs == 400
    large = Config.fromfile(str(ROOT / "pretrain/configs/ibot_vit-l16_250e_in1k.py"))
    assert large.model.arch == "vit_large" and large.model.grad_checkpointing


# ------------------------------------------------------------------ engine


def test_one_vs_two_processes_same_losses(tmp_path: Path, image_root: Path, one_process_run: Path) -> None:
    p2 = _run(tmp_path / "two", image_root, nproc=2, resume=False)
    _finish(p2)
    one, two = _losses(one_process_run), _losses(tmp_path / "two")
    assert len(one) == len(two) == 8  # 32 images / batch 8 × 2 epochs
    for a, b in zip(one, two):
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:]):
            assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (a, b)
    # The written teacher backbone is a tensors-only file usable downstream.
    sd = load_file(one_process_run / "teacher_backbone.pth")["state_dict"]
    assert "pos_embed" in sd and not any(k.startswith("head") for k in sd)


def test_teacher_export_is_a_described_backbone_file(one_process_run: Path) -> None:
    path = one_process_run / "teacher_backbone.pth"
    raw = load_file(path)  # weights-only: tensors and plain values
    assert raw["schema"] == BACKBONE_SCHEMA
    assert raw["model"] == {"family": "vit", "arch": None, **TINY}
    assert raw["source"] == {"kind": "ibot-pretrain", "work_dir": str(one_process_run.resolve()), "epoch": 2,
                             "iteration": 8, "config": str(CONFIG)}
    assert read_backbone(path).described
    # The exported weights are the teacher backbone of the last checkpoint.
    teacher = load_checkpoint(latest_checkpoint(str(one_process_run)))["teacher"]
    assert set(raw["state_dict"]) == {k[len("backbone."):] for k in teacher if k.startswith("backbone.")}
    assert all(torch.equal(v, teacher["backbone." + k]) for k, v in raw["state_dict"].items())
    # load_backbone rebuilds the model from the description alone; features equal the hand-built model's.
    rebuilt, report = load_backbone(path)
    assert report.described and report.load.ok and report.model == raw["model"]
    by_hand = build_vit("vit_tiny", **TINY)
    by_hand.load_state_dict(raw["state_dict"])
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), by_hand.eval()(x))
        assert torch.equal(rebuilt.get_intermediate_layers(x, 2)[0], by_hand.get_intermediate_layers(x, 2)[0])


def test_checkpoint_schema_and_version_1_files(one_process_run: Path, tmp_path: Path) -> None:
    path = latest_checkpoint(str(one_process_run))
    state = load_checkpoint(path)
    assert state["schema"] == SCHEMA == "ibot-suite/pretrain-checkpoint/2" and "format" not in state
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    assert set(state["rng"][0]) >= {"python", "numpy", "torch"}
    # A version 1 file (torch generator states only, flattened per rank) is upgraded on reading.
    raw = load_file(path)
    v1 = {**{k: v for k, v in raw.items() if k != "schema"}, "format": LEGACY_FORMAT,
          "rng": [raw["rng"][0]["torch"]]}
    torch.save(v1, tmp_path / "v1.pth")
    up = load_checkpoint(str(tmp_path / "v1.pth"))
    assert up["schema"] == SCHEMA and "format" not in up and up["iteration"] == state["iteration"]
    assert torch.equal(up["rng"][0]["torch"], raw["rng"][0]["torch"]) and set(up["rng"][0]) >= {"python", "numpy"}
    # Anything else is refused, naming the file, the key and what to use instead.
    torch.save({"state_dict": raw["teacher"]}, tmp_path / "foreign.pth")
    with pytest.raises(ValueError, match=r"foreign\.pth.*key 'schema'.*load_backbone"):
        load_checkpoint(str(tmp_path / "foreign.pth"))


def test_sigkill_and_resume_is_bitwise_identical(tmp_path: Path, image_root: Path) -> None:
    drop_path = "model.drop_path_rate=0.1"  # random draws: the resumed RNG stream must continue exactly
    _finish(_run(tmp_path / "ref", image_root, drop_path, resume=False))
    work = tmp_path / "killed"
    for kill_after in (2, 5):  # kill twice, at different iterations
        proc = _run(work, image_root, drop_path)
        deadline = time.time() + 120
        while time.time() < deadline and len(list_checkpoints(str(work))) < kill_after:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
    assert 0 < load_checkpoint(latest_checkpoint(str(work)))["iteration"] < 8
    out = _finish(_run(work, image_root, drop_path))
    assert "resumed from" in out
    ref = load_checkpoint(latest_checkpoint(str(tmp_path / "ref")))
    got = load_checkpoint(latest_checkpoint(str(work)))
    assert ref["iteration"] == got["iteration"] == 8
    for part in ("student", "teacher", "ibot_loss"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), (part, k)
    ref_opt, got_opt = ref["optimizer"]["state"], got["optimizer"]["state"]
    assert all(torch.equal(ref_opt[i]["exp_avg"], got_opt[i]["exp_avg"]) for i in ref_opt)


def test_fresh_start_refuses_existing_checkpoints(tmp_path: Path, image_root: Path) -> None:
    _finish(_run(tmp_path / "w", image_root, "train.epochs=1", resume=False))
    proc = _run(tmp_path / "w", image_root, "train.epochs=1", resume=False)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "already holds checkpoints" in out


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path, image_root: Path) -> None:
    proc = _run(tmp_path / "nan", image_root, "optim.lr=1e30", "optim.clip_grad=0", resume=False)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "non-finite loss" in out, out[-2000:]
    # Checkpoints written before the divergence have finite weights and stay loadable.
    for _, path in list_checkpoints(str(tmp_path / "nan")):
        state = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_knn_monitor_logs_teacher_accuracy(tmp_path: Path, image_root: Path) -> None:
    labelled = tmp_path / "labelled"
    for split, sl in (("train", slice(0, 6)), ("val", slice(6, 8))):
        for cls in sorted(os.listdir(image_root)):
            (labelled / split / cls).mkdir(parents=True)
            for f in sorted(os.listdir(image_root / cls))[sl]:
                shutil.copy(image_root / cls / f, labelled / split / cls / f)
    knn = [f"monitor.knn.root={labelled}", "monitor.knn.img_size=32", "monitor.knn.k=5",
           "monitor.knn.batch_size=16", "monitor.knn.num_workers=0", "monitor.knn.interval_epochs=1"]
    _finish(_run(tmp_path / "w", image_root, "train.epochs=1", *knn, resume=False))
    rows = [json.loads(line) for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    knn_rows = [r for r in rows if "knn_top1" in r]
    assert len(knn_rows) == 1 and knn_rows[0]["iteration"] == 4
    assert 0.0 <= knn_rows[0]["knn_top1"] <= 100.0
    # The monitor computes k-NN exactly as the transfer harness: recompute from the exported teacher.
    from pretrain.knn_monitor import KNNMonitor

    vit = build_vit("vit_tiny", **TINY)
    vit.load_state_dict(load_file(tmp_path / "w" / "teacher_backbone.pth")["state_dict"])
    mon = KNNMonitor(str(labelled), 32, k=5, batch_size=16, num_workers=0)
    assert abs(mon(vit, torch.device("cpu")) - knn_rows[0]["knn_top1"]) < 1e-6


def test_device_augmentation_path_trains_deterministically(tmp_path: Path, image_root: Path) -> None:
    # data.gpu_augment: workers only decode; crops are made batched on the device (CPU here).
    for run in ("a", "b"):
        _finish(_run(tmp_path / run, image_root, "train.epochs=1", "data.gpu_augment=True", resume=False))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 4 and a == b
    assert all(x[1] == x[1] and x[1] > 0 for x in a)  # finite, positive losses
