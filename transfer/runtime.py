"""Device, mixed precision, seeding and RNG snapshots (for exact resumption) shared by the protocols."""
from __future__ import annotations

import contextlib
import platform
import random
from typing import Any

import numpy as np
import torch

__all__ = ["resolve_device", "amp_enabled", "autocast", "seed_all", "rng_state", "set_rng_state", "environment"]


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


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors and plain Python values, so the snapshot loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a :func:`rng_state` snapshot."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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
