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
from torch import Tensor, nn

from ibot.loss import iBOTLoss
from ibot.masking import mask_to_indices
from ibot.model import iBOTModel
from ibot.optim import cancel_last_layer_gradients, clip_gradients, ema_update, shared_parameters


def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """x (G, N, C), idx (G, M) -> (G, M, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class StudentPass(nn.Module):
    """The student's side of one step as a single module (what DDP wraps).

    forward(glob (G, 3, H, W), mask (G, h, w), locals [(B, 3, h', w')...], idx (G, M) | None) ->
    ([CLS] logits (G, K), local [CLS] logits (L, K) | None, patch logits (G, M or N, Kp)).
    With ``idx`` the head runs on [CLS] and the gathered tokens only.
    """

    def __init__(self, student: iBOTModel, head_on_masked_only: bool = True) -> None:
        super().__init__()
        self.student = student
        self.head_on_masked_only = head_on_masked_only

    def forward(self, glob: Tensor, mask: Tensor, local_crops: list[Tensor],
                idx: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        head = self.student.head
        tok = self.student.backbone(glob, mask=mask, return_all_tokens=True)
        s_local = None
        if local_crops:
            local_tok = self.student.tokens(local_crops)
            s_local = head(local_tok[:, 0]) if idx is not None else head(local_tok)[0]
        if idx is None:
            s_cls, s_patch = head(tok)
            return s_cls, s_local, s_patch
        z = head.embed(torch.cat((tok[:, :1], _gather_tokens(tok[:, 1:], idx)), dim=1))
        return head.last_layer(z[:, 0]), s_local, head.last_layer2(z[:, 1:])


@torch.no_grad()
def teacher_pass(teacher: iBOTModel, glob: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Teacher logits of the global crops: ([CLS] (G, K), patch (G, M or N, Kp), mean patch (G, Kp) | None).

    With ``idx`` the last layer runs on the gathered tokens plus each image's mean bottleneck
    feature (the last layer is linear, so this is the mean of its outputs over all tokens).
    """
    tok = teacher.backbone(glob, return_all_tokens=True)
    if idx is None:
        t_cls, t_patch = teacher.head(tok)
        return t_cls, t_patch, None
    z = teacher.head.embed(tok)
    return (teacher.head.last_layer(z[:, 0]), teacher.head.last_layer2(_gather_tokens(z[:, 1:], idx)),
            teacher.head.last_layer2(z[:, 1:].mean(dim=1)))


class TeacherPass(nn.Module):
    """``teacher_pass`` as a module (what FSDP shards: its hooks gather the teacher's parameters).

    forward(glob (G, 3, H, W), idx (G, M) | None) -> as ``teacher_pass``.
    """

    def __init__(self, teacher: iBOTModel) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, glob: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        return teacher_pass(self.teacher, glob, idx)


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
        max_masked: static bound on masked tokens per crop for the gather (None = all tokens;
            use ``ibot.masking.max_masked_tokens`` for the configuration's proven bound).
        autocast_dtype: e.g. ``torch.bfloat16`` for mixed precision; None = fp32.
        scaler: a ``torch.amp.GradScaler`` for fp16.
        student_pass: the student's forward as one module — pass ``DDP(StudentPass(student, ...))``
            for multi-process training (DDP must see the whole forward); default unwrapped.
        teacher_forward: the teacher's forward as one module — pass a sharded ``TeacherPass(teacher)``
            under FSDP; default unwrapped.
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
    student_pass: nn.Module | None = None
    teacher_forward: nn.Module | None = None
    _ema: tuple[list[Tensor], list[Tensor]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ema = shared_parameters(self.student, self.teacher)
        if self.student_pass is None:
            self.student_pass = StudentPass(self.student, self.head_on_masked_only)
        if self.teacher_forward is None:
            self.teacher_forward = TeacherPass(self.teacher)

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
        idx = weight = None
        if self.head_on_masked_only:
            m = mask[0].numel() if self.max_masked is None else self.max_masked
            # check=False: no host sync; the bound comes from max_masked_tokens (proven, tested).
            idx, weight = mask_to_indices(mask, m, check=False)
        with self._autocast(glob.device):
            t_cls, t_patch, t_mean = self.teacher_forward(glob, idx)  # official order: teacher first
            s_cls, s_local, s_patch = self.student_pass(glob, mask, images[ng:], idx)
        if weight is None:
            weight = mask.flatten(1).float()
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
        if self.scaler is not None:
            self.scaler.scale(out["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            out["loss"].backward()
        # Listed after backward: between forward and backward FSDP registers gathered copies in place
        # of the sharded parameters (whose gradients the optimizer reads).
        params = [p for p in self.student.parameters() if p.requires_grad]
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
