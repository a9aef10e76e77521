"""Shared building blocks of the corruption engine: seeding, unit conversions, border extension, separable filters,
linear resampling (``scipy.ndimage.zoom`` order 1), ``clipped_zoom``, the motion-blur kernel and HSV conversions.

Conventions: images are ``(B, 3, H, W)`` (channel-first, RGB); single-channel fields (noise layers, displacement
fields) are ``(B, H, W)``. Index and weight tables are computed on the CPU in float64 Python/torch arithmetic that
mirrors the reference's own float64 arithmetic operation for operation, then moved to the images' device, so the
integer decisions they encode (crop offsets, tap positions, ``ceil``/``round`` of sizes) are identical on every
device.
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Draws", "MIN_SIDE", "clipped_zoom", "filter_axis", "gaussian_filter", "hsv_to_rgb", "image_seed",
    "make_generators", "motion_blur_taps", "numpy_arange", "pad", "pad_index", "per_image", "resolve_draws",
    "rgb_to_hsv",
    "scipy_gaussian_kernel", "shift_sum", "to_unit", "unit_to_uint8", "zoom_plan",
]

#: The random fields of one corruption call, batch-first, on the CPU (see each corruption's ``draw_*`` function).
Draws = dict[str, Tensor]

#: imagecorruptions 1.1.2 ``corrupt()`` refuses images with a side below 32 pixels.
MIN_SIDE: Final = 32


# --------------------------------------------------------------------------- #
# Seeding
# --------------------------------------------------------------------------- #
def image_seed(seed: int, name: str, severity: int, key: str) -> int:
    """A 63-bit seed for one image from (seed, corruption, severity, image key).

    blake2b rather than ``hash()`` so it is stable across processes and Python versions; the leading tag keeps these
    seeds unrelated to the 32-bit numpy seeds :func:`robustness.corruptions.sample_seed` derives from the same parts.
    """
    text = "\x1f".join(("corruption_engine", str(seed), name, str(severity), str(key)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def make_generators(seed: int, name: str, severity: int, keys: Sequence[str]) -> list[torch.Generator]:
    """One CPU generator per image, seeded by :func:`image_seed`.

    Always CPU generators, also for CUDA images: CPU and CUDA generators produce different streams, and drawing on the
    CPU is what makes an image's corruption independent of the device (and of the batch it is in).
    """
    return [torch.Generator(device="cpu").manual_seed(image_seed(seed, name, severity, k)) for k in keys]


def resolve_draws(draws: Draws | None, generators: Sequence[torch.Generator] | None,
                  drawer: Callable[[Tensor, int, Sequence[torch.Generator]], Draws], images: Tensor, severity: int,
                  name: str) -> Draws:
    """The draws a corruption function uses: ``draws`` if given, else ``drawer(images, severity, generators)``, where
    missing ``generators`` default to :func:`make_generators` with seed 0 and the batch positions as keys."""
    if draws is not None:
        return draws
    if generators is None:
        generators = make_generators(0, name, severity, [str(i) for i in range(images.shape[0])])
    if len(generators) != images.shape[0]:
        raise ValueError(f"need one generator per image: {len(generators)} for a batch of {images.shape[0]}")
    return drawer(images, severity, generators)


def per_image(generators: Sequence[torch.Generator], draw: Callable[[torch.Generator], Tensor]) -> Tensor:
    """``torch.stack([draw(g) for g in generators])``: one draw per image from its own generator, batch-first."""
    return torch.stack([draw(g) for g in generators])


# --------------------------------------------------------------------------- #
# Unit conversions
# --------------------------------------------------------------------------- #
def to_unit(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> float in [0, 1] (the reference's ``np.array(x) / 255.``)."""
    return images.to(dtype) / 255.0


def unit_to_uint8(x: Tensor) -> Tensor:
    """``np.uint8(np.clip(x, 0, 1) * 255)``: clip, scale and *truncate* (numpy's float -> uint8 cast truncates; the
    reference never rounds), so the engine's output lands on the same grey level as the reference's. Works in place:
    ``x`` must be a temporary."""
    return x.clamp_(0, 1).mul_(255).to(torch.uint8)


# --------------------------------------------------------------------------- #
# Border extension and separable filtering
# --------------------------------------------------------------------------- #
def pad_index(n: int, before: int, after: int, mode: str, device: torch.device | str = "cpu") -> Tensor:
    """Source index of each position of an axis of length ``n`` extended by ``before``/``after`` samples.

    Modes (scipy names, with their OpenCV / torch equivalents):

    * ``nearest``: ``aaa|abcd|ddd`` (cv2 BORDER_REPLICATE, torch ``replicate``).
    * ``reflect``: ``cba|abcd|dcb`` half-sample symmetric (cv2 BORDER_REFLECT); torch has no such pad mode.
    * ``mirror``: ``dcb|abcd|cba`` whole-sample symmetric (cv2 BORDER_REFLECT_101 = OpenCV's default border, torch
      ``reflect``).

    Extensions longer than ``n`` repeat the pattern periodically, as scipy and OpenCV do.
    """
    i = torch.arange(-before, n + after, dtype=torch.int64)
    if mode == "nearest":
        i = i.clamp(0, n - 1)
    elif mode == "reflect":
        i = i.remainder(2 * n)
        i = torch.where(i >= n, 2 * n - 1 - i, i)
    elif mode == "mirror":
        if n == 1:
            i = torch.zeros_like(i)
        else:
            period = 2 * n - 2
            i = i.remainder(period)
            i = torch.where(i >= n, period - i, i)
    else:
        raise ValueError(f"unknown border mode {mode!r}")
    return i.to(device)


def pad(x: Tensor, dim: int, radius: int, mode: str) -> Tensor:
    """Extend ``x`` by ``radius`` samples on both sides of ``dim`` with :func:`pad_index`'s ``mode``: the two border
    strips are gathered (small) and concatenated with ``x`` (one copy; ``index_select`` of the whole padded axis is
    several times slower on a CPU)."""
    if radius == 0:
        return x
    n = x.shape[dim]
    index = pad_index(n, radius, radius, mode, x.device)
    left = x.index_select(dim, index[:radius])
    right = x.index_select(dim, index[radius + n:])
    return torch.cat((left, x, right), dim)


def filter_axis(x: Tensor, kernel: Tensor, dim: int, mode: str) -> Tensor:
    """Correlate ``x`` (``(..., H, W)``) with an odd-length 1-D ``kernel`` along ``dim`` (-2: rows, -1: columns).

    The borders are extended with :func:`pad_index` first, so the output has the input's shape. Computed as a sum of
    shifted slices of the padded copy (one multiply-add per tap, in ``x``'s dtype): for these single-channel 1-D
    kernels that is 5-10x faster on a CPU than ``conv2d``.

    float64 input takes scipy's own summation (``NI_Correlate1D`` for a symmetric kernel: centre tap, then each pair
    of mirrored samples added first and weighted, outermost pair first; separate multiplies and adds, no fused
    multiply-add), so the result is bit-identical to ``scipy.ndimage.correlate1d`` with the same weights: used
    where the reference thresholds or truncates the filtered values.
    """
    if dim not in (-2, -1):
        raise ValueError("dim must be -2 (rows) or -1 (columns)")
    taps = [float(v) for v in kernel.tolist()]
    radius = len(taps) // 2
    n = x.shape[dim]
    xp = pad(x, dim, radius, mode)
    if x.dtype == torch.float64 and taps == taps[::-1]:
        out = xp.narrow(dim, radius, n) * taps[radius]
        for j in range(radius, 0, -1):
            pair = xp.narrow(dim, radius - j, n) + xp.narrow(dim, radius + j, n)
            out.add_(pair.mul_(taps[radius - j]))
        return out
    out = xp.narrow(dim, 0, n) * taps[0]
    for i in range(1, len(taps)):
        out.add_(xp.narrow(dim, i, n), alpha=taps[i])
    return out


@functools.lru_cache(maxsize=64)
def _gaussian_taps(sigma: float, truncate: float) -> tuple[float, ...]:
    """``scipy.ndimage._filters._gaussian_kernel1d(sigma, 0, int(truncate * sigma + 0.5))``, computed with numpy's
    ``exp`` and pairwise ``sum`` exactly as scipy computes it (numpy's SIMD ``exp`` and torch's differ in the last
    bit): a constant table; no image data goes through numpy."""
    import numpy as np

    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi_x = np.exp(-0.5 / (float(sigma) * float(sigma)) * x ** 2)
    return tuple((phi_x / phi_x.sum()).tolist())


def scipy_gaussian_kernel(sigma: float, truncate: float = 4.0) -> Tensor:
    """The kernel ``skimage.filters.gaussian`` applies per axis: scipy's ``_gaussian_kernel1d`` with radius
    ``int(truncate * sigma + 0.5)``, float64, summing to 1 (see :func:`_gaussian_taps`)."""
    return torch.tensor(_gaussian_taps(float(sigma), float(truncate)), dtype=torch.float64)


def gaussian_filter(x: Tensor, sigma: float | tuple[float, float], mode: str = "nearest",
                    truncate: float = 4.0) -> Tensor:
    """``skimage.filters.gaussian`` on the last two axes of ``x`` (``(..., H, W)``), i.e. ``scipy.ndimage.
    gaussian_filter`` with per-axis ``sigma`` (rows first, as scipy does), ``mode`` and ``truncate``; axes with
    ``sigma <= 1e-15`` are skipped like scipy skips them."""
    sigma_h, sigma_w = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    if sigma_h > 1e-15:
        x = filter_axis(x, scipy_gaussian_kernel(sigma_h, truncate), -2, mode)
    if sigma_w > 1e-15:
        x = filter_axis(x, scipy_gaussian_kernel(sigma_w, truncate), -1, mode)
    return x


# --------------------------------------------------------------------------- #
# Linear resampling: scipy.ndimage.zoom(order=1) and imagecorruptions' clipped_zoom
# --------------------------------------------------------------------------- #
def numpy_arange(start: float, stop: float, step: float) -> list[float]:
    """``np.arange(start, stop, step).tolist()`` bit for bit (length ``ceil((stop - start) / step)``, values
    ``start + i * ((start + step) - start)``), without numpy: zoom blur's factor lists come from ``np.arange`` and
    ``ceil(H / factor)`` is sensitive to their last bit (224 / 1.12 is 200 or 200.00000000000003)."""
    length = max(math.ceil((stop - start) / step), 0)
    delta = (start + step) - start
    return [start + i * delta for i in range(length)]


def zoom_plan(n: int, factor: float) -> tuple[int, int, int, bool]:
    """The per-axis plan of imagecorruptions' ``clipped_zoom(img, factor)`` for an axis of length ``n``.

    ``clipped_zoom`` crops the central ``crop = ceil(n / factor)`` samples (from ``top = (n - crop) // 2``) and zooms
    them with ``scipy.ndimage.zoom(order=1, mode='constant')`` to ``out = round(crop * factor)`` samples. scipy maps
    output ``k`` to input coordinate ``k * ((crop - 1) / (out - 1))`` (corners aligned) and writes ``cval = 0`` where
    that float product lands above ``crop - 1`` by rounding, which can only happen for the last sample (it does:
    30 -> 36 samples zeroes the last one). Returns ``(top, crop, out, last_valid)``.
    """
    crop = int(math.ceil(n / float(factor)))
    top = (n - crop) // 2
    out = int(round(crop * factor))
    scale = (crop - 1) / (out - 1) if out > 1 else 1.0
    return top, crop, out, (out - 1) * scale <= crop - 1


def clipped_zoom(x: Tensor, factor: float, out_hw: tuple[int, int] | None = None) -> Tensor:
    """imagecorruptions' ``clipped_zoom(img, factor)`` on the last two axes of ``x`` (``(B, C, H, W)`` or
    ``(B, H, W)``).

    Returns the zoomed central crop, ``round(ceil(H / f) * f) x round(ceil(W / f) * f)``, or only its top-left
    ``out_hw`` part (``zoom_blur`` keeps ``zoom_layer[:H, :W]``). Bilinear with aligned corners is exactly scipy's
    order-1 zoom (coordinates in float32 here: a 1e-5 pixel difference); ``F.interpolate`` does it in one pass.
    """
    h, w = x.shape[-2:]
    top, crop_h, out_h, valid_h = zoom_plan(h, factor)
    left, crop_w, out_w, valid_w = zoom_plan(w, factor)
    crop = x[..., top:top + crop_h, left:left + crop_w]
    y = F.interpolate(crop if x.dim() == 4 else crop.unsqueeze(1), size=(out_h, out_w), mode="bilinear",
                      align_corners=True)
    if x.dim() == 3:
        y = y.squeeze(1)
    keep_h, keep_w = (out_h, out_w) if out_hw is None else (min(out_h, out_hw[0]), min(out_w, out_hw[1]))
    y = y[..., :keep_h, :keep_w]
    if not valid_h and out_h <= keep_h:
        y[..., out_h - 1, :] = 0
    if not valid_w and out_w <= keep_w:
        y[..., :, out_w - 1] = 0
    return y


# --------------------------------------------------------------------------- #
# imagecorruptions' _motion_blur: a weighted sum of edge-clamped shifts
# --------------------------------------------------------------------------- #
def motion_blur_taps(radius: int, sigma: float, angle: float, h: int, w: int) -> list[tuple[float, int, int]]:
    """``(weight, dy, dx)`` of each shifted copy ``imagecorruptions.corruptions._motion_blur(x, radius, sigma, angle)``
    sums, for an ``h x w`` image, with the reference's float64 arithmetic (``ceil`` of ``i * point / hypot - 0.5``)
    and its early stop once a shift reaches the image size."""
    width = radius * 2 + 1  # getOptimalKernelWidth1D
    k = [math.exp(-(i ** 2) / (2 * (sigma ** 2))) / (math.sqrt(2 * math.pi) * sigma) for i in range(width)]
    z = math.fsum(k)
    rad = angle * (math.pi / 180.0)  # np.deg2rad
    point = (width * math.sin(rad), width * math.cos(rad))
    hypot = math.hypot(point[0], point[1])
    taps = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= h or abs(dx) >= w:  # "simulated motion exceeded image borders"
            break
        taps.append((k[i] / z, dy, dx))
    return taps


def shift_sum(x: Tensor, taps: Sequence[tuple[float, int, int]]) -> Tensor:
    """``sum_i weight_i * shift(x, dx_i, dy_i)`` over ``(..., H, W)`` with imagecorruptions' ``shift``: content moves by
    ``(dy, dx)`` and the vacated border repeats the edge row/column, i.e. ``out[y, x] = x[clamp(y - dy),
    clamp(x - dx)]``. One padded copy, then a strided slice per tap (no rolls, no per-tap copies)."""
    h, w = x.shape[-2:]
    py = max((abs(dy) for _, dy, _ in taps), default=0)
    px = max((abs(dx) for _, _, dx in taps), default=0)
    xp = pad(pad(x, -2, py, "nearest"), -1, px, "nearest")
    out = torch.zeros_like(x)
    for weight, dy, dx in taps:
        out.add_(xp[..., py - dy:py - dy + h, px - dx:px - dx + w], alpha=weight)
    return out


# --------------------------------------------------------------------------- #
# HSV, exactly as skimage.color.rgb2hsv / hsv2rgb (channel dim 1)
# --------------------------------------------------------------------------- #
def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """``skimage.color.rgb2hsv`` for ``(B, 3, H, W)`` floats in [0, 1], including its tie rule (blue beats green beats
    red when several channels equal the maximum) and ``h = s = 0`` for greys."""
    r, g, b = rgb.unbind(1)
    v = rgb.amax(1)
    delta = v - rgb.amin(1)
    grey = delta == 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    s = torch.where(grey, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(grey, torch.zeros_like(h), h)
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """``skimage.color.hsv2rgb`` for ``(B, 3, H, W)``: sector ``floor(6h) mod 6`` picks the (v, t, p) permutation."""
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = torch.remainder(hi, 6)
    r = torch.where(hi == 0, v, torch.where(hi == 1, q, torch.where(hi == 2, p, torch.where(hi == 3, p,
                    torch.where(hi == 4, t, v)))))
    g = torch.where(hi == 0, t, torch.where(hi == 1, v, torch.where(hi == 2, v, torch.where(hi == 3, q,
                    torch.where(hi == 4, p, p)))))
    b = torch.where(hi == 0, p, torch.where(hi == 1, p, torch.where(hi == 2, t, torch.where(hi == 3, v,
                    torch.where(hi == 4, v, q)))))
    return torch.stack((r, g, b), 1)
