"""Pretraining failure behaviour: changed settings on resume, log trimming, stale temporary files, truncated
checkpoints, config validation and unusable images. Runs are in-process (the tiny CPU config, 32 images, one epoch
of 4 iterations) through ``tools/pretrain.py``'s ``main``; a refused run must leave the work dir byte-identical."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_data_path
from mmengine.config import Config
from PIL import Image

from ibot.augment import MultiCropAugmentation
from ibot.masking import MaskGenerator
from pretrain.checkpointing import checkpoint_path, list_checkpoints, load_checkpoint
from pretrain.data import PretrainDataset, scan_images

CONFIG = REPO / "pretrain" / "configs" / "ibot_vit-tiny_cpu-test.py"
ITERS = 4  # 32 images / batch 8, one epoch


def _tool_main():
    """``main`` of tools/pretrain.py, loaded like the script (what users and the launch scripts run)."""
    spec = importlib.util.spec_from_file_location("tools_pretrain_under_test", REPO / "tools" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _argv(work: Path, data: Path, *opts: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [str(CONFIG), "--work-dir", str(work), "--device", "cpu", *extra, "--cfg-options", f"data.root={data}",
            "train.epochs=1", "checkpoint.interval_iters=1", "checkpoint.keep_last=50", "log.interval=1", *opts]


def _pretrain(work: Path, data: Path, *opts: str, extra: tuple[str, ...] = ()) -> None:
    _tool_main()(_argv(work, data, *opts, extra=extra))


def _refused(capsys, work: Path, data: Path, *opts: str, extra: tuple[str, ...] = ()) -> str:
    """Run, expect a refusal (exit status 2, no traceback); returns stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _pretrain(work, data, *opts, extra=extra)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _snapshot(work: Path) -> dict[str, bytes]:
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.is_file()}


def _log_iterations(work: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (work / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """32 real CIFAR-10 images (4 classes x 8) in ImageNet layout."""
    cifar = shared_data_path("cifar10", "test")
    root = tmp_path_factory.mktemp("imgs")
    for cls in sorted(p.name for p in cifar.iterdir())[:4]:
        (root / cls).mkdir()
        for f in sorted(p.name for p in (cifar / cls).iterdir())[:8]:
            shutil.copy(cifar / cls / f, root / cls / f)
    return root


@pytest.fixture(scope="module")
def finished(image_root: Path, tmp_path_factory) -> Path:
    """A finished one-epoch run with a checkpoint after every iteration."""
    work = tmp_path_factory.mktemp("runs") / "finished"
    _pretrain(work, image_root)
    assert [it for it, _ in list_checkpoints(str(work))] == [1, 2, 3, 4]
    return work


@pytest.fixture
def work(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished run to resume from."""
    return Path(shutil.copytree(finished, tmp_path / "w"))


# ------------------------------------------------------------------------------------ 1. changed settings
def test_resume_with_changed_settings_is_refused_and_leaves_the_work_dir_untouched(work: Path, image_root: Path,
                                                                                   capsys) -> None:
    before = _snapshot(work)
    err = _refused(capsys, work, image_root, "data.batch_size_per_gpu=4", "optim.lr=0.001", "train.epochs=2")
    assert "data.batch_size_per_gpu: 8 (checkpoint) vs 4 (now)" in err
    assert "optim.lr: 0.0005 (checkpoint) vs 0.001 (now)" in err and "train.epochs: 1 (checkpoint) vs 2 (now)" in err
    assert checkpoint_path(str(work), ITERS) in err and "--force-resume" in err and "Traceback" not in err
    assert _snapshot(work) == before  # config.py, log.jsonl and checkpoints byte-identical
    # A fresh start in a work dir with checkpoints is refused before config.py is rewritten, too.
    err = _refused(capsys, work, image_root, "log.interval=3", extra=("--no-resume",))
    assert "already holds checkpoints" in err and _snapshot(work) == before
    # Settings that do not change the result may change: logging, loader workers, checkpoint keeping.
    _pretrain(work, image_root, "log.interval=2", "data.num_workers=0", "checkpoint.keep_last=40",
              "data.on_bad_file=fail")
    assert "interval=2" in (work / "config.py").read_text()


def test_force_resume_continues_with_the_new_settings(work: Path, image_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        _pretrain(work, image_root, "data.batch_size_per_gpu=4", extra=("--force-resume",))
    assert "--force-resume" in caplog.text and "data.batch_size_per_gpu: 8 (checkpoint) vs 4 (now)" in caplog.text
    assert Config.fromfile(str(work / "config.py")).data.batch_size_per_gpu == 4
    newest = load_checkpoint(list_checkpoints(str(work))[-1][1])
    assert newest["iteration"] == 8 and newest["config"]["data"]["batch_size_per_gpu"] == 4  # 32 / 4 per epoch
    assert _log_iterations(work) == list(range(1, 9))


# ------------------------------------------------------------------------------------ 2. log trimming
def test_resume_trims_the_log_to_the_resumed_iteration(work: Path, finished: Path, image_root: Path) -> None:
    for it in (3, 4):  # killed after logging iteration 4 (and half a record) with the checkpoint of 2 the newest
        Path(checkpoint_path(str(work), it)).unlink()
    with open(work / "log.jsonl", "a") as fh:
        fh.write('{"iteration": 5, "lo')
    _pretrain(work, image_root)
    assert _log_iterations(work) == [1, 2, 3, 4]  # replayed iterations once, the half record gone
    old = (finished / "log.jsonl").read_text().splitlines()
    new = (work / "log.jsonl").read_text().splitlines()
    assert new[:2] == old[:2]  # the records before the checkpoint kept as they were
    for a, b in zip(old[2:], new[2:]):  # and the replayed ones are the same numbers (bit-identical resume)
        assert [json.loads(a)[k] for k in ("loss", "cls", "patch")] == [json.loads(b)[k] for k in ("loss", "cls",
                                                                                                   "patch")]
    assert not list(work.glob(".*.tmp"))


def test_trim_log_is_atomic_and_leaves_a_clean_log_alone(tmp_path: Path, monkeypatch) -> None:
    from pretrain import monitor

    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in range(1, 5)]
    path.write_text("".join(lines))
    before = path.read_bytes()
    assert monitor.trim_log(str(path), 4) == 0 and path.read_bytes() == before
    writes = []
    monkeypatch.setattr(monitor, "atomic_write_text", lambda p, text: writes.append((p, text)))
    assert monitor.trim_log(str(path), 2) == 2
    assert writes == [(str(path), "".join(lines[:2]))]
    assert path.read_bytes() == before  # written only through the atomic writer


# ------------------------------------------------------------------------------------ 3. stale temporary files
def test_stale_temporary_files_are_removed_at_start(work: Path, image_root: Path) -> None:
    ckpts = work / "checkpoints"
    stale = [ckpts / ".checkpoint_iter00000005.pth.k2j_x9q1.tmp", work / ".teacher_backbone.pth.ab12cd34.tmp",
             work / ".log.jsonl.zz_yy_00.tmp", work / ".config.py.q1w2e3r4.tmp"]
    others = [work / "notes.tmp", ckpts / ".mine.tmp"]  # not the writer's: kept
    for p in stale + others:
        p.write_bytes(b"\0" * 100)
    checkpoints = {p.name: p.read_bytes() for p in ckpts.glob("checkpoint_iter*.pth")}
    _pretrain(work, image_root)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in others)
    assert {p.name: p.read_bytes() for p in ckpts.glob("checkpoint_iter*.pth")} == checkpoints


# ------------------------------------------------------------------------------------ 4. truncated checkpoints
def _truncate(path: str, keep: int | None = None) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(work: Path, finished: Path, image_root: Path,
                                                                    caplog) -> None:
    newest = checkpoint_path(str(work), ITERS)
    _truncate(newest)
    with caplog.at_level(logging.WARNING, logger="pretrain"):
        _pretrain(work, image_root)
    assert f"checkpoint {newest} is not usable" in caplog.text and "resuming from the previous one" in caplog.text
    assert Path(newest + ".corrupt").is_file()  # moved aside, kept for inspection
    ref, got = (load_checkpoint(checkpoint_path(str(w), ITERS)) for w in (finished, work))
    assert got["iteration"] == ITERS  # iteration 4 replayed from checkpoint 3, bit for bit
    for part in ("student", "teacher", "ibot_loss"):
        assert all(torch.equal(v, got[part][k]) for k, v in ref[part].items()), part
    assert _log_iterations(work) == [1, 2, 3, 4]


def test_no_usable_checkpoint_is_refused_naming_the_files(work: Path, image_root: Path, capsys) -> None:
    paths = [p for _, p in list_checkpoints(str(work))]
    for p in paths:
        _truncate(p, keep=200)
    before = _snapshot(work)
    err = _refused(capsys, work, image_root)
    assert all(p in err for p in paths) and "Delete them" in err and "start over" in err
    assert _snapshot(work) == before
    # A given checkpoint that is unusable is refused too (no fallback: the user chose it).
    err = _refused(capsys, work, image_root, extra=("--resume", paths[-1]))
    assert f"cannot resume from {paths[-1]}" in err and _snapshot(work) == before


class _Payload:  # what a pickled object that runs code on loading would be; never unpickled here
    pass


def test_untrusted_or_foreign_newest_checkpoint_is_skipped_not_loaded(work: Path, tmp_path: Path) -> None:
    from pretrain.checkpointing import find_resumable

    newest = checkpoint_path(str(work), ITERS + 1)
    torch.save({"schema": "x", "student": _Payload()}, newest)  # pickles a non-tensor object
    foreign = checkpoint_path(str(work), ITERS + 2)
    torch.save({"state_dict": {}}, foreign)  # tensors only, but not a training checkpoint
    path, state, bad = find_resumable(str(work))
    assert path == checkpoint_path(str(work), ITERS) and state["iteration"] == ITERS
    assert [p for p, _ in bad] == [foreign, newest]
    assert "key 'schema'" in bad[0][1] and "_Payload" in bad[1][1]


# ------------------------------------------------------------------------------------ 5. config validation
@pytest.mark.parametrize(("option", "expected"), [
    ("optim.lrr=0.1", ["unknown config key 'optim.lrr'", "did you mean 'optim.lr'"]),
    ("optimizer.lr=0.1", ["unknown config key 'optimizer.lr'", "did you mean 'optim.lr'"]),
    ("train.epochs=abc", ["'train.epochs' is 'abc'", "expected an int"]),
    ("data.batch_size_per_gpu=8.5", ["'data.batch_size_per_gpu' is 8.5", "expected an int"]),
    ("data.batch_size_per_gpu=0", ["'data.batch_size_per_gpu' is 0", "must be >= 1"]),
    ("train.epochs=0", ["'train.epochs' is 0", "must be >= 1"]),
    ("optim.lr=0", ["'optim.lr' is 0", "must be > 0"]),
    ("optim.warmup_epochs=2", ["'optim.warmup_epochs' is 2, more than train.epochs (1)"]),
    ("loss.warmup_teacher_temp_epochs=3", ["'loss.warmup_teacher_temp_epochs' (3)", "exceed train.epochs (1)"]),
    ("augmentation.local_crops_number=-1", ["'augmentation.local_crops_number' is -1", "must be >= 0"]),
    ("augmentation.global_crops_scale=(0.5,0.2)", ["'augmentation.global_crops_scale' is (0.5, 0.2)"]),
    ("masking.pred_ratio=1.5", ["'masking.pred_ratio' (1.5)"]),
    ("train.amp=fp32", ["'train.amp' is 'fp32'", "'bf16'"]),
])
def test_invalid_config_is_refused_before_anything_is_written(option: str, expected: list[str], work: Path,
                                                              image_root: Path, tmp_path: Path, capsys) -> None:
    fresh = tmp_path / "fresh"
    err = _refused(capsys, fresh, image_root, option)
    assert all(e in err for e in expected), err
    assert str(CONFIG) in err and "Traceback" not in err and not fresh.exists()
    before = _snapshot(work)
    _refused(capsys, work, image_root, option)
    assert _snapshot(work) == before


def test_module_entry_point_refuses_with_exit_status_2(image_root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pretrain.cli", *_argv(tmp_path / "w", image_root, "optim.lrr=0.1")]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "python -m pretrain.cli: error: invalid pretraining config" in proc.stderr
    assert "did you mean 'optim.lr'" in proc.stderr and not (tmp_path / "w").exists()


def test_shipped_configs_validate_and_train_refuses_a_bad_config_built_in_code(tmp_path: Path) -> None:
    from pretrain.engine import train
    from pretrain.settings import PretrainConfigError, validate_config

    for path in sorted((REPO / "pretrain" / "configs").glob("*.py")):
        cfg = Config.fromfile(str(path))
        cfg.data.root = cfg.data.root or "data/train"
        validate_config(cfg)
    cfg = Config.fromfile(str(CONFIG))
    cfg.train.epochs = 0
    with pytest.raises(PretrainConfigError, match=r"'train\.epochs' is 0; it must be >= 1"):
        train(cfg, str(tmp_path / "w"), device="cpu")
    assert not (tmp_path / "w").exists()


def test_result_differences() -> None:
    from pretrain.settings import NON_RESULT_KEYS, base_config, result_differences

    a = base_config()
    b = base_config()
    b["log"]["interval"], b["data"]["num_workers"], b["checkpoint"]["keep_last"] = 1, 0, 9
    b["train"]["parallel"], b["monitor"]["knn"]["root"] = "fsdp", "/data/knn"
    assert result_differences(a, b) == [] and "log.*" in NON_RESULT_KEYS
    # The same global batch over another number of processes is the same run; another global batch is not.
    b["data"]["batch_size_per_gpu"] = 64
    assert result_differences(a, b, stored_world=1, world=2) == []
    assert result_differences(a, b, stored_world=2, world=2) == [
        "data.batch_size_per_gpu: 128 (checkpoint) vs 64 (now)"]
    assert result_differences(a, b, stored_world=1, world=1)
    # A config stored before a key existed ran with its default; tuples and lists compare equal.
    old = base_config()
    del old["data"]["gpu_augment"]
    old["augmentation"]["global_crops_scale"] = list(old["augmentation"]["global_crops_scale"])
    assert result_differences(old, base_config()) == []
    c = base_config()
    c["data"]["gpu_augment"] = True
    assert result_differences(old, c) == ["data.gpu_augment: False (checkpoint) vs True (now)"]


# ------------------------------------------------------------------------------------ 6. images
def _png_header(path: Path, width: int, height: int) -> None:
    """A valid PNG declaring ``width`` x ``height`` grey pixels in a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _dataset(paths: list[str], on_bad_file: str, **kw) -> PretrainDataset:
    aug = MultiCropAugmentation(global_crop_size=32, local_crop_size=16)
    return PretrainDataset(paths, aug, MaskGenerator(0.3), 8, 2, on_bad_file=on_bad_file, **kw)


def test_decompression_bomb_is_skipped_with_a_warning(tmp_path: Path, image_root: Path, caplog) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20000, 20000)  # 400 Mpx
    paths, _, _ = scan_images(str(image_root))
    ds = _dataset([str(bomb)] + paths, "skip")
    with caplog.at_level(logging.WARNING, logger="pretrain.data"):
        crops, masks, n_bad = ds[(0, 0)]
    assert n_bad == 1 and crops[0].shape == (3, 32, 32)
    assert "bomb.png" in caplog.text and "decompression bomb" in caplog.text


def test_decompression_bomb_fails_naming_the_file(tmp_path: Path, image_root: Path) -> None:
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20000, 20000)
    paths, _, _ = scan_images(str(image_root))
    with pytest.raises(RuntimeError, match=r"bomb\.png.*decompression bomb.*on_bad_file"):
        _dataset([str(bomb)] + paths, "fail")[(0, 0)]


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(path)  # a 16-bit grey PNG
    ds = _dataset([str(path)], "fail", gpu_augment_side=36)  # workers decode only: the pixels themselves
    (canvas, size), _, n_bad = ds[(0, 0)]
    assert n_bad == 0 and size == (36, 36)
    assert canvas.unique().tolist() == [40000 >> 8]  # 156, not 255 (PIL's convert('RGB') clips)
    crops, _, _ = _dataset([str(path)], "fail")[(0, 0)]
    assert len(crops) == 2 and all(torch.isfinite(c).all() for c in crops)


# ------------------------------------------------------------------------------------ k-NN monitor and RNG
def test_knn_monitor_leaves_the_training_unchanged(image_root: Path, tmp_path: Path) -> None:
    """The monitor between epochs must not shift the drop-path RNG stream (so it is a non-result setting)."""
    labelled = tmp_path / "labelled"
    for split in ("train", "val"):
        for cls in sorted(p.name for p in image_root.iterdir()):
            (labelled / split / cls).mkdir(parents=True)
            for f in sorted(p.name for p in (image_root / cls).iterdir())[:3]:
                shutil.copy(image_root / cls / f, labelled / split / cls / f)
    opts = ("train.epochs=2", "model.drop_path_rate=0.1", "checkpoint.interval_iters=0")
    _pretrain(tmp_path / "plain", image_root, *opts)
    _pretrain(tmp_path / "knn", image_root, *opts, f"monitor.knn.root={labelled}", "monitor.knn.img_size=32",
              "monitor.knn.k=3", "monitor.knn.batch_size=8", "monitor.knn.num_workers=0",
              "monitor.knn.interval_epochs=1")
    rows = [json.loads(line) for line in (tmp_path / "knn" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "knn_top1" in r] == [4, 8]
    plain = [json.loads(line) for line in (tmp_path / "plain" / "log.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r["loss"]) for r in rows if "loss" in r] == [(r["iteration"], r["loss"]) for r in plain]


def test_pretrain_cli_is_the_tool() -> None:
    from pretrain import cli

    assert _tool_main() is cli.main
