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

  Masks too small to tell foreground from background make degenerate variants (``only_fg`` black, ``no_fg`` the
  original) and a random-like ``*_mask`` occlusion order: :func:`select_foregrounds` drops images with less than a
  given foreground fraction after the resize / crop, with a warning naming them. ``fg_crop=True`` centres the crop on
  the mask's bounding box instead of the image (objects off-centre keep their foreground).

Labels for an images + masks folder (:func:`read_image_mask_folder`): a ``{stem: integer label}`` mapping (the
``--labels`` JSON file), class folders (``images/<class>/<stem>.png``, ``labels_from='folders'``) or file-name prefixes
(``images/<class>_<rest>.png``, ``labels_from='prefix'``); classes are numbered in sorted order.

BG-gap = accuracy(Mixed-Same) − accuracy(Mixed-Rand).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ibot.images import BadImageError, open_rgb

from .corruptions import sample_seed
from .data import (
    IMG_EXTENSIONS,
    DataLayoutError,
    ImageList,
    list_image_folder,
    load_rgb,
    resize_center_crop,
    to_tensor,
)
from .engine import Cell, Predict, argmax_predict
from .metrics import bg_gap

__all__ = [
    "GROUP",
    "IN9_CLASSES",
    "IN9_VARIANTS",
    "BackgroundVariant",
    "ForegroundImages",
    "ForegroundSample",
    "ForegroundScan",
    "LABELS_FROM",
    "in9_predict",
    "in_to_in9",
    "make_variant",
    "read_image_mask_folder",
    "read_in9_foregrounds",
    "released_cells",
    "select_foregrounds",
    "summarize",
    "variant_cells",
]

logger = logging.getLogger(__name__)

GROUP = "backgrounds"
#: Where :func:`read_image_mask_folder` can take labels from besides a ``{stem: label}`` mapping.
LABELS_FROM = ("folders", "prefix")
_MASK_SUFFIXES = (".png", ".bmp", ".npy", ".jpg")
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
                   crop: int | None = None, predict: Predict = in9_predict, per_class: int | None = None,
                   limit: int | None = None) -> list[Cell]:
    """``<root>/<variant>/val/<NN_class>/*`` (class folders sorted = IN-9 label order); ``per_class`` / ``limit``:
    the first images of each class / overall (sorted file order: the same images in every variant)."""
    from .data import ImageListDataset

    out = []
    for v in variants:
        images = list_image_folder(Path(root) / v / "val", "sorted",
                                   layout_hint="<root>/<variant>/val/<00_dog ... 08_fish>/*.JPEG")
        if len(images.classes) != 9:
            raise DataLayoutError(f"{root}/{v}/val has {len(images.classes)} class folders, expected 9")
        images = images.subset(per_class=per_class, limit=limit)
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


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) from the image header (nothing decoded); an unreadable file names itself."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image {path!r}: {type(exc).__name__}: {exc}; replace the file or remove "
                            "it from the data folder") from exc


def _few(names: Sequence[str], n: int = 5) -> str:
    """``'a, b, c'`` or ``'a, b, c, d, e and 7 more'``."""
    names = list(names)
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


class ForegroundImages(Dataset):
    """Images with foreground masks, resized / cropped together (mask: nearest neighbour).

    Yields ``dict(image, label, index, mask)`` with ``mask`` a float (H, W) tensor, 1 = foreground.
    ``threshold`` binarises masks (GrabCut: 0 background, 128 uncertain border, 255 foreground; the default 0.5
    counts the border as foreground). ``fg_crop=False``: torchvision's ``CenterCrop``; ``True``: the crop window is
    centred on the bounding box of the (resized) mask, clamped to the image (images smaller than the crop are
    centre-cropped, i.e. padded, as before).
    """

    def __init__(self, samples: Sequence[ForegroundSample], resize: int | None = 256, crop: int | None = 224,
                 threshold: float = 0.5, fg_crop: bool = False) -> None:
        if not samples:
            raise ValueError("no foreground samples")
        self.samples = list(samples)
        self.resize, self.crop, self.threshold, self.fg_crop = resize, crop, threshold, fg_crop

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def with_samples(self, samples: Sequence[ForegroundSample]) -> ForegroundImages:
        """The same geometry over other samples."""
        return ForegroundImages(samples, self.resize, self.crop, self.threshold, self.fg_crop)

    def _mask(self, i: int) -> Image.Image:
        """The binarised mask of sample ``i`` at its image's resolution ('L', 0 / 255)."""
        s = self.samples[i]
        return Image.fromarray((_load_mask(s.mask) >= self.threshold).astype(np.uint8) * 255)

    def _crop_origin(self, mask: Image.Image) -> tuple[int, int] | None:
        """(top, left) of an object-centred crop of the resized ``mask``; ``None``: torchvision's centre crop."""
        if self.crop is None or not self.fg_crop or min(mask.size) < self.crop:
            return None
        box = _bbox(np.asarray(mask) > 127)
        if box is None:
            return None
        (w, h), c = mask.size, self.crop
        top = int(round((box[0] + box[1]) / 2 - c / 2))
        left = int(round((box[2] + box[3]) / 2 - c / 2))
        return min(max(top, 0), h - c), min(max(left, 0), w - c)

    def _geometry(self, mask: Image.Image, img: Image.Image | None) -> tuple[Image.Image, Image.Image | None]:
        """Resize and crop ``mask`` (nearest) and ``img`` (bilinear, as :func:`resize_center_crop`) alike."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if self.resize is not None:
            mask = TF.resize(mask, self.resize, interpolation=InterpolationMode.NEAREST)
        origin = self._crop_origin(mask)
        if origin is None:
            if img is not None:
                img = resize_center_crop(img, self.resize, self.crop)
            if self.crop is not None:
                mask = TF.center_crop(mask, [self.crop, self.crop])
            return mask, img
        if img is not None:
            img = resize_center_crop(img, self.resize, None)
            img = TF.crop(img, origin[0], origin[1], self.crop, self.crop)
        return TF.crop(mask, origin[0], origin[1], self.crop, self.crop), img

    def foreground(self, i: int) -> np.ndarray:
        """bool (H, W) foreground of sample ``i`` after the resize / crop, from the mask alone (no image decoded)."""
        return np.asarray(self._geometry(self._mask(i), None)[0]) > 127

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (H, W, 3) image and bool (H, W) foreground."""
        s = self.samples[i]
        img = load_rgb(s.image)
        mask = self._mask(i)
        if mask.size != img.size:
            raise ValueError(f"mask {s.mask} is {mask.size}, image {s.image} is {img.size}; a mask must have its "
                             "image's size: fix or remove the pair")
        mask, img = self._geometry(mask, img)
        return np.asarray(img), np.asarray(mask) > 127

    def __getitem__(self, i: int) -> dict:
        img, fg = self.arrays(i)
        return {"image": to_tensor(img), "label": self.samples[i].label, "index": i,
                "mask": torch.from_numpy(fg.astype(np.float32))}


@dataclass
class ForegroundScan:
    """What :func:`select_foregrounds` found: the images kept, those skipped for too little foreground (``(key,
    fraction)``) and the (H, W) sizes of the kept images after the resize / crop."""

    kept: int = 0
    skipped: list[tuple[str, float]] = field(default_factory=list)
    scanned: int = 0
    shapes: set[tuple[int, int]] = field(default_factory=set)


def select_foregrounds(base: ForegroundImages, min_fg: float = 0.0, *, per_class: int | None = None,
                       limit: int | None = None, what: str = "images") -> tuple[ForegroundImages, ForegroundScan]:
    """The samples of ``base`` whose foreground covers at least ``min_fg`` of the pixels after the resize / crop,
    the first ``per_class`` of each label and the first ``limit`` overall (in sample order); masks are read, images
    only up to their header (each mask must have its image's size).

    Skipped images are counted and named (a few) in one warning. Raises :class:`DataLayoutError` when no image is
    left, or a mask's size is not its image's.
    """
    scan = ForegroundScan()
    kept: list[ForegroundSample] = []
    per_label: dict[int, int] = {}
    classes = set(base.labels)
    for i, s in enumerate(base.samples):
        if limit is not None and len(kept) >= limit:
            break
        if per_class is not None and len(per_label) == len(classes) and min(per_label.values()) >= per_class:
            break
        if per_class is not None and per_label.get(s.label, 0) >= per_class:
            continue
        scan.scanned += 1
        mask = base._mask(i)
        size = _image_size(s.image)
        if mask.size != size:
            raise DataLayoutError(f"mask {s.mask} is {mask.size[0]} x {mask.size[1]}, its image {s.image} "
                                  f"{size[0]} x {size[1]}; a mask must have its image's size: fix or remove the pair")
        fg = np.asarray(base._geometry(mask, None)[0]) > 127
        fraction = float(fg.mean()) if fg.size else 0.0
        if fraction < min_fg:
            scan.skipped.append((s.key, fraction))
            continue
        kept.append(s)
        scan.shapes.add(fg.shape)
        per_label[s.label] = per_label.get(s.label, 0) + 1
    scan.kept = len(kept)
    if scan.skipped:
        logger.warning("%d of %d %s have less than %g %% foreground after the resize / crop and are skipped "
                       "(--min-fg %g; --fg-crop centres the crop on the object): %s", len(scan.skipped),
                       scan.scanned, what, 100 * min_fg, min_fg,
                       _few([f"{k} ({100 * f:.2g} %)" for k, f in scan.skipped]))
    if not kept:
        raise DataLayoutError(f"no {what} left: all {scan.scanned} have less than {100 * min_fg:g} % foreground "
                              "after the resize / crop; lower --min-fg, pass --fg-crop, or check the masks")
    logger.info("%d %s with at least %g %% foreground", len(kept), what, 100 * min_fg)
    return base.with_samples(kept), scan


def _mask_index(folder: Path) -> dict[str, Path]:
    """``{stem: mask path}`` of one folder (sorted, so a stem with several mask files resolves the same way)."""
    if not folder.is_dir():
        return {}
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in _MASK_SUFFIXES:
            out.setdefault(p.stem, p)
    return out


def _image_files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]


def read_image_mask_folder(images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str],
                           labels: Mapping[str, int] | None = None, *,
                           labels_from: str | None = None) -> list[ForegroundSample]:
    """Images and foreground masks with the same stem (the GrabCut layout), and their labels.

    * ``labels``: ``{stem: integer label}``; images without an entry are skipped (counted in a warning).
    * ``labels_from='folders'``: ``images/<class>/<stem>.<ext>`` with ``masks/<class>/<stem>.<png|bmp|npy>`` (or a flat
      ``masks/<stem>.*``); label = the class folder's position in sorted order.
    * ``labels_from='prefix'``: ``images/<class>_<rest>.<ext>``; label = the prefix's position in sorted order; names
      without ``_`` are skipped (counted in a warning).
    * neither: every image gets label 0 (accuracy is then meaningless: pipeline tests only).

    How many images matched a mask (and got a label) is logged; unmatched ones are named in a warning.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataLayoutError(f"expected {images_dir}/<stem>.<jpg|png> and {masks_dir}/<stem>.<png|bmp|npy>")
    if labels is not None and labels_from is not None:
        raise ValueError("pass labels or labels_from, not both")
    if labels_from not in (None, *LABELS_FROM):
        raise ValueError(f"labels_from must be one of {LABELS_FROM}, got {labels_from!r}")
    flat_masks = _mask_index(masks_dir)
    class_masks = {cls: _mask_index(masks_dir / cls) for cls in
                   (sorted(d.name for d in images_dir.iterdir() if d.is_dir()) if labels_from == "folders" else [])}
    candidates: list[tuple[Path, str | None, str]] = []  # (image, class, key)
    if labels_from == "folders":
        classes = sorted(d.name for d in images_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataLayoutError(f"--labels-from folders: {images_dir} has no class folders; expected "
                                  f"{images_dir}/<class>/<stem>.<jpg|png> with masks in {masks_dir}/<class>/ or "
                                  f"{masks_dir}/")
        candidates = [(p, c, f"{c}/{p.name}") for c in classes for p in _image_files(images_dir / c)]
    else:
        candidates = [(p, None, p.name) for p in _image_files(images_dir)]
    matched: list[tuple[Path, Path, str | None, str]] = []
    no_mask: list[str] = []
    for p, cls, key in candidates:
        mask = (class_masks[cls].get(p.stem) if cls is not None else None) or flat_masks.get(p.stem)
        if mask is None:
            no_mask.append(key)
        else:
            matched.append((p, mask, cls, key))
    if no_mask:
        logger.warning("%d of %d images in %s have no mask of the same stem in %s and are skipped: %s", len(no_mask),
                       len(candidates), images_dir, masks_dir, _few(no_mask))
    if not matched:
        raise DataLayoutError(f"no image with a mask of the same stem in {images_dir} / {masks_dir} "
                              f"({len(candidates)} images, {len(flat_masks)} masks at the top level)")
    logger.info("%d of %d images in %s matched a mask in %s", len(matched), len(candidates), images_dir, masks_dir)

    out: list[ForegroundSample] = []
    unlabelled: list[str] = []
    if labels_from is not None:
        names = [cls if labels_from == "folders" else (p.stem.split("_", 1)[0] if "_" in p.stem else None)
                 for p, _, cls, _ in matched]
        index = {c: i for i, c in enumerate(sorted({n for n in names if n}))}
        for (p, mask, _, key), name in zip(matched, names):
            if name:
                out.append(ForegroundSample(str(p), str(mask), index[name], key))
            else:
                unlabelled.append(key)
        source = "class folders" if labels_from == "folders" else "file-name prefixes <class>_"
        described = ", ".join(f"{c}={i}" for c, i in list(index.items())[:10]) + (" ..." if len(index) > 10 else "")
        logger.info("labels from %s: %d classes (%s)", source, len(index), described)
    elif labels is not None:
        for p, mask, _, key in matched:
            if p.stem in labels:
                out.append(ForegroundSample(str(p), str(mask), int(labels[p.stem]), key))
            else:
                unlabelled.append(key)
    else:
        out = [ForegroundSample(str(p), str(mask), 0, key) for p, mask, _, key in matched]
        logger.info("no labels given: every image has label 0")
    if unlabelled:
        why = "no '<class>_' prefix" if labels_from == "prefix" else "no entry in the labels"
        logger.warning("%d of %d images with a mask have %s and are skipped: %s", len(unlabelled), len(matched), why,
                       _few(unlabelled))
    if not out:
        raise DataLayoutError(f"none of the {len(matched)} images with a mask in {images_dir} has a label "
                              f"({'no <class>_ prefix' if labels_from == 'prefix' else 'no entry in the labels'})")
    if labels_from is not None or labels is not None:
        logger.info("%d of %d images with a mask got a label", len(out), len(matched))
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
