"""Parity of one iBOT training step with an independent, naive reference of the official step.

The reference below (``Ref*`` modules, ``ref_ibot_loss``, ``ref_train_step``) is written for this test
from the semantics documented in shared/notes/ibot-reference.md §4-§8 and §15 (official bytedance/ibot
``main_ibot.py::train_one_epoch / iBOTLoss``, ``models/vision_transformer.py``, ``models/head.py``,
``utils.py``). It deliberately uses the slow, explicit forms the official code uses:

* attention as ``softmax((q @ kᵀ) · scale) @ v`` (the project uses timm's fused SDPA);
* the mask token written *in place* into the conv patch projection before [CLS] and pos-embed;
* pos-embed interpolation with ``scale_factor=((h0 + 0.1) / n, (w0 + 0.1) / n)``, bicubic;
* drop path drawing ``torch.rand((B, 1, 1))`` in the official order (teacher: none, student global
  crops, then student local crops), one module called twice per block;
* a head built with ``torch.nn.utils.weight_norm`` (``weight_g`` / ``weight_v``);
* the loss as the official double loop over (teacher view q, student view v), the temperature
  schedule written out per epoch, centers updated after the loss terms;
* the step: backward, per-parameter clipping with ``clip / (norm + 1e-6)`` when < 1, "last_layer"
  substring freezing during the first epoch, the first AdamW step written out explicitly with the
  official parameter groups, and the EMA over the parameter names both networks share.

Weights enter both implementations through state dicts, so nothing of the project's model code is
used to compute the reference numbers.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ibot.head import iBOTHead
from ibot.loss import iBOTLoss
from ibot.masking import mask_to_indices
from ibot.model import iBOTModel, load_model_state
from ibot.optim import param_groups
from ibot.train_step import iBOTTrainStep
from ibot.vit import iBOTViT

# ----------------------------------------------------------------------------- tiny configuration

EMBED, DEPTH, HEADS, PATCH = 32, 2, 2, 8
IMG, LOCAL_IMG = 32, 16  # 4x4 patch grid for global crops, 2x2 (interpolated pos-embed) for locals
HIDDEN, BOTTLENECK, OUT_DIM = 48, 16, 64
B, NG, NL = 2, 2, 3
STUDENT_TEMP = 0.1
# teacher temperatures: (warm-up, final) over WARM epochs out of NEPOCHS (epoch 0 and 1 differ)
T_CLS, T_PATCH, WARM, NEPOCHS = (0.04, 0.07), (0.05, 0.08), 2, 3
LAMBDA1, LAMBDA2 = 1.0, 0.5
CLIP = 0.3
BETAS, EPS = (0.9, 0.999), 1e-8
# per-iteration schedules (2 iterations per epoch); distinct values catch wrong indexing
LR = np.array([1e-3, 2e-3, 3e-3, 4e-3])
WD = np.array([0.04, 0.05, 0.06, 0.07])
MOM = np.array([0.99, 0.98, 0.97, 0.96])
SEED = 1234
# Gradients: two fp32 evaluations of the same step (fused SDPA vs the explicit attention, gather vs
# full sequence, einsum vs loops) each sit ~5e-7 (max-relative) from a float64 evaluation of the
# reference on these weights, so they differ from each other by up to ~1.05e-6 (measured over 1-8
# threads). Gradients are therefore compared at 3e-6; everything else at 1e-6. A semantic error
# (a missing term, a wrong clip/freeze/temperature) shows up at >= 1e-3.
GRAD_RTOL = 3e-6



def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b|."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


# ----------------------------------------------------------------------------- reference model


class RefDropPath(nn.Module):
    """Per-sample stochastic depth, one ``torch.rand((B, 1, 1))`` draw per call; counts drops."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.dropped = 0

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        bern = torch.floor(keep + torch.rand((x.shape[0], 1, 1), dtype=x.dtype))
        self.dropped += int((bern == 0).sum())
        return x / keep * bern


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim)
        # one module used for both residual branches, as the official Block
        self.drop_path = RefDropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH, stride=PATCH)


class RefViT(nn.Module):
    def __init__(self, drop_path_rate: float, masked_im_modeling: bool) -> None:
        super().__init__()
        n = IMG // PATCH
        self.patch_embed = RefPatchEmbed(EMBED)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n * n, EMBED))
        # official stochastic-depth rule: float32 linspace, .item() per block
        dpr = [r.item() for r in torch.linspace(0, drop_path_rate, DEPTH)]
        self.blocks = nn.ModuleList(RefBlock(EMBED, HEADS, r) for r in dpr)
        self.norm = nn.LayerNorm(EMBED, eps=1e-6)
        if masked_im_modeling:
            self.masked_embed = nn.Parameter(torch.zeros(1, EMBED))

    def pos_encoding(self, h0: int, w0: int):
        n = int(math.sqrt(self.pos_embed.shape[1] - 1))
        if h0 == n and w0 == n:
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, n, n, EMBED).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / n, (w0 + 0.1) / n), mode="bicubic")
        assert grid.shape[-2:] == (h0, w0)
        return torch.cat((self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, EMBED)), 1)

    def forward(self, x, mask=None):
        """All final-norm tokens (B, 1 + N, D)."""
        x = self.patch_embed.proj(x)
        b, _, h0, w0 = x.shape
        if mask is not None:
            x.permute(0, 2, 3, 1)[mask, :] = self.masked_embed.to(x.dtype)  # in place, official
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_encoding(h0, w0)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def _ref_weight_norm_linear(in_dim: int, out_dim: int, norm_last_layer: bool) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated (still works)
        layer = torch.nn.utils.weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    layer.weight_g.data.fill_(1.0)
    if norm_last_layer:
        layer.weight_g.requires_grad = False
    return layer


class RefHead(nn.Module):
    def __init__(self, out_dim: int, patch_out_dim: int, norm_last_layer: bool, shared_head: bool) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(EMBED, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN), nn.GELU(),
                                 nn.Linear(HIDDEN, BOTTLENECK))
        self.last_layer = _ref_weight_norm_linear(BOTTLENECK, out_dim, norm_last_layer)
        self.last_layer2 = (self.last_layer if shared_head
                            else _ref_weight_norm_linear(BOTTLENECK, patch_out_dim, norm_last_layer))

    def forward(self, x):
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        if x.ndim == 2:
            return self.last_layer(z)
        return self.last_layer(z[:, 0]), self.last_layer2(z[:, 1:])


class RefWrapper(nn.Module):
    """Official MultiCropWrapper: one backbone pass per run of equal-width crops, one head pass."""

    def __init__(self, backbone: RefViT, head: RefHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops, masks=None):
        outs, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            m = torch.cat(masks[start:end]) if masks is not None else None
            outs.append(self.backbone(torch.cat(crops[start:end]), mask=m))
            start = end
        return self.head(torch.cat(outs))


# ----------------------------------------------------------------------------- reference loss / step


def ref_temp(warm: float, final: float, epoch: int) -> float:
    """Per-epoch linear ramp over WARM epochs (linspace endpoints included), then ``final``."""
    if epoch < WARM:
        return warm + (final - warm) * epoch / (WARM - 1)
    return final


def ref_ibot_loss(student_out, teacher_out, student_local_cls, masks, epoch, center, center2):
    """Official iBOTLoss.forward as a double loop; returns (terms, new center, new center2)."""
    s_cls, s_patch = student_out
    t_cls, t_patch = teacher_out
    s_cls = torch.cat([s_cls, student_local_cls])
    s_cls_c = (s_cls / STUDENT_TEMP).chunk(NG + NL)
    s_patch_c = (s_patch / STUDENT_TEMP).chunk(NG)
    t_cls_c = F.softmax((t_cls - center) / ref_temp(*T_CLS, epoch), dim=-1).detach().chunk(NG)
    t_patch_c = F.softmax((t_patch - center2) / ref_temp(*T_PATCH, epoch), dim=-1).detach().chunk(NG)
    total1, n1, total2, n2 = 0.0, 0, 0.0, 0
    for q in range(NG):
        for v in range(NG + NL):
            if v == q:
                tok = torch.sum(-t_patch_c[q] * F.log_softmax(s_patch_c[v], dim=-1), dim=-1)  # (B, N)
                m = masks[v].flatten(-2, -1).float()
                per_image = torch.sum(tok * m, dim=-1) / m.sum(dim=-1).clamp(min=1.0)
                total2 = total2 + per_image.mean()
                n2 += 1
            else:
                total1 = total1 + torch.sum(-t_cls_c[q] * F.log_softmax(s_cls_c[v], dim=-1), dim=-1).mean()
                n1 += 1
    cls = total1 / n1 * LAMBDA1
    patch = total2 / n2 * LAMBDA2
    with torch.no_grad():
        new_center = center * 0.9 + t_cls.sum(dim=0, keepdim=True) / len(t_cls) * 0.1
        new_center2 = center2 * 0.9 + t_patch.mean(1).sum(dim=0, keepdim=True) / len(t_patch) * 0.1
    return dict(cls=cls, patch=patch, loss=cls + patch), new_center, new_center2


def ref_train_step(student: RefWrapper, teacher: RefWrapper, images, masks, epoch, it, center, center2):
    """One official iteration; mutates student/teacher, returns (terms, centers, grads, n_clipped)."""
    lr, wd, mom = float(LR[it]), float(WD[it]), float(MOM[it])
    with torch.no_grad():
        teacher_out = teacher(images[:NG])
    student_out = student(images[:NG], masks[:NG])
    local_cls = student(images[NG:])[0]
    terms, c1, c2 = ref_ibot_loss(student_out, teacher_out, local_cls, masks, epoch, center, center2)

    for p in student.parameters():
        p.grad = None
    terms["loss"].backward()
    clipped = unclipped = 0
    for _, p in student.named_parameters():
        if p.grad is not None:
            coef = CLIP / (p.grad.norm(2) + 1e-6)
            if coef < 1:
                p.grad.mul_(coef)
                clipped += 1
            else:
                unclipped += 1
    if epoch < 1:  # freeze_last_layer = 1
        for name, p in student.named_parameters():
            if "last_layer" in name:
                p.grad = None
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in student.named_parameters()}

    # First AdamW step, written out: decoupled decay, m = (1-β1)g, v = (1-β2)g², bias corrections.
    with torch.no_grad():
        for name, p in student.named_parameters():
            if not p.requires_grad or p.grad is None:
                continue
            decay = 0.0 if (name.endswith(".bias") or p.ndim == 1) else wd
            p.mul_(1 - lr * decay)
            m = (1 - BETAS[0]) * p.grad
            v = (1 - BETAS[1]) * p.grad * p.grad
            denom = v.sqrt() / math.sqrt(1 - BETAS[1]) + EPS
            p.sub_(lr / (1 - BETAS[0]) * m / denom)
        # EMA over the names both networks have (the teacher has no masked_embed)
        t_params = dict(teacher.named_parameters())
        for name, p in student.named_parameters():
            if name in t_params:
                t_params[name].mul_(mom).add_((1 - mom) * p.detach())
    return terms, c1, c2, grads, (clipped, unclipped)


# ----------------------------------------------------------------------------- shared set-up


def _project_pair(drop_path_rate, shared_head, shared_head_teacher, norm_last_layer, patch_out_dim):
    torch.manual_seed(0)  # the initial values enter _randomise
    vit = dict(img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS)
    head = dict(hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK)
    student = iBOTModel(iBOTViT(**vit, drop_path_rate=drop_path_rate, masked_im_modeling=True),
                        iBOTHead(EMBED, OUT_DIM, patch_out_dim, norm_last_layer=norm_last_layer,
                                 shared_head=shared_head, **head))
    t_patch = OUT_DIM if shared_head_teacher else patch_out_dim
    teacher = iBOTModel(iBOTViT(**vit),
                        iBOTHead(EMBED, OUT_DIM, t_patch, norm_last_layer=True,
                                 shared_head=shared_head_teacher, **head))
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _randomise(state: dict, gen: torch.Generator, scale: float) -> dict:
    """Every tensor perturbed (biases, norms, masked_embed and weight_g included); aliases kept."""
    out, seen = {}, {}
    for k, v in state.items():
        key = v.data_ptr()
        if key not in seen:
            noise = torch.randn(v.shape, generator=gen) * scale
            seen[key] = (v + noise) if "weight_g" not in k else (1.0 + noise.abs())
        out[k] = seen[key]
    return out


def _inputs(gen: torch.Generator):
    images = [torch.randn(B, 3, IMG, IMG, generator=gen) for _ in range(NG)]
    images += [torch.randn(B, 3, LOCAL_IMG, LOCAL_IMG, generator=gen) for _ in range(NL)]
    g = IMG // PATCH
    m0 = torch.rand(B, g, g, generator=gen) < 0.35
    m1 = torch.rand(B, g, g, generator=gen) < 0.5
    m0[1] = False  # one image without any masked token
    m1[0] = False
    m1[0, 0, :3] = True  # counts differ per image
    lg = LOCAL_IMG // PATCH
    local_masks = [torch.rand(B, lg, lg, generator=gen) < 0.3 for _ in range(NL)]  # unused, as official
    return images, [m0, m1] + local_masks


CASES = [
    # head_on_masked_only, max_masked, shared_head, shared_head_teacher, norm_last_layer, epoch, drop_path
    pytest.param(True, "max", True, True, False, 1, 0.1, id="gather-shared-trainable_g-ep1-dp"),
    pytest.param(False, None, True, True, False, 1, 0.0, id="full-shared-trainable_g-ep1"),
    pytest.param(True, None, False, True, True, 0, 0.0, id="gather-unshared-normll-ep0"),
    pytest.param(False, None, False, True, True, 1, 0.1, id="full-unshared-normll-ep1-dp"),
    pytest.param(True, "max", False, True, False, 0, 0.1, id="gather-unshared-trainable_g-ep0-dp"),
    pytest.param(False, None, True, True, True, 0, 0.0, id="full-shared-normll-ep0"),
    pytest.param(True, "max", False, False, False, 1, 0.0, id="gather-unshared-teacher_unshared-ep1"),
]


@pytest.mark.parametrize(
    "hmo, max_masked, shared_head, shared_head_teacher, norm_last_layer, epoch, drop_path", CASES)
def test_train_step_matches_naive_official_reference(
        hmo, max_masked, shared_head, shared_head_teacher, norm_last_layer, epoch, drop_path):
    gen = torch.Generator().manual_seed(0)
    patch_out_dim = OUT_DIM if (shared_head or shared_head_teacher) else 48
    student, teacher = _project_pair(drop_path, shared_head, shared_head_teacher, norm_last_layer,
                                     patch_out_dim)
    s_state = _randomise(student.state_dict(), gen, 0.05)
    t_state = _randomise(teacher.state_dict(), gen, 0.05)  # teacher differs from the student
    load_model_state(student, s_state)
    load_model_state(teacher, t_state)
    if shared_head:
        assert student.head.last_layer2 is student.head.last_layer

    ref_student = RefWrapper(RefViT(drop_path, True),
                             RefHead(OUT_DIM, patch_out_dim, norm_last_layer, shared_head))
    ref_teacher = RefWrapper(RefViT(0.0, False),
                             RefHead(OUT_DIM, OUT_DIM if shared_head_teacher else patch_out_dim, True,
                                     shared_head_teacher))
    ref_student.load_state_dict(s_state, strict=True)
    ref_teacher.load_state_dict(t_state, strict=True)
    for p in ref_teacher.parameters():
        p.requires_grad_(False)
    assert ({n for n, p in ref_student.named_parameters() if p.requires_grad}
            == {n for n, p in student.named_parameters() if p.requires_grad})

    images, masks = _inputs(gen)
    center = torch.randn(1, OUT_DIM, generator=gen) * 0.3
    center2 = torch.randn(1, 1, OUT_DIM if shared_head_teacher else patch_out_dim, generator=gen) * 0.3
    it = 2 * epoch + 1
    student_before = {n: p.detach().clone() for n, p in student.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}

    # ---- reference
    torch.manual_seed(SEED)
    ref_terms, ref_c1, ref_c2, ref_grads, (n_clipped, n_unclipped) = ref_train_step(
        ref_student, ref_teacher, images, masks, epoch, it, center.clone(), center2.clone())
    assert n_clipped > 0 and n_unclipped > 0, "clipping must be exercised both ways"
    if drop_path > 0:
        assert sum(m.dropped for m in ref_student.modules() if isinstance(m, RefDropPath)) > 0

    # ---- project
    loss = iBOTLoss(OUT_DIM, OUT_DIM if shared_head_teacher else patch_out_dim, NG, NL, T_CLS[0], T_CLS[1],
                    T_PATCH[0], T_PATCH[1], WARM, NEPOCHS, lambda1=LAMBDA1, lambda2=LAMBDA2)
    loss.center.copy_(center)
    loss.center2.copy_(center2)
    optimizer = torch.optim.AdamW(param_groups(student), betas=BETAS, eps=EPS)
    mm = int(torch.cat(masks[:NG]).flatten(1).sum(1).max()) if max_masked == "max" else None
    step = iBOTTrainStep(student, teacher, loss, optimizer, LR, WD, MOM, clip_grad=CLIP,
                         freeze_last_layer=1, head_on_masked_only=hmo, max_masked=mm)
    student.train()
    teacher.train()
    torch.manual_seed(SEED)
    terms = step(images, masks, epoch, it)

    # ---- loss terms and centers
    for k in ("cls", "patch", "loss"):
        assert rel(terms[k], ref_terms[k]) <= 1e-6, k
    assert rel(loss.center, ref_c1) <= 1e-6
    assert rel(loss.center2, ref_c2) <= 1e-6
    assert rel(loss.center, center) > 1e-3  # the centers did move

    # ---- gradients after clipping and freezing
    s_params = dict(student.named_parameters())
    assert set(s_params) == set(ref_grads)
    for name, p in s_params.items():
        ref_g = ref_grads[name]
        if ref_g is None:
            assert p.grad is None, name
            continue
        assert p.grad is not None, name
        assert rel(p.grad, ref_g) <= GRAD_RTOL, name
    frozen = [n for n, p in s_params.items() if "last_layer" in n and p.requires_grad]
    assert frozen and all((ref_grads[n] is None) == (epoch == 0) for n in frozen)

    # ---- the project's optimizer applied the explicit first AdamW step to its own gradients
    lr, wd, mom = float(LR[it]), float(WD[it]), float(MOM[it])
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    for name, p in s_params.items():
        before = student_before[name]
        if p.grad is None:
            assert torch.equal(p.detach(), before), name  # frozen: skipped by AdamW, no decay either
            continue
        g = p.grad
        expect = before * (1 - lr * (wd if id(p) in decayed else 0.0))
        expect = expect - lr / (1 - BETAS[0]) * ((1 - BETAS[0]) * g) / (
            ((1 - BETAS[1]) * g * g).sqrt() / math.sqrt(1 - BETAS[1]) + EPS)
        assert rel(p.detach() - before, expect - before) <= 1e-6, name

    # ---- student after one AdamW step vs the reference
    # AdamW's first step is lr·g/(|g| + eps): where |g| is not far above eps = 1e-8 the update turns
    # the gradients' rounding noise (~1e-7 of their summands) into visible differences. That is always
    # the case for the attention *key* bias (mathematically zero gradient: softmax is invariant to it,
    # its gradient is pure noise ~1e-11) and, by chance, for a few elements of other tensors. Those
    # elements (|g_ref| < 1e-6 = 100·eps) can only be bounded: |Δ| <= lr. All others must match to 1e-6.
    ref_s = dict(ref_student.named_parameters())
    n_checked = n_bounded = 0
    for name, p in s_params.items():
        a, b = p.detach(), ref_s[name].detach()
        g_ref = ref_grads[name]
        if g_ref is None:
            assert torch.equal(a, b), name
            continue
        ill = g_ref.abs() < 1e-6
        if name.endswith("attn.qkv.bias"):
            assert bool(ill.view(3, EMBED)[1].all()), "key-bias gradient should be rounding noise"
            assert not bool(ill.view(3, EMBED)[0].any() or ill.view(3, EMBED)[2].any())
        scale = b.abs().max()
        assert float(((a - b).abs() * ~ill).max()) <= 1e-6 * float(scale), name
        assert float(((a - b).abs() * ill).max()) <= lr, name
        n_checked += int((~ill).sum())
        n_bounded += int(ill.sum())
    assert n_bounded < 0.05 * (n_checked + n_bounded)

    # ---- teacher after the EMA: exact formula on the project's own tensors, then vs the reference
    ref_t = dict(ref_teacher.named_parameters())
    for name, p in teacher.named_parameters():
        a, b = p.detach(), ref_t[name].detach()
        assert rel(a, mom * teacher_before[name] + (1 - mom) * s_params[name].detach()) <= 1e-6, name
        g_ref = ref_grads[name]
        ill = torch.zeros_like(a, dtype=torch.bool) if g_ref is None else g_ref.abs() < 1e-6
        scale = b.abs().max()
        assert float(((a - b).abs() * ~ill).max()) <= 1e-6 * float(scale), name
        assert float(((a - b).abs() * ill).max()) <= (1 - mom) * lr * (1 + 1e-4) + 1e-7, name


# ----------------------------------------------------------------------------- gather ≡ full sequence


def test_masked_gather_loss_equals_full_sequence_loss():
    """head_on_masked_only with max_masked = the largest per-image count gives the same loss terms,
    centers and gradients (every student parameter) as running the heads on all tokens."""
    gen = torch.Generator().manual_seed(3)
    student, teacher = _project_pair(0.0, False, True, False, OUT_DIM)
    load_model_state(student, _randomise(student.state_dict(), gen, 0.05))
    load_model_state(teacher, _randomise(teacher.state_dict(), gen, 0.05))
    images, masks = _inputs(gen)
    counts = torch.cat(masks[:NG]).flatten(1).sum(1)
    assert len(set(counts.tolist())) >= 3 and int(counts.min()) == 0
    max_masked = int(counts.max())
    assert max_masked < (IMG // PATCH) ** 2  # the gather really drops tokens

    results = []
    for hmo in (False, True):
        s = copy.deepcopy(student)
        loss = iBOTLoss(OUT_DIM, OUT_DIM, NG, NL, *T_CLS, *T_PATCH, WARM, NEPOCHS)
        loss.center.normal_(generator=torch.Generator().manual_seed(5))
        loss.center2.normal_(generator=torch.Generator().manual_seed(6))
        step = iBOTTrainStep(s, teacher, loss, torch.optim.SGD(s.parameters(), lr=0.0), LR, WD, MOM,
                             head_on_masked_only=hmo, max_masked=max_masked if hmo else None)
        terms = step.forward_loss(images, masks, epoch=1)
        terms["loss"].backward()
        results.append((terms, loss.center.clone(), loss.center2.clone(),
                        {n: p.grad.clone() for n, p in s.named_parameters() if p.grad is not None}))
    (t_full, c_full, c2_full, g_full), (t_gat, c_gat, c2_gat, g_gat) = results
    for k in ("cls", "patch", "loss"):
        assert rel(t_gat[k], t_full[k]) <= 1e-6, k
    assert float(t_full["patch"].detach()) > 0
    assert rel(c_gat, c_full) <= 1e-6 and rel(c2_gat, c2_full) <= 1e-6
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert set(g_full) == set(g_gat) == trainable
    for n in g_full:
        assert rel(g_gat[n], g_full[n]) <= GRAD_RTOL, n


def test_masked_gather_with_too_small_bound_differs():
    """Sanity check that the equality above is not vacuous: a bound below the largest count drops
    masked tokens and changes the patch loss."""
    gen = torch.Generator().manual_seed(3)
    student, teacher = _project_pair(0.0, True, True, False, OUT_DIM)
    load_model_state(student, _randomise(student.state_dict(), gen, 0.05))
    load_model_state(teacher, _randomise(teacher.state_dict(), gen, 0.05))
    images, masks = _inputs(gen)
    max_masked = int(torch.cat(masks[:NG]).flatten(1).sum(1).max())
    out = []
    for mm in (max_masked, max_masked - 1):
        loss = iBOTLoss(OUT_DIM, OUT_DIM, NG, NL, *T_CLS, *T_PATCH, WARM, NEPOCHS)
        step = iBOTTrainStep(student, teacher, loss, torch.optim.SGD(student.parameters(), lr=0.0),
                             LR, WD, MOM, head_on_masked_only=True, max_masked=mm)
        with torch.no_grad():
            out.append(step.forward_loss(images, masks, epoch=0))
    assert rel(out[1]["patch"], out[0]["patch"]) > 1e-4
    assert rel(out[1]["cls"], out[0]["cls"]) <= 1e-6


# ----------------------------------------------------------------------------- gather indices


def test_mask_to_indices_hand_example():
    """The gather used by the fast path: masked positions first in token order, padded slots weight 0."""
    masks = torch.tensor([
        [[False, True], [True, False]],   # tokens 1, 2 masked
        [[True, False], [False, False]],  # token 0 masked
        [[False, False], [False, False]],  # none
    ])
    idx, w = mask_to_indices(masks, 2)
    assert w.dtype == torch.float32 and idx.shape == (3, 2)
    assert w.tolist() == [[1, 1], [1, 0], [0, 0]]
    assert idx[0].tolist() == [1, 2] and idx[1, 0].item() == 0
    # padded slots may point anywhere in [0, N) but carry weight 0
    assert bool(((idx >= 0) & (idx < 4)).all())
    idx, w = mask_to_indices(masks, 4)
    assert idx[0, :2].tolist() == [1, 2] and w.sum(1).tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="more than max_masked"):
        mask_to_indices(masks, 1)
    # larger random example: the weighted slots are exactly the masked tokens, in increasing order
    m = torch.rand(4, 3, 5, generator=torch.Generator().manual_seed(0)) < 0.4
    k = int(m.flatten(1).sum(1).max())
    idx, w = mask_to_indices(m, k)
    for i in range(4):
        masked = torch.nonzero(m[i].flatten()).flatten().tolist()
        assert idx[i, : len(masked)].tolist() == masked
        assert w[i].tolist() == [1.0] * len(masked) + [0.0] * (k - len(masked))
