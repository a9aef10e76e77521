"""Batched, on-device iBOT multi-crop augmentation (kornia), with the official per-image distributions.

The official pipeline (``ibot.augment.MultiCropAugmentation``, PIL + torchvision, one image at a time in CPU
workers) is the data-loading wall. `BatchedMultiCrop` runs the same per-crop augmentation on a whole batch on
the device, drawing every random parameter *per sample* from the official distributions:

=====================  ===========================================================================================
step                   batched implementation (per-sample parameters, drawn from one ``torch.Generator``)
=====================  ===========================================================================================
RandomResizedCrop      torchvision ``get_params`` vectorised: 10 attempts of (area ~ U(scale) * H*W, log-ratio ~
                       U(log 3/4, log 4/3)), ``round`` half-to-even, first attempt that fits, torchvision's
                       central fallback, top-left ~ randint; crop+resize in one ``grid_sample`` (bicubic).
                       Each sample may have its own valid (h, w) inside the padded batch (see `decode_for_gpu`).
HorizontalFlip 0.5     ``torch.flip`` on the selected samples.
ColorJitter p=0.8      torchvision ColorJitter formulas (kornia.enhance ``adjust_brightness_accumulative``,
                       ``adjust_contrast_with_mean_subtraction``, ``adjust_saturation_with_gray_subtraction``,
                       ``adjust_hue``) with factors B,C ~ U(0.6, 1.4), S ~ U(0.8, 1.2), H ~ U(-0.1, 0.1) and a
                       random order *per sample* (kornia.augmentation.ColorJitter draws ONE order per batch, so
                       it is not used; ColorJiggle uses different saturation/hue formulas).
RandomGrayscale 0.2    ``kornia.color.rgb_to_grayscale`` (0.299, 0.587, 0.114 = PIL's "L"), 3 channels.
GaussianBlur           sigma ~ U(0.1, 2.0) px at the final crop size, ``kornia.filters.gaussian_blur2d`` with a
                       kernel covering +-4 sigma_max (17 taps), replicate border (PIL extends edges);
                       p = 1.0 / 0.1 / 0.5 (global 1, other globals, locals).
Solarization 0.2       ``kornia.enhance.solarize(x, 0.5)``: x >= 0.5 -> 1 - x; on 8-bit values this is PIL's
                       ``ImageOps.solarize`` (pixels >= 128 inverted). Second..G-th global crops only.
ToTensor+Normalize     ``(x - mean) / std`` (ImageNet).
=====================  ===========================================================================================

kornia.augmentation's modules are not used directly because (measured/read in kornia 0.9.0): its
``RandomResizedCrop`` samples boxes for one common input size per batch (no per-image valid size), its
``ColorJitter`` draws one permutation of the four jitter ops per batch, and none of them take a
``torch.Generator`` (they use the global RNG), which would break the seeded, resumable data order. The pixel
operations are kornia's; only the (cheap) parameter sampling is written here.

Where the batched distribution/output differs from the official one (measured with
``python -m pretrain.gpu_augment``, numbers in the module's ``MEASURED`` note below):

* Crop boxes: identical law as torchvision *on the image the batch holds*. If workers downsize images with
  `decode_for_gpu` (longer side -> ``max_side``, aspect ratio kept), relative boxes follow the official law up to
  integer rounding at the reduced resolution; no squashing/center-cropping is involved (a squashed square
  image would change the pixel aspect-ratio law; a shorter-side resize + center crop would never crop from the
  discarded border). The fallback (all 10 attempts fail) is torchvision's central crop, reached with the same
  probability (it depends only on H/W and the scale/ratio ranges).
* Interpolation: ``grid_sample`` bicubic (A = -0.75, no antialiasing) vs PIL's bicubic (A = -0.5, antialiased
  when downscaling). With ``max_side = 8/7 * global size`` the largest downscale is 1.14x (global) / 1.33x (local
  crops from a 256 image), so aliasing is small; the mean absolute pixel difference vs PIL for the same box is
  listed in MEASURED. Crop borders: grid_sample reads neighbours outside the box (inside the image), resize of
  a cut-out clamps at the box; only the 1-2 outermost output pixels are affected.
* Quantisation: PIL rounds to uint8 after every op; here values stay float except that ``quantize=True``
  (default) rounds to 1/255 after the crop, after jitter, after grayscale and after blur (not between the four
  jitter ops). This keeps solarisation's threshold rule exact on the values it sees.
* Blur: true Gaussian truncated at +-4 sigma_max vs PIL's 3-pass extended box blur approximation with edge
  extension; see MEASURED for the mean abs difference at a few sigmas.
* Probability conventions: the official blur uses ``random() <= p``, here ``rand < p`` (difference of measure 0).
* RNG: parameters come from the given generator (or seed), not from Python ``random`` / torch's global RNG, so
  the crops are not bitwise the CPU path's; the CPU path (``ibot.augment``) stays the exact official one.

MEASURED (``python -m pretrain.gpu_augment ../shared/data/tiny_coco/train_2017_small/*.jpg``: 16 COCO images,
CPU, torch 2.14.1, kornia 0.9.0; mean |difference| in 8-bit levels vs the official PIL output, same parameters):
* crop box -> 224, same full-resolution image: 2.7 levels (bicubic A=-0.75 without antialias vs PIL's);
  via `decode_for_gpu(max_side=256)` with the same relative box: 4.8 levels (adds the 256 resolution loss).
* crop area-fraction law, boxes on the full image vs on the 256 copy (scale (0.25, 1), 3,200 boxes each):
  two-sample KS statistic 0.018 (5 % critical value 0.034): no measurable change.
* blur, kornia Gaussian (17 taps, replicate) vs PIL GaussianBlur at sigma 0.1 / 0.5 / 1 / 2: 0.00 / 0.49 / 0.48 /
  0.33 levels (reflect border: 0.50 / 0.50 / 0.35; not blurring at all would be 1.9 / 5.8 / 10.6 levels).
  PIL leaves sigma 0.1 unblurred (box radius 0); so does a 0.1-sigma Gaussian (< 1e-5 levels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import kornia
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ibot.augment import IMAGENET_MEAN, IMAGENET_STD, MultiCropSpec

__all__ = ["BatchedMultiCrop", "sample_resized_crop_boxes", "decode_for_gpu", "collate_for_gpu"]

_RATIO = (3.0 / 4.0, 4.0 / 3.0)


# ---------------------------------------------------------------------------------------------- worker side
def decode_for_gpu(img: Image.Image, max_side: int = 256) -> tuple[Tensor, tuple[int, int]]:
    """Worker-side helper: RGB image -> (uint8 (3, max_side, max_side), (h, w) of the valid region).

    The image is downscaled (PIL bicubic, antialiased) so that its longer side is ``max_side`` *keeping its
    aspect ratio* (images already smaller are kept as they are), then padded at the bottom/right by edge
    replication. `BatchedMultiCrop` samples crop boxes inside the valid (h, w) region, so the RandomResizedCrop
    law (area fraction, pixel aspect ratio, position) is the official one on the full image, up to integer
    rounding at the reduced resolution. Choose ``max_side >= global_crop_size`` (default 256 = 224 * 8/7).
    """
    img = img.convert("RGB")
    w, h = img.size
    if max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(1, round(w * s)), max(1, round(h * s))
        img = img.resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if (h, w) != (max_side, max_side):
        arr = np.pad(arr, ((0, max_side - h), (0, max_side - w), (0, 0)), mode="edge")
    elif not arr.flags.writeable:  # a view of PIL's buffer: torch warns about (and must not share) it
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous(), (h, w)


def collate_for_gpu(batch: Sequence[tuple[Tensor, tuple[int, int]]]) -> tuple[Tensor, Tensor]:
    """Stack `decode_for_gpu` outputs: (uint8 (B, 3, S, S), int64 (B, 2) valid sizes)."""
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch], dtype=torch.long)


# --------------------------------------------------------------------------------------- parameter sampling
def sample_resized_crop_boxes(
    sizes: Tensor,
    scale: Sequence[float],
    ratio: Sequence[float] = _RATIO,
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for every row of ``sizes`` (B, 2) = (H, W) at once.

    Returns int64 (B, 4) boxes (i, j, h, w): top, left, height, width.
    """
    dev = sizes.device
    B = sizes.shape[0]
    H = sizes[:, 0:1].double()
    W = sizes[:, 1:2].double()
    area = H * W
    u = torch.rand(B, attempts, generator=generator, device=dev, dtype=torch.float64)
    target = area * (scale[0] + u * (scale[1] - scale[0]))
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    ar = torch.exp(lr0 + torch.rand(B, attempts, generator=generator, device=dev, dtype=torch.float64) * (lr1 - lr0))
    w = torch.round(torch.sqrt(target * ar))
    h = torch.round(torch.sqrt(target / ar))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ((ok.cumsum(1) == 1) & ok).double().argmax(1)
    found = ok.any(1)
    rows = torch.arange(B, device=dev)
    w, h = w[rows, first], h[rows, first]
    H, W = H[:, 0], W[:, 0]
    # torchvision's fallback: central crop of the largest box within the ratio range
    in_ratio = W / H
    fw = torch.where(in_ratio < min(ratio), W, torch.where(in_ratio > max(ratio), torch.round(H * max(ratio)), W))
    fh = torch.where(in_ratio < min(ratio), torch.round(W / min(ratio)), H)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    ri = torch.rand(B, generator=generator, device=dev, dtype=torch.float64)
    rj = torch.rand(B, generator=generator, device=dev, dtype=torch.float64)
    i = torch.where(found, torch.floor(ri * (H - h + 1)).clamp(max=H - h), torch.div(H - h, 2, rounding_mode="floor"))
    j = torch.where(found, torch.floor(rj * (W - w + 1)).clamp(max=W - w), torch.div(W - w, 2, rounding_mode="floor"))
    return torch.stack([i, j, h, w], 1).long()


def resized_crop(x: Tensor, boxes: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Crop each (i, j, h, w) box of float ``x`` (B, C, P, Q) and resize it to ``size`` x ``size`` in one
    ``grid_sample`` (align_corners=False, i.e. the same sampling positions as crop-then-``interpolate``)."""
    B, _, P, Q = x.shape
    b = boxes.to(x.dtype)
    i, j, h, w = b.unbind(1)
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w / Q
    theta[:, 0, 2] = (2 * j + w) / Q - 1
    theta[:, 1, 1] = h / P
    theta[:, 1, 2] = (2 * i + h) / P - 1
    grid = torch.nn.functional.affine_grid(theta, [B, x.shape[1], size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def _q(x: Tensor, quantize: bool) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.round(x * 255.0) / 255.0 if quantize else x


class BatchedMultiCrop(nn.Module):
    """Batched on-device `ibot.augment.MultiCropAugmentation`: the same crop geometry arguments (those of
    `ibot.augment.MultiCropSpec`, positional or by name), plus the device-only options below.

    ``forward(images, sizes=None, generator=None, seed=None) -> list[Tensor]``:
      images: uint8 (B, 3, P, Q) or float in [0, 1], on the device;
      sizes: optional int (B, 2) valid (h, w) per image (top-left region, from `decode_for_gpu`); default: all
        of (P, Q);
      generator / seed: the source of every random draw (a ``torch.Generator`` on the images' device, or an int
        seed for a fresh one; neither: torch's default generator for that device).
    Returns ``global_crops_number`` float32 (B, 3, G, G) then ``local_crops_number`` (B, 3, L, L), normalised.
    """

    def __init__(
        self,
        *geometry: Any,
        quantize: bool = True,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_truncate: float = 4.0,
        interpolation: str = "bicubic",
        **geometry_by_name: Any,
    ) -> None:
        super().__init__()
        # one definition of the crop geometry (and its validation) for both pipelines
        self.spec = MultiCropSpec(*geometry, **geometry_by_name)
        for name, value in asdict(self.spec).items():
            setattr(self, name, value)
        self.quantize = quantize
        self.blur_sigma = blur_sigma
        self.blur_kernel = 2 * math.ceil(blur_truncate * blur_sigma[1]) + 1
        self.interpolation = interpolation
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_crops(self) -> int:
        return self.global_crops_number + self.local_crops_number

    def crop_specs(self) -> list[tuple[int, tuple[float, float], float, float]]:
        """(size, scale, blur p, solarize p) for each output crop, in order."""
        g, loc = self.global_crop_size, self.local_crop_size
        specs = [(g, self.global_crops_scale, 1.0, 0.0)]
        specs += [(g, self.global_crops_scale, 0.1, 0.2)] * (self.global_crops_number - 1)
        specs += [(loc, self.local_crops_scale, 0.5, 0.0)] * self.local_crops_number
        return specs

    # ------------------------------------------------------------------ per-step ops (also used by tests)
    @staticmethod
    def color_jitter(x: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
        """torchvision ColorJitter on the ``apply`` rows: factors (B, 4) = (brightness, contrast, saturation,
        hue), order (B, 4) = a permutation of 0..3 per row (op index applied at each step)."""
        fns = (
            kornia.enhance.adjust_brightness_accumulative,
            kornia.enhance.adjust_contrast_with_mean_subtraction,
            kornia.enhance.adjust_saturation_with_gray_subtraction,
            lambda img, f: kornia.enhance.adjust_hue(img, f * 2 * math.pi),
        )
        x = x.clone()
        for step in range(4):
            for op, fn in enumerate(fns):
                idx = torch.nonzero(apply & (order[:, step] == op)).squeeze(1)
                if idx.numel():
                    x[idx] = fn(x[idx], factors[idx, op]).clamp(0.0, 1.0)
        return x

    def forward(
        self,
        images: Tensor,
        sizes: Tensor | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> list[Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        dev = images.device
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        B, _, P, Q = x.shape
        if sizes is None:
            sizes = torch.tensor([[P, Q]], device=dev).expand(B, 2)
        sizes = sizes.to(dev)
        if generator is None and seed is not None:
            generator = torch.Generator(device=dev)
            generator.manual_seed(seed)
        out = []
        for size, scale, p_blur, p_sol in self.crop_specs():
            params = self.sample_params(sizes, scale, p_blur, p_sol, generator)
            out.append(self.apply_params(x, params, size))
        return out

    def sample_params(
        self,
        sizes: Tensor,
        scale: Sequence[float],
        p_blur: float,
        p_sol: float,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Every random draw of one crop type for a batch (B = len(sizes)), in a fixed stream order."""
        dev, B = sizes.device, sizes.shape[0]

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator, device=dev)

        boxes = sample_resized_crop_boxes(sizes, scale, _RATIO, generator)
        flip = rand(B) < 0.5
        jitter = rand(B) < 0.8  # RandomApply(ColorJitter, p=0.8)
        lo = torch.tensor([0.6, 0.6, 0.8, -0.1], device=dev)
        hi = torch.tensor([1.4, 1.4, 1.2, 0.1], device=dev)
        factors = lo + rand(B, 4) * (hi - lo)
        order = rand(B, 4).argsort(1)  # a uniform random permutation per sample
        gray = rand(B) < 0.2
        blur = rand(B) < p_blur
        sigma = self.blur_sigma[0] + rand(B) * (self.blur_sigma[1] - self.blur_sigma[0])
        solarize = rand(B) < p_sol
        return dict(boxes=boxes, flip=flip, jitter=jitter, factors=factors, order=order, gray=gray, blur=blur,
                    sigma=sigma, solarize=solarize)

    def apply_params(self, x: Tensor, params: dict[str, Tensor], size: int, normalize: bool = True) -> Tensor:
        """Apply one crop type's drawn parameters to float images ``x`` in [0, 1] (B, 3, P, Q)."""
        q = self.quantize
        c = _q(resized_crop(x, params["boxes"], size, self.interpolation), q)
        c = torch.where(params["flip"][:, None, None, None], c.flip(-1), c)
        c = _q(self.color_jitter(c, params["factors"], params["order"], params["jitter"]), q)
        gray = params["gray"][:, None, None, None]
        c = _q(torch.where(gray, kornia.color.rgb_to_grayscale(c).expand_as(c), c), q)
        idx = torch.nonzero(params["blur"]).squeeze(1)
        if idx.numel():
            s = params["sigma"][idx, None].expand(-1, 2)
            c = c.clone()
            c[idx] = _q(kornia.filters.gaussian_blur2d(c[idx], self.blur_kernel, s, "replicate"), q)
        c = torch.where(params["solarize"][:, None, None, None], kornia.enhance.solarize(c, 0.5), c)
        return (c - self.mean) / self.std if normalize else c

    def extra_repr(self) -> str:
        return (f"global={self.global_crops_number}x{self.global_crop_size} {self.global_crops_scale}, "
                f"local={self.local_crops_number}x{self.local_crop_size} {self.local_crops_scale}, "
                f"quantize={self.quantize}, blur_kernel={self.blur_kernel}")


# ------------------------------------------------------------------------------------------- measurement
def measure(paths: Sequence[str], n_boxes: int = 200, seed: int = 0) -> dict[str, float]:
    """Pixel and law differences vs the official PIL path on real images (``python -m pretrain.gpu_augment
    IMG...``). Mean absolute differences are in 8-bit levels (0..255)."""
    import torchvision.transforms.functional as TF
    from PIL import ImageFilter
    from scipy.stats import ks_2samp

    g = torch.Generator().manual_seed(seed)
    res: dict[str, list[float]] = {k: [] for k in ("crop_same_res", "crop_via_256", "area_full", "area_256")}
    for path in paths:
        img = Image.open(path).convert("RGB")
        W, H = img.size
        full = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
        small, (h, w) = decode_for_gpu(img, 256)
        small = small[None].float() / 255
        boxes = sample_resized_crop_boxes(torch.tensor([[H, W]] * n_boxes), (0.25, 1.0), generator=g)
        sboxes = sample_resized_crop_boxes(torch.tensor([[h, w]] * n_boxes), (0.25, 1.0), generator=g)
        res["area_full"] += (boxes[:, 2] * boxes[:, 3] / (H * W)).tolist()
        res["area_256"] += (sboxes[:, 2] * sboxes[:, 3] / (h * w)).tolist()
        for bi in range(0, n_boxes, 10):
            i, j, bh, bw = boxes[bi].tolist()
            ref = TF.pil_to_tensor(TF.resized_crop(img, i, j, bh, bw, [224, 224], TF.InterpolationMode.BICUBIC))
            ref = ref.float()
            same = resized_crop(full, boxes[bi:bi + 1], 224)[0].clamp(0, 1) * 255
            # the same relative box on the 256 copy (float box, exact relative geometry)
            sc = h / H
            fbox = torch.tensor([[i * sc, j * sc, bh * sc, bw * sc]])
            via = resized_crop(small, fbox, 224)[0].clamp(0, 1) * 255
            res["crop_same_res"].append((same.round() - ref).abs().mean().item())
            res["crop_via_256"].append((via.round() - ref).abs().mean().item())
    out = {k: float(np.mean(v)) for k, v in res.items() if k.startswith("crop")}
    out["area_ks_full_vs_256"] = float(ks_2samp(res["area_full"], res["area_256"]).statistic)
    # blur: PIL GaussianBlur(radius=sigma) vs kornia gaussian_blur2d(17 taps, reflect)
    img = Image.open(paths[0]).convert("RGB").resize((224, 224), Image.BICUBIC)
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255
    for s in (0.1, 0.5, 1.0, 2.0):
        ref = torch.from_numpy(np.array(img.filter(ImageFilter.GaussianBlur(s)))).permute(2, 0, 1).float()
        for border in ("reflect", "replicate"):
            k = kornia.filters.gaussian_blur2d(t, 17, (s, s), border)[0]
            out[f"blur_s{s}_{border}"] = (torch.round(k * 255) - ref).abs().mean().item()
        out[f"blur_s{s}_none_vs_pil"] = (t[0] * 255 - ref).abs().mean().item()
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    print(json.dumps(measure(sys.argv[1:]), indent=1))
