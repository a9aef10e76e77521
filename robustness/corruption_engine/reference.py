"""Fidelity tooling (numpy; not used by the engine itself): run imagecorruptions 1.1.2 seeded, replay its random
draws into the engine's ``draws`` form, and compare the two backends.

Same-draw replay: ``np.random.seed(s)`` before the reference call fixes everything it draws (numpy's global legacy
``RandomState``); :func:`replay_draws` seeds its own ``RandomState(s)`` and makes the same numpy calls in the same
order (same sizes, so the same stream: checked for ``randint``, ``uniform`` and ``normal``), reshaping the result
into the engine's fields. One exception: ``impulse_noise`` calls ``skimage.util.random_noise`` without an ``rng``,
which on scikit-image >= 0.20 means a fresh unseeded ``np.random.default_rng()``; :func:`reference_corrupt` pins that
generator to ``default_rng(s)`` for the duration of the call, and the replay draws from the same.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from unittest import mock

import numpy as np
import torch
from torch import Tensor

from ibot.compat import imagecorruptions as icc

from . import blur, noise
from ._common import Draws
from .weather import _frost_size, _map_size

__all__ = [
    "SameDrawStats", "numpy_seed", "psnr", "psnr_batch", "reference_corrupt", "replay_draws", "same_draw_stats",
    "ssim", "ssim_batch", "stack_draws", "to_chw", "to_hwc",
]


def numpy_seed(seed: int, name: str, severity: int, key: str) -> int:
    """32-bit numpy seed from (seed, corruption, severity, image key); the same recipe as
    :func:`robustness.corruptions.sample_seed`."""
    digest = hashlib.blake2b("\x1f".join(map(str, (seed, name, severity, key))).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def to_chw(image: np.ndarray) -> Tensor:
    """uint8 ``(H, W, 3)`` numpy -> uint8 ``(3, H, W)`` tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1).contiguous()


def to_hwc(image: Tensor) -> np.ndarray:
    """uint8 ``(3, H, W)`` tensor -> uint8 ``(H, W, 3)`` numpy."""
    return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()


@contextlib.contextmanager
def _pinned_random_noise(seed: int) -> Iterator[None]:
    """Make ``skimage.util.random_noise`` (called without ``rng`` by imagecorruptions' impulse_noise) draw from
    ``np.random.default_rng(seed)`` while the block runs."""
    import skimage.util

    original = skimage.util.random_noise

    def pinned(*args: object, **kwargs: object) -> np.ndarray:
        kwargs.setdefault("rng", seed)
        return original(*args, **kwargs)

    with mock.patch.object(skimage.util, "random_noise", pinned):
        yield


def reference_corrupt(image: np.ndarray, name: str, severity: int, np_seed: int) -> np.ndarray:
    """imagecorruptions 1.1.2 (through :mod:`ibot.compat.imagecorruptions`) on uint8 ``(H, W, 3)``, with numpy's
    global RNG seeded to ``np_seed`` (and impulse noise's generator pinned to it)."""
    icc.install()
    pin = _pinned_random_noise(np_seed) if name == "impulse_noise" else contextlib.nullcontext()
    with pin:
        np.random.seed(np_seed)
        return icc.corrupt(image, name, severity)


def replay_draws(image: np.ndarray, name: str, severity: int, np_seed: int) -> Draws:
    """The engine's ``draws`` (batch of one) holding exactly what ``reference_corrupt(image, name, severity,
    np_seed)`` draws."""
    h, w, _ = image.shape
    rs = np.random.RandomState(np_seed)

    def t(a: np.ndarray | float | int) -> Tensor:
        return torch.as_tensor(np.asarray(a))[None]

    if name in ("gaussian_noise", "speckle_noise"):
        return {"noise": t(rs.standard_normal((h, w, 3)).transpose(2, 0, 1).copy())}
    if name == "shot_noise":
        c = noise.SHOT_NOISE[severity - 1]
        return {"counts": t(rs.poisson(np.array(image) / 255. * c).transpose(2, 0, 1).astype(np.int32))}
    if name == "impulse_noise":
        g = np.random.default_rng(np_seed)
        flip = g.random((h, w, 3)).transpose(2, 0, 1).copy()
        salt = g.random((h, w, 3)).transpose(2, 0, 1).copy()
        return {"flip": t(flip), "salt": t(salt)}
    if name == "glass_blur":
        _, d, iterations = blur.GLASS_BLUR[severity - 1]
        offsets = rs.randint(-d, d, size=(iterations, (h - 2 * d) * (w - 2 * d), 2))
        # the reference visits rows and columns in decreasing order; the engine indexes them increasingly
        offsets = offsets.reshape(iterations, h - 2 * d, w - 2 * d, 2)[:, ::-1, ::-1].astype(np.int8)
        return {"dx": t(offsets[..., 0].copy()), "dy": t(offsets[..., 1].copy())}
    if name == "motion_blur":
        return {"angle": t(rs.uniform(-45, 45))}
    if name == "snow":
        field = rs.standard_normal((h, w))
        return {"snow": t(field), "angle": t(rs.uniform(-135, -45))}
    if name == "frost":
        index = rs.randint(5)
        th, tw = _frost_size(int(index), h, w)
        top, left = rs.randint(0, th - h), rs.randint(0, tw - w)
        return {"index": t(int(index)), "top": t(int(top)), "left": t(int(left))}
    if name == "fog":
        m = _map_size(h, w)
        return {"uniform": t(rs.random_sample(m * m - 1))}
    if name == "elastic_transform":
        return {"dx": t(rs.random_sample((h, w))), "dy": t(rs.random_sample((h, w)))}
    if name == "spatter":
        return {"liquid": t(rs.standard_normal((h, w)))}
    return {}


def stack_draws(draws: Sequence[Draws]) -> Draws:
    """Concatenate single-image draws (same image size) into a batch."""
    return {k: torch.cat([d[k] for d in draws]) for k in draws[0]} if draws else {}


@dataclass(frozen=True)
class SameDrawStats:
    """Agreement of two uint8 images: mean absolute difference (grey levels), fraction of values within 2 levels,
    and the largest difference."""

    mad: float
    within2: float
    max_diff: int


def same_draw_stats(reference: np.ndarray, engine: np.ndarray) -> SameDrawStats:
    """:class:`SameDrawStats` of two uint8 arrays of the same shape."""
    diff = np.abs(reference.astype(np.int16) - engine.astype(np.int16))
    return SameDrawStats(float(diff.mean()), float((diff <= 2).mean()), int(diff.max()))


def psnr(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """PSNR in dB of uint8 images (peak 255); 100 for identical images."""
    mse = float(np.mean((clean.astype(np.float64) - corrupted.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * float(np.log10(255.0 ** 2 / mse))


def ssim(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """Mean SSIM of uint8 ``(H, W, 3)`` images (kornia: 11x11 Gaussian window, sigma 1.5, on [0, 1] RGB)."""
    return float(ssim_batch(to_chw(clean)[None], to_chw(corrupted)[None])[0])


def psnr_batch(clean: Tensor, corrupted: Tensor) -> Tensor:
    """Per-image PSNR (dB, peak 255; 100 when identical) of uint8 ``(N, 3, H, W)`` batches."""
    mse = (clean.double() - corrupted.double()).pow(2).mean((1, 2, 3))
    return torch.where(mse == 0, torch.full_like(mse, 100.0), 10 * torch.log10(255.0 ** 2 / mse.clamp(min=1e-12)))


def ssim_batch(clean: Tensor, corrupted: Tensor) -> Tensor:
    """Per-image mean SSIM of uint8 ``(N, 3, H, W)`` batches (kornia: 11x11 Gaussian window, sigma 1.5, [0, 1])."""
    import kornia

    return kornia.metrics.ssim(clean.float() / 255, corrupted.float() / 255, 11, max_val=1.0).mean((1, 2, 3))

