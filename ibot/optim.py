"""Update rules of the official iBOT step: parameter groups, per-parameter clipping, last-layer
freezing and the EMA teacher — vectorised with ``torch._foreach_*`` and free of host syncs.

Parameters and gradients may be FSDP2 shards (``DTensor``, ``Shard(0)`` on a 1-D mesh): clipping then
reduces each parameter's norm over its shards, and the EMA runs on matching local shards.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard


def param_groups(model: nn.Module) -> list[dict]:
    """Two AdamW groups as the official ``get_params_groups``.

    Group 0 (weight decay follows the schedule): trainable parameters with ndim >= 2 not named
    ``*.bias`` — this includes ``pos_embed``, ``cls_token``, ``masked_embed`` and ``weight_g``.
    Group 1 (weight decay 0): biases and 1-D parameters.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clip_gradients(params: Iterable[Tensor], clip: float) -> Tensor | None:
    """Scale each parameter's gradient to norm <= ``clip`` independently (not a global norm).

    Returns the per-parameter norms before clipping (1-D tensor, no host sync), or None.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    local = _local(grads)
    norms = _full_norms(grads, torch._foreach_norm(local, 2))
    # Official: grad *= clip / (norm + 1e-6) only when that factor is < 1; multiplying by exactly 1
    # otherwise leaves the gradient bit-identical.
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(local, coefs)
    return torch.stack(norms)


def _local(tensors: list[Tensor]) -> list[Tensor]:
    """Local shards of DTensors (views: in-place ops write the shards), other tensors as they are."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _full_norms(tensors: list[Tensor], local_norms: list[Tensor]) -> list[Tensor]:
    """Norms of whole tensors from the norms of their local shards: one all-reduce of the squares
    for all sharded tensors (instead of one collective per parameter with ``DTensor.norm``)."""
    sharded = [i for i, t in enumerate(tensors) if isinstance(t, DTensor)]
    if not sharded:
        return local_norms
    mesh = tensors[sharded[0]].device_mesh
    for i in sharded:
        t = tensors[i]
        if t.device_mesh != mesh or not all(isinstance(p, Shard) for p in t.placements):
            raise ValueError("per-parameter clipping supports tensors sharded on one mesh (FSDP), got "
                             f"{t.placements} on {t.device_mesh}")
    squares = torch.stack([local_norms[i] for i in sharded]).square()
    dist.all_reduce(squares, group=mesh.get_group())
    full = list(local_norms)
    for i, n in zip(sharded, squares.sqrt().unbind()):
        full[i] = n
    return full


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """Drop the gradient of every parameter whose name contains ``last_layer`` (so ``last_layer2``
    too) during the first ``freeze_last_layer`` epochs; AdamW then skips them entirely."""
    if epoch >= freeze_last_layer:
        return
    for name, p in model.named_parameters():
        if "last_layer" in name:
            p.grad = None


def shared_parameters(student: nn.Module, teacher: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Parameters present under the same name in both networks (the teacher has no ``masked_embed``)."""
    s = dict(student.named_parameters())
    t = dict(teacher.named_parameters())
    names = [n for n in s if n in t]
    for n in names:
        if s[n].shape != t[n].shape:
            raise ValueError(f"student and teacher parameter {n!r} differ in shape: "
                             f"{tuple(s[n].shape)} vs {tuple(t[n].shape)}")
        if _layout(s[n]) != _layout(t[n]):
            raise ValueError(f"student and teacher parameter {n!r} are sharded differently: "
                             f"{_layout(s[n])} vs {_layout(t[n])} (shard both networks alike)")
    return [s[n] for n in names], [t[n] for n in names]


def _layout(t: Tensor) -> tuple | None:
    """(mesh, placements) of a DTensor, None for a plain tensor."""
    return (t.device_mesh, t.placements) if isinstance(t, DTensor) else None


@torch.no_grad()
def ema_update(student_params: list[Tensor], teacher_params: list[Tensor], momentum: float) -> None:
    """teacher = m · teacher + (1 − m) · student, in the official operation order.

    FSDP shards are updated locally (``shared_parameters`` checks both are sharded alike); the local
    views are taken on every call because FSDP may replace a parameter's local storage at lazy init.
    """
    teacher, student = _local(teacher_params), _local(student_params)
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, torch._foreach_mul(student, 1.0 - momentum))
