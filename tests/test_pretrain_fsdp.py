"""``train.parallel='fsdp'`` on CPU (gloo, 2 processes): same losses as DDP, the DDP checkpoint
format, bit-identical SIGKILL + resume, and checkpoints that move between FSDP and DDP."""
from __future__ import annotations

import contextlib
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

from ibot.checkpoint import load_file
from ibot.distributed import DistEnv
from pretrain.checkpointing import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint
from pretrain.engine import _sharded

ROOT = REPO
CONFIG = ROOT / "pretrain" / "configs" / "ibot_vit-tiny_cpu-test.py"
ITERS = 8  # 32 images / global batch 8 × 2 epochs; epoch 0 freezes the last layer


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """(32 CIFAR-10 images in 4 classes, a labelled train/val split of them for the k-NN monitor)."""
    cifar = shared_data_path("cifar10", "test")
    base = tmp_path_factory.mktemp("data")
    for cls in sorted(os.listdir(cifar))[:4]:
        for i, f in enumerate(sorted(os.listdir(cifar / cls))[:8]):
            for folder in (base / "imgs" / cls, base / "knn" / ("train" if i < 6 else "val") / cls):
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy(cifar / cls / f, folder / f)
    return base / "imgs", base / "knn"


def _launch(work: Path, data: tuple[Path, Path], mode: str, resume: str | bool = True) -> subprocess.Popen:
    """A 2-process run of the tiny config under torchrun, with the ViT-L config's gradient
    checkpointing and drop path (random draws per rank, restored on resume)."""
    opts = [f"data.root={data[0]}", "train.epochs=2", "data.batch_size_per_gpu=4", "checkpoint.interval_iters=1",
            "checkpoint.keep_last=50", "log.interval=1", f"train.parallel={mode}", "model.grad_checkpointing=True",
            "model.drop_path_rate=0.1", f"monitor.knn.root={data[1]}",
            "monitor.knn.img_size=32", "monitor.knn.k=5", "monitor.knn.batch_size=16",
            "monitor.knn.num_workers=0", "monitor.knn.interval_epochs=2"]
    script = [str(ROOT / "tools" / "pretrain.py"), str(CONFIG), "--work-dir", str(work), "--device", "cpu"]
    script += ["--no-resume"] if resume is False else [] if resume is True else ["--resume", resume]
    # --standalone: the rendezvous store binds a port of the kernel's choosing (no race for a free one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script,
           "--cfg-options", *opts]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and its workers: torchrun starts each worker in a session of its own, so
    killing the launcher alone would leave them running."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == proc.pid:  # the parent pid
            workers.append(int(stat.parent.name))
    for pid in (proc.pid, *workers):
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    worker_errors = "\n".join(line for line in out.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, worker_errors[-4000:] + "\n" + out[-1500:]
    return out


def _log(work: Path) -> dict[int, dict]:
    """Logged values by iteration (the k-NN monitor writes rows of its own: merged)."""
    out: dict[int, dict] = {}
    for line in (work / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["iteration"], {}).update(row)
    return out


@pytest.fixture(scope="module")
def refs(data, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted DDP and FSDP runs (a checkpoint after every iteration)."""
    base = tmp_path_factory.mktemp("refs")
    out = {mode: base / mode for mode in ("ddp", "fsdp")}
    logs = {mode: _finish(_launch(work, data, mode, resume=False)) for mode, work in out.items()}
    assert "FSDP: student and teacher sharded over 2 processes" in logs["fsdp"]
    assert "sharded" not in logs["ddp"]
    return out


def _assert_close_losses(a: dict[int, dict], b: dict[int, dict], iters: range) -> None:
    for it in iters:
        for k in ("loss", "cls", "patch"):
            x, y = a[it][k], b[it][k]
            assert abs(x - y) <= 1e-5 * max(1.0, abs(x)), (it, k, x, y)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _assert_same_layout(a: object, b: object, path: str = "") -> None:
    """Same nested keys, tensor shapes, dtypes and devices, and equal plain values."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            _assert_same_layout(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_layout(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device), path
    else:
        assert a == b, (path, a, b)


# ------------------------------------------------------------------ engine, 2 processes


def test_fsdp_matches_ddp_and_writes_the_ddp_format(refs: dict[str, Path]) -> None:
    ddp, fsdp = _log(refs["ddp"]), _log(refs["fsdp"])
    assert sorted(ddp) == sorted(fsdp) == list(range(1, ITERS + 1))
    _assert_close_losses(ddp, fsdp, range(1, ITERS + 1))
    assert ddp[ITERS]["knn_top1"] == fsdp[ITERS]["knn_top1"]  # the monitor saw the gathered teacher
    a, b = (load_checkpoint(latest_checkpoint(str(refs[m]))) for m in ("ddp", "fsdp"))
    _assert_same_layout({k: v for k, v in a.items() if k != "config"}, {k: v for k, v in b.items() if k != "config"})
    # Measured: student ≤ 1e-6 (the k part of the qkv bias, whose gradient is rounding noise that
    # Adam normalises), teacher and centers ≤ 2e-8; per-parameter clipping differs by float rounding.
    assert _max_diff(a["student"], b["student"]) <= 1e-5
    assert _max_diff(a["teacher"], b["teacher"]) <= 1e-7
    assert _max_diff(a["ibot_loss"], b["ibot_loss"]) <= 1e-7
    for i, s in a["optimizer"]["state"].items():
        assert _max_diff(s, b["optimizer"]["state"][i]) <= 1e-5
    ta, tb = (load_file(refs[m] / "teacher_backbone.pth")["state_dict"] for m in ("ddp", "fsdp"))
    assert "pos_embed" in tb and not any(k.startswith("head") for k in tb)
    assert _max_diff(ta, tb) <= 1e-7


@pytest.mark.slow  # ~50 s; the default run keeps the DDP SIGKILL test and FSDP == DDP checkpoints
def test_fsdp_sigkill_and_resume_is_bitwise_identical(data, refs: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "killed"
    for kill_after in (2, 5):  # kill both workers and the launcher twice, at different iterations
        proc = _launch(work, data, "fsdp")
        deadline = time.time() + 120
        while time.time() < deadline and len(list_checkpoints(str(work))) < kill_after:
            time.sleep(0.01)
        _kill(proc)
    assert 0 < load_checkpoint(latest_checkpoint(str(work)))["iteration"] < ITERS
    assert "resumed from" in _finish(_launch(work, data, "fsdp"))
    ref, got = (load_checkpoint(latest_checkpoint(str(w))) for w in (refs["fsdp"], work))
    assert ref["iteration"] == got["iteration"] == ITERS
    for part in ("student", "teacher", "ibot_loss"):
        for k, v in ref[part].items():
            assert torch.equal(v, got[part][k]), (part, k)
    for i, s in ref["optimizer"]["state"].items():
        assert all(torch.equal(v, got["optimizer"]["state"][i][k]) for k, v in s.items()), i
    assert ref["optimizer"]["param_groups"] == got["optimizer"]["param_groups"]


def test_fsdp_checkpoint_resumes_under_ddp(data, refs: dict[str, Path], tmp_path: Path) -> None:
    # (DDP -> FSDP needs no run of its own: the files have the same layout, and FSDP resumes above.)
    start = 3  # inside epoch 0: the last layer is still frozen, so it has no optimizer state yet
    ckpt = checkpoint_path(str(refs["fsdp"]), start)
    out = _finish(_launch(tmp_path / "w", data, "ddp", resume=ckpt))
    assert f"resumed from {ckpt} at iteration {start}" in out
    _assert_close_losses(_log(refs["fsdp"]), _log(tmp_path / "w"), range(start + 1, ITERS + 1))
    ref, got = (load_checkpoint(latest_checkpoint(str(w))) for w in (refs["fsdp"], tmp_path / "w"))
    assert _max_diff(ref["student"], got["student"]) <= 1e-5
    assert _max_diff(ref["teacher"], got["teacher"]) <= 1e-7


# ------------------------------------------------------------------ pieces, in process


def test_parallel_option() -> None:
    default = Config.fromfile(str(ROOT / "pretrain/configs/_base_/default.py"))
    large = Config.fromfile(str(ROOT / "pretrain/configs/ibot_vit-l16_250e_in1k.py"))
    assert default.train.parallel == "ddp" and large.train.parallel == "fsdp"
    two = DistEnv(0, 2, 0, torch.device("cpu"))
    assert _sharded(large, two) and not _sharded(default, two)
    assert not _sharded(large, DistEnv(0, 1, 0, torch.device("cpu")))  # one process: nothing to shard
    large.train.parallel = "zero3"
    with pytest.raises(ValueError, match="train.parallel must be one of"):
        _sharded(large, two)
