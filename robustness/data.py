"""Image lists, label spaces and the small data sets the robustness benchmarks read.

Every data set here yields ``dict(image=float tensor (3, H, W) in [0, 1], label=int, index=int)`` (plus ``mask`` for
foreground-mask data sets). Normalisation is *not* applied here: it happens once, inside
:class:`robustness.classifier.ImageClassifier`, after corruptions / occlusion / background edits, which all work in
pixel space.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ibot.images import BadImageError, open_rgb

__all__ = [
    "IMG_EXTENSIONS",
    "DataLayoutError",
    "ImageList",
    "ImageListDataset",
    "Sample",
    "imagenet_synsets",
    "list_image_folder",
    "load_rgb",
    "resize_center_crop",
    "timm_info_lines",
    "to_tensor",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataLayoutError(FileNotFoundError):
    """A data folder is missing or does not have the expected layout (the message shows the layout)."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int
    key: str  # stable identifier (path relative to the data root): seeds and cache names derive from it


@dataclass(frozen=True)
class ImageList:
    samples: tuple[Sample, ...]
    classes: tuple[str, ...]  # folder names in label order (label space of the data set)
    root: str

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, per_class: int | None = None, limit: int | None = None) -> "ImageList":
        """The first ``per_class`` images of every class (sorted order), then the first ``limit`` overall."""
        samples = list(self.samples)
        if per_class is not None:
            seen: dict[int, int] = {}
            kept = []
            for s in samples:
                if seen.get(s.label, 0) < per_class:
                    kept.append(s)
                    seen[s.label] = seen.get(s.label, 0) + 1
            samples = kept
        if limit is not None:
            samples = samples[:limit]
        return ImageList(tuple(samples), self.classes, self.root)


def timm_info_lines(name: str) -> list[str]:
    """Lines of a class-list file shipped with timm (``timm/data/_info/<name>``)."""
    text = resources.files("timm.data").joinpath("_info", name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=None)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (timm's ``imagenet_synsets.txt``)."""
    synsets = tuple(timm_info_lines("imagenet_synsets.txt"))
    if len(synsets) != 1000:
        raise RuntimeError(f"timm's imagenet_synsets.txt has {len(synsets)} entries, expected 1000")
    return synsets


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _label_map(root: Path, classes: Sequence[str], label_space: str | Mapping[str, int]) -> dict[str, int]:
    """``{folder name: label}`` for the given label space (see :func:`list_image_folder`)."""
    if label_space == "auto":
        label_space = "imagenet1k" if set(classes) <= set(imagenet_synsets()) else "sorted"
    if label_space == "sorted":
        return {c: i for i, c in enumerate(classes)}
    if label_space == "imagenet1k":
        index = {w: i for i, w in enumerate(imagenet_synsets())}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise DataLayoutError(f"{root}: folders {unknown[:5]} are not ImageNet-1k WordNet ids")
        return {c: index[c] for c in classes}
    if isinstance(label_space, Mapping):
        return dict(label_space)
    raise ValueError(f"unknown label_space {label_space!r}")


def _class_images(root: Path, folder: str) -> list[str]:
    """Image paths below ``root/folder``, recursively, in sorted (deterministic) order."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root / folder):
        dirnames.sort()  # os.walk visits sub-folders in this list's order
        paths += [os.path.join(dirpath, name) for name in sorted(filenames) if _is_image(name)]
    return paths


def list_image_folder(root: str | os.PathLike[str], label_space: str | Mapping[str, int] = "sorted",
                      layout_hint: str = "<root>/<class>/<image>") -> ImageList:
    """List ``<root>/<class>/<image>`` (recursively below each class folder).

    ``label_space``: ``'sorted'`` (label = position of the folder name in sorted order, torchvision's
    ImageFolder), ``'imagenet1k'`` (folder names are WordNet ids, label = ImageNet-1k class index), ``'auto'``
    (``imagenet1k`` when every folder name is an ImageNet-1k id, else ``sorted``), or an explicit
    ``{folder name: label}`` mapping (folders not in it are skipped).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data folder {root} not found; expected layout {layout_hint}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataLayoutError(f"{root} has no class folders; expected layout {layout_hint}")
    to_idx = _label_map(root, classes, label_space)
    samples = [Sample(path, int(to_idx[c]), os.path.relpath(path, root))
               for c in classes if c in to_idx for path in _class_images(root, c)]
    if not samples:
        raise DataLayoutError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {root}; expected layout {layout_hint}")
    ordered = tuple(sorted(to_idx, key=lambda c: to_idx[c])) if isinstance(label_space, Mapping) else tuple(classes)
    return ImageList(tuple(samples), ordered, str(root))


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The suite's one image reader (:func:`ibot.images.open_rgb`): 8-bit RGB, 16-bit / float images scaled rather
    than clipped; a missing, unreadable or decompression-bomb file raises :class:`ibot.images.BadImageError` naming
    it and what to do."""
    try:
        return open_rgb(path)
    except BadImageError as exc:
        if "remove" in str(exc):
            raise
        raise BadImageError(f"{exc}; replace the file or remove it from the data folder") from exc


def resize_center_crop(img: Image.Image, resize: int | None, crop: int | None) -> Image.Image:
    """torchvision's ``Resize(resize)`` (shorter side, bilinear, antialiased) then ``CenterCrop(crop)``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if resize is not None:
        img = TF.resize(img, resize, interpolation=InterpolationMode.BILINEAR, antialias=True)
    if crop is not None:
        img = TF.center_crop(img, [crop, crop])
    return img


def to_tensor(array: np.ndarray | Image.Image) -> Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W) in [0, 1]."""
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {a.dtype} {a.shape}")
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")
    return torch.from_numpy(a).permute(2, 0, 1).float().div_(255.0)


class ImageListDataset(Dataset):
    """Images of an :class:`ImageList`, resized / centre-cropped, as ``dict(image, label, index)``."""

    def __init__(self, images: ImageList, resize: int | None = 256, crop: int | None = 224) -> None:
        self.images = images
        self.resize = resize
        self.crop = crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        s = self.images.samples[i]
        img = resize_center_crop(load_rgb(s.path), self.resize, self.crop)
        return {"image": to_tensor(img), "label": s.label, "index": i}

