"""Batched on-device multi-crop (`pretrain.gpu_augment`) vs the official per-image torchvision/PIL transforms.

CPU only and small (32-64 px). Distribution checks use fixed seeds, so they are deterministic; tolerances are
set at ~4-5 standard errors (KS: ~1.5x the 1 % critical value) so a wrong parameter law fails them.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from scipy.stats import ks_2samp

from ibot.augment import IMAGENET_MEAN, IMAGENET_STD, GaussianBlur, MultiCropAugmentation, Solarization
from pretrain.gpu_augment import BatchedMultiCrop, collate_for_gpu, decode_for_gpu, sample_resized_crop_boxes

N = 4000  # draws for the rate/law checks (parameter sampling only: cheap)


def _rate_ok(x: torch.Tensor, p: float, n_sigma: float = 4.5) -> bool:
    rate = x.float().mean().item()
    return abs(rate - p) <= n_sigma * math.sqrt(max(p * (1 - p), 1e-12) / x.numel()) + 1e-12


def _official() -> MultiCropAugmentation:
    return MultiCropAugmentation((0.25, 1.0), (0.05, 0.25), 2, 3, 32, 16)


def _batched() -> BatchedMultiCrop:
    return BatchedMultiCrop((0.25, 1.0), (0.05, 0.25), 2, 3, 32, 16)


def _image(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w) + 60], -1)
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _t(img: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(img).float() / 255


# ---------------------------------------------------------------------------------------------- crop law
@pytest.mark.parametrize("hw,scale", [((48, 64), (0.25, 1.0)), ((64, 40), (0.05, 0.25)), ((224, 224), (0.14, 1.0))])
def test_resized_crop_law_matches_torchvision(hw, scale):
    H, W = hw
    n = 2000
    ours = sample_resized_crop_boxes(torch.tensor([[H, W]] * n), scale, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    img = torch.zeros(1, H, W)
    ref = torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)])
    i, j, h, w = ours.double().unbind(1)
    ri, rj, rh, rw = ref.double().unbind(1)
    assert ((i >= 0) & (j >= 0) & (i + h <= H) & (j + w <= W) & (h > 0) & (w > 0)).all()
    crit = 1.5 * 1.63 * math.sqrt(2 / n)  # 1.5x the 1 % two-sample critical value
    assert ks_2samp(h * w / (H * W), rh * rw / (H * W)).statistic < crit  # area fraction
    assert ks_2samp(torch.log(w / h), torch.log(rw / rh)).statistic < crit  # aspect ratio
    assert ks_2samp(i / (H - h + 1), ri / (H - rh + 1)).statistic < crit  # position
    assert ks_2samp(j / (W - w + 1), rj / (W - rw + 1)).statistic < crit


@pytest.mark.parametrize("hw", [(10, 100), (100, 10), (20, 21)])
def test_resized_crop_fallback_is_torchvisions_center_crop(hw):
    # scale (1, 1) on an image outside the ratio range never fits -> the central fallback box, exactly.
    H, W = hw
    scale = (1.0, 1.0) if hw != (20, 21) else (1.0, 1.0)
    ours = sample_resized_crop_boxes(torch.tensor([[H, W]] * 8), scale, generator=torch.Generator().manual_seed(0))
    ref = T.RandomResizedCrop.get_params(torch.zeros(1, H, W), list(scale), [3 / 4, 4 / 3])
    if hw == (20, 21):  # in range: some attempts fit (the whole image), which is also torchvision's answer
        assert ours.tolist() == [[0, 0, 20, 21]] * 8 and tuple(ref) == (0, 0, 20, 21)
    else:
        assert all(tuple(b) == tuple(ref) for b in ours.tolist()), (ours[0], ref)


def test_boxes_stay_inside_each_valid_region():
    sizes = torch.tensor([[32, 64], [64, 20], [7, 9], [64, 64]]).repeat(250, 1)
    b = sample_resized_crop_boxes(sizes, (0.05, 1.0), generator=torch.Generator().manual_seed(3))
    assert ((b[:, 0] + b[:, 2] <= sizes[:, 0]) & (b[:, 1] + b[:, 3] <= sizes[:, 1]) & (b >= 0).all(1)).all()
    # the area fraction law is relative to each valid region
    frac = (b[:, 2] * b[:, 3]).double() / (sizes[:, 0] * sizes[:, 1])
    torch.manual_seed(0)
    ref = [T.RandomResizedCrop.get_params(torch.zeros(1, 64, 20), [0.05, 1.0], [3 / 4, 4 / 3]) for _ in range(1000)]
    ref_frac = np.mean([r[2] * r[3] / (64 * 20) for r in ref])
    assert frac[sizes[:, 1] == 20].mean().item() == pytest.approx(ref_frac, abs=0.03)
    assert frac[sizes[:, 1] == 64].mean().item() > ref_frac + 0.05  # 64x64 accepts more large boxes


# -------------------------------------------------------------------------------------- per-step rates
def test_rates_match_official_pipeline():
    off, ours = _official(), _batched()
    t1, t2, tl = off.global_transform1.transforms, off.global_transform2.transforms, off.local_transform.transforms
    fj = t1[1].transforms  # flip, RandomApply(jitter), grayscale
    p_flip, p_jit, p_gray = fj[0].p, fj[1].p, fj[2].p
    blur_p = [t1[2].p, t2[2].p, tl[2].p]
    sol_p = [0.0, t2[3].p, 0.0]
    assert isinstance(t1[2], GaussianBlur) and isinstance(t2[3], Solarization)
    specs = ours.crop_specs()
    assert len(specs) == off.num_crops == ours.num_crops
    kinds = [specs[0], specs[1], specs[-1]]
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([[48, 64]] * N)
    for k, (size, scale, pb, ps) in enumerate(kinds):
        assert (pb, ps) == (blur_p[k], sol_p[k])
        prm = ours.sample_params(sizes, scale, pb, ps, g)
        assert _rate_ok(prm["flip"], p_flip), "flip"
        assert _rate_ok(prm["jitter"], p_jit), "jitter"
        assert _rate_ok(prm["gray"], p_gray), "grayscale"
        assert _rate_ok(prm["blur"], blur_p[k]), f"blur {k}"
        assert _rate_ok(prm["solarize"], sol_p[k]), f"solarize {k}"
        # blur sigma ~ U(0.1, 2.0) like GaussianBlur's radius
        sig = prm["sigma"]
        lo, hi = t1[2].radius_min, t1[2].radius_max
        ref = torch.from_numpy(lo + np.random.default_rng(k).random(N) * (hi - lo))
        assert ks_2samp(sig.numpy(), ref.numpy()).statistic < 0.05


def test_jitter_factor_laws_and_per_sample_order():
    ours = _batched()
    jit = _official().global_transform1.transforms[1].transforms[1].transforms[0]
    prm = ours.sample_params(torch.tensor([[32, 32]] * N), (0.25, 1.0), 1.0, 0.0, torch.Generator().manual_seed(5))
    torch.manual_seed(6)
    ref = [T.ColorJitter.get_params(jit.brightness, jit.contrast, jit.saturation, jit.hue) for _ in range(N)]
    ref_f = torch.tensor([[r[1], r[2], r[3], r[4]] for r in ref])
    for k in range(4):
        assert ks_2samp(prm["factors"][:, k].numpy(), ref_f[:, k].numpy()).statistic < 0.05, k
    # order: a uniform permutation, drawn per sample (kornia's ColorJitter shares one per batch)
    order = prm["order"]
    assert (order.sort(1).values == torch.arange(4)).all()
    counts = torch.unique(order, dim=0, return_counts=True)[1]
    assert len(counts) == 24 and counts.min() > N / 24 * 0.7 and counts.max() < N / 24 * 1.3
    ref_first = torch.stack([r[0][0] for r in ref])
    assert abs((order[:, 0] == 3).float().mean() - (ref_first == 3).float().mean()) < 0.04


# ----------------------------------------------------------------------------------- deterministic pixels
def _params(B, box, **kw):
    p = dict(boxes=torch.tensor([box] * B), flip=torch.zeros(B, dtype=torch.bool),
             jitter=torch.zeros(B, dtype=torch.bool), factors=torch.tensor([[1.0, 1.0, 1.0, 0.0]] * B),
             order=torch.arange(4).repeat(B, 1), gray=torch.zeros(B, dtype=torch.bool),
             blur=torch.zeros(B, dtype=torch.bool), sigma=torch.ones(B), solarize=torch.zeros(B, dtype=torch.bool))
    p.update({k: (torch.tensor(v) if not isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    return p


def test_crop_and_flip_match_torchvision_functional():
    img = _image()
    x = _t(img)[None]
    aug = _batched()
    for box, flip in [((5, 7, 30, 40), True), ((0, 0, 48, 64), False), ((10, 3, 12, 9), True)]:
        out = aug.apply_params(x, _params(1, box, flip=[flip]), 32, normalize=False)[0]
        ref = TF.resized_crop(x[0], *box, [32, 32], interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
        ref = TF.hflip(ref) if flip else ref
        d = (out - ref.clamp(0, 1)).abs()
        m = math.ceil(2 * 32 / min(box[2:])) + 1  # bicubic support (2 source px) in output pixels, +1
        assert d[:, m:-m, m:-m].max() <= 0.5 / 255 + 1e-5  # interior: same sampling, up to 8-bit rounding
        assert d.mean() < 4 / 255  # the outermost pixels read neighbours outside the box
        pil = _t(TF.resized_crop(img, *box, [32, 32], interpolation=TF.InterpolationMode.BICUBIC))
        pil = TF.hflip(pil) if flip else pil
        assert (out - pil).abs().mean() < 12 / 255  # PIL: a=-0.5, antialiased (noisy test image; COCO: 2.7 levels)


def test_jitter_gray_solarize_blur_match_official_ops():
    img = _image(32, 32)
    x = _t(img)[None]
    aug = _batched()
    box = (0, 0, 32, 32)  # identity crop
    assert (aug.apply_params(x, _params(1, box), 32, normalize=False) - x).abs().max() < 1e-5
    # colour jitter with given factors/order == torchvision's functional ops in that order
    f, order = [1.3, 0.7, 1.15, 0.07], [2, 0, 3, 1]
    out = aug.apply_params(x, _params(1, box, jitter=[True], factors=[f], order=[order]), 32, normalize=False)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ref, pil = x[0], img
    for o in order:
        ref, pil = ops[o](ref, f[o]), ops[o](pil, f[o])
    assert (out[0] - ref).abs().max() < 1.01 / 255
    assert (out[0] - _t(pil)).abs().mean() < 3 / 255  # PIL's uint8 steps
    # grayscale == PIL convert("L") replicated
    out = aug.apply_params(x, _params(1, box, gray=[True]), 32, normalize=False)[0]
    assert (out - _t(TF.rgb_to_grayscale(img, 3))).abs().max() <= 1.01 / 255
    # solarize: exactly PIL's rule on all 256 levels (pixels >= 128 inverted)
    lv = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("RGB")
    out = aug.apply_params(_t(lv)[None], _params(1, (0, 0, 16, 16), solarize=[True]), 16, normalize=False)[0]
    assert torch.equal(torch.round(out * 255).to(torch.uint8), TF.pil_to_tensor(ImageOps.solarize(lv)))
    # blur: Gaussian vs PIL's box approximation, same sigma
    for s in (0.5, 1.0, 2.0):
        out = aug.apply_params(x, _params(1, box, blur=[True], sigma=[s]), 32, normalize=False)[0]
        ref = _t(img.filter(ImageFilter.GaussianBlur(s)))
        assert (out - ref).abs().mean() < 1.0 / 255, s
        assert (x[0] - ref).abs().mean() > 3 / 255  # the check can tell blurred from not


# ------------------------------------------------------------------------------------- API / determinism
def test_forward_shapes_normalisation_determinism():
    aug = _batched()
    imgs = torch.stack([TF.pil_to_tensor(_image(64, 64, s)) for s in range(6)])
    out = aug(imgs, seed=3)
    assert [tuple(o.shape) for o in out] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in out)
    lo = (0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    hi = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    for o in out:
        assert (o >= lo.view(1, 3, 1, 1) - 1e-5).all() and (o <= hi.view(1, 3, 1, 1) + 1e-5).all()
    again = aug(imgs.float() / 255, generator=torch.Generator().manual_seed(3))  # float input, same seed
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    other = aug(imgs, seed=4)
    assert not torch.equal(out[0], other[0])
    # per-sample parameters: the same image repeated gets different crops
    same = aug(imgs[:1].repeat(4, 1, 1, 1), seed=0)[0]
    assert not torch.equal(same[0], same[1])


def test_decode_for_gpu_keeps_aspect_and_pads():
    img = _image(50, 100)
    t, hw = decode_for_gpu(img, 64)
    assert t.shape == (3, 64, 64) and t.dtype == torch.uint8 and hw == (32, 64)
    assert torch.equal(t[:, 32:], t[:, 31:32].expand(-1, 32, -1))  # edge-replicated padding
    small, hw2 = decode_for_gpu(_image(20, 30), 64)
    assert hw2 == (20, 30) and torch.equal(small[:, :20, :30], TF.pil_to_tensor(_image(20, 30)))
    imgs, sizes = collate_for_gpu([(t, hw), (small, hw2)])
    assert imgs.shape == (2, 3, 64, 64) and sizes.tolist() == [[32, 64], [20, 30]]
    out = _batched()(imgs, sizes, seed=0)
    assert len(out) == 5 and out[0].shape == (2, 3, 32, 32)
