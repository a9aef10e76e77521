"""Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur (imagecorruptions 1.1.2).

Images are uint8 ``(B, 3, H, W)``; every function returns uint8 ``(B, 3, H, W)``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    Draws,
    clipped_zoom,
    filter_axis,
    gaussian_filter,
    motion_blur_taps,
    numpy_arange,
    per_image,
    resolve_draws,
    shift_sum,
    to_unit,
    unit_to_uint8,
)

__all__ = [
    "defocus_blur", "disk_kernel", "draw_glass_blur", "draw_motion_blur", "gaussian_blur", "glass_blur",
    "glass_sources", "motion_blur", "no_draws", "zoom_blur",
]

# Parameter tables copied from imagecorruptions 1.1.2 corruptions.py (the function named in each comment).
DEFOCUS_BLUR: Final = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # defocus_blur: disk radius, alias blur
GLASS_BLUR: Final = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # glass_blur: sigma, delta, iters
MOTION_BLUR: Final = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # motion_blur: radius, sigma
ZOOM_BLUR: Final = (  # zoom_blur: np.arange(start, stop, step) of zoom factors
    (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03),
)
GAUSSIAN_BLUR: Final = (1, 2, 3, 4, 6)  # gaussian_blur: sigma


def no_draws(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """Deterministic corruptions draw nothing."""
    return {}


# --------------------------------------------------------------------------- #
# defocus_blur
# --------------------------------------------------------------------------- #
def _cv2_gaussian_kernel(ksize: int, sigma: float) -> Tensor:
    """``cv2.getGaussianKernel(ksize, sigma, CV_32F)`` for ``sigma > 0``: float32 taps normalised in double."""
    scale2x = -0.5 / (sigma * sigma)
    taps = torch.tensor([math.exp(scale2x * (i - (ksize - 1) * 0.5) ** 2) for i in range(ksize)], dtype=torch.float32)
    return (taps.double() * (1.0 / taps.double().sum().item())).float()


def disk_kernel(radius: int, alias_blur: float) -> Tensor:
    """imagecorruptions' ``disk(radius, alias_blur)``: the aliased disk ``X^2 + Y^2 <= r^2`` on a 17x17 grid (21x21
    for radius 10), normalised, then ``cv2.GaussianBlur`` (3x3, 5x5 above radius 8; OpenCV's default border, i.e.
    mirror) to antialias it. float32 ``(K, K)``, like the reference's."""
    if radius <= 8:
        coords, ksize = torch.arange(-8, 9), 3
    else:
        coords, ksize = torch.arange(-radius, radius + 1), 5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    aliased = ((xx ** 2 + yy ** 2) <= radius ** 2).to(torch.float32)
    aliased /= aliased.sum()
    g = _cv2_gaussian_kernel(ksize, alias_blur)
    return filter_axis(filter_axis(aliased, g, -1, "mirror"), g, -2, "mirror")


def _fast_size(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3, 5 and 7 (sizes pocketfft / cuFFT transform fastest)."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


@functools.lru_cache(maxsize=32)
def _kernel_spectrum(severity: int, fh: int, fw: int, device: str) -> Tensor:
    """``rfft2`` of the flipped :func:`disk_kernel` of ``severity`` (divided by 255, folding in the uint8 -> [0, 1]
    scaling), zero-padded to ``fh x fw``; cached per size and device."""
    radius, alias = DEFOCUS_BLUR[severity - 1]
    flipped = disk_kernel(radius, alias).flip(-1, -2) / 255.0  # correlation = convolution with the flipped kernel
    return torch.fft.rfft2(flipped.to(device), s=(fh, fw))


def defocus_blur(images: Tensor, severity: int, draws: Draws | None = None,
                 generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Correlate each channel with :func:`disk_kernel` (reference: ``defocus_blur``: ``cv2.filter2D`` per channel,
    OpenCV's default mirror border). Deterministic; matches up to float32 FFT rounding.

    Through the FFT, as cv2.filter2D does for kernels from 11x11 up (these are 17x17 and 21x21 and not separable):
    the image is mirror-padded by the kernel radius, and further up to an FFT-friendly size in the same ``F.pad``
    (what lies beyond the first ``H + 2r`` rows only feeds outputs that are discarded), transformed, multiplied by
    the cached kernel spectrum and transformed back; the rows and columns from ``K - 1`` on are the wrap-free
    correlation outputs.
    """
    radius, _ = DEFOCUS_BLUR[severity - 1]
    k = 17 if radius <= 8 else 2 * radius + 1
    r = k // 2
    _, _, h, w = images.shape
    fh, fw = _fast_size(h + 2 * r), _fast_size(w + 2 * r)
    # uint8 reflection padding is a quarter of the memory traffic on the CPU; other backends pad float32
    source = images if images.device.type == "cpu" else images.to(torch.float32)
    padded = F.pad(source, (r, fw - w - r, r, fh - h - r), mode="reflect").to(torch.float32)
    spectrum = torch.fft.rfft2(padded).mul_(_kernel_spectrum(severity, fh, fw, str(images.device)))
    full = torch.fft.irfft2(spectrum, s=(fh, fw))
    return unit_to_uint8(full[..., k - 1:k - 1 + h, k - 1:k - 1 + w])


# --------------------------------------------------------------------------- #
# glass_blur
# --------------------------------------------------------------------------- #
def draw_glass_blur(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"dx": ..., "dy": ...}``, each int8 ``(B, iterations, H - 2d, W - 2d)`` uniform in ``[-d, d)``: the offset
    drawn for interior pixel ``(d + 1 + i, d + 1 + j)`` in each pass (the reference draws ``dx, dy =
    np.random.randint(-d, d, size=(2,))`` per pixel, rows and columns in decreasing order)."""
    _, delta, iterations = GLASS_BLUR[severity - 1]
    _, _, h, w = images.shape
    shape = (2, iterations, h - 2 * delta, w - 2 * delta)
    n = math.prod(shape)

    def offsets(g: torch.Generator) -> Tensor:
        if delta & (delta - 1):  # 2 * delta not a power of two (delta = 3): exact bounded draws
            return torch.randint(-delta, delta, shape, generator=g, dtype=torch.int8)
        # the low bits of random bytes, 8 per 64-bit draw (the generator's cost is per draw, not per bit); int64
        # random_() leaves only the top bit of each word at 0, which these masks never use
        words = torch.empty(-(-n // 8), dtype=torch.int64).random_(generator=g)
        return (words.view(torch.uint8)[:n] & (2 * delta - 1)).to(torch.int8).sub_(delta).view(shape)

    both = per_image(generators, offsets)
    return {"dx": both[:, 0], "dy": both[:, 1]}


def glass_sources(dx: Tensor, dy: Tensor, h: int, w: int, delta: int) -> Tensor:
    """Where each interior pixel's value comes from after one pass of glass blur's "swap" loop: ``(B, H - 2d, W - 2d)``
    flat indices into the batch's ``(B * H * W)`` pixels.

    The reference loop (rows ``h`` from ``H - d`` down to ``d + 1``, columns likewise) runs
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``. ``x[h, w]`` is a numpy *view*, so the tuple assignment first copies
    ``x[h', w']`` into ``x[h, w]`` and then copies that same (new) value back into ``x[h', w']``: it is not a swap but
    ``x[h, w] = x[h', w']``. Only the visited pixel is written, so pixel ``p`` ends up with the value its target ``q``
    had when ``p`` was visited: ``q``'s original value if ``q`` had not been visited yet (``q`` outside the interior
    or after ``p`` in the scan), else ``q``'s final value. That chain ``p -> q -> ...`` only ever moves to pixels
    visited earlier, so it has no cycles, and it is resolved for all pixels at once by pointer jumping over the
    still-unresolved pixels (a third of them at first, then a rapidly shrinking set): the sequential loop is
    reproduced exactly, in parallel.
    """
    b, hi, wi = dx.shape
    iota, origin, rows, cols = _glass_grid(b, h, w, delta, str(dx.device))
    dy, dx = dy.to(torch.int32), dx.to(torch.int32)
    qi, qj = rows + dy, cols + dx  # the target, interior coordinates
    # the target was visited (and finalised) before p: it is interior and comes later in row-major order
    # (|dx| < 2d, so "later" is dy * 2d + dx > 0)
    chained = ((qi >= 0) & (qi < hi) & (qj >= 0) & (qj < wi) & (dy * (2 * delta) + dx > 0)).view(-1)
    # every interior pixel points at its target if chained, else at itself (a root); pointer jumping
    # (ptr <- ptr[ptr], reading values updated in the same round, which only shortens the chains faster) until every
    # chained pixel points at a root. int32 indices, index_select / index_copy_: several times faster than int64
    # tensor[index] on a CPU.
    ptr = iota + (dy * wi + dx).view(-1) * chained
    active = chained.nonzero().squeeze(1)
    hop = ptr.index_select(0, active)
    while True:
        nxt = ptr.index_select(0, hop)
        if torch.equal(nxt, hop):
            break
        ptr.index_copy_(0, active, nxt)
        hop = nxt
    # a root's value comes from its own target, (dy, dx) away in the image
    return (origin + (dy * w + dx).view(-1)).index_select(0, ptr).view(b, hi, wi)


@functools.lru_cache(maxsize=16)
def _glass_grid(b: int, h: int, w: int, delta: int, device: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Constant index grids of :func:`glass_sources` (int32): interior-flat positions, their batch-flat image
    positions, and the interior row / column coordinates ``(1, hi, 1)``, ``(1, 1, wi)``."""
    hi, wi = h - 2 * delta, w - 2 * delta
    iota = torch.arange(b * hi * wi, dtype=torch.int32, device=device)
    origin = (torch.arange(b, dtype=torch.int32).view(b, 1, 1) * (h * w)
              + torch.arange(delta + 1, h - delta + 1, dtype=torch.int32).view(1, hi, 1) * w
              + torch.arange(delta + 1, w - delta + 1, dtype=torch.int32).view(1, 1, wi)).view(-1).to(device)
    rows = torch.arange(hi, dtype=torch.int32, device=device).view(1, hi, 1)
    cols = torch.arange(wi, dtype=torch.int32, device=device).view(1, 1, wi)
    return iota, origin, rows, cols


def glass_blur(images: Tensor, severity: int, draws: Draws | None = None,
               generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Gaussian blur, uint8 truncation, ``iterations`` passes of local pixel copies, Gaussian blur again
    (reference: ``glass_blur``). The pixel loop is inherently sequential as written, but its effect is not (see
    :func:`glass_sources`), so this matches the reference draw for draw, up to float32 rounding of the blurs."""
    draws = resolve_draws(draws, generators, draw_glass_blur, images, severity, "glass_blur")
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    b, c, h, w = images.shape
    x = (gaussian_filter(to_unit(images), sigma) * 255).to(torch.uint8)  # np.uint8(gaussian(x / 255.) * 255)
    pixels = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, 3): one gathered row of 3 bytes per pixel
    inner = (slice(None), slice(delta + 1, h - delta + 1), slice(delta + 1, w - delta + 1))
    dx, dy = draws["dx"].to(images.device), draws["dy"].to(images.device)
    for i in range(iterations):
        src = glass_sources(dx[:, i], dy[:, i], h, w, delta)
        moved = pixels.view(b * h * w, c).index_select(0, src.reshape(-1))
        pixels = pixels.clone()
        pixels[inner] = moved.view(b, h - 2 * delta, w - 2 * delta, c)
    x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return unit_to_uint8(gaussian_filter(x, sigma))


# --------------------------------------------------------------------------- #
# motion_blur
# --------------------------------------------------------------------------- #
def draw_motion_blur(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"angle": (B,) float64}`` degrees, uniform in [-45, 45) (reference: ``np.random.uniform(-45, 45)``)."""
    return {"angle": per_image(generators, lambda g: -45 + 90 * torch.rand((), generator=g, dtype=torch.float64))}


def motion_blur(images: Tensor, severity: int, draws: Draws | None = None,
                generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Weighted sum of up to ``2 * radius + 1`` edge-clamped shifts along the drawn angle (reference: ``motion_blur``
    -> ``_motion_blur``; the shifts come from :func:`motion_blur_taps` with the reference's own arithmetic).

    The angle differs per image, so the shifts are summed per image (a strided slice-add each, batched over the
    channels); the result is clipped to [0, 255] and truncated like the reference's.
    """
    draws = resolve_draws(draws, generators, draw_motion_blur, images, severity, "motion_blur")
    radius, sigma = MOTION_BLUR[severity - 1]
    _, _, h, w = images.shape
    x = images.to(torch.float32)
    out = torch.stack([
        shift_sum(x[i], motion_blur_taps(radius, sigma, float(angle), h, w))
        for i, angle in enumerate(draws["angle"].tolist())
    ])
    return out.clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- #
# zoom_blur
# --------------------------------------------------------------------------- #
def zoom_blur(images: Tensor, severity: int, draws: Draws | None = None,
              generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Mean of the image and its ``clipped_zoom`` at each factor of the severity's ``np.arange`` (reference:
    ``zoom_blur``). Deterministic; only the top-left ``H x W`` of each zoom is computed, as only it is kept."""
    # channels-last: torch's bilinear kernel is several times faster on NHWC (the output keeps the layout)
    x = to_unit(images).contiguous(memory_format=torch.channels_last)
    h, w = x.shape[-2:]
    factors = numpy_arange(*ZOOM_BLUR[severity - 1])
    out = torch.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, factor, (h, w))
    return unit_to_uint8((x + out) / (len(factors) + 1)).contiguous()


# --------------------------------------------------------------------------- #
# gaussian_blur
# --------------------------------------------------------------------------- #
def gaussian_blur(images: Tensor, severity: int, draws: Draws | None = None,
                  generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``skimage.filters.gaussian(x / 255, sigma=c)`` per channel (reference: ``gaussian_blur``; scipy's
    ``gaussian_filter``: truncate 4, mode 'nearest'). Deterministic."""
    return unit_to_uint8(gaussian_filter(to_unit(images), float(GAUSSIAN_BLUR[severity - 1])))

