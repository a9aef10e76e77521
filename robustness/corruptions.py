"""ImageNet-C style corrupted data sets: the released folder layout, or corruptions computed on the fly.

On the fly (any :class:`~robustness.data.ImageList`): ``Resize(resize) -> CenterCrop(crop) -> corrupt`` in RGB, as
``make_imagenet_c.py`` builds ImageNet-C from ImageNet val (Resize 256, CenterCrop 224), optionally followed by the
release's final JPEG encode (quality 85) with ``jpeg_quality=85``. Corruptions go through
:func:`ibot.compat.imagecorruptions.corrupt` only and run inside data-loader workers.

Seeding: before each image, numpy's global RNG is seeded with a hash of (seed, corruption, severity, image key), so a
result does not depend on batch size, worker count or which cells ran before. One exception is inherited from
imagecorruptions 1.1.2 on scikit-image >= 0.20: ``impulse_noise`` draws from a fresh unseeded generator and is not
reproducible run to run.

Cache: with ``cache_dir``, each corrupted image is written once as a lossless PNG under
``<cache_dir>/<settings hash>/<corruption>/<severity>/<key>.png`` and read back on later runs (glass blur costs ~5 s
per 224² image on one CPU core).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ibot.atomic import atomic_write
from ibot.compat.imagecorruptions import corrupt
from ibot.images import BadImageError, open_rgb

from .data import ImageList, list_image_folder, load_rgb, resize_center_crop, to_tensor

__all__ = ["CorruptedImages", "released_imagenet_c", "sample_seed"]

logger = logging.getLogger(__name__)


def sample_seed(*parts: object) -> int:
    """A 32-bit seed from any printable parts (stable across processes, unlike ``hash()``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, optimize=True)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


class CorruptedImages(Dataset):
    """One (corruption, severity) view of an image list, corrupted on the fly (``severity=0``: clean).

    Args:
        images: the source images.
        corruption: an imagecorruptions name (ignored when ``severity == 0``).
        severity: 0 (clean) or 1..5.
        resize, crop: torchvision ``Resize`` (shorter side) and ``CenterCrop`` applied before corrupting.
        seed: base seed, see the module docstring.
        jpeg_quality: if set, JPEG-encode the corrupted image at this quality (the ImageNet-C release used 85).
        cache_dir: optional folder for corrupted images (lossless PNG), reused across runs.
    """

    def __init__(self, images: ImageList, corruption: str | None, severity: int, *, resize: int | None = 256,
                 crop: int | None = 224, seed: int = 0, jpeg_quality: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        if severity not in range(6):
            raise ValueError(f"severity must be 0..5, got {severity}")
        if severity > 0 and not corruption:
            raise ValueError("a corruption name is needed for severity > 0")
        self.images = images
        self.corruption = corruption if severity > 0 else None
        self.severity = severity
        self.resize, self.crop, self.seed, self.jpeg_quality = resize, crop, seed, jpeg_quality
        self.cache_dir = None
        if cache_dir is not None and severity > 0:
            settings = json.dumps([resize, crop, seed, jpeg_quality, "imagecorruptions-1.1.2"])
            tag = hashlib.sha1(settings.encode()).hexdigest()[:12]
            self.cache_dir = Path(cache_dir) / tag / str(corruption) / str(severity)

    def __len__(self) -> int:
        return len(self.images)

    def _cache_path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / (os.path.splitext(key)[0] + ".png")

    def corrupted_array(self, i: int) -> np.ndarray:
        """The uint8 (H, W, 3) RGB image the model sees (before normalisation)."""
        s = self.images.samples[i]
        if self.cache_dir is not None:
            cached = self._cache_path(s.key)
            if cached.is_file():
                try:
                    return np.asarray(open_rgb(cached))
                except BadImageError as exc:  # e.g. a file damaged outside this tool: recompute and replace it
                    logger.warning("%s; recomputing it", exc)
        img = np.asarray(resize_center_crop(load_rgb(s.path), self.resize, self.crop))
        if self.severity == 0:
            return img
        np.random.seed(sample_seed(self.seed, self.corruption, self.severity, s.key))
        out = corrupt(img, self.corruption, self.severity)
        if self.jpeg_quality is not None:
            out = _jpeg_roundtrip(out, self.jpeg_quality)
        if self.cache_dir is not None:
            path = self._cache_path(s.key)
            atomic_write(path, lambda fh: Image.fromarray(out).save(fh, format="PNG"))
        return out

    def __getitem__(self, i: int) -> dict:
        return {"image": to_tensor(self.corrupted_array(i)), "label": self.images.samples[i].label, "index": i}


class _FolderImages(Dataset):
    def __init__(self, images: ImageList, crop: int | None) -> None:
        self.images, self.crop = images, crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        s = self.images.samples[i]
        img = resize_center_crop(load_rgb(s.path), None, self.crop)
        return {"image": to_tensor(img), "label": s.label, "index": i}


def released_imagenet_c(root: str | os.PathLike[str], corruption: str, severity: int, *, crop: int | None = 224,
                        label_space: str = "auto") -> Dataset:
    """``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` as released: ``CenterCrop(crop)`` only, no resize
    (hendrycks/robustness ``ImageNet-C/test.py``; the files are already 224×224)."""
    folder = Path(root) / corruption / str(severity)
    images = list_image_folder(folder, label_space, layout_hint="<root>/<corruption>/<severity>/<wnid>/*.JPEG")
    return _FolderImages(images, crop)
