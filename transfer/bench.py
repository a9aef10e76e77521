"""Throughput of the transfer protocols' model work: fine-tuning steps and frozen feature extraction (img/s).

Synthetic inputs already on the device, so the numbers measure the model (forward, backward, AdamW step) and
not JPEG decoding or augmentation. Timed after warm-up iterations, with a device synchronisation around the
timed loop only.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ibot.features import FeatureSpec, spec_features
from ibot.vit import build_vit
from transfer.configs.defaults import LINEAR_FEATURES_BY_ARCH
from transfer.finetune import ViTClassifier, build_optimizer
from transfer.runtime import autocast

__all__ = ["bench_finetune", "bench_features", "markdown_rows"]


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so wall time measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mem_gib(device: torch.device) -> float | None:
    """Peak allocated CUDA memory since the last reset, in GiB (``None`` on CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def _timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones (device synchronised around)."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t0


def bench_finetune(arch: str, batch_size: int, device: torch.device, amp: bool, steps: int = 20, warmup: int = 5,
                   img_size: int = 224, patch_size: int = 16, num_classes: int = 1000, **shape: Any) -> dict[str, Any]:
    """Training img/s of the fine-tuning step (drop-path 0.1, AdamW, bf16 autocast when ``amp``)."""
    torch.manual_seed(0)
    backbone = build_vit(arch, patch_size=patch_size, img_size=img_size, pos_interp="size", drop_path_rate=0.1,
                         **shape)
    model = ViTClassifier(backbone, num_classes).to(device).train()
    opt = build_optimizer(model, {"weight_decay": 0.05, "layer_decay": None, "betas": (0.9, 0.999), "eps": 1e-8}, 1e-4)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = _timed(step, steps, warmup, device)
    return {"mode": "finetune", "arch": arch, "patch_size": patch_size, "img_size": img_size, "batch_size": batch_size,
            "amp": amp, "img_per_s": round(steps * batch_size / seconds, 1), "peak_mem_gib": _peak_mem_gib(device)}


@torch.no_grad()
def bench_features(arch: str, batch_size: int, device: torch.device, amp: bool, steps: int = 20, warmup: int = 5,
                   img_size: int = 224, patch_size: int = 16, specs: list[FeatureSpec] | None = None,
                   **shape: Any) -> dict[str, Any]:
    """Inference img/s of feature extraction (the arch's linear-probe features by default)."""
    torch.manual_seed(0)
    model = build_vit(arch, patch_size=patch_size, img_size=img_size, pos_interp="size", **shape).to(device).eval()
    specs = specs or [FeatureSpec.from_dict(d) for d in LINEAR_FEATURES_BY_ARCH[arch]]
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast(device, amp):
            spec_features(model, x, specs)

    seconds = _timed(step, steps, warmup, device)
    return {"mode": "features", "arch": arch, "patch_size": patch_size, "img_size": img_size,
            "batch_size": batch_size, "amp": amp, "features": "+".join(s.label for s in specs),
            "img_per_s": round(steps * batch_size / seconds, 1), "peak_mem_gib": _peak_mem_gib(device)}


def markdown_rows(results: list[dict[str, Any]], device_name: str) -> str:
    """A Markdown table of benchmark results."""
    lines = ["| model | mode | batch | precision | img/s | peak memory (GiB) | device |",
             "|---|---|---:|---|---:|---:|---|"]
    for r in results:
        mem = "–" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        lines.append(f"| {r['arch']}/{r['patch_size']} @{r['img_size']} | {r['mode']} | {r['batch_size']} | "
                     f"{'bf16 autocast' if r['amp'] else 'fp32'} | {r['img_per_s']:.1f} | {mem} | {device_name} |")
    return "\n".join(lines) + "\n"
