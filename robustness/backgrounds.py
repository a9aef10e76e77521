"""Background shift (Xiao et al., ICLR 2021, "Noise or Signal: The Role of Image Backgrounds in Object Recognition").

* The released ImageNet-9 test folders ``<root>/<variant>/val/<NN_class>/*`` (:func:`released_cells`), evaluated with
  ``ToTensor()`` only as MadryLab/backgrounds_challenge ``in9_eval.py``; a 1000-class model's argmax over all 1000
  logits is mapped to the 9 classes (:func:`in_to_in9`), and a prediction outside the 370 mapped classes is wrong.
* The same variants built on the fly for any data set with foreground masks (:class:`ForegroundImages`,
  :class:`BackgroundVariant`), e.g. GrabCut or IN-9's own ``original`` + ``fg_mask``:

  ===========  =================================================================================================
  original     the image
  only_fg      foreground kept, background black
  no_fg        foreground black
  only_bg_b    the foreground's bounding box black
  only_bg_t    the bounding box filled with tiles of the largest background strip beside it (black if none)
  mixed_same   the foreground pasted on the ``only_bg_t`` background of another image of the same class
  mixed_rand   ... of a random other image (any class)
  mixed_next   ... of a random image of the next class (label order, wrapping)
  ===========  =================================================================================================

  Partners are drawn with a seed derived from the image, so a variant is the same on every run.

BG-gap = accuracy(Mixed-Same) − accuracy(Mixed-Rand).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ibot.images import BadImageError, open_rgb

from .corruptions import sample_seed
from .data import DataLayoutError, ImageList, list_image_folder, load_rgb, resize_center_crop, to_tensor
from .engine import Cell, Predict, argmax_predict
from .metrics import bg_gap

__all__ = [
    "GROUP",
    "IN9_CLASSES",
    "IN9_VARIANTS",
    "BackgroundVariant",
    "ForegroundImages",
    "ForegroundSample",
    "in9_predict",
    "in_to_in9",
    "make_variant",
    "read_image_mask_folder",
    "read_in9_foregrounds",
    "released_cells",
    "summarize",
    "variant_cells",
]

GROUP = "backgrounds"
IN9_VARIANTS = ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next", "no_fg", "only_bg_b", "only_bg_t")
#: The 9 classes in label order (MadryLab/backgrounds_challenge ``in9_classes.txt`` @ 46d224b).
IN9_CLASSES: tuple[tuple[str, str], ...] = (
    ("dog", "n02084071"), ("bird", "n01503061"), ("vehicle", "n04576211"), ("reptile", "n01661091"),
    ("carnivore", "n02075296"), ("insect", "n02159955"), ("instrument", "n03800933"), ("primate", "n02469914"),
    ("fish", "n02512053"),
)
#: ImageNet-1k class indices of each IN-9 class as inclusive ranges: the 370 mapped entries of
#: MadryLab/backgrounds_challenge ``in_to_in9.json`` @ 46d224b (the other 630 map to -1), written as ranges.
_IN_TO_IN9_RANGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((151, 170), (173, 268)),  # dog: 116
    ((7, 24), (87, 100), (127, 146)),  # bird: 52
    ((407, 408), (428, 428), (436, 436), (444, 444), (468, 468), (511, 511), (547, 547), (555, 555), (561, 561),
     (565, 565), (569, 569), (573, 573), (586, 586), (603, 603), (609, 609), (612, 612), (627, 627), (656, 656),
     (661, 661), (665, 665), (670, 671), (675, 675), (690, 690), (705, 705), (717, 717), (734, 734), (751, 751),
     (757, 757), (791, 791), (802, 803), (817, 817), (820, 820), (829, 829), (847, 847), (864, 864), (866, 867),
     (870, 870), (880, 880)),  # vehicle: 42
    ((33, 68),),  # reptile: 36
    ((269, 280), (286, 299), (356, 362), (387, 388)),  # carnivore: 35
    ((300, 326),),  # insect: 27
    ((401, 402), (420, 420), (432, 432), (486, 486), (494, 494), (513, 513), (541, 541), (546, 546), (558, 558),
     (566, 566), (577, 577), (579, 579), (593, 594), (641, 642), (683, 684), (687, 687), (699, 699), (776, 776),
     (822, 822), (875, 875), (881, 881), (889, 889)),  # instrument: 26
    ((365, 384),),  # primate: 20
    ((0, 6), (389, 397)),  # fish: 16
)


@lru_cache(maxsize=None)
def _in_to_in9_table() -> Tensor:
    table = torch.full((1000,), -1, dtype=torch.long)
    for label, ranges in enumerate(_IN_TO_IN9_RANGES):
        for a, b in ranges:
            if (table[a:b + 1] != -1).any():
                raise AssertionError("overlapping IN-9 ranges")
            table[a:b + 1] = label
    return table


def in_to_in9() -> Tensor:
    """(1000,) long tensor: IN-9 label of each ImageNet-1k class, -1 for the 630 unmapped classes."""
    return _in_to_in9_table().clone()


def in9_predict(logits: Tensor) -> Tensor:
    """Predictions in IN-9 label space: a 9-way model's argmax, or a 1000-way argmax mapped (unmapped -> -1)."""
    if logits.shape[1] == 9:
        return logits.argmax(dim=1)
    if logits.shape[1] != 1000:
        raise ValueError(f"IN-9 evaluation needs 9 or 1000 logits, got {logits.shape[1]}")
    return _in_to_in9_table().to(logits.device)[logits.argmax(dim=1)]


# ------------------------------------------------------------------------------------------ released folders
def released_cells(root: str | os.PathLike[str], variants: Sequence[str] = IN9_VARIANTS, *,
                   crop: int | None = None, predict: Predict = in9_predict) -> list[Cell]:
    """``<root>/<variant>/val/<NN_class>/*`` (class folders sorted = IN-9 label order)."""
    from .data import ImageListDataset

    out = []
    for v in variants:
        images = list_image_folder(Path(root) / v / "val", "sorted",
                                   layout_hint="<root>/<variant>/val/<00_dog ... 08_fish>/*.JPEG")
        if len(images.classes) != 9:
            raise DataLayoutError(f"{root}/{v}/val has {len(images.classes)} class folders, expected 9")
        out.append(Cell(v, ImageListDataset(images, None, crop), predict, info={"variant": v}))
    return out


# ------------------------------------------------------------------------------------------ on the fly
@dataclass(frozen=True)
class ForegroundSample:
    image: str
    mask: str  # .png / .bmp / .jpg (>= threshold·255 is foreground) or .npy (>= threshold)
    label: int
    key: str


def _load_mask(path: str) -> np.ndarray:
    """A foreground mask as float (H, W): ``.npy`` as stored, images (:func:`ibot.images.open_rgb`, 16-bit scaled)
    as grey level / 255. A file that cannot be read raises :class:`ibot.images.BadImageError` naming it."""
    if path.endswith(".npy"):
        try:
            arr = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        except (OSError, ValueError, TypeError) as exc:
            raise BadImageError(f"cannot read mask {path!r}: {type(exc).__name__}: {exc}; "
                                "replace or remove it") from exc
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise BadImageError(f"mask {path!r} has shape {arr.shape}, expected (H, W); replace or remove it")
        return arr
    return np.asarray(open_rgb(path).convert("L"), dtype=np.float32) / 255.0


class ForegroundImages(Dataset):
    """Images with foreground masks, resized / centre-cropped together (mask: nearest neighbour).

    Yields ``dict(image, label, index, mask)`` with ``mask`` a float (H, W) tensor, 1 = foreground.
    ``threshold`` binarises masks (GrabCut: 0 background, 128 uncertain border, 255 foreground; the default 0.5
    counts the border as foreground).
    """

    def __init__(self, samples: Sequence[ForegroundSample], resize: int | None = 256, crop: int | None = 224,
                 threshold: float = 0.5) -> None:
        if not samples:
            raise ValueError("no foreground samples")
        self.samples = list(samples)
        self.resize, self.crop, self.threshold = resize, crop, threshold

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) image and bool (H, W) foreground."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        s = self.samples[i]
        img = load_rgb(s.image)
        mask = Image.fromarray((_load_mask(s.mask) >= self.threshold).astype(np.uint8) * 255)
        if mask.size != img.size:
            raise ValueError(f"mask {s.mask} is {mask.size}, image {s.image} is {img.size}; a mask must have its "
                             "image's size: fix or remove the pair")
        img = resize_center_crop(img, self.resize, self.crop)
        if self.resize is not None:
            mask = TF.resize(mask, self.resize, interpolation=InterpolationMode.NEAREST)
        if self.crop is not None:
            mask = TF.center_crop(mask, [self.crop, self.crop])
        return np.asarray(img), np.asarray(mask) > 127

    def __getitem__(self, i: int) -> dict:
        img, fg = self.arrays(i)
        return {"image": to_tensor(img), "label": self.samples[i].label, "index": i,
                "mask": torch.from_numpy(fg.astype(np.float32))}


def read_image_mask_folder(images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str],
                           labels: Mapping[str, int] | None = None) -> list[ForegroundSample]:
    """``images/<stem>.<ext>`` + ``masks/<stem>.<png|bmp|npy>`` (the GrabCut layout).

    ``labels``: ``{stem: label}``; images without an entry are skipped. Without it every image gets label 0.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataLayoutError(f"expected {images_dir}/<stem>.<jpg|png> and {masks_dir}/<stem>.<png|bmp|npy>")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() in (".png", ".bmp", ".npy", ".jpg")}
    out = []
    for p in sorted(images_dir.iterdir()):
        if not p.is_file() or p.stem not in masks:
            continue
        if labels is not None and p.stem not in labels:
            continue
        out.append(ForegroundSample(str(p), str(masks[p.stem]), int(labels[p.stem]) if labels else 0, p.name))
    if not out:
        raise DataLayoutError(f"no image with a mask of the same stem in {images_dir} / {masks_dir}")
    return out


def read_in9_foregrounds(root: str | os.PathLike[str]) -> list[ForegroundSample]:
    """IN-9's ``original/val/<class>/<name>.JPEG`` with ``fg_mask/val/<class>/<name>.npy``."""
    images: ImageList = list_image_folder(Path(root) / "original" / "val", "sorted")
    out = []
    for s in images.samples:
        rel = Path(s.key)
        mask = Path(root) / "fg_mask" / "val" / rel.parent / (rel.stem + ".npy")
        if mask.is_file():
            out.append(ForegroundSample(s.path, str(mask), s.label, s.key))
    if not out:
        raise DataLayoutError(f"no fg_mask/val/<class>/<name>.npy next to original/val under {root}")
    return out


def _bbox(fg: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _tiled_background(img: np.ndarray, fg: np.ndarray) -> np.ndarray:
    out = img.copy()
    box = _bbox(fg)
    if box is None:
        return out
    y0, y1, x0, x1 = box
    strips = [img[:y0, :], img[y1:, :], img[:, :x0], img[:, x1:]]
    strip = max(strips, key=lambda s: s.shape[0] * s.shape[1])
    bh, bw = y1 - y0, x1 - x0
    if strip.size == 0:
        out[y0:y1, x0:x1] = 0
        return out
    reps = (-(-bh // strip.shape[0]), -(-bw // strip.shape[1]), 1)
    out[y0:y1, x0:x1] = np.tile(strip, reps)[:bh, :bw]
    return out


def make_variant(variant: str, img: np.ndarray, fg: np.ndarray, partner: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> np.ndarray:
    """One IN-9 variant of ``img`` (uint8 (H, W, 3)) with foreground ``fg`` (bool (H, W)); ``partner`` = the
    (image, foreground) whose background the ``mixed_*`` variants use."""
    keep = fg[..., None]
    if variant == "original":
        return img.copy()
    if variant == "only_fg":
        return np.where(keep, img, 0).astype(np.uint8)
    if variant == "no_fg":
        return np.where(keep, 0, img).astype(np.uint8)
    if variant == "only_bg_b":
        out = img.copy()
        box = _bbox(fg)
        if box is not None:
            out[box[0]:box[1], box[2]:box[3]] = 0
        return out
    if variant == "only_bg_t":
        return _tiled_background(img, fg)
    if variant in ("mixed_same", "mixed_rand", "mixed_next"):
        if partner is None:
            raise ValueError(f"{variant} needs a partner image")
        bg = _tiled_background(*partner)
        if bg.shape != img.shape:
            raise ValueError(f"partner background {bg.shape} and image {img.shape} differ in size; set a crop size")
        return np.where(keep, img, bg).astype(np.uint8)
    raise ValueError(f"unknown variant {variant!r}; choose from {IN9_VARIANTS}")


class BackgroundVariant(Dataset):
    """One IN-9 variant of a :class:`ForegroundImages` data set, built on the fly (in data-loader workers)."""

    def __init__(self, base: ForegroundImages, variant: str, seed: int = 0) -> None:
        if variant not in IN9_VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {IN9_VARIANTS}")
        self.base, self.variant, self.seed = base, variant, seed
        labels = base.labels
        self.by_label: dict[int, list[int]] = {}
        for i, lab in enumerate(labels):
            self.by_label.setdefault(lab, []).append(i)
        self.label_order = sorted(self.by_label)

    def __len__(self) -> int:
        return len(self.base)

    def partner(self, i: int) -> int:
        """The index whose background ``mixed_*`` uses for image ``i`` (deterministic)."""
        lab = self.base.samples[i].label
        if self.variant == "mixed_same":
            pool = [j for j in self.by_label[lab] if j != i] or [i]
        elif self.variant == "mixed_rand":
            pool = [j for j in range(len(self.base)) if j != i] or [i]
        elif self.variant == "mixed_next":
            nxt = self.label_order[(self.label_order.index(lab) + 1) % len(self.label_order)]
            pool = [j for j in self.by_label[nxt] if j != i] or [i]
        else:
            raise ValueError(f"{self.variant} has no partner")
        rng = np.random.default_rng(sample_seed(self.seed, self.variant, self.base.samples[i].key))
        return pool[int(rng.integers(len(pool)))]

    def __getitem__(self, i: int) -> dict:
        img, fg = self.base.arrays(i)
        partner = self.base.arrays(self.partner(i)) if self.variant.startswith("mixed_") else None
        out = make_variant(self.variant, img, fg, partner)
        return {"image": to_tensor(out), "label": self.base.samples[i].label, "index": i}


def variant_cells(base: ForegroundImages, variants: Sequence[str] = IN9_VARIANTS, *, seed: int = 0,
                  predict: Predict = argmax_predict) -> list[Cell]:
    return [Cell(v, BackgroundVariant(base, v, seed), predict, info={"variant": v}) for v in variants]


def summarize(cells: Mapping[str, Mapping]) -> dict:
    acc = {v: float(cells[v]["acc"]) for v in IN9_VARIANTS if v in cells}
    gap = bg_gap(acc["mixed_same"], acc["mixed_rand"]) if {"mixed_same", "mixed_rand"} <= set(acc) else None
    return {"acc": acc, "bg_gap": gap}
