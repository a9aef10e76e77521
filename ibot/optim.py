"""Update rules of the official iBOT step: parameter groups, per-parameter clipping, last-layer
freezing and the EMA teacher — vectorised with ``torch._foreach_*`` and free of host syncs."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn


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
    norms = torch._foreach_norm(grads, 2)
    # Official: grad *= clip / (norm + 1e-6) only when that factor is < 1; multiplying by exactly 1
    # otherwise leaves the gradient bit-identical.
    coefs = [torch.clamp(clip / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
    return torch.stack(norms)


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
    return [s[n] for n in names], [t[n] for n in names]


@torch.no_grad()
def ema_update(student_params: list[Tensor], teacher_params: list[Tensor], momentum: float) -> None:
    """teacher = m · teacher + (1 − m) · student, in the official operation order."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, torch._foreach_mul(student_params, 1.0 - momentum))
