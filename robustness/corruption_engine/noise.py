"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise, speckle_noise (imagecorruptions 1.1.2).

Each ``draw_*`` function returns the random fields of a batch, one generator per image; each corruption function
takes ``(images uint8 (B, 3, H, W), severity, draws)`` and is deterministic given the draws.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

import torch
from torch import Tensor

from ._common import Draws, per_image, resolve_draws, to_unit, unit_to_uint8

__all__ = [
    "draw_gaussian_noise", "draw_impulse_noise", "draw_shot_noise", "draw_speckle_noise", "gaussian_noise",
    "impulse_noise", "shot_noise", "speckle_noise",
]

# Parameter tables copied from imagecorruptions 1.1.2 corruptions.py (the function named in each comment).
GAUSSIAN_NOISE: Final = (.08, .12, 0.18, 0.26, 0.38)  # gaussian_noise: noise std
SHOT_NOISE: Final = (60, 25, 12, 5, 3)  # shot_noise: photons per unit intensity
IMPULSE_NOISE: Final = (.03, .06, .09, 0.17, 0.27)  # impulse_noise: salt-and-pepper amount
SPECKLE_NOISE: Final = (.15, .2, 0.35, 0.45, 0.6)  # speckle_noise: multiplicative noise std


def _normal_field(images: Tensor, generators: Sequence[torch.Generator]) -> Draws:
    _, c, h, w = images.shape
    return {"noise": per_image(generators, lambda g: torch.randn((c, h, w), generator=g))}


def draw_gaussian_noise(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"noise": (B, 3, H, W) float32}`` standard normal (the reference draws ``np.random.normal(size=(H, W, 3),
    scale=c)`` = ``c *`` a standard normal)."""
    return _normal_field(images, generators)


def gaussian_noise(images: Tensor, severity: int, draws: Draws | None = None,
                   generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip(x / 255 + c * noise, 0, 1) * 255`` (reference: ``gaussian_noise``). Same-draw exact up to float32."""
    draws = resolve_draws(draws, generators, draw_gaussian_noise, images, severity, "gaussian_noise")
    c = GAUSSIAN_NOISE[severity - 1]
    x = to_unit(images)
    return unit_to_uint8(x + draws["noise"].to(x.device, x.dtype) * c)


def _alias_table(pmf: list[float]) -> tuple[list[float], list[int]]:
    """Walker/Vose alias table of a discrete distribution: outcome ``j`` (uniform) is kept with probability
    ``prob[j]``, else replaced by ``alias[j]``."""
    n = len(pmf)
    total = math.fsum(pmf)
    scaled = [p * n / total for p in pmf]
    prob, alias = [1.0] * n, list(range(n))
    small = [i for i, v in enumerate(scaled) if v < 1.0]
    large = [i for i, v in enumerate(scaled) if v >= 1.0]
    while small and large:
        s, big = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], big
        scaled[big] += scaled[s] - 1.0
        (small if scaled[big] < 1.0 else large).append(big)
    return prob, alias


@functools.lru_cache(maxsize=8)
def _poisson_alias(photons: int) -> tuple[Tensor, Tensor, int]:
    """Alias tables of Poisson(``v / 255 * photons``) for every grey level ``v`` (the reference's float64 rate),
    truncated at K = mean + 12 sd + 20 of the largest rate (the tail beyond is below float64 resolution):
    ``(256 * K,)`` float64 probabilities and int32 aliases, and K."""
    k = int(photons + 12 * math.sqrt(photons) + 20)
    probs, aliases = [], []
    for v in range(256):
        rate = v / 255.0 * photons
        pmf = [math.exp(-rate)]
        for i in range(1, k):
            pmf.append(pmf[-1] * rate / i)
        prob, alias = _alias_table(pmf)
        probs += prob
        aliases += alias
    return torch.tensor(probs, dtype=torch.float64), torch.tensor(aliases, dtype=torch.int32), k


def draw_shot_noise(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"counts": (B, 3, H, W) int32}``: Poisson counts with rate ``x / 255 * c`` (the reference's
    ``np.random.poisson(x * c)``), by the alias method: one float64 uniform per value, whose integer part (times K)
    picks a column of the grey level's alias table and whose fraction decides between it and its alias; O(1) per
    value, several times faster than ``torch.poisson``."""
    c = SHOT_NOISE[severity - 1]
    prob, alias, k = _poisson_alias(c)
    levels = images.detach().to("cpu", torch.int32)
    u = per_image(generators, lambda g: torch.rand(images.shape[1:], generator=g, dtype=torch.float64)).mul_(k)
    column = u.to(torch.int32)
    index = (levels * k + column).view(-1)
    keep = u.sub_(column).view(-1) < prob.index_select(0, index)
    counts = torch.where(keep, column.view(-1), alias.index_select(0, index))
    return {"counts": counts.view(images.shape)}


@functools.lru_cache(maxsize=8)
def _shot_lut(photons: int, size: int) -> Tensor:
    """``np.uint8(np.clip(n / c, 0, 1) * 255)`` for counts ``n < size`` (float64, as the reference computes it)."""
    n = torch.arange(size, dtype=torch.float64)
    return ((n / float(photons)).clamp(0, 1) * 255).to(torch.uint8)


def shot_noise(images: Tensor, severity: int, draws: Draws | None = None,
               generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip(counts / c, 0, 1) * 255`` (reference: ``shot_noise``). Exact given the draws."""
    draws = resolve_draws(draws, generators, draw_shot_noise, images, severity, "shot_noise")
    c = SHOT_NOISE[severity - 1]
    # a lookup table computed in float64 like the reference: counts / c * 255 is often an exact integer
    # (12 / 60 * 255 = 51), which float32 would land just below and truncation would turn into a whole grey level;
    # every count >= c saturates, so the table stops there
    counts = draws["counts"].to(images.device, torch.int32).clamp(0, c).contiguous()
    return _shot_lut(c, c + 1).to(images.device).index_select(0, counts.view(-1)).view(counts.shape)


def draw_impulse_noise(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"flip": ..., "salt": ...}``, each ``(B, 3, H, W)`` float32: skimage's ``random_noise(mode='s&p')`` flips an
    element when ``flip <= amount`` and makes it salt (1) when ``salt <= 0.5``, pepper (0) otherwise, from two
    uniform fields. Drawn here from one: ``flip = u``, ``salt = u / amount``; given ``u <= amount``, ``u / amount``
    is uniform on [0, 1], so salt and pepper are equally likely and independent across elements, as there."""
    _, c, h, w = images.shape
    amount = IMPULSE_NOISE[severity - 1]
    flip = per_image(generators, lambda g: torch.rand((c, h, w), generator=g))
    return {"flip": flip, "salt": flip / amount}


def impulse_noise(images: Tensor, severity: int, draws: Draws | None = None,
                  generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Salt and pepper per element (reference: ``impulse_noise`` -> ``skimage.util.random_noise(x, 's&p', amount=c)``).

    Exact given the draws. The reference itself is not reproducible: scikit-image >= 0.20 draws from a fresh unseeded
    ``np.random.default_rng()``; the fidelity check pins that generator instead.
    """
    draws = resolve_draws(draws, generators, draw_impulse_noise, images, severity, "impulse_noise")
    amount = IMPULSE_NOISE[severity - 1]
    # on uint8 directly: the reference's x / 255. * 255 truncates back to x for every grey level (float64)
    flipped = draws["flip"].to(images.device) <= amount
    salt = (draws["salt"].to(images.device) <= 0.5).to(torch.uint8) * 255
    return torch.where(flipped, salt, images)


def draw_speckle_noise(images: Tensor, severity: int, generators: Sequence[torch.Generator]) -> Draws:
    """``{"noise": (B, 3, H, W) float32}`` standard normal (reference: ``np.random.normal(size=x.shape, scale=c)``)."""
    return _normal_field(images, generators)


def speckle_noise(images: Tensor, severity: int, draws: Draws | None = None,
                  generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """``clip(x + x * c * noise, 0, 1) * 255`` (reference: ``speckle_noise``). Same-draw exact up to float32."""
    draws = resolve_draws(draws, generators, draw_speckle_noise, images, severity, "speckle_noise")
    c = SPECKLE_NOISE[severity - 1]
    x = to_unit(images)
    return unit_to_uint8(x + x * (draws["noise"].to(x.device, x.dtype) * c))
