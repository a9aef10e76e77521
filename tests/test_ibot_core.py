"""Unit tests of the iBOT core: backbone, head, loss, schedules, update rules and model loading.

Golden values are derived independently of the code under test:
* backbone: timm's own ``VisionTransformer`` with the same weights (and timm's
  ``resample_abs_pos_embed`` / ``dynamic_img_size`` for other input sizes); the official pos-embed
  interpolation is checked against a hand-written bicubic resampler (Keys cubic convolution, A = -0.75,
  half-pixel source coordinates ``(i + 0.5) / scale_factor - 0.5``, border indices clamped — the
  definition PyTorch documents for ``mode='bicubic', align_corners=False``) evaluated in float64;
* attention maps: an explicit ``softmax(q kᵀ / sqrt(d_head))`` from the ``qkv`` weight matrix;
* WeightNormLinear: ``torch.nn.utils.weight_norm`` on the same ``v`` / ``g``;
* schedules and the loss: numbers worked out by hand in the comments next to each test;
* update rules: explicit element-wise formulas.
"""

from __future__ import annotations

import io
import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import ibot.vit as vit_module
from ibot.head import WeightNormLinear, iBOTHead
from ibot.loss import iBOTLoss
from ibot.model import (
    build_student_teacher,
    infer_model_config,
    load_model_state,
    student_teacher_from_state,
)
from ibot.optim import cancel_last_layer_gradients, clip_gradients, ema_update, param_groups, shared_parameters
from ibot.schedules import cosine_scheduler, teacher_temp_schedule
from ibot.vit import build_vit, iBOTViT

EMBED, DEPTH, HEADS, PATCH, IMG = 32, 2, 2, 8, 32
LN3, LN2 = math.log(3.0), math.log(2.0)



def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b|."""
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def tiny_vit(seed: int = 0, **kw) -> iBOTViT:
    torch.manual_seed(seed)
    m = iBOTViT(**{**dict(img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS), **kw})
    with torch.no_grad():  # non-trivial values everywhere (timm zero-inits biases)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def timm_twin(model: iBOTViT, **kw) -> VisionTransformer:
    t = VisionTransformer(img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=DEPTH, num_heads=HEADS,
                          qkv_bias=True, num_classes=0, global_pool="token",
                          norm_layer=partial(nn.LayerNorm, eps=1e-6), **kw)
    sd = {k: v for k, v in model.state_dict().items() if k != "masked_embed"}
    t.load_state_dict(sd, strict=True)
    return t.eval()


# ============================================================================ backbone


def test_backbone_equals_timm_vit_at_native_size():
    model = tiny_vit().eval()
    ref = timm_twin(model)
    x = torch.randn(3, 3, IMG, IMG)
    with torch.no_grad():
        assert rel(model(x, return_all_tokens=True), ref.forward_features(x)) <= 1e-6
        assert rel(model(x), ref(x)) <= 1e-6
        assert model(x).shape == (3, EMBED)


def test_backbone_size_interp_equals_timm_resample_at_other_size():
    model = tiny_vit(pos_interp="size").eval()
    ref = timm_twin(model, dynamic_img_size=True)
    x = torch.randn(2, 3, 48, 48)  # 6x6 grid from the stored 4x4
    with torch.no_grad():
        tokens = model.prepare_tokens(x)
        expect = torch.cat((model.cls_token.expand(2, -1, -1),
                            model.patch_embed.proj(x).flatten(2).transpose(1, 2)), dim=1)
        expect = expect + resample_abs_pos_embed(model.pos_embed, (6, 6), num_prefix_tokens=1)
        assert rel(tokens, expect) <= 1e-6
        assert rel(model(x, return_all_tokens=True), ref.forward_features(x)) <= 1e-6


def _bicubic_matrix(n_in: int, n_out: int, scale_factor: float) -> np.ndarray:
    """(n_out, n_in) float64 resampling matrix of 1-D cubic convolution (A = -0.75), half-pixel
    coordinates, clamped borders."""
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale_factor - 0.5
        x0 = math.floor(src)
        t = src - x0
        for k, coef in enumerate((far(t + 1), near(t), near(1 - t), far(2 - t))):
            w[i, min(max(x0 - 1 + k, 0), n_in - 1)] += coef
    return w


@pytest.mark.parametrize("h0, w0", [(2, 2), (3, 5)])
def test_official_pos_interp_is_the_scale_factor_formula(h0, w0):
    model = tiny_vit()
    with torch.no_grad():
        model.pos_embed.normal_()
    n = IMG // PATCH
    got = model.interpolate_pos_encoding(h0, w0)
    assert got.shape == (1, 1 + h0 * w0, EMBED)
    assert torch.equal(got[:, 0], model.pos_embed[:, 0])

    grid = model.pos_embed[0, 1:].detach().double().numpy().reshape(n, n, EMBED)
    wh = _bicubic_matrix(n, h0, (h0 + 0.1) / n)
    ww = _bicubic_matrix(n, w0, (w0 + 0.1) / n)
    by_hand = np.einsum("ih,hwc,jw->ijc", wh, grid, ww).reshape(1, h0 * w0, EMBED)
    assert rel(got[:, 1:], torch.from_numpy(by_hand)) <= 1e-5

    explicit = F.interpolate(model.pos_embed[:, 1:].reshape(1, n, n, EMBED).permute(0, 3, 1, 2),
                             scale_factor=((h0 + 0.1) / n, (w0 + 0.1) / n), mode="bicubic")
    assert rel(got[:, 1:], explicit.permute(0, 2, 3, 1).reshape(1, -1, EMBED)) <= 1e-6

    # a size-based resize (timm's, antialiased, or plain) is a different function
    by_size = resample_abs_pos_embed(model.pos_embed, (h0, w0), num_prefix_tokens=1)
    assert rel(got, by_size) > 1e-3
    plain = F.interpolate(model.pos_embed[:, 1:].reshape(1, n, n, EMBED).permute(0, 3, 1, 2),
                          size=(h0, w0), mode="bicubic")
    assert rel(got[:, 1:], plain.permute(0, 2, 3, 1).reshape(1, -1, EMBED)) > 1e-3
    # ... and the 'size' mode of the same model is exactly timm's
    model.pos_interp = "size"
    assert rel(model.interpolate_pos_encoding(h0, w0), by_size) <= 1e-7


def test_native_grid_uses_pos_embed_unchanged():
    model = tiny_vit()
    assert model.interpolate_pos_encoding(4, 4) is model.pos_embed


@pytest.mark.parametrize("img", [IMG, 16])
def test_mask_token_is_placed_before_pos_embed(img):
    model = tiny_vit(masked_im_modeling=True)
    assert model.masked_embed.shape == (1, EMBED)
    assert torch.equal(iBOTViT(img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=1, num_heads=HEADS,
                               masked_im_modeling=True).masked_embed, torch.zeros(1, EMBED))  # zero init
    g = img // PATCH
    x = torch.randn(3, 3, img, img)
    mask = torch.zeros(3, g, g, dtype=torch.bool)
    mask[0] = True  # image 0 fully masked
    mask[1, 0, 1] = True  # image 1: one token
    with torch.no_grad():
        tok = model.prepare_tokens(x, mask)
        pos = model.interpolate_pos_encoding(g, g)[0]
        conv = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        assert tok.shape == (3, 1 + g * g, EMBED)
        # fully masked image: every patch token is masked_embed + its positional embedding
        assert rel(tok[0, 1:], model.masked_embed + pos[1:]) <= 1e-6
        assert rel(tok[:, 0], (model.cls_token[0, 0] + pos[0]).expand(3, -1)) <= 1e-6
        # partially masked: token 1 (row 0, col 1) replaced, the others keep the conv embedding
        assert rel(tok[1, 2], model.masked_embed[0] + pos[2]) <= 1e-6
        keep = [i for i in range(g * g) if i != 1]
        assert rel(tok[1, 1:][keep], conv[1][keep] + pos[1:][keep]) <= 1e-6
        assert rel(tok[2, 1:], conv[2] + pos[1:]) <= 1e-6  # unmasked image untouched
        # and the token differs from what an unmasked image gives
        assert rel(tok[0], model.prepare_tokens(x)[0]) > 1e-2


def test_mask_errors():
    student = tiny_vit(masked_im_modeling=True)
    with pytest.raises(ValueError, match="does not match the patch grid"):
        student(torch.randn(2, 3, IMG, IMG), mask=torch.zeros(2, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match the patch grid"):
        student(torch.randn(2, 3, IMG, IMG), mask=torch.zeros(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no mask token"):
        tiny_vit()(torch.randn(2, 3, IMG, IMG), mask=torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="pos_interp"):
        iBOTViT(img_size=IMG, patch_size=PATCH, embed_dim=EMBED, depth=1, num_heads=HEADS, pos_interp="area")
    with pytest.raises(ValueError, match="unknown arch"):
        build_vit("vit_huge")


def test_intermediate_layers_and_feature_maps():
    model = tiny_vit(pos_interp="size").eval()
    x = torch.randn(2, 3, 24, 40)  # non-square: 3 x 5 patch grid
    with torch.no_grad():
        last2 = model.get_intermediate_layers(x, n=2)
        assert len(last2) == 2 and all(t.shape == (2, 16, EMBED) for t in last2)
        assert rel(last2[1], model(x, return_all_tokens=True)) <= 1e-6
        raw0 = model.get_intermediate_layers(x, n=[0], norm=False)
        assert len(raw0) == 1
        assert rel(raw0[0], model.blocks[0](model.prepare_tokens(x))) <= 1e-6
        assert rel(last2[0], model.norm(raw0[0])) <= 1e-6
        assert rel(model.get_intermediate_layers(x, n=[-1])[0], last2[1]) <= 1e-6

        maps = model.feature_maps(x, [0, 1])
        assert [tuple(m.shape) for m in maps] == [(2, EMBED, 3, 5)] * 2
        raw = model.get_intermediate_layers(x, n=[0, 1], norm=False)
        for m, t in zip(maps, raw):
            for i, j in [(0, 0), (1, 3), (2, 4)]:
                assert torch.equal(m[:, :, i, j], t[:, 1 + i * 5 + j])
        normed = model.feature_maps(x, [1], norm=True)[0]
        assert rel(normed[:, :, 2, 1], last2[1][:, 1 + 2 * 5 + 1]) <= 1e-6
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=3)
    with pytest.raises(ValueError):
        model.get_intermediate_layers(x, n=[2])


def test_last_selfattention_is_the_softmax_of_scaled_scores():
    model = tiny_vit().eval()
    x = torch.randn(2, 3, IMG, IMG)
    attn = model.get_last_selfattention(x)
    n = 1 + (IMG // PATCH) ** 2
    assert attn.shape == (2, HEADS, n, n)
    assert rel(attn.sum(-1), torch.ones(2, HEADS, n)) <= 1e-6
    with torch.no_grad():
        blk = model.blocks[-1]
        h = blk.norm1(model.blocks[0](model.prepare_tokens(x)))
        w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
        hd = EMBED // HEADS
        q = (h @ w[:EMBED].T + b[:EMBED]).reshape(2, n, HEADS, hd).transpose(1, 2)
        k = (h @ w[EMBED:2 * EMBED].T + b[EMBED:2 * EMBED]).reshape(2, n, HEADS, hd).transpose(1, 2)
        v = (h @ w[2 * EMBED:].T + b[2 * EMBED:]).reshape(2, n, HEADS, hd).transpose(1, 2)
        manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        assert rel(attn, manual) <= 1e-6
        # these are the probabilities the block really uses
        out = blk.attn.proj((attn @ v).transpose(1, 2).reshape(2, n, EMBED))
        assert rel(out, blk.attn(h)) <= 1e-5


def test_grad_checkpointing_gives_identical_gradients(monkeypatch):
    calls = []
    real_checkpoint = vit_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(vit_module, "checkpoint", counting_checkpoint)
    a = tiny_vit(drop_path_rate=0.3, masked_im_modeling=True)
    b = tiny_vit(drop_path_rate=0.3, masked_im_modeling=True, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, IMG, IMG)
    mask = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(0)) < 0.4
    grads = []
    for m in (a, b):
        m.train()
        torch.manual_seed(7)
        out = m(x, mask=mask, return_all_tokens=True)
        (out.square().mean() + out[:, 0].sum()).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert len(calls) == DEPTH  # only the checkpointed model recomputes its blocks
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=0, atol=1e-7 * float(grads[0][n].abs().max())), n
    # without grad mode (or in eval) no checkpoint is used
    with torch.no_grad():
        b(x, mask=mask)
    b.eval()
    b(x, mask=mask)
    assert len(calls) == DEPTH


# ============================================================================ head


def _weight_norm(layer: nn.Linear) -> nn.Linear:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated, still the official implementation
        return torch.nn.utils.weight_norm(layer)


def test_weight_norm_linear_equals_torch_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(16, 24)
    ref = _weight_norm(nn.Linear(16, 24, bias=False))
    with torch.no_grad():
        ours.weight_v.normal_()
        ours.weight_g.uniform_(0.5, 2.0)
        ref.weight_v.copy_(ours.weight_v)
        ref.weight_g.copy_(ours.weight_g)
    assert ours.weight_g.shape == ref.weight_g.shape == (24, 1)
    x1 = torch.randn(5, 7, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = ours(x1), ref(x2)
    assert rel(y1, y2) <= 1e-6
    go = torch.randn_like(y1)
    y1.backward(go)
    y2.backward(go)
    assert rel(ours.weight_v.grad, ref.weight_v.grad) <= 1e-6
    assert rel(ours.weight_g.grad, ref.weight_g.grad) <= 1e-6
    assert rel(x1.grad, x2.grad) <= 1e-6
    # default init: g = 1, rows of W are unit vectors
    fresh = WeightNormLinear(16, 24)
    assert torch.equal(fresh.weight_g, torch.ones(24, 1))
    assert rel(fresh.weight.norm(dim=1), torch.ones(24)) <= 1e-6


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("norm_last_layer", [False, True])
def test_head_freezing_and_sharing(shared, norm_last_layer):
    head = iBOTHead(EMBED, 64, 64, hidden_dim=48, bottleneck_dim=16, norm_last_layer=norm_last_layer,
                    shared_head=shared)
    for layer in (head.last_layer, head.last_layer2):
        assert layer.weight_g.requires_grad is (not norm_last_layer)
        assert layer.weight_v.requires_grad
    names = [n for n, _ in head.named_parameters()]
    keys = list(head.state_dict())
    assert {"last_layer2.weight_g", "last_layer2.weight_v"} <= set(keys)  # both names always saved
    assert sum(k.startswith("last_layer") for k in keys) == 4
    if shared:
        assert head.last_layer2 is head.last_layer
        assert sum(n.startswith("last_layer") for n in names) == 2
        assert not any(n.startswith("last_layer2") for n in names)
        sd = head.state_dict()
        assert sd["last_layer2.weight_v"].data_ptr() == sd["last_layer.weight_v"].data_ptr()
    else:
        assert head.last_layer2 is not head.last_layer
        assert sum(n.startswith("last_layer") for n in names) == 4


def test_head_forward_composition_and_shapes():
    torch.manual_seed(0)
    head = iBOTHead(EMBED, 64, 40, hidden_dim=48, bottleneck_dim=16, norm_last_layer=False)
    x = torch.randn(3, 5, EMBED)
    cls, patch = head(x)
    assert cls.shape == (3, 64) and patch.shape == (3, 4, 40)
    l0, l2, l4 = head.mlp[0], head.mlp[2], head.mlp[4]
    z = l4(F.gelu(l2(F.gelu(l0(x)))))
    z = z / z.norm(dim=-1, keepdim=True)
    w1 = head.last_layer.weight_g * head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    w2 = head.last_layer2.weight_g * head.last_layer2.weight_v / head.last_layer2.weight_v.norm(dim=1, keepdim=True)
    assert rel(cls, z[:, 0] @ w1.T) <= 1e-6
    assert rel(patch, z[:, 1:] @ w2.T) <= 1e-6
    assert rel(head(x[:, 0]), cls) <= 1e-6  # a 2-D input gives the [CLS] projection only
    with pytest.raises(ValueError, match="shared_head"):
        iBOTHead(EMBED, 64, 40, shared_head=True)


# ============================================================================ schedules


def test_cosine_scheduler_hand_values():
    # base 1, final 0, 2 epochs x 2 iterations, 1 warm-up epoch (2 iterations):
    # warm-up = linspace(0, 1, 2) = [0, 1]; cosine over the remaining 2 iterations i = 0, 1:
    # 0 + 0.5 * 1 * (1 + cos(pi * i / 2)) = [1, 0.5]  ->  [0, 1, 1, 0.5]
    np.testing.assert_allclose(cosine_scheduler(1.0, 0.0, 2, 2, warmup_epochs=1), [0, 1, 1, 0.5], atol=1e-12)
    # base 2, final 1, 1 epoch x 4 iterations, no warm-up: 1 + 0.5 (1 + cos(pi i / 4)), i = 0..3
    # = [2, 1 + 0.5 (1 + sqrt(2)/2), 1.5, 1 + 0.5 (1 - sqrt(2)/2)]
    r = math.sqrt(2) / 2
    np.testing.assert_allclose(cosine_scheduler(2.0, 1.0, 1, 4), [2, 1.5 + 0.5 * r, 1.5, 1.5 - 0.5 * r], atol=1e-12)
    # warm-up from 0.5 over 3 explicit steps: linspace(0.5, 1, 3) = [0.5, 0.75, 1]; 1 cosine step = base
    np.testing.assert_allclose(cosine_scheduler(1.0, 0.0, 2, 2, start_warmup_value=0.5, warmup_steps=3),
                               [0.5, 0.75, 1.0, 1.0], atol=1e-12)
    assert cosine_scheduler(5e-4, 1e-6, 3, 7, warmup_epochs=1).shape == (21,)
    with pytest.raises(ValueError):
        cosine_scheduler(1.0, 0.0, 1, 2, warmup_epochs=2)
    with pytest.raises(ValueError):
        cosine_scheduler(1.0, 0.0, 0, 2)


def test_teacher_temp_schedule_hand_values():
    # ramp 0.04 -> 0.07 over 3 epochs (linspace includes both ends), then constant, 5 epochs
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07],
                               atol=1e-12)
    # with 2 hold epochs (official patch schedule with mim_start_epoch = 2), 6 epochs
    np.testing.assert_allclose(teacher_temp_schedule(0.04, 0.07, 3, 6, hold_epochs=2),
                               [0.04, 0.04, 0.04, 0.055, 0.07, 0.07], atol=1e-12)
    with pytest.raises(ValueError):
        teacher_temp_schedule(0.04, 0.07, 3, 4, hold_epochs=2)
    loss = iBOTLoss(8, 8, 2, 0, 0.04, 0.07, 0.04, 0.07, 3, 6, mim_start_epoch=2)
    np.testing.assert_allclose(loss.teacher_temp_schedule, [0.04, 0.055, 0.07, 0.07, 0.07, 0.07], atol=1e-12)
    np.testing.assert_allclose(loss.teacher_temp2_schedule, [0.04, 0.04, 0.04, 0.055, 0.07, 0.07], atol=1e-12)


# ============================================================================ loss


def _golden_loss_inputs():
    """K = 2 logits, B = 1 image, 2 global crops, 0 local crops, 2 patch tokens per crop, epoch 1.

    Temperatures at epoch 1 (ramps over 2 of 3 epochs): [CLS] linspace(0.02, 0.04, 2)[1] = 0.04,
    patch linspace(0.05, 0.07, 2)[1] = 0.07 (epoch 0 would give 0.02 / 0.05 and other numbers).
    center = [0.2, -0.1], center2 = [0, 0.3].
    Teacher [CLS]: view 0 = center -> softmax([0, 0]) = [1/2, 1/2];
                   view 1 = center + [0.04 ln3, 0] -> softmax([ln3, 0]) = [3/4, 1/4].
    Student [CLS] (/0.1): view 0 = [ln3, 0] -> log p = [ln 3/4, ln 1/4]; view 1 = [0, ln3] -> [ln 1/4, ln 3/4].
      (q=0, v=1): -(1/2 ln 1/4 + 1/2 ln 3/4) = 2 ln2 - 1/2 ln3
      (q=1, v=0): -(3/4 ln 3/4 + 1/4 ln 1/4) = 2 ln2 - 3/4 ln3
      cls = mean of the 2 terms = 2 ln2 - 5/8 ln3
    Patch, view 0 (mask [1, 0]): teacher token 0 = center2 + [0.07 ln3, 0] -> [3/4, 1/4]; student token 0
      (/0.1) = [0, ln3] -> log p = [ln 1/4, ln 3/4]; CE = 2 ln2 - 1/4 ln3; token 1 is not masked.
    Patch, view 1 (mask [0, 0]): 0 / clamp(0, min=1) = 0, still counted.
      patch = (2 ln2 - 1/4 ln3 + 0) / 2 = ln2 - 1/8 ln3
    Centers afterwards (momentum 0.9, teacher means over rows / over all tokens):
      center  = 0.9 [0.2, -0.1] + 0.1 [0.2 + 0.02 ln3, -0.1] = [0.2 + 0.002 ln3, -0.1]
      token means: view 0 [(0.07 ln3 + 1) / 2, -0.35], view 1 [0.25, 0.25]
      center2 = 0.9 [0, 0.3] + 0.1 [0.0175 ln3 + 0.375, -0.05] = [0.00175 ln3 + 0.0375, 0.265]
    """
    s_cls = torch.tensor([[0.1 * LN3, 0.0], [0.0, 0.1 * LN3]])
    t_cls = torch.tensor([[0.2, -0.1], [0.2 + 0.04 * LN3, -0.1]])
    s_patch = torch.tensor([[[0.0, 0.1 * LN3], [5.0, -5.0]], [[1.0, 2.0], [-3.0, 0.5]]])
    t_patch = torch.tensor([[[0.07 * LN3, 0.3], [1.0, -1.0]], [[0.5, 0.5], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expect = dict(cls=2 * LN2 - 0.625 * LN3, patch=LN2 - 0.125 * LN3)
    expect["loss"] = expect["cls"] + expect["patch"]
    center = torch.tensor([[0.2 + 0.002 * LN3, -0.1]])
    center2 = torch.tensor([[[0.00175 * LN3 + 0.0375, 0.265]]])
    return s_cls, t_cls, s_patch, t_patch, mask, expect, center, center2


def _golden_loss_module():
    loss = iBOTLoss(2, 2, ngcrops=2, nlcrops=0, warmup_teacher_temp=0.02, teacher_temp=0.04,
                    warmup_teacher_patch_temp=0.05, teacher_patch_temp=0.07, warmup_teacher_temp_epochs=2,
                    nepochs=3)
    loss.center.copy_(torch.tensor([[0.2, -0.1]]))
    loss.center2.copy_(torch.tensor([[[0.0, 0.3]]]))
    return loss


def test_loss_golden_full_sequence():
    s_cls, t_cls, s_patch, t_patch, mask, expect, center, center2 = _golden_loss_inputs()
    loss = _golden_loss_module()
    out = loss(s_cls, None, s_patch, t_cls, t_patch, mask, epoch=1)
    for k in ("cls", "patch", "loss"):
        assert abs(float(out[k]) - expect[k]) <= 1e-6 * abs(expect[k]), k
    assert rel(loss.center, center) <= 1e-6
    assert rel(loss.center2, center2) <= 1e-6


def test_loss_golden_gathered_tokens():
    """Same case with the patch logits gathered at the masked slots (M = 1, view 1 padded) and the
    teacher's full-sequence token mean passed for the center."""
    s_cls, t_cls, s_patch, t_patch, _, expect, center, center2 = _golden_loss_inputs()
    loss = _golden_loss_module()
    out = loss(s_cls, None, s_patch[:, :1], t_cls, t_patch[:, :1], torch.tensor([[1.0], [0.0]]), epoch=1,
               teacher_patch_mean=t_patch.mean(1))
    for k in ("cls", "patch", "loss"):
        assert abs(float(out[k]) - expect[k]) <= 1e-6 * abs(expect[k]), k
    assert rel(loss.center, center) <= 1e-6
    assert rel(loss.center2, center2) <= 1e-6


def test_loss_gradient_flows_to_student_only_and_locals_count():
    # 2 global + 1 local crop, B = 2: [CLS] terms = 2 * 3 - 2 = 4; check against an explicit sum
    torch.manual_seed(0)
    loss = iBOTLoss(5, 5, 2, 1, 0.04, 0.04, 0.07, 0.07, 1, 2)
    s_cls = torch.randn(4, 5, requires_grad=True)
    s_loc = torch.randn(2, 5, requires_grad=True)
    t_cls = torch.randn(4, 5)
    s_patch, t_patch = torch.randn(4, 3, 5, requires_grad=True), torch.randn(4, 3, 5)
    w = torch.tensor([[1.0, 1, 0], [0, 0, 0], [0, 1, 0], [1, 1, 1]])
    out = loss(s_cls, s_loc, s_patch, t_cls, t_patch, w, epoch=0)
    views = torch.cat((s_cls, s_loc)).reshape(3, 2, 5)
    t = torch.softmax(t_cls / 0.04, -1).reshape(2, 2, 5)
    terms = [-(t[q] * torch.log_softmax(views[v] / 0.1, -1)).sum(-1).mean()
             for q in range(2) for v in range(3) if v != q]
    assert len(terms) == 4
    cls = float(out["cls"].detach())
    assert abs(cls - float(sum(terms).detach() / 4)) <= 1e-6 * cls
    out["loss"].backward()
    assert s_loc.grad is not None and s_loc.grad.abs().sum() > 0
    assert s_patch.grad[1].abs().max() == 0  # image without masked tokens: no patch gradient
    with pytest.raises(ValueError, match="views"):
        loss(s_cls, None, s_patch, t_cls, t_patch, w, epoch=0)
    with pytest.raises(ValueError):
        iBOTLoss(5, 5, 1, 0, 0.04, 0.04, 0.07, 0.07, 1, 2)


# ============================================================================ update rules


def test_clip_gradients_is_per_parameter():
    big, small, none, edge = (nn.Parameter(torch.zeros(2)) for _ in range(4))
    big.grad = torch.tensor([3.0, 4.0])  # norm 5 > 1: scaled by 1 / (5 + 1e-6)
    small.grad = torch.tensor([0.3, 0.4])  # norm 0.5: untouched, bit for bit
    edge.grad = torch.tensor([1.0, 0.0])  # norm 1 == clip: 1 / (1 + 1e-6) < 1, so scaled (official)
    small_before = small.grad.clone()
    norms = clip_gradients([big, small, none, edge], 1.0)
    assert none.grad is None
    assert rel(norms, torch.tensor([5.0, 0.5, 1.0])) <= 1e-7
    assert rel(big.grad, torch.tensor([3.0, 4.0]) / (5 + 1e-6)) <= 1e-7
    assert abs(float(big.grad.norm()) - 1.0) <= 1e-6
    assert torch.equal(small.grad, small_before)
    assert float(edge.grad[0]) < 1.0 and abs(float(edge.grad[0]) - 1 / (1 + 1e-6)) <= 1e-7
    assert clip_gradients([none], 1.0) is None


@pytest.mark.parametrize("norm_last_layer", [False, True])
def test_cancel_last_layer_gradients_hits_last_layer2(norm_last_layer):
    head = iBOTHead(EMBED, 16, 16, hidden_dim=24, bottleneck_dim=8, norm_last_layer=norm_last_layer)

    def fill():
        for p in head.parameters():
            p.grad = torch.ones_like(p) if p.requires_grad else None

    fill()
    cancel_last_layer_gradients(head, epoch=0, freeze_last_layer=1)
    for n, p in head.named_parameters():
        assert (p.grad is None) == ("last_layer" in n or not p.requires_grad), n
    assert head.last_layer2.weight_v.grad is None and head.last_layer.weight_v.grad is None
    fill()
    cancel_last_layer_gradients(head, epoch=1, freeze_last_layer=1)
    cancel_last_layer_gradients(head, epoch=0, freeze_last_layer=0)
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)


@pytest.mark.parametrize("norm_last_layer", [False, True])
def test_param_groups(norm_last_layer):
    from ibot.model import iBOTModel

    model = iBOTModel(tiny_vit(masked_im_modeling=True),
                      iBOTHead(EMBED, 16, 16, hidden_dim=24, bottleneck_dim=8, norm_last_layer=norm_last_layer))
    groups = param_groups(model)
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]
    by_id = {id(p): n for n, p in model.named_parameters()}
    decay = {by_id[id(p)] for p in groups[0]["params"]}
    no_decay = {by_id[id(p)] for p in groups[1]["params"]}
    for n in ("backbone.pos_embed", "backbone.cls_token", "backbone.masked_embed",
              "backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight",
              "backbone.blocks.1.mlp.fc2.weight", "head.mlp.0.weight", "head.last_layer.weight_v",
              "head.last_layer2.weight_v"):
        assert n in decay, n
    for n in ("backbone.patch_embed.proj.bias", "backbone.blocks.0.norm1.weight", "backbone.blocks.0.norm1.bias",
              "backbone.blocks.1.attn.qkv.bias", "backbone.norm.weight", "head.mlp.4.bias"):
        assert n in no_decay, n
    g_names = {"head.last_layer.weight_g", "head.last_layer2.weight_g"}
    if norm_last_layer:
        assert not g_names & (decay | no_decay)  # frozen parameters are left out
    else:
        assert g_names <= decay  # (K, 1) is 2-D: decayed, as the official get_params_groups
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_ema_update_and_shared_parameters():
    torch.manual_seed(0)
    s = [torch.randn(3, 4), torch.randn(5)]
    t = [torch.randn(3, 4), torch.randn(5)]
    t0 = [x.clone() for x in t]
    ema_update(s, t, 0.9)
    for a, b, c in zip(t, t0, s):
        assert rel(a, 0.9 * b + 0.1 * c) <= 1e-6
        assert rel(a, b) > 1e-3

    student = nn.ModuleDict(dict(backbone=tiny_vit(masked_im_modeling=True)))
    teacher = nn.ModuleDict(dict(backbone=tiny_vit(seed=1)))
    sp, tp = shared_parameters(student, teacher)
    s_names = {id(p): n for n, p in student.named_parameters()}
    t_names = {id(p): n for n, p in teacher.named_parameters()}
    assert [s_names[id(p)] for p in sp] == [t_names[id(p)] for p in tp]
    assert "backbone.masked_embed" not in {s_names[id(p)] for p in sp}
    assert len(sp) == len(list(teacher.parameters()))
    wide = nn.ModuleDict(dict(backbone=iBOTViT(img_size=IMG, patch_size=PATCH, embed_dim=16, depth=DEPTH,
                                               num_heads=HEADS)))
    with pytest.raises(ValueError, match="differ in shape"):
        shared_parameters(student, wide)


# ============================================================================ model building / loading


TINY = dict(vit_overrides=dict(embed_dim=EMBED, depth=DEPTH, num_heads=HEADS), head_hidden_dim=48,
            head_bottleneck_dim=16, patch_size=PATCH, img_size=IMG, out_dim=64)


def _perturbed(sd: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out, seen = {}, {}
    for k, v in sd.items():
        if v.data_ptr() not in seen:
            seen[v.data_ptr()] = v + 0.01 * torch.randn(v.shape, generator=g)
        out[k] = seen[v.data_ptr()]  # shared-head aliases stay aliases
    return out


@pytest.mark.parametrize("shared_head, shared_head_teacher, patch_out_dim", [
    (True, True, 64), (False, True, 64), (False, False, 48)])
def test_infer_config_and_rebuild_from_state(shared_head, shared_head_teacher, patch_out_dim):
    student, teacher = build_student_teacher("vit_small", patch_out_dim=patch_out_dim, shared_head=shared_head,
                                             shared_head_teacher=shared_head_teacher, norm_last_layer=False,
                                             **TINY)
    assert "backbone.masked_embed" not in teacher.state_dict()
    assert not any(p.requires_grad for p in teacher.parameters())
    # official layout: DDP student ("module."), plain teacher; weights differ after training
    s_sd = {"module." + k: v for k, v in _perturbed(student.state_dict(), 1).items()}
    t_sd = _perturbed(teacher.state_dict(), 2)
    buf = io.BytesIO()
    torch.save({"student": s_sd, "teacher": t_sd}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)

    s_cfg, t_cfg = infer_model_config(ck["student"]), infer_model_config(ck["teacher"])
    expect = dict(patch_size=PATCH, img_size=IMG, out_dim=64, patch_out_dim=patch_out_dim, shared_head=shared_head,
                  head_hidden_dim=48, head_bottleneck_dim=16, arch=None,
                  vit_overrides=dict(embed_dim=EMBED, depth=DEPTH))  # non-standard size: no arch name
    assert {k: s_cfg[k] for k in expect} == expect
    assert t_cfg["shared_head"] is shared_head_teacher
    assert t_cfg["patch_out_dim"] == (64 if shared_head_teacher else patch_out_dim)

    with pytest.raises(ValueError, match="num_heads"):  # not recoverable from the weights
        student_teacher_from_state(ck["student"], ck["teacher"])
    s2, t2 = student_teacher_from_state(ck["student"], ck["teacher"], norm_last_layer=False,
                                        drop_path_rate=0.0, num_heads=HEADS)
    for k, v in s2.state_dict().items():
        assert torch.equal(v, ck["student"]["module." + k]), k
    for k, v in t2.state_dict().items():
        assert torch.equal(v, ck["teacher"][k]), k
    assert len(s2.state_dict()) == len(ck["student"]) and len(t2.state_dict()) == len(ck["teacher"])
    assert s2.backbone.blocks[0].attn.num_heads == HEADS
    assert (s2.head.last_layer2 is s2.head.last_layer) is shared_head
    assert (t2.head.last_layer2 is t2.head.last_layer) is shared_head_teacher
    assert s2.head.last_layer.weight_g.requires_grad  # norm_last_layer=False as passed
    assert not any(p.requires_grad for p in t2.parameters())


def test_infer_config_maps_real_arch_shapes():
    """Shapes of an official ViT-S/16 checkpoint (224 px, 8192-d heads, unshared), tensors only."""
    sd = {"module.backbone.pos_embed": torch.zeros(1, 197, 384),
          "module.backbone.patch_embed.proj.weight": torch.zeros(384, 3, 16, 16),
          "module.head.mlp.0.weight": torch.zeros(2048, 384),
          "module.head.last_layer.weight_v": torch.zeros(8192, 256),
          "module.head.last_layer2.weight_v": torch.ones(8192, 256)}
    sd.update({f"module.backbone.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(12)})
    cfg = infer_model_config(sd)
    expect = dict(arch="vit_small", patch_size=16, img_size=224, out_dim=8192, patch_out_dim=8192,
                  shared_head=False, head_hidden_dim=2048, head_bottleneck_dim=256)
    assert {k: cfg[k] for k in expect} == expect and not cfg["vit_overrides"]
    sd["module.head.last_layer2.weight_v"] = sd["module.head.last_layer.weight_v"]
    assert infer_model_config(sd)["shared_head"] is True
    del sd["module.backbone.blocks.11.norm1.weight"]  # depth 11: no standard arch
    cfg = infer_model_config(sd)
    assert cfg["arch"] is None and cfg["vit_overrides"] == dict(embed_dim=384, depth=11)


def test_loading_errors():
    student, teacher = build_student_teacher("vit_small", patch_out_dim=64, **TINY)
    sd = student.state_dict()
    with pytest.raises(KeyError, match="backbone.masked_embed"):
        load_model_state(teacher, sd)  # unexpected key named
    missing = {k: v for k, v in sd.items() if k != "backbone.norm.weight"}
    with pytest.raises(KeyError, match=r"missing \['backbone.norm.weight'\]"):
        load_model_state(student, missing)
    bad = dict(sd)
    bad["backbone.norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape mismatch for backbone.norm.weight"):
        load_model_state(student, bad)
    backbone_only = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    with pytest.raises(KeyError, match="not an iBOT student/teacher state dict"):
        infer_model_config(backbone_only)
    # ignored prefixes are tolerated; an ignored missing key keeps the model's own value
    load_model_state(teacher, sd, ignore_unexpected=("backbone.masked_embed",))
    own_norm = student.backbone.norm.weight.detach().clone()
    changed = {k: v + 1.0 for k, v in missing.items()}
    load_model_state(student, changed, ignore_missing=("backbone.norm.weight",))
    assert torch.equal(student.backbone.norm.weight, own_norm)
    assert torch.equal(student.backbone.norm.bias, changed["backbone.norm.bias"])


def test_single_layer_head_uses_official_key_names():
    """Official DINOHead/iBOTHead with nlayers == 1 stores the projection as ``self.mlp = nn.Linear``
    (keys ``mlp.weight`` / ``mlp.bias``), not as a one-element Sequential (``mlp.0.*``)."""
    head = iBOTHead(EMBED, 16, 16, nlayers=1, bottleneck_dim=8)
    assert {"mlp.weight", "mlp.bias"} <= set(head.state_dict())
