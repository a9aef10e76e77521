"""One iBOT training iteration with the official order of operations.

teacher forward (global crops) → student forward (global crops masked, local crops unmasked) →
loss (+ center update) → backward → per-parameter clipping → last-layer freezing → optimizer step →
EMA teacher update. With ``head_on_masked_only`` the student's head runs only on [CLS] and masked
tokens, and the teacher's last layer only on masked tokens plus one mean token per image (the last
layer is linear, so the mean of its outputs is its output of the mean); loss and gradients equal
the full-sequence form.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ibot.loss import iBOTLoss
from ibot.model import iBOTModel
from ibot.optim import cancel_last_layer_gradients, clip_gradients, ema_update, shared_parameters


def masks_to_gather(masks: Tensor, max_masked: int | None = None) -> tuple[Tensor, Tensor]:
    """Masks (G, h, w) bool -> indices (G, M) of patch tokens and weights (G, M) (1 = masked).

    Masked positions come first in token order; the remaining slots hold unmasked positions with
    weight 0, so M is static (``max_masked``, default N = h·w) and no host sync is needed.
    """
    flat = masks.flatten(1)
    n = flat.shape[1]
    m = n if max_masked is None else min(int(max_masked), n)
    # Stable sort on "not masked" puts masked tokens first, each group in token order.
    order = torch.sort((~flat).to(torch.uint8), dim=1, stable=True).indices[:, :m]
    weight = torch.gather(flat, 1, order).to(torch.float32)
    return order, weight


def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (G, N, C), idx (G, M) -> (G, M, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class iBOTTrainStep:
    """Callable performing one official iBOT iteration.

    Args:
        student, teacher: from ``build_student_teacher`` (or loaded from a checkpoint).
        loss: ``iBOTLoss`` configured with the same crop numbers.
        optimizer: built on ``param_groups(student)`` (group 0 gets the weight-decay schedule).
        lr_schedule, wd_schedule, momentum_schedule: per-iteration arrays (``cosine_scheduler``).
        clip_grad: per-parameter gradient norm bound (0 disables).
        freeze_last_layer: epochs during which ``*last_layer*`` gradients are dropped.
        head_on_masked_only: run the heads only where the loss needs them (same results, faster).
        max_masked: static bound on masked tokens per crop for the gather (None = all tokens).
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision; None = fp32.
        scaler: a ``torch.amp.GradScaler`` for fp16.
    """

    student: iBOTModel
    teacher: iBOTModel
    loss: iBOTLoss
    optimizer: torch.optim.Optimizer
    lr_schedule: np.ndarray
    wd_schedule: np.ndarray
    momentum_schedule: np.ndarray
    clip_grad: float = 3.0
    freeze_last_layer: int = 1
    head_on_masked_only: bool = True
    max_masked: int | None = None
    autocast_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    _ema: tuple[list[Tensor], list[Tensor]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ema = shared_parameters(self.student, self.teacher)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def forward_loss(self, images: list[Tensor], masks: list[Tensor], epoch: int) -> dict[str, Tensor]:
        """Forward both networks and the loss (updates the loss centers). ``images``: the global crops
        first, each (B, 3, H, W); ``masks``: one (B, h, w) bool mask per global crop."""
        ng = self.loss.ngcrops
        if len(images) != ng + self.loss.nlcrops:
            raise ValueError(f"expected {ng} global + {self.loss.nlcrops} local crops, got {len(images)}")
        if len(masks) < ng:
            raise ValueError(f"expected a mask for each of the {ng} global crops, got {len(masks)}")
        glob = torch.cat(images[:ng])
        mask = torch.cat(masks[:ng])
        s_bb, s_head = self.student.backbone, self.student.head
        t_bb, t_head = self.teacher.backbone, self.teacher.head
        with self._autocast(glob.device):
            with torch.no_grad():
                t_tok = t_bb(glob, return_all_tokens=True)
            s_tok = s_bb(glob, mask=mask, return_all_tokens=True)
            s_local = None
            if len(images) > ng:
                local_tok = self.student.tokens(images[ng:])
                s_local = s_head(local_tok[:, 0]) if self.head_on_masked_only else s_head(local_tok)[0]

            if self.head_on_masked_only:
                idx, weight = masks_to_gather(mask, self.max_masked)
                s_z = s_head.embed(torch.cat((s_tok[:, :1], _gather_tokens(s_tok[:, 1:], idx)), dim=1))
                s_cls, s_patch = s_head.last_layer(s_z[:, 0]), s_head.last_layer2(s_z[:, 1:])
                with torch.no_grad():
                    t_z = t_head.embed(t_tok)
                    t_cls = t_head.last_layer(t_z[:, 0])
                    t_patch = t_head.last_layer2(_gather_tokens(t_z[:, 1:], idx))
                    t_mean = t_head.last_layer2(t_z[:, 1:].mean(dim=1))
            else:
                s_cls, s_patch = s_head(s_tok)
                with torch.no_grad():
                    t_cls, t_patch = t_head(t_tok)
                weight, t_mean = mask.flatten(1).float(), None
        # The loss runs in fp32: softmax over 8192 classes at 0.04 temperature needs the range.
        return self.loss(
            s_cls.float(), None if s_local is None else s_local.float(), s_patch.float(),
            t_cls.float(), t_patch.float(), weight, epoch,
            teacher_patch_mean=None if t_mean is None else t_mean.float())

    def __call__(self, images: list[Tensor], masks: list[Tensor], epoch: int, it: int) -> dict[str, Tensor]:
        """One iteration at global iteration ``it`` of epoch ``epoch``; returns detached loss terms."""
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr_schedule[it])
            if i == 0:
                group["weight_decay"] = float(self.wd_schedule[it])
        out = self.forward_loss(images, masks, epoch)
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(out["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            out["loss"].backward()
        if self.clip_grad:
            clip_gradients(params, self.clip_grad)
        cancel_last_layer_gradients(self.student, epoch, self.freeze_last_layer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        ema_update(*self._ema, float(self.momentum_schedule[it]))
        return {k: v.detach() for k, v in out.items()}
