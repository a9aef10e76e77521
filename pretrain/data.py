"""Pretraining data: image files, per-sample seeded multi-crop + masks, a resumable sampler.

Every sample's random draws (crops, jitter, blur, masks) are seeded from ``(seed, epoch, index)``,
so a sample is the same whichever worker or process loads it: runs resume bit for bit and a
2-process run sees exactly the crops of a 1-process run with the same global batch. The
distributions are the official ones (``ibot.augment``, ``ibot.masking``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ibot.augment import MultiCropAugmentation
from ibot.images import open_rgb
from ibot.masking import MaskGenerator
from pretrain.gpu_augment import collate_for_gpu, decode_for_gpu

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan_images(root: str, layout: str = "imagefolder") -> tuple[list[str], list[int], list[str]]:
    """Image paths, labels and class names under ``root``.

    ``layout='imagefolder'``: ``root/<class>/**/<image>`` (labels by sorted class folder);
    ``layout='flat'``: every image below ``root`` (label -1).
    """
    if not os.path.isdir(root):
        want = "root/<class>/*.jpg (ImageNet layout)" if layout == "imagefolder" else "a folder of images"
        raise FileNotFoundError(f"pretraining data root {root!r} does not exist; expected {want}")
    if layout not in ("imagefolder", "flat"):
        raise ValueError(f"data layout must be 'imagefolder' or 'flat', got {layout!r}")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir()) if layout == "imagefolder" else []
    paths, labels = [], []
    groups = [(os.path.join(root, c), i) for i, c in enumerate(classes)] if classes else [(root, -1)]
    if layout == "imagefolder" and not classes:
        raise FileNotFoundError(f"{root!r} has no class sub-folders; use layout='flat' for a folder of images")
    for folder, label in groups:
        for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    paths.append(os.path.join(dirpath, f))
                    labels.append(label)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root!r}")
    return paths, labels, classes


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (stable across processes and Python versions)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python ``random``, NumPy and torch's global RNGs, restoring them afterwards
    (torchvision transforms and the official mask code draw from the global RNGs)."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class PretrainDataset(Dataset):
    """Indexed by ``(epoch, index)``; returns ``(crops, global masks, n_bad)``.

    crops: list of (3, S, S) float tensors (global crops first); masks: list of (S/p, S/p) bool
    tensors for the global crops; n_bad: 1 if the file was unusable (unreadable, truncated, not an image, a
    decompression bomb) and replaced by another (``on_bad_file='skip'``, with a warning naming it), else 0.
    ``on_bad_file='fail'`` raises naming the file.
    """

    def __init__(
        self,
        paths: Sequence[str],
        augmentation: MultiCropAugmentation,
        masks: MaskGenerator,
        patch_size: int,
        n_global: int,
        seed: int = 0,
        on_bad_file: str = "skip",
        max_bad_retries: int = 16,
        gpu_augment_side: int | None = None,
    ) -> None:
        if on_bad_file not in ("skip", "fail"):
            raise ValueError(f"on_bad_file must be 'skip' or 'fail', got {on_bad_file!r}")
        self.paths = list(paths)
        self.augmentation, self.masks = augmentation, masks
        self.patch_size, self.n_global, self.seed = patch_size, n_global, seed
        self.on_bad_file, self.max_bad_retries = on_bad_file, max_bad_retries
        # Batched device augmentation: workers only decode to a fixed-size canvas (and make masks).
        self.gpu_augment_side = gpu_augment_side

    def __len__(self) -> int:
        return len(self.paths)

    def _open(self, index: int) -> Image.Image:
        """The image as 8-bit RGB (``ibot.images.open_rgb``: 16-bit scaled, not clipped); raises
        ``ibot.images.BadImageError`` (an ``OSError``) naming the file when it is unreadable, truncated, not an image
        or a decompression bomb."""
        return open_rgb(self.paths[index])

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[Tensor] | tuple[Tensor, tuple[int, int]],
                                                           list[Tensor], int]:
        epoch, index = key
        n_bad = 0
        for attempt in range(self.max_bad_retries + 1):
            i = (index + attempt * 7919) % len(self.paths)  # a deterministic replacement
            try:
                img = self._open(i)
                break
            except OSError as e:  # BadImageError names the file and why (decompression bombs included)
                if self.on_bad_file == "fail":
                    raise RuntimeError(f"unusable image {self.paths[i]!r}: {e} (data.on_bad_file='fail'; remove or "
                                       "replace the file, or set data.on_bad_file='skip' to skip such files)") from e
                log.warning("skipping unusable image %s (data.on_bad_file='skip'): %s", self.paths[i], e)
                n_bad = 1
        else:
            raise RuntimeError(f"{self.max_bad_retries + 1} consecutive unreadable images from "
                               f"{self.paths[index]!r}: is the data folder corrupt?")
        with seeded_rngs(sample_seed(self.seed, epoch, index)):
            if self.gpu_augment_side is None:
                crops = self.augmentation(img)
            else:  # only the crop shapes matter for the masks: zero-size views, no pixels
                crops = [torch.empty(()).expand(3, s, s) for s in self.augmentation.crop_sizes]
            masks = self.masks.masks_for_crops(crops, self.patch_size, epoch)
        masks = [torch.from_numpy(m) for m in masks[: self.n_global]]
        if self.gpu_augment_side is not None:
            return decode_for_gpu(img, self.gpu_augment_side), masks, n_bad
        return crops, masks, n_bad


def collate(batch: list[tuple]) -> tuple[list[Tensor] | tuple[Tensor, Tensor], list[Tensor], Tensor]:
    """-> (crops: per crop (B, 3, S, S) — or, for device augmentation, (uint8 canvases (B, 3, P, P),
    valid sizes (B, 2)) —, masks: per global crop (B, h, w) bool, n_bad: scalar)."""
    if isinstance(batch[0][0], tuple):
        crops = collate_for_gpu([b[0] for b in batch])
    else:
        crops = [torch.stack(c) for c in zip(*(b[0] for b in batch))]
    masks = [torch.stack(m) for m in zip(*(b[1] for b in batch))]
    return crops, masks, torch.tensor(sum(b[2] for b in batch))


@dataclass
class SamplerState:
    epoch: int = 0
    batch: int = 0  # batches of this epoch already consumed


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Global batches of a seeded per-epoch permutation, split across ranks.

    Global batch i of epoch e is ``perm_e[i*G:(i+1)*G]`` (G = batch per rank × world); rank r
    takes positions r, r + world, … of it, so the union over ranks equals the 1-process batch.
    The last incomplete global batch is dropped. ``state`` (epoch, consumed batches) is part of
    the checkpoint; iteration starts at ``state.batch``.
    """

    def __init__(self, n: int, batch_per_rank: int, rank: int = 0, world: int = 1, seed: int = 0) -> None:
        self.n, self.bs, self.rank, self.world, self.seed = n, batch_per_rank, rank, world, seed
        self.state = SamplerState()
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} images are fewer than one global batch ({batch_per_rank} × {world})")

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.bs * self.world)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.state.batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.state.epoch
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        gb = self.bs * self.world
        for i in range(self.state.batch, self.batches_per_epoch):
            window = perm[i * gb:(i + 1) * gb]
            yield [(epoch, j) for j in window[self.rank::self.world]]
