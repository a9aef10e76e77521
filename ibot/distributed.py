"""The one distributed module of the suite: process-group setup, the few collectives the tools need, and RNG
snapshots for exact resumption. Used by pretraining and the transfer protocols.

One process per device under ``torchrun`` (or ``srun``: slurm's variables are mapped to torchrun's); a plain
``python`` call is a world of one without a process group. NCCL on CUDA, gloo on CPU (tests run two gloo
processes). Every collective is a no-op in a world of one, so callers have no ``if distributed`` branches.
"""
from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "DistEnv",
    "all_gather_object",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "gather_rows",
    "gathered_rng_states",
    "init_distributed",
    "rng_state",
    "set_rng_state",
    "shutdown",
    "wrap_ddp",
]


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """``True`` when there is a process group (world > 1)."""
        return self.world > 1


def _slurm_to_torchrun() -> None:
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed(device: str | torch.device | None = None) -> DistEnv:
    """Read torchrun's (or slurm's) environment and join the process group when world > 1.

    ``device``: ``'cuda'`` / ``'cpu'`` / a ``torch.device`` / ``None`` (CUDA when available). On CUDA the process
    uses the GPU of its ``LOCAL_RANK``.
    """
    _slurm_to_torchrun()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is visible")
    dev = torch.device("cuda", local) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": dev} if kind == "cuda" else {}
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistEnv(rank, world, local, dev)


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over processes, in place (identity in a world of one)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean over processes, on a copy (``t`` itself in a world of one)."""
    if not _active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def gather_rows(rows: Tensor, indices: Tensor, total: int) -> Tensor:
    """Assemble a (total, ...) tensor from each process's rows (n_r, ...) at data-set ``indices`` (n_r,).

    Processes may hold different row counts (a sharded data set of uneven length): every process pads to the
    largest count so ``all_gather`` sees equal shapes, and padded rows (index -1) are dropped. Every process
    receives the full tensor.
    """
    out = rows.new_zeros((total, *rows.shape[1:]))
    if not _active():
        out[indices] = rows
        return out
    n = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    width = int(max(c.item() for c in counts))
    pad_rows = rows.new_zeros((width, *rows.shape[1:]))
    pad_rows[: rows.shape[0]] = rows
    pad_idx = torch.full((width,), -1, dtype=torch.long, device=rows.device)
    pad_idx[: indices.shape[0]] = indices
    all_rows = [torch.empty_like(pad_rows) for _ in counts]
    all_idx = [torch.empty_like(pad_idx) for _ in counts]
    dist.all_gather(all_rows, pad_rows)
    dist.all_gather(all_idx, pad_idx)
    idx, val = torch.cat(all_idx), torch.cat(all_rows)
    keep = idx >= 0
    out[idx[keep]] = val[keep]
    return out


def all_gather_object(obj: object) -> list[object]:
    """Every process's ``obj``, in rank order (a one-element list in a world of one)."""
    if not _active():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``DistributedDataParallel`` over the process group (the module itself in a world of one)."""
    if not env.enabled:
        return module
    return DistributedDataParallel(module, device_ids=[env.device.index] if env.device.type == "cuda" else None)


# ------------------------------------------------------------------------------------------------- RNG snapshots
def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as tensors and plain values (loads with ``weights_only``).

    ``device``: the CUDA device whose generator is saved (``None``: every visible CUDA device).
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        if device is not None and device.type == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(device)
        else:
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore a :func:`rng_state` snapshot (CUDA states only when the same devices are visible)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"].cpu(), device)
    elif "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def gathered_rng_states(device: torch.device | None = None) -> list[dict[str, Any]]:
    """Every process's :func:`rng_state`, in rank order (a collective: call it on all processes)."""
    return all_gather_object(rng_state(device))  # type: ignore[return-value]
