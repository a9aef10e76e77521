"""Training observability: JSON lines, TensorBoard, a terminal progress bar, img/s, MFU, ETA."""
from __future__ import annotations

import json
import os
import sys
import time

import torch
from tqdm import tqdm

from ibot.atomic import atomic_write_text
from ibot.records import json_safe

#: File name of the JSON-lines log in the work dir.
LOG_FILE = "log.jsonl"

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of GPUs we know, for MFU; None elsewhere.
PEAK_FLOPS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def vit_forward_flops(tokens: int, dim: int, depth: int, patch_pixels: int, mlp_ratio: float = 4.0) -> float:
    """Forward FLOPs (2 per multiply-add) of one image through a ViT with ``tokens`` tokens."""
    per_block = 2 * tokens * dim * dim * (4 + 2 * mlp_ratio) + 4 * tokens * tokens * dim
    return depth * per_block + 2 * (tokens - 1) * 3 * patch_pixels * dim


def head_flops(tokens: float, dim: int, hidden: int, bottleneck: int, out: int) -> float:
    return 2 * tokens * (dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * out)


def train_flops_per_image(cfg) -> float:
    """Approximate FLOPs of one training iteration per image (student fwd+bwd = 3x fwd, teacher fwd)."""
    m, a = cfg.model, cfg.augmentation
    dim = (m.vit_overrides or {}).get("embed_dim") or {"vit_tiny": 192, "vit_small": 384, "vit_base": 768,
                                                        "vit_large": 1024}[m.arch]
    depth = (m.vit_overrides or {}).get("depth") or (24 if m.arch == "vit_large" else 12)
    p = m.patch_size
    ng_tok = (a.global_crop_size // p) ** 2
    nl_tok = (a.local_crop_size // p) ** 2
    ratios = cfg.masking.pred_ratio if isinstance(cfg.masking.pred_ratio, (list, tuple)) else [cfg.masking.pred_ratio]
    masked = ng_tok * sum(ratios) / len(ratios)
    g, l_ = a.global_crops_number, a.local_crops_number
    hid, bott = m.head_hidden_dim, m.head_bottleneck_dim
    vit_g = vit_forward_flops(ng_tok + 1, dim, depth, p * p)
    vit_l = vit_forward_flops(nl_tok + 1, dim, depth, p * p)
    student = g * (vit_g + head_flops(1 + masked, dim, hid, bott, m.out_dim)) + l_ * (
        vit_l + head_flops(1, dim, hid, bott, m.out_dim))
    teacher = g * (vit_g + head_flops(ng_tok + 1, dim, hid, bott, 0) + 2 * (masked + 2) * bott * m.out_dim)
    return 3 * student + teacher


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def trim_log(path: str, iteration: int) -> int:
    """Keep the records of ``path`` (JSON lines) up to ``iteration``, atomically: a resumed run replays the
    iterations after its checkpoint, and their records would otherwise appear twice. Lines that do not parse
    (one half-written when the run was killed) are dropped too. Returns the number of lines dropped (the file is
    rewritten only when something changes)."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
            keep = isinstance(row, dict) and int(row["iteration"]) <= iteration
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept != lines:
        atomic_write_text(path, "".join(kept))
    return len(lines) - len(kept)


class Monitor:
    """Rank-0 logger. ``log(it, scalars, images)`` at the logging interval (the only host sync)."""

    def __init__(self, work_dir: str, total_iters: int, start_iter: int, flops_per_image: float,
                 device: torch.device, world: int, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total, self.device, self.world = total_iters, device, world
        self.flops_per_image, self.peak = flops_per_image, peak_flops(device)
        self._t, self._it = time.perf_counter(), start_iter
        self._t0, self._it0 = self._t, start_iter
        if not enabled:
            return
        os.makedirs(work_dir, exist_ok=True)
        self.jsonl = open(os.path.join(work_dir, LOG_FILE), "a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is a dependency; say what is missing
                raise RuntimeError("log.tensorboard=True needs the 'tensorboard' package "
                                   "(pip install tensorboard) or set log.tensorboard=False") from e
            # Events after the resumed iteration (written before the run stopped) are replayed: hide the old ones.
            self.tb = SummaryWriter(os.path.join(work_dir, "tensorboard"), purge_step=start_iter + 1)
        self.bar = tqdm(total=total_iters, initial=start_iter, desc="pretrain", unit="it",
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def log(self, it: int, scalars: dict[str, float], images_per_iter: int) -> dict[str, float]:
        """Record scalars after iteration ``it`` (1-based count of finished iterations)."""
        now = time.perf_counter()
        n = it - self._it
        dt = max(now - self._t, 1e-9)
        ips = n * images_per_iter / dt
        rec = dict(scalars, iteration=it, img_per_s=ips, s_per_iter=dt / max(n, 1))
        if self.peak:
            rec["mfu"] = ips * self.flops_per_image / (self.peak * self.world)
        if self.device.type == "cuda":
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        done = it - self._it0
        rate = (now - self._t0) / max(done, 1)
        rec["eta_s"] = rate * (self.total - it)
        self._t, self._it = now, it
        if self.enabled:
            self.jsonl.write(json.dumps(json_safe(rec)) + "\n")  # non-finite values as null, as in records
            if self.tb is not None:
                for k, v in rec.items():
                    if k != "iteration":
                        self.tb.add_scalar(f"train/{k}", v, it)
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{rec.get('loss', float('nan')):.4f}", ips=f"{ips:.0f}")
            if self.bar.disable:  # not a terminal (CI, log files): one line per interval
                print(f"[it {it}/{self.total}] loss {rec.get('loss', float('nan')):.4f} "
                      f"(cls {rec.get('cls', float('nan')):.4f} patch {rec.get('patch', float('nan')):.4f}) "
                      f"lr {rec.get('lr', 0):.2e} {ips:.1f} img/s eta {rec['eta_s'] / 60:.1f} min", flush=True)
        return rec

    def log_scalars(self, it: int, scalars: dict[str, float]) -> None:
        """Record extra scalars (e.g. the k-NN monitor) at iteration ``it``."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(json_safe({"iteration": it, **scalars})) + "\n")
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"monitor/{k}", v, it)
        msg = " ".join(f"{k} {v:.2f}" for k, v in scalars.items())
        (self.bar.write if not self.bar.disable else print)(f"[it {it}/{self.total}] {msg}")

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()
