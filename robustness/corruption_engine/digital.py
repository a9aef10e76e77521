"""Digital corruptions: brightness, contrast, elastic_transform, pixelate, jpeg_compression, saturate
(imagecorruptions 1.1.2).

Images are uint8 ``(B, 3, H, W)``; every function returns uint8 ``(B, 3, H, W)``.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.io import decode_jpeg, encode_jpeg

from ._common import (
    Draws,
    gaussian_filter,
    hsv_to_rgb,
    per_image,
    resolve_draws,
    rgb_to_hsv,
    to_unit,
    unit_to_uint8,
)

__all__ = [
    "brightness", "contrast", "draw_elastic_transform", "elastic_transform", "jpeg_compression", "pixelate",
    "saturate",
]

# torchvision >= 0.29 flags its image codecs as deprecated in favour of torchcodec (not a dependency here); the
# libjpeg codec is what makes jpeg_compression bit-identical to Pillow's, so keep using it without the noise
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

# Parameter tables copied from imagecorruptions 1.1.2 corruptions.py (the function named in each comment).
BRIGHTNESS: Final = (.1, .2, .3, .4, .5)  # brightness: added to HSV value
CONTRAST: Final = (0.4, .3, .2, .1, .05)  # contrast: factor towards the channel means
SATURATE: Final = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # saturate: HSV saturation * a + b
ELASTIC_ALPHA: Final = (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12)  # elastic_transform: alpha
PIXELATE: Final = (0.6, 0.5, 0.4, 0.3, 0.25)  # pixelate: downscale factor
JPEG_QUALITY: Final = (25, 18, 15, 10, 7)  # jpeg_compression: PIL JPEG quality


def brightness(images: Tensor, severity: int, draws: Draws | None = None,
               generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """RGB -> HSV, ``V = clip(V + c, 0, 1)``, HSV -> RGB (reference: ``brightness``, scikit-image's conversions).

    With hue and saturation fixed, every channel of ``hsv2rgb`` is ``V`` times a factor of (h, s) (``p = V (1 - s)``,
    ``q = V (1 - f s)``, ...) and that factor is ``channel / V`` of the input, so the round trip is
    ``rgb * V' / V`` (greys, ``V = 0``: ``V'``): a few element-wise ops instead of two colour-space conversions.
    """
    x = to_unit(images, torch.float64)  # float64 like skimage: integer results stay integers before truncation
    v = x.amax(1, keepdim=True)
    v_new = (v + BRIGHTNESS[severity - 1]).clamp_(0, 1)
    # the maximal channel(s) become V' exactly, as in hsv2rgb; the others scale
    out = torch.where(x == v, v_new, x * (v_new / v.clamp(min=1e-12)))
    return unit_to_uint8(out)


def saturate(images: Tensor, severity: int, draws: Draws | None = None,
             generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """RGB -> HSV, ``S = clip(S * a + b, 0, 1)``, HSV -> RGB (reference: ``saturate``; with ``b > 0`` greys, whose hue
    is 0, turn reddish, as in the reference)."""
    a, b = SATURATE[severity - 1]
    hsv = rgb_to_hsv(to_unit(images, torch.float64))  # float64 like skimage (float32: 0.01-0.25 mean difference)
    h, s, v = hsv.unbind(1)
    hsv = torch.stack((h, (s * a + b).clamp(0, 1), v), 1)
    return unit_to_uint8(hsv_to_rgb(hsv))


def contrast(images: Tensor, severity: int, draws: Draws | None = None,
             generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip((x - mean) * c + mean, 0, 1)`` with per-image, per-channel means (reference: ``contrast``), as a
    256-entry table per image and channel."""
    c = CONTRAST[severity - 1]
    b, ch, h, w = images.shape
    # per-image, per-channel lookup tables, computed in float64 like the reference (means included)
    means = images.sum((2, 3), dtype=torch.int64).to(torch.float64) / 255.0 / (h * w)
    levels = torch.arange(256, dtype=torch.float64, device=images.device) / 255.0
    luts = (((levels - means[..., None]) * c + means[..., None]).clamp(0, 1) * 255).to(torch.uint8)  # (B, 3, 256)
    offsets = torch.arange(b * ch, dtype=torch.int32, device=images.device).view(b, ch, 1, 1) * 256
    index = (images.to(torch.int32) + offsets).view(-1)
    return luts.view(-1).index_select(0, index).view(b, ch, h, w)


# --------------------------------------------------------------------------- #
# elastic_transform
# --------------------------------------------------------------------------- #
def draw_elastic_transform(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"dx": ..., "dy": ...}``, each ``(B, H, W)`` uniform in [0, 1): the reference's two
    ``np.random.uniform(-max_d, max_d, size=(H, W))`` fields (dx first) before scaling to ``[-max_d, max_d)``.
    float32 here (float64 in the replayed reference draws): the fields are smoothed over dozens of pixels."""
    _, _, h, w = images.shape
    return {
        "dx": per_image(generators, lambda g: torch.rand((h, w), generator=g)),
        "dy": per_image(generators, lambda g: torch.rand((h, w), generator=g)),
    }


def elastic_transform(images: Tensor, severity: int, draws: Draws | None = None,
                      generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Resample the image at ``(y + dy, x + dx)``, the displacements being uniform noise smoothed by a Gaussian of
    ``sigma = 0.01 * (H, W)`` (mode 'reflect', truncate 3) times ``alpha`` (reference: ``elastic_transform``;
    ``max_d = 0.005 * H`` for both axes, as there).

    ``map_coordinates(order=1, mode='reflect')`` is bilinear interpolation of the half-sample-symmetric extension of
    the image, which is ``grid_sample(mode='bilinear', padding_mode='reflection', align_corners=False)`` (it
    reflects about the outer pixel edges, -0.5 and W - 0.5): one fused kernel. The fields are smoothed in float32
    (the reference smooths in float64 and then casts to float32; the difference is ~1e-6 pixel).
    """
    draws = resolve_draws(draws, generators, draw_elastic_transform, images, severity, "elastic_transform")
    b, c, h, w = images.shape
    dev = images.device
    alpha = ELASTIC_ALPHA[severity - 1]
    sigma = (h * 0.01, w * 0.01)
    max_d = h * 0.005

    def field(u: Tensor) -> Tensor:
        noise = (u.to(dev, torch.float32) * (2 * max_d)).sub_(max_d)  # np.random.uniform(-max_d, max_d)
        return gaussian_filter(noise, sigma, mode="reflect", truncate=3).mul_(alpha)

    # normalised sampling positions: x_n = (2 * (x + dx) + 1) / W - 1, likewise for y
    gx = field(draws["dx"]).add_(torch.arange(w, device=dev, dtype=torch.float32)).mul_(2.0 / w).add_(1.0 / w - 1)
    gy = field(draws["dy"]).add_(torch.arange(h, device=dev, dtype=torch.float32).view(h, 1)).mul_(2.0 / h)
    gy.add_(1.0 / h - 1)
    grid = torch.stack((gx, gy), -1)
    out = F.grid_sample(to_unit(images), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return unit_to_uint8(out)


# --------------------------------------------------------------------------- #
# pixelate: PIL's BOX downscale and NEAREST upscale, in PIL's integer arithmetic
# --------------------------------------------------------------------------- #
_PRECISION_BITS: Final = 32 - 8 - 2  # Pillow Resample.c


@functools.lru_cache(maxsize=256)
def _box_plan(src: int, dst: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the BOX filter along one axis, downscaling: each
    output sample averages the input samples whose centres fall in its box, and these boxes tile the axis. Returns
    ``(first, end, coeff)`` per output: the box is ``[first, end)`` and every tap weighs
    ``coeff = int(0.5 + 2^22 / count)`` (Pillow normalises the weights, then rounds them to 22-bit fixed point)."""
    scale = src / dst
    support = 0.5 * max(scale, 1.0)
    ss = 1.0 / max(scale, 1.0)
    firsts, ends, coeffs = [], [], []
    for xx in range(dst):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), src) - xmin
        taps = [xmin + x for x in range(xmax) if -0.5 < (x + xmin - center + 0.5) * ss <= 0.5]  # box_filter
        if not taps or taps != list(range(taps[0], taps[-1] + 1)):
            raise AssertionError("BOX taps are a non-empty contiguous run")
        firsts.append(taps[0])
        ends.append(taps[-1] + 1)
        coeffs.append(int(0.5 + (1.0 / len(taps)) * (1 << _PRECISION_BITS)))
    return torch.tensor(firsts), torch.tensor(ends), torch.tensor(coeffs, dtype=torch.int32)


def _box_rows(x: Tensor, dst: int) -> Tensor:
    """One pass of Pillow's 8-bit BOX resample along the rows (dim -2) of uint8 ``x`` -> uint8: each box's sum (a few
    whole-row gathers added up, exact in int32), times the 22-bit fixed-point coefficient, plus the rounding half,
    shifted back. Rows, because gathering whole rows is a memcpy, while gathering columns is slow on a CPU."""
    firsts, ends, coeffs = (t.to(x.device) for t in _box_plan(x.shape[-2], dst))
    counts = ends - firsts
    sums = x.index_select(-2, firsts).to(torch.int16)  # a box holds at most 5 samples: sums <= 1275
    for t in range(1, int(counts.max())):
        part = x.index_select(-2, (firsts + t).clamp(max=x.shape[-2] - 1))
        if bool((counts <= t).any()):  # boxes shorter than t + 1 get nothing from this row
            part = part * (counts > t).to(torch.uint8).view(-1, 1)
        sums += part
    # sums <= count * 255 and coeff ~ 2^22 / count: the products stay below 2^31
    out = sums.to(torch.int32).mul_(coeffs.view(-1, 1)).add_(1 << (_PRECISION_BITS - 1))
    return out.bitwise_right_shift_(_PRECISION_BITS).to(torch.uint8)


@functools.lru_cache(maxsize=256)
def _nearest_plan(src: int, dst: int) -> Tensor:
    """Pillow's NEAREST resize (``ImagingScaleAffine``): ``int(x0)``, ``x0 += src / dst`` accumulated from
    ``0.5 * src / dst``, so the float rounding of the running sum is Pillow's."""
    step = src / dst
    pos = step * 0.5
    index = []
    for _ in range(dst):
        index.append(min(int(pos), src - 1))
        pos += step
    return torch.tensor(index)


@functools.lru_cache(maxsize=256)
def _nearest_fixes(src: int, dst: int) -> tuple[Tensor, Tensor]:
    """Where ``F.interpolate(mode='nearest-exact')`` (``floor((i + 0.5) * src / dst)`` in float32) picks another source
    sample than Pillow (rounding at exact boundaries): those output positions, and for each an output position whose
    torch source is Pillow's choice, to copy from after interpolating."""
    probe = torch.arange(src, dtype=torch.float32).view(1, 1, src)
    picked = F.interpolate(probe, size=dst, mode="nearest-exact").view(-1).to(torch.int64)
    wanted = _nearest_plan(src, dst)
    bad = (picked != wanted).nonzero().squeeze(1)
    donors = [int((picked == wanted[i]).nonzero()[0]) for i in bad.tolist()]
    return bad, torch.tensor(donors, dtype=torch.int64)


def pixelate(images: Tensor, severity: int, draws: Draws | None = None,
             generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``resize((int(W c), int(H c)), BOX)`` then ``resize((W, H), NEAREST)`` as Pillow computes them (reference:
    ``pixelate``): horizontal then vertical pass in 22-bit fixed point, each rounded to uint8, then nearest-neighbour
    upscaling (torch's kernel, with the few positions where its float32 rounding picks another sample than Pillow's
    patched). Exact."""
    c = PIXELATE[severity - 1]
    _, _, h, w = images.shape
    small_w, small_h = int(w * c), int(h * c)
    # horizontal pass on the transposed image (rows are columns), then the vertical pass, as Pillow orders them
    across = _box_rows(images.transpose(-1, -2).contiguous(), small_w)  # (B, 3, small_w, H)
    small = _box_rows(across.transpose(-1, -2).contiguous(), small_h)  # (B, 3, small_h, small_w)
    out = F.interpolate(small, size=(h, w), mode="nearest-exact")
    bad, donors = _nearest_fixes(small_w, w)
    if bad.numel():
        out[..., bad.to(out.device)] = out[..., donors.to(out.device)]
    bad, donors = _nearest_fixes(small_h, h)
    if bad.numel():
        out[..., bad.to(out.device), :] = out[..., donors.to(out.device), :]
    return out


def jpeg_compression(images: Tensor, severity: int, draws: Draws | None = None,
                     generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """JPEG encode at the severity's quality and decode (reference: ``jpeg_compression``: ``PIL.Image.save(...,
    'JPEG', quality=c)``). torchvision's libjpeg(-turbo) codec with the same defaults (4:2:0, islow DCT, baseline
    tables) writes the same bytes as Pillow's and decodes them to the same pixels. Always on the CPU: nvjpeg
    (CUDA) is another encoder and would not reproduce the reference's pixels."""
    quality = JPEG_QUALITY[severity - 1]
    cpu = images.detach().to("cpu").contiguous()
    encoded = encode_jpeg(list(cpu.unbind(0)), quality=quality)
    decoded = decode_jpeg(encoded, device="cpu")
    return torch.stack(decoded).to(images.device)

