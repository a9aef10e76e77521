"""ImageNet-C corruptions (imagecorruptions 1.1.2) as batched torch tensor operations, on the CPU or CUDA.

All 19 corruptions of ``imagecorruptions`` (the 15 ImageNet-C benchmark ones and the 4 validation ones) at
severities 1-5, with the reference's parameter tables, on uint8 RGB batches ``(B, 3, H, W)`` of any size
(``H, W >= 32``, as the reference requires). Nothing goes through numpy or PIL: convolutions, FFTs, gathers and
torchvision's JPEG codec do the work, batched over images (and over channels).

API::

    corrupt_batch(images, name, severity, keys, seed=0, *, draws=None, workers=1) -> uint8 (B, 3, H, W)
    corrupt_images([img (3, H_i, W_i), ...], name, severity, keys, seed=0, *, batch_size=32, device=None,
                   workers=1) -> list of uint8 (3, H_i, W_i)
    draw(images, name, severity, keys, seed=0) -> Draws          # the random fields corrupt_batch would use
    get_corruption_names(subset='common')                         # same subsets as imagecorruptions
    gaussian_noise(images, severity, draws=None, generators=None) # ... one function per corruption

Seeding: every random draw comes from a CPU ``torch.Generator`` seeded per image from ``(seed, corruption, severity,
image key)`` (:func:`image_seed`, blake2b), so an image's corruption does not depend on the batch it is in, the
order of the batch, or the device (CUDA batches draw on the CPU and copy the fields over).

Fidelity: each corruption is split into ``draw_<name>`` (the random fields, e.g. the noise field, the plasma
fractal's uniforms, the frost crop, the motion angle, the elastic displacement noise) and the deterministic
``<name>(images, severity, draws)``. :mod:`robustness.corruption_engine.reference` replays imagecorruptions' numpy
draws into that form, so the engine's output can be compared with the reference's pixel for pixel; see
``tests/test_corruption_engine.py`` and ``benchmarks/corruption_fidelity.py`` for the numbers. Notes per corruption:

* Arithmetic is float32 except where the reference's float64 decides integers (truncation to uint8 of values that are
  often exact integers, thresholds): shot noise, frost and contrast are float64 lookup tables, brightness and
  saturate run in float64, and spatter's liquid field is smoothed with scipy's own float64 summation. Outputs are
  truncated to uint8 like numpy's cast, never rounded.
* glass_blur's pixel loop looks sequential, but its "swaps" are copies (numpy views), which makes the result a
  pointer chase that is resolved in parallel exactly (:func:`~robustness.corruption_engine.blur.glass_sources`).
* impulse_noise's reference draws from an unseeded generator (scikit-image >= 0.20); the fidelity check pins it.
* spatter's OpenCV steps (Canny, chamfer distance transform, equalizeHist, ...) and frost's bicubic texture resize
  are re-implemented to OpenCV's (IPP's) arithmetic in :mod:`robustness.corruption_engine._cv`; pixelate follows
  Pillow's fixed-point BOX / NEAREST resampling; jpeg_compression uses libjpeg through torchvision, like Pillow.
* The engine's own draws have the reference's distributions but are not numpy's streams (shot noise samples Poisson
  by the alias method, impulse noise derives salt / pepper from the flip uniform, glass blur takes its offsets
  from random bytes).
* Deliberate deviation: spatter on an image whose liquid layer is empty returns the image unchanged, where the
  reference divides 0 by 0 and returns a black image.

On a CPU, batches are cut into cache-sized chunks, optionally spread over ``workers`` threads; on CUDA the whole
batch runs at once (random fields are still drawn on the CPU, and JPEG uses the CPU codec).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Final, NamedTuple

import torch
from torch import Tensor

from ._common import MIN_SIDE, Draws, image_seed, make_generators
from .blur import (
    defocus_blur,
    draw_glass_blur,
    draw_motion_blur,
    gaussian_blur,
    glass_blur,
    motion_blur,
    no_draws,
    zoom_blur,
)
from .digital import (
    brightness,
    contrast,
    draw_elastic_transform,
    elastic_transform,
    jpeg_compression,
    pixelate,
    saturate,
)
from .noise import (
    draw_gaussian_noise,
    draw_impulse_noise,
    draw_shot_noise,
    draw_speckle_noise,
    gaussian_noise,
    impulse_noise,
    shot_noise,
    speckle_noise,
)
from .weather import draw_fog, draw_frost, draw_snow, draw_spatter, fog, frost, snow, spatter

__all__ = [
    "COMMON", "CORRUPTIONS", "Corruption", "Draws", "MIN_SIDE", "REGISTRY", "brightness", "contrast", "corrupt_batch",
    "corrupt_images", "defocus_blur", "draw", "elastic_transform", "fog", "frost", "gaussian_blur", "gaussian_noise",
    "get_corruption_names", "glass_blur", "image_seed", "impulse_noise", "jpeg_compression", "make_generators",
    "motion_blur", "pixelate", "saturate", "shot_noise", "snow", "spatter", "speckle_noise", "zoom_blur",
]


class Corruption(NamedTuple):
    """A corruption: ``apply(images, severity, draws)`` and ``draw(images, severity, generators)``."""

    apply: Callable[..., Tensor]
    draw: Callable[[Tensor, int, Sequence[torch.Generator]], Draws]


#: name -> Corruption, in imagecorruptions' canonical order (15 benchmark corruptions, then 4 validation ones).
REGISTRY: Final[Mapping[str, Corruption]] = MappingProxyType({
    "gaussian_noise": Corruption(gaussian_noise, draw_gaussian_noise),
    "shot_noise": Corruption(shot_noise, draw_shot_noise),
    "impulse_noise": Corruption(impulse_noise, draw_impulse_noise),
    "defocus_blur": Corruption(defocus_blur, no_draws),
    "glass_blur": Corruption(glass_blur, draw_glass_blur),
    "motion_blur": Corruption(motion_blur, draw_motion_blur),
    "zoom_blur": Corruption(zoom_blur, no_draws),
    "snow": Corruption(snow, draw_snow),
    "frost": Corruption(frost, draw_frost),
    "fog": Corruption(fog, draw_fog),
    "brightness": Corruption(brightness, no_draws),
    "contrast": Corruption(contrast, no_draws),
    "elastic_transform": Corruption(elastic_transform, draw_elastic_transform),
    "pixelate": Corruption(pixelate, no_draws),
    "jpeg_compression": Corruption(jpeg_compression, no_draws),
    "speckle_noise": Corruption(speckle_noise, draw_speckle_noise),
    "gaussian_blur": Corruption(gaussian_blur, no_draws),
    "spatter": Corruption(spatter, draw_spatter),
    "saturate": Corruption(saturate, no_draws),
})
CORRUPTIONS: Final[tuple[str, ...]] = tuple(REGISTRY)
COMMON: Final[tuple[str, ...]] = CORRUPTIONS[:15]
_SUBSETS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "common": COMMON, "validation": CORRUPTIONS[15:], "all": CORRUPTIONS, "noise": CORRUPTIONS[0:3],
    "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11], "digital": CORRUPTIONS[11:15],
})


def get_corruption_names(subset: str = "common") -> list[str]:
    """Corruption names of ``subset`` (``common``, ``validation``, ``all``, ``noise``, ``blur``, ``weather``,
    ``digital``), in imagecorruptions' order."""
    if subset not in _SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; expected one of {list(_SUBSETS)}")
    return list(_SUBSETS[subset])


def _check(images: Tensor, name: str, severity: int, keys: Sequence[str]) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (B, 3, H, W) RGB; got {images.dtype} {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise ValueError(f"image height and width must be >= {MIN_SIDE}; got {tuple(images.shape[-2:])}")
    if name not in REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; valid names: {list(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if isinstance(keys, str) or len(keys) != images.shape[0]:
        raise ValueError(f"need one key per image: got {len(keys)} keys for {images.shape[0]} images")


def draw(images: Tensor, name: str, severity: int, keys: Sequence[str], seed: int = 0) -> Draws:
    """The random fields :func:`corrupt_batch` uses for these images (CPU tensors, batch-first)."""
    _check(images, name, severity, keys)
    return REGISTRY[name].draw(images, severity, make_generators(seed, name, severity, keys))


@torch.no_grad()
def corrupt_batch(images: Tensor, name: str, severity: int, keys: Sequence[str], seed: int = 0, *,
                  draws: Draws | None = None, workers: int = 1) -> Tensor:
    """Corrupt a batch of same-sized images.

    Args:
        images: uint8 ``(B, 3, H, W)`` RGB on any device, ``H, W >= 32``.
        name: one of :data:`CORRUPTIONS`.
        severity: 1..5.
        keys: one string per image (e.g. its file name): with ``seed``, ``name`` and ``severity`` it seeds that
            image's draws, so results do not depend on batching.
        seed: base seed.
        draws: the random fields to use instead of drawing them (see the ``draw_*`` functions; the fidelity tools
            pass the reference's here).
        workers: CPU threads to spread the batch's chunks over (torch ops release the GIL). On a CPU, ``workers`` =
            cores with ``torch.set_num_threads(1)`` beats intra-op threads, whose per-op fork/join dominates these
            short element-wise ops on a busy machine. Ignored for CUDA images. Results do not depend on it, nor on
            the chunking (every image's draws come from its own generator).

    Returns:
        uint8 ``(B, 3, H, W)`` on the images' device.
    """
    _check(images, name, severity, keys)
    b, _, h, w = images.shape
    if images.device.type == "cpu":
        # small chunks keep the float intermediates in the CPU caches: these are memory-bound element-wise ops,
        # 2-4x faster per image on an L2-sized chunk than on a whole batch; spatter's row-by-row distance transform
        # instead wants the whole batch in each step (just split over the workers)
        if name in _WHOLE_BATCH:
            per = -(-b // max(workers, 1))
        else:
            per = max(1, CPU_CHUNK_ELEMENTS // (3 * h * w))
        chunks = [(lo, min(lo + per, b)) for lo in range(0, b, per)]
        if len(chunks) > 1:
            def run(chunk: tuple[int, int]) -> Tensor:
                lo, hi = chunk
                part = None if draws is None else {k: v[lo:hi] for k, v in draws.items()}
                with torch.no_grad():  # grad mode is per thread
                    return _corrupt(images[lo:hi], name, severity, keys[lo:hi], seed, part)

            if workers > 1:
                with ThreadPoolExecutor(min(workers, len(chunks))) as pool:
                    return torch.cat(list(pool.map(run, chunks)))
            return torch.cat([run(c) for c in chunks])
    return _corrupt(images, name, severity, keys, seed, draws)


#: CPU batches are processed in chunks of about this many values per image tensor (2 MB of float32).
CPU_CHUNK_ELEMENTS: int = 1 << 19
#: Corruptions with per-row loops over the batch (batching amortises them), not chunked on the CPU.
_WHOLE_BATCH: Final = frozenset({"spatter"})


def _corrupt(images: Tensor, name: str, severity: int, keys: Sequence[str], seed: int, draws: Draws | None) -> Tensor:
    corruption = REGISTRY[name]
    if draws is None:
        draws = corruption.draw(images, severity, make_generators(seed, name, severity, keys))
    return corruption.apply(images, severity, draws)


def corrupt_images(images: Sequence[Tensor], name: str, severity: int, keys: Sequence[str], seed: int = 0, *,
                   batch_size: int = 32, device: torch.device | str | None = None, workers: int = 1) -> list[Tensor]:
    """Corrupt a list of uint8 ``(3, H_i, W_i)`` images of any sizes: grouped by size, then :func:`corrupt_batch` on
    chunks of at most ``batch_size`` (on ``device``, default each image's own; ``workers`` as there). Returns the
    corrupted images in the input order, on the device they were computed on."""
    if isinstance(keys, str) or len(keys) != len(images):
        raise ValueError(f"need one key per image: got {len(keys)} keys for {len(images)} images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[object, ...], list[int]] = {}
    for i, img in enumerate(images):
        if img.dim() != 3:
            raise ValueError(f"image {i} must be (3, H, W); got {tuple(img.shape)}")
        groups.setdefault((*img.shape, str(img.device)), []).append(i)
    out: list[Tensor | None] = [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batch = torch.stack([images[i] for i in chunk])
            if device is not None:
                batch = batch.to(device)
            result = corrupt_batch(batch, name, severity, [keys[i] for i in chunk], seed, workers=workers)
            for j, i in enumerate(chunk):
                out[i] = result[j]
    return [o for o in out if o is not None]
