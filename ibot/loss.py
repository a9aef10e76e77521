"""iBOT loss: [CLS] self-distillation across views plus masked-patch self-distillation.

Same math as the official ``main_ibot.py::iBOTLoss``. Patch logits may come as full sequences
(``M = N``, ``mask_weight`` = the mask) or gathered at the masked positions only (``M`` = a static
upper bound, padded slots with weight 0) — both give the same loss and gradients, the second at a
fraction of the cost because the 8192-way head then only runs on masked tokens.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ibot.schedules import teacher_temp_schedule


class iBOTLoss(nn.Module):
    """Official iBOT loss with centers ``center`` (1, K) and ``center2`` (1, 1, K_patch).

    Args:
        out_dim, patch_out_dim: logits of the [CLS] and patch heads.
        ngcrops, nlcrops: global / local crops per image.
        warmup_teacher_temp, teacher_temp: [CLS] teacher temperature ramp (per epoch).
        warmup_teacher_patch_temp, teacher_patch_temp: patch teacher temperature ramp.
        warmup_teacher_temp_epochs, nepochs: ramp length and training length in epochs.
        mim_start_epoch: the patch ramp starts after this many epochs at the warm-up value.
    """

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        ngcrops: int,
        nlcrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_patch_temp: float,
        teacher_patch_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        center_momentum2: float = 0.9,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        mim_start_epoch: int = 0,
    ) -> None:
        super().__init__()
        if ngcrops < 1 or nlcrops < 0:
            raise ValueError(f"need ngcrops >= 1 and nlcrops >= 0, got {ngcrops}, {nlcrops}")
        if ngcrops + nlcrops < 2:
            raise ValueError("the [CLS] loss needs at least two views")
        self.ngcrops, self.nlcrops = ngcrops, nlcrops
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.lambda1, self.lambda2 = lambda1, lambda2
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.teacher_temp_schedule = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)
        self.teacher_temp2_schedule = teacher_temp_schedule(
            warmup_teacher_patch_temp, teacher_patch_temp, warmup_teacher_temp_epochs, nepochs,
            hold_epochs=mim_start_epoch)

    def forward(
        self,
        student_cls: Tensor,
        student_local_cls: Tensor | None,
        student_patch: Tensor,
        teacher_cls: Tensor,
        teacher_patch: Tensor,
        mask_weight: Tensor,
        epoch: int,
        teacher_patch_mean: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Loss terms; updates both centers afterwards.

        Shapes (G = ngcrops·B global rows in crop-major order, L = nlcrops·B):
            student_cls (G, K), student_local_cls (L, K) or None, teacher_cls (G, K);
            student_patch, teacher_patch (G, M, Kp) at the same token positions;
            mask_weight (G, M): 1 for masked tokens, 0 elsewhere (and for padding);
            teacher_patch_mean (G, Kp): mean teacher patch logits over *all* tokens of each image,
            needed for the center when ``teacher_patch`` holds only gathered tokens.
        Returns ``dict(cls, patch, loss)`` of scalars.
        """
        ng = self.ngcrops
        b = teacher_cls.shape[0] // ng
        temp = float(self.teacher_temp_schedule[epoch])
        temp2 = float(self.teacher_temp2_schedule[epoch])

        # [CLS]: cross-entropy of every teacher global view q with every student view v != q.
        s_cls = student_cls if student_local_cls is None else torch.cat((student_cls, student_local_cls))
        nviews = s_cls.shape[0] // b
        if nviews * b != s_cls.shape[0] or teacher_cls.shape[0] != ng * b or nviews != ng + self.nlcrops:
            raise ValueError(
                f"expected {ng} global and {self.nlcrops} local views of the same batch, got teacher rows "
                f"{teacher_cls.shape[0]} and student rows {s_cls.shape[0]}")
        s_logp = F.log_softmax(s_cls / self.student_temp, dim=-1)
        t_cls = F.softmax((teacher_cls - self.center) / temp, dim=-1).detach()
        s_logp = s_logp.reshape(nviews, b, -1)
        t_cls = t_cls.reshape(ng, b, -1)
        # ce[q, v] = mean_b sum_k -t[q, b, k] log s[v, b, k]
        ce = -torch.einsum("qbk,vbk->qv", t_cls, s_logp) / b
        n_terms = ng * nviews - ng
        loss_cls = (ce.sum() - ce[:, :ng].diagonal().sum()) / n_terms * self.lambda1

        # Patch: same-view masked-token cross-entropy; per-image mean over masked tokens, images
        # without masked tokens count as 0 in the mean over images.
        s_plogp = F.log_softmax(student_patch / self.student_temp, dim=-1)
        t_patch = F.softmax((teacher_patch - self.center2) / temp2, dim=-1).detach()
        tok = torch.sum(-t_patch * s_plogp, dim=-1)  # (G, M)
        w = mask_weight.to(tok.dtype)
        per_img = torch.sum(tok * w, dim=-1) / w.sum(dim=-1).clamp(min=1.0)
        loss_patch = per_img.reshape(ng, b).mean(dim=1).sum() / ng * self.lambda2

        if teacher_patch_mean is None:
            teacher_patch_mean = teacher_patch.mean(dim=1)
        self.update_center(teacher_cls, teacher_patch_mean)
        return dict(cls=loss_cls, patch=loss_patch, loss=loss_cls + loss_patch)

    @torch.no_grad()
    def update_center(self, teacher_cls: Tensor, teacher_patch_mean: Tensor) -> None:
        """EMA of the teacher's mean [CLS] logits (G, K) and mean patch logits (G, Kp), all processes."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        cls_sum = teacher_cls.float().sum(dim=0, keepdim=True)
        patch_sum = teacher_patch_mean.float().sum(dim=0, keepdim=True)
        if world > 1:
            dist.all_reduce(cls_sum)
            dist.all_reduce(patch_sum)
        cls_center = cls_sum / (teacher_cls.shape[0] * world)
        patch_center = patch_sum / (teacher_patch_mean.shape[0] * world)
        self.center.mul_(self.center_momentum).add_(cls_center * (1 - self.center_momentum))
        self.center2.mul_(self.center_momentum2).add_(patch_center.unsqueeze(0) * (1 - self.center_momentum2))
