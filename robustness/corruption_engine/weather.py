"""Weather corruptions: snow, frost, fog, spatter (imagecorruptions 1.1.2).

Images are uint8 ``(B, 3, H, W)``; every function returns uint8 ``(B, 3, H, W)``.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file

from . import _cv
from ._common import (
    Draws,
    clipped_zoom,
    filter_axis,
    gaussian_filter,
    motion_blur_taps,
    per_image,
    resolve_draws,
    scipy_gaussian_kernel,
    shift_sum,
    to_unit,
    unit_to_uint8,
)

__all__ = [
    "draw_fog", "draw_frost", "draw_snow", "draw_spatter", "fog", "frost", "frost_texture", "plasma_fractal", "snow",
    "spatter",
]

# Parameter tables copied from imagecorruptions 1.1.2 corruptions.py (the function named in each comment).
# snow: loc, scale, zoom, threshold, motion radius, motion sigma, blend
SNOW: Final = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST: Final = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # frost: image weight, frost weight
# frost: the texture files; ``np.random.randint(5)`` only ever picks one of the first five
FROST_FILES: Final = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FOG: Final = ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))  # fog: strength, wibble decay
# spatter: loc, scale, sigma, threshold, intensity (liquid) / mud sigma, mud?
SPATTER: Final = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
_WATER: Final = (175 / 255., 238 / 255., 238 / 255.)  # spatter: "pale turquoise", added to R, G, B in that order
_MUD: Final = (63 / 255., 42 / 255., 20 / 255.)  # spatter: "mud brown"
_SPATTER_KERNEL: Final = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))


# --------------------------------------------------------------------------- #
# snow
# --------------------------------------------------------------------------- #
def draw_snow(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"snow": (B, H, W) standard normal, "angle": (B,) float64 degrees in [-135, -45)}`` (reference:
    ``np.random.normal(size=(H, W), loc, scale)``, then ``np.random.uniform(-135, -45)``)."""
    _, _, h, w = images.shape
    return {
        "snow": per_image(generators, lambda g: torch.randn((h, w), generator=g)),
        "angle": per_image(generators, lambda g: -135 + 90 * torch.rand((), generator=g, dtype=torch.float64)),
    }


def snow(images: Tensor, severity: int, draws: Draws | None = None,
         generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Snow layer: Gaussian field, ``clipped_zoom``, threshold, motion blur along the drawn angle, rounded to 1/255;
    added twice (as is and rotated 180 degrees) to the image, which is first brightened towards its greyscale
    (reference: ``snow``). The layer keeps its full zoomed size through the motion blur (whose edge clamping sees
    it) and is cropped afterwards, as in the reference. float32 throughout (the reference's layer is float64; the
    threshold and the rounding to 1/255 flip for a handful of values, see the fidelity numbers)."""
    draws = resolve_draws(draws, generators, draw_snow, images, severity, "snow")
    loc, scale, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    x = to_unit(images)  # np.array(x, dtype=np.float32) / 255.
    h, w = x.shape[-2:]
    layer = loc + scale * draws["snow"].to(x.device, torch.float32)
    layer = clipped_zoom(layer, zoom)  # (B, H', W'), H' = round(ceil(H / zoom) * zoom) >= H
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    lh, lw = layer.shape[-2:]
    layer = torch.stack([
        shift_sum(layer[i], motion_blur_taps(radius, sigma, float(angle), lh, lw))
        for i, angle in enumerate(draws["angle"].tolist())
    ])
    layer = (torch.round(layer * 255).clamp(0, 255) / 255.0)[:, None, :h, :w]  # np.round(...).astype(np.uint8) / 255.
    r, g, b = x.unbind(1)
    gray = (r * 0.299 + g * 0.587 + b * 0.114).unsqueeze(1)  # cv2.COLOR_RGB2GRAY on float32
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return unit_to_uint8(x + layer + layer.flip(-1, -2))


# --------------------------------------------------------------------------- #
# frost
# --------------------------------------------------------------------------- #
def _frost_dir() -> Path:
    """The installed imagecorruptions package's ``frost`` folder (located without importing the package, whose import
    needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("frost needs the textures shipped with imagecorruptions==1.1.2; pip install it")
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


@functools.lru_cache(maxsize=None)
def _frost_source(index: int) -> Tensor:
    """Texture ``index`` as uint8 RGB ``(3, h, w)`` (torchvision decodes these files exactly as ``cv2.imread``;
    the PNGs' alpha channel is dropped, as ``cv2.IMREAD_COLOR`` drops it)."""
    return decode_image(read_file(str(_frost_dir() / FROST_FILES[index])), mode=ImageReadMode.RGB)


def _frost_size(index: int, h: int, w: int) -> tuple[int, int]:
    """``(height, width)`` the reference resizes texture ``index`` to for an ``h x w`` image: scaled by 1.1 times the
    factor that makes it cover the image (1 when it already does)."""
    _, fh, fw = _frost_source(index).shape
    if fh >= h and fw >= w:
        factor = 1.0
    elif fh < h and fw >= w:
        factor = h / fh
    elif fh >= h and fw < w:
        factor = w / fw
    else:
        factor = max(h / fh, w / fw)
    factor *= 1.1
    return int(math.ceil(fh * factor)), int(math.ceil(fw * factor))


@functools.lru_cache(maxsize=64)
def frost_texture(index: int, out_h: int, out_w: int, device: str = "cpu") -> Tensor:
    """Frost texture ``index`` resized to ``out_h x out_w`` like ``cv2.resize(..., INTER_CUBIC)``, uint8 RGB
    ``(3, out_h, out_w)`` on ``device``. Cached: the reference re-reads and re-resizes the file on every call."""
    return _cv.cubic_resize_uint8(_frost_source(index), out_h, out_w).to(device)


def draw_frost(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"index", "top", "left"}``, each ``(B,)`` int64: the texture (``np.random.randint(5)``) and the crop's corner
    (``np.random.randint(0, th - H)``, ``np.random.randint(0, tw - W)`` for the resized texture's size)."""
    _, _, h, w = images.shape
    index, top, left = [], [], []
    for g in generators:
        i = int(torch.randint(5, (), generator=g))
        th, tw = _frost_size(i, h, w)
        index.append(i)
        top.append(int(torch.randint(0, th - h, (), generator=g)))
        left.append(int(torch.randint(0, tw - w, (), generator=g)))
    return {"index": torch.tensor(index), "top": torch.tensor(top), "left": torch.tensor(left)}


def frost(images: Tensor, severity: int, draws: Draws | None = None,
          generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip(c0 * x + c1 * crop, 0, 255)`` with a crop of a resized frost texture (reference: ``frost``), through
    :func:`_frost_table`. Exact given the draws (and the texture resize, see :func:`frost_texture`)."""
    draws = resolve_draws(draws, generators, draw_frost, images, severity, "frost")
    _, _, h, w = images.shape
    dev = str(images.device)
    crops = []
    for i, top, left in zip(draws["index"].tolist(), draws["top"].tolist(), draws["left"].tolist()):
        th, tw = _frost_size(i, h, w)
        crops.append(frost_texture(i, th, tw, dev)[:, top:top + h, left:left + w])
    index = images.to(torch.int32).bitwise_left_shift_(8).add_(torch.stack(crops))
    return _frost_table(severity, dev).index_select(0, index.view(-1)).view(images.shape)


@functools.lru_cache(maxsize=16)
def _frost_table(severity: int, device: str) -> Tensor:
    """``np.uint8(np.clip(c0 * x + c1 * f, 0, 255))`` for every pair of grey levels (``x * 256 + f``), in float64 as
    the reference computes it (``c0 * x + c1 * f`` is often an exact integer, which float32 would land below):
    65536 entries, so frost is one lookup per value."""
    c0, c1 = FROST[severity - 1]
    levels = torch.arange(256, dtype=torch.float64)
    table = (c0 * levels[:, None] + c1 * levels[None, :]).clamp(0, 255).to(torch.uint8)
    return table.view(-1).to(device)


# --------------------------------------------------------------------------- #
# fog
# --------------------------------------------------------------------------- #
def _map_size(h: int, w: int) -> int:
    """``next_power_of_2(max(H, W, 3))``: the reference takes the max over the array shape, channels included."""
    side = max(h, w, 3)
    return 1 if side == 0 else 2 ** (side - 1).bit_length()


def draw_fog(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"uniform": (B, M * M - 1)}`` in [0, 1), M the plasma map size: the whole stream the reference's
    ``plasma_fractal`` consumes (three ``np.random.uniform`` fields per level, ``n x n`` each for n = 1, 2, ..., M/2,
    in call order), which :func:`plasma_fractal` scales by each level's wibble. float32 (float64 in the replayed
    reference draws)."""
    _, _, h, w = images.shape
    m = _map_size(h, w)
    return {"uniform": per_image(generators, lambda g: torch.rand(m * m - 1, generator=g))}


def plasma_fractal(uniform: Tensor, mapsize: int, wibbledecay: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """imagecorruptions' ``plasma_fractal`` (diamond-square) for a batch: ``uniform`` ``(B, mapsize**2 - 1)`` ->
    ``(B, mapsize, mapsize)`` in [0, 1].

    The reference's operations in its order: each level sets square centres to the corner mean plus
    ``wibble * uniform(-wibble, wibble)``, then diamond points likewise (``np.roll`` -> ``torch.roll``), and divides
    ``wibble`` by ``wibbledecay``. In float64 the map is bit-identical to the reference's given its uniforms; fog
    uses float32 (twice as fast on a 1024 x 1024 map; the normalised map differs by ~1e-7).
    """
    b = uniform.shape[0]
    uniform = uniform.to(dtype)
    maparray = torch.zeros(b, mapsize, mapsize, dtype=dtype, device=uniform.device)
    stepsize, wibble, pos = mapsize, 100.0, 0

    def wibbledmean(array: Tensor) -> Tensor:
        nonlocal pos
        n = array.shape[-1] * array.shape[-2]
        u = uniform[:, pos:pos + n].view_as(array)
        pos += n
        return array / 4 + wibble * (-wibble + (wibble - -wibble) * u)  # np.random.uniform(-wibble, wibble)

    while stepsize >= 2:
        half = stepsize // 2
        corner = maparray[:, 0::stepsize, 0::stepsize]  # fillsquares
        square = corner + torch.roll(corner, -1, 1)
        square = square + torch.roll(square, -1, 2)
        maparray[:, half::stepsize, half::stepsize] = wibbledmean(square)
        dr = maparray[:, half::stepsize, half::stepsize]  # filldiamonds
        ul = maparray[:, 0::stepsize, 0::stepsize]
        lt = (dr + torch.roll(dr, 1, 1)) + (ul + torch.roll(ul, -1, 2))
        tt = (dr + torch.roll(dr, 1, 2)) + (ul + torch.roll(ul, -1, 1))
        maparray[:, 0::stepsize, half::stepsize] = wibbledmean(lt)
        maparray[:, half::stepsize, 0::stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray = maparray - maparray.amin((1, 2), keepdim=True)
    return maparray / maparray.amax((1, 2), keepdim=True)


def fog(images: Tensor, severity: int, draws: Draws | None = None,
        generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip((x + c0 * plasma) * max(x) / (max(x) + c0), 0, 1)`` with the top-left ``H x W`` of a plasma fractal
    (reference: ``fog``; ``max(x)`` over the whole image, all channels)."""
    draws = resolve_draws(draws, generators, draw_fog, images, severity, "fog")
    strength, decay = FOG[severity - 1]
    _, _, h, w = images.shape
    plasma = plasma_fractal(draws["uniform"].to(images.device), _map_size(h, w), decay)
    x = images.to(torch.float32)
    max_val = x.amax((1, 2, 3), keepdim=True) / 255.0
    factor = max_val / (max_val + strength)
    # (x / 255 + strength * plasma) * factor, in place on the float copy
    x.mul_(factor / 255.0).add_(plasma[:, None, :h, :w] * (strength * factor))
    return unit_to_uint8(x)


# --------------------------------------------------------------------------- #
# spatter
# --------------------------------------------------------------------------- #
def draw_spatter(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"liquid": (B, H, W)}`` standard normal (reference: ``np.random.normal(size=(H, W), loc, scale)``)."""
    _, _, h, w = images.shape
    return {"liquid": per_image(generators, lambda g: torch.randn((h, w), generator=g))}


def _water(liquid: Tensor, intensity: float) -> Tensor:
    """Severities 1-3: the water layer ``m`` ``(B, H, W)`` float32: liquid (as uint8) times a texture built from the
    liquid's Canny edges (chamfer distance, truncated at 20, blurred, equalised, embossed, blurred), normalised
    to max 1 and scaled by ``intensity`` (the reference's OpenCV pipeline, op for op, see :mod:`._cv`)."""
    # (liquid_layer * 255).astype(np.uint8): the rare liquid values above 1 (255 * 1.01 = 257.8) wrap around in
    # numpy's cast (to 1), so the same wrap here
    lu8 = ((liquid * 255).to(torch.int64) & 255).to(torch.uint8)
    edges = _cv.canny(lu8, 50, 150)
    dist = _cv.chamfer5_distance(torch.where(edges, 0, 255).to(torch.uint8))
    dist = _cv.box3_float(dist.clamp(max=20)).to(torch.uint8)  # THRESH_TRUNC 20, blur, .astype(np.uint8)
    dist = _cv.equalize_hist(dist)
    dist = _cv.filter2d_uint8(dist, torch.tensor(_SPATTER_KERNEL))
    dist = _cv.box3_uint8(dist).to(torch.float32)
    m = lu8.to(torch.float32) * dist
    peak = m.amax((1, 2), keepdim=True)
    # the reference divides by the peak even when it is 0 (no liquid at all) and returns a black image (NaN -> 0);
    # here such an image is left without water instead
    return m / torch.where(peak > 0, peak, torch.ones_like(peak)) * intensity


def spatter(images: Tensor, severity: int, draws: Draws | None = None,
            generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Water drops (severities 1-3) or mud (4-5) from a smoothed, thresholded Gaussian field (reference: ``spatter``).

    The OpenCV steps are exact re-implementations (:mod:`._cv`), so same-draw outputs match the reference up to float
    rounding. The liquid field is smoothed in float64 like the reference's: it is thresholded (twice for mud) and
    truncated to uint8 before Canny, and float32 rounding moved a few values per image across those steps (one
    flipped mud pixel is a 100-level difference).
    """
    draws = resolve_draws(draws, generators, draw_spatter, images, severity, "spatter")
    loc, scale, sigma, threshold, intensity, mud = SPATTER[severity - 1]
    x = to_unit(images)  # float32, as np.array(x, dtype=np.float32) / 255.
    liquid = gaussian_filter(loc + scale * draws["liquid"].to(x.device, torch.float64), float(sigma))
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if not mud:
        m = _water(liquid, intensity).unsqueeze(1)
        color = torch.tensor(_WATER, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return unit_to_uint8(x + m * color)
    # skimage keeps float32 input float32: scipy sums each axis pass in double and stores it as float32, and so
    # does this (the result is thresholded at 0.8, where float32 summation order would flip some pixels)
    m = (liquid > threshold).to(torch.float64)
    kernel = scipy_gaussian_kernel(float(intensity))
    for dim in (-2, -1):
        m = filter_axis(m, kernel, dim, "nearest").to(torch.float32).to(torch.float64)
    m = m.to(torch.float32)
    m = torch.where(m < 0.8, torch.zeros_like(m), m).unsqueeze(1)
    color = torch.tensor(_MUD, dtype=torch.float64, device=x.device).view(1, 3, 1, 1) * m.to(torch.float64)
    return unit_to_uint8((x * (1 - m)).to(torch.float64) + color)
