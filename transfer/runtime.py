"""Device, mixed precision and seeding shared by the protocols (RNG snapshots for resumption: ``ibot.distributed``)."""
from __future__ import annotations

import contextlib
import platform
import random
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "amp_enabled", "autocast", "seed_all", "environment"]


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """``None`` / ``'auto'``: ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


def amp_enabled(setting: bool | None, device: torch.device) -> bool:
    """``None`` = on for CUDA, off for CPU (bf16 matmuls on CPU are slower than fp32 on most machines)."""
    return device.type == "cuda" if setting is None else bool(setting)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast (no loss scaling needed, unlike fp16) or a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy (timm's mixup draws from it) and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment(device: torch.device, world_size: int, amp: bool) -> dict[str, Any]:
    """Versions and hardware, for the result JSON."""
    import timm
    import torchvision

    env: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "numpy": np.__version__, "device": str(device), "world_size": world_size,
        "amp": "bf16" if amp else None,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env
