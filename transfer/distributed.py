"""Process-group setup from ``torchrun``'s environment and the few collectives the protocols need.

One process per GPU under ``torchrun --nproc_per_node N tools/transfer_*.py ...``; a plain ``python`` call runs
as a world of one without a process group. NCCL on CUDA, gloo on CPU (tests run two gloo processes). Every
collective is a no-op in a world of one, so the protocol code has no ``if distributed`` branches.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistContext", "init_distributed", "shutdown", "all_reduce_sum", "gather_rows", "all_gather_object",
           "wrap_ddp"]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group described by ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over processes, in place (identity in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(rows: Tensor, indices: Tensor, total: int) -> Tensor:
    """Assemble a (total, ...) tensor from each process's rows (n_r, ...) at dataset ``indices`` (n_r,).

    Processes may hold different row counts (a sharded data set of uneven length): every process pads to the
    largest count so ``all_gather`` sees equal shapes, and padded rows (index -1) are dropped. Every process
    receives the full tensor.
    """
    out = rows.new_zeros((total, *rows.shape[1:]))
    if not (dist.is_initialized() and dist.get_world_size() > 1):
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
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` over the process group (the module itself in a world of one)."""
    if not ctx.enabled:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
