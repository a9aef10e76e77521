"""Embedded default data: a small, seeded scene data set built from the photos shipped in scikit-image's wheel.

Geometric object classes (disk, square, triangle, ...) filled with tinted photo textures are composited onto
crops of real photographs and written in the on-disk formats the harnesses read::

    <root>/classification/{train,val}/<class>/<class>_<NNNN>.png          torchvision ImageFolder (one object)
    <root>/classification/masks/{train,val}/<class>/<class>_<NNNN>.png    foreground mask, 0 / 255
    <root>/coco/images/{train,val}/<split>_<NNNNN>.jpg                    multi-object scenes
    <root>/coco/annotations/instances_{train,val}.json                    COCO: xywh boxes, RLE masks, ids 1..C
    <root>/ade/images/{training,validation}/<split>_<NNNNN>.jpg           the same scenes
    <root>/ade/annotations/{training,validation}/<split>_<NNNNN>.png      uint8, 0 = background, 1..C = classes
    <root>/dataset.json, <root>/README.md                                 manifest and description

Class order is alphabetical, so ImageFolder indices, COCO ``category_id - 1`` and ADE ``value - 1`` agree.
Every image draws from its own generator seeded by ``(seed, part, index)``: the output is byte-identical
for the same parameters, and growing a split keeps its first images. Nothing is downloaded: the photos are
read straight from the files in ``skimage/data`` (never through ``skimage.data``'s pooch fetchers).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_CLASSES",
    "GENERATOR_VERSION",
    "PHOTOS",
    "SHAPES",
    "ObjectImage",
    "Scene",
    "SceneSpec",
    "default_cache_dir",
    "ensure_scenes",
    "generate_scenes",
    "render_object_image",
    "render_scene",
]

# Bump whenever the bytes written for the same parameters change: it is part of the cache key.
GENERATOR_VERSION = 1

# Real photographs inside scikit-image's wheel (file names under skimage/data). Synthetic images (colour
# wheel, phantom, chessboards, logo) and the pooch-fetched ones are left out on purpose.
PHOTOS: tuple[str, ...] = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
    "retina.jpg", "rocket.jpg",
)

_Array = np.ndarray
# Background photos keep 60 % of their contrast: measured with HOG / random-conv k-NN, full-contrast clutter
# hid the silhouettes that a short pretraining run must learn.
_BACKGROUND_CONTRAST = 0.6
ShapeTest = Callable[[_Array, _Array], _Array]


def _regular_polygon(n: int, phase_deg: float = -90.0) -> _Array:
    angles = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> _Array:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    angles = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_ARROW = np.array([[1.0, 0.0], [0.1, -0.75], [0.1, -0.3], [-0.95, -0.3], [-0.95, 0.3], [0.1, 0.3], [0.1, 0.75]])


def _in_polygon(vertices: _Array) -> ShapeTest:
    """Even-odd rule on pixel centres, vectorised over the grid (vertices in unit coordinates)."""
    edges = list(zip(vertices, np.roll(vertices, -1, axis=0)))

    def test(u: _Array, v: _Array) -> _Array:
        inside = np.zeros(u.shape, dtype=bool)
        for (x0, y0), (x1, y1) in edges:
            if y0 == y1:  # a horizontal edge is never crossed by a horizontal ray
                continue
            crosses = (y0 > v) != (y1 > v)
            inside ^= crosses & (u < x0 + (v - y0) * (x1 - x0) / (y1 - y0))
        return inside

    return test


# Unit-circumradius shapes tested in object coordinates (u right, v down). Distinct silhouettes so that a
# backbone has to learn shape: colour and texture are drawn independently of the class.
SHAPES: dict[str, ShapeTest] = {
    "arrow": _in_polygon(_ARROW),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8 ** 2),
    "cross": lambda u, v: ((np.abs(u) <= 0.95) & (np.abs(v) <= 0.32)) | ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)),
    "disk": lambda u, v: u * u + v * v <= 1.0,
    "ellipse": lambda u, v: u * u + (v / 0.5) ** 2 <= 1.0,
    "hexagon": _in_polygon(_regular_polygon(6, 0.0)),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55 ** 2),
    "square": _in_polygon(_regular_polygon(4, 45.0)),
    "star": _in_polygon(_star()),
    "triangle": _in_polygon(_regular_polygon(3)),
}

DEFAULT_CLASSES: tuple[str, ...] = ("cross", "disk", "ellipse", "hexagon", "ring", "square", "star", "triangle")

# Streams of the per-image generators: (seed, part, index) never collides between parts.
_PART = {("classification", "train"): 0, ("classification", "val"): 1, ("scenes", "train"): 2, ("scenes", "val"): 3}
_ADE_SPLIT = {"train": "training", "val": "validation"}


@dataclass(frozen=True)
class SceneSpec:
    """Every parameter that determines the generated bytes (hashed, with the version, into the cache key).

    ``classes`` are stored sorted so ImageFolder's alphabetical indices match COCO / ADE ids. Object radii are
    fractions of the image side (circumradius); ``objects_per_scene`` is an inclusive range.
    """

    seed: int = 0
    image_size: int = 64
    scene_size: int = 128
    n_train_per_class: int = 40
    n_val_per_class: int = 10
    n_scenes_train: int = 160
    n_scenes_val: int = 40
    objects_per_scene: tuple[int, int] = (2, 5)
    classes: tuple[str, ...] = DEFAULT_CLASSES
    object_radius: tuple[float, float] = (0.22, 0.42)
    scene_object_radius: tuple[float, float] = (0.08, 0.2)
    jpeg_quality: int = 92

    def __post_init__(self) -> None:
        classes = tuple(sorted(set(self.classes)))
        unknown = [c for c in classes if c not in SHAPES]
        if unknown or len(classes) < 2:
            raise ValueError(f"classes must be >= 2 names from {sorted(SHAPES)}, got {list(self.classes)}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "objects_per_scene", tuple(int(x) for x in self.objects_per_scene))
        object.__setattr__(self, "object_radius", tuple(float(x) for x in self.object_radius))
        object.__setattr__(self, "scene_object_radius", tuple(float(x) for x in self.scene_object_radius))
        if min(self.image_size, self.scene_size) < 16:
            raise ValueError("image_size and scene_size must be >= 16 pixels")
        counts = (self.n_train_per_class, self.n_val_per_class, self.n_scenes_train, self.n_scenes_val)
        if min(counts) < 0:
            raise ValueError(f"image counts must be >= 0, got {counts}")
        lo, hi = self.objects_per_scene
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_scene must be (min, max) with 1 <= min <= max, got {(lo, hi)}")
        for name in ("object_radius", "scene_object_radius"):
            r0, r1 = getattr(self, name)
            if not 0.0 < r0 <= r1 < 0.5:
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max < 0.5, got {(r0, r1)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def cache_key(self) -> str:
        payload = json.dumps({"version": GENERATOR_VERSION, "photos": PHOTOS, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ObjectImage:
    """A classification image: RGB uint8 ``(H, W, 3)``, its foreground mask (bool) and class index."""

    image: _Array
    mask: _Array
    label: int


@dataclass(frozen=True)
class Scene:
    """A multi-object scene: RGB uint8 image, per-instance *visible* masks (bool, occlusion applied, painting
    order) and their class indices (0-based, into ``SceneSpec.classes``)."""

    image: _Array
    masks: tuple[_Array, ...]
    labels: tuple[int, ...]

    def label_map(self) -> _Array:
        """ADE-style map: 0 background, ``label + 1`` on each instance's visible pixels."""
        out = np.zeros(self.image.shape[:2], dtype=np.uint8)
        for mask, label in zip(self.masks, self.labels):
            out[mask] = label + 1
        return out


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Photo:
    pixels: _Array  # RGB uint8
    grey: bool


@lru_cache(maxsize=1)
def _photos() -> tuple[_Photo, ...]:
    """The shipped photos as RGB uint8, downscaled to <= 320 px (crops are smaller anyway; resizing is faster)."""
    import skimage  # only for its data folder: skimage.data's loaders may fetch files that are not shipped

    folder = Path(skimage.__file__).parent / "data"
    missing = [name for name in PHOTOS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image's wheel lacks {missing} in {folder}; "
                                f"reinstall scikit-image (nothing is downloaded by this generator)")
    out = []
    for name in PHOTOS:
        with Image.open(folder / name) as im:
            grey = im.mode in ("L", "I", "I;16", "1")
            im = im.convert("RGB")
            im.thumbnail((320, 320), Image.Resampling.LANCZOS)
            out.append(_Photo(np.asarray(im, dtype=np.uint8), grey))
    return tuple(out)


def _photo_crop(rng: np.random.Generator, size: int) -> _Array:
    """A random square crop of a random photo, resized to ``size``, randomly mirrored, as float32 RGB."""
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.pixels.shape[:2]
    side = max(8, int(round(rng.uniform(0.3, 1.0) * min(h, w))))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo.pixels[top:top + side, left:left + side])
    crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if photo.grey:
        out = out * rng.uniform(0.55, 1.0, size=3).astype(np.float32)  # tint grey photos for colour variety
    return out


def _shape_mask(kind: str, size: int, center: tuple[float, float], radius: float, angle: float) -> _Array:
    """Boolean mask of a unit shape scaled to ``radius``, rotated by ``angle`` and centred at ``(cy, cx)``."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - center[1], ys - center[0]
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius
    return SHAPES[kind](u, v)


def _background(rng: np.random.Generator, size: int) -> _Array:
    """A photo crop with its contrast lowered: still a real scene, but the pasted object's shape dominates."""
    crop = _photo_crop(rng, size)
    return _BACKGROUND_CONTRAST * crop + (1.0 - _BACKGROUND_CONTRAST) * crop.mean(axis=(0, 1))


def _outline(mask: _Array) -> _Array:
    """Mask pixels with a 4-neighbour outside the mask (the object's 1-px rim)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _paint(rng: np.random.Generator, image: _Array, mask: _Array) -> _Array:
    """Paste an object on ``image``: photo texture under a random colour (away from the backdrop's, so the
    object shows), with a dark rim that makes the silhouette, the class signal, easy to see."""
    texture = _photo_crop(rng, image.shape[0])
    colour = rng.uniform(0.0, 255.0, size=3)
    backdrop = image[mask].mean(axis=0)
    if np.abs(colour - backdrop).sum() < 150.0:
        colour = 255.0 - backdrop
    alpha = rng.uniform(0.6, 0.9)
    fill = (1.0 - alpha) * texture + alpha * colour
    fill = np.where(_outline(mask)[..., None], 0.3 * fill, fill)
    return np.where(mask[..., None], fill, image).astype(np.float32)


def _draw_shape(rng: np.random.Generator, kind: str, size: int, radius_range: tuple[float, float]) -> _Array:
    """A random pose (scale, rotation, position fully inside the image) of one shape."""
    radius = rng.uniform(*radius_range) * size
    center = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
    return _shape_mask(kind, size, center, radius, rng.uniform(0.0, 2.0 * np.pi))


def _rng(spec: SceneSpec, part: str, split: str, *index: int) -> np.random.Generator:
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return np.random.default_rng([spec.seed, _PART[(part, split)], *index])


def render_object_image(spec: SceneSpec, split: str, label: int, index: int) -> ObjectImage:
    """The ``index``-th classification image of class ``spec.classes[label]`` in ``split`` (train / val)."""
    rng = _rng(spec, "classification", split, label, index)
    size = spec.image_size
    background = _background(rng, size)
    mask = _draw_shape(rng, spec.classes[label], size, spec.object_radius)
    image = _paint(rng, background, mask)
    return ObjectImage(np.clip(np.rint(image), 0, 255).astype(np.uint8), mask, label)


def render_scene(spec: SceneSpec, split: str, index: int) -> Scene:
    """The ``index``-th scene of ``split``: objects are placed so each keeps >= 60 % of its area visible."""
    rng = _rng(spec, "scenes", split, index)
    size = spec.scene_size
    image = _background(rng, size)
    masks: list[_Array] = []
    full_areas: list[int] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(spec.objects_per_scene[0], spec.objects_per_scene[1] + 1))):
        label = int(rng.integers(len(spec.classes)))
        for _attempt in range(30):
            mask = _draw_shape(rng, spec.classes[label], size, spec.scene_object_radius)
            if all((m & ~mask).sum() >= 0.6 * a for m, a in zip(masks, full_areas)):
                break
        else:
            continue  # a crowded scene keeps fewer objects rather than heavily occluded ones
        image = _paint(rng, image, mask)
        masks = [m & ~mask for m in masks] + [mask]
        full_areas.append(int(mask.sum()))
        labels.append(label)
    image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return Scene(image_u8, tuple(masks), tuple(labels))


# ---------------------------------------------------------------------------------------------- writing


def _save_png(array: _Array, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def _save_jpeg(array: _Array, path: Path, quality: int) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def _write_classification(spec: SceneSpec, root: Path, split: str, per_class: int) -> int:
    for label, name in enumerate(spec.classes):
        image_dir = root / "classification" / split / name
        mask_dir = root / "classification" / "masks" / split / name
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        for index in range(per_class):
            obj = render_object_image(spec, split, label, index)
            stem = f"{name}_{index:04d}"
            _save_png(obj.image, image_dir / f"{stem}.png")
            _save_png(obj.mask.astype(np.uint8) * 255, mask_dir / f"{stem}.png")
    return per_class * len(spec.classes)


def _coco_annotation(mask: _Array, label: int, image_id: int, ann_id: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [float(x) for x in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


def _write_scenes(spec: SceneSpec, root: Path, split: str, count: int) -> dict[str, int]:
    """Render ``count`` scenes once and write them both as COCO instances and as ADE label maps."""
    coco_images = root / "coco" / "images" / split
    ade_images = root / "ade" / "images" / _ADE_SPLIT[split]
    ade_labels = root / "ade" / "annotations" / _ADE_SPLIT[split]
    for folder in (coco_images, ade_images, ade_labels):
        folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        scene = render_scene(spec, split, index)
        stem = f"{split}_{index:05d}"
        _save_jpeg(scene.image, coco_images / f"{stem}.jpg", spec.jpeg_quality)
        shutil.copyfile(coco_images / f"{stem}.jpg", ade_images / f"{stem}.jpg")
        _save_png(scene.label_map(), ade_labels / f"{stem}.png")
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": spec.scene_size,
                       "width": spec.scene_size})
        for mask, label in zip(scene.masks, scene.labels):
            annotations.append(_coco_annotation(mask, label, image_id, len(annotations) + 1))
    coco = {
        "info": {"description": "ibot-suite default scenes", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(spec.classes)],
    }
    ann_dir = root / "coco" / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
    return {"images": count, "instances": len(annotations)}


def _palette(n: int) -> list[list[int]]:
    """Fixed, well-spread colours for visualising label maps (mmseg ``metainfo['palette']``)."""
    rng = np.random.default_rng(1234)
    return [[int(c) for c in rng.integers(40, 256, size=3)] for _ in range(n)]


def _paths() -> dict[str, Any]:
    return {
        "classification": {
            "train": "classification/train", "val": "classification/val",
            "masks": {"train": "classification/masks/train", "val": "classification/masks/val"},
        },
        "coco": {
            "data_root": "coco",
            "train": {"ann_file": "annotations/instances_train.json", "img": "images/train/"},
            "val": {"ann_file": "annotations/instances_val.json", "img": "images/val/"},
        },
        "ade": {
            "data_root": "ade",
            "train": {"img_path": "images/training", "seg_map_path": "annotations/training"},
            "val": {"img_path": "images/validation", "seg_map_path": "annotations/validation"},
            "reduce_zero_label": True,
        },
    }


def _tree_digest(root: Path, exclude: Sequence[str] = ()) -> str:
    """SHA-256 over (relative path, file SHA-256) of every file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        digest.update(rel.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


_README = """# ibot-suite default scenes

Synthetic but photographic: {n_classes} shape classes ({classes}) filled with tinted photo textures and composited
onto crops of the real photographs shipped in scikit-image's wheel. Generated by `ibot.scenes` version
{version} with seed {seed}; regenerate with `python tools/make_default_data.py --seed {seed}` (identical bytes).

| part | layout | count |
|---|---|---|
| classification (ImageFolder, {image_size}x{image_size} PNG) | `classification/{{train,val}}/<class>/*.png` | {cls_train} train, {cls_val} val |
| foreground masks (0 / 255) | `classification/masks/{{train,val}}/<class>/<stem>.png` | one per image |
| COCO instances ({scene_size}x{scene_size} JPEG, RLE masks) | `coco/images/{{train,val}}/`, `coco/annotations/instances_{{train,val}}.json` | {coco_train} + {coco_val} images, {inst_train} + {inst_val} instances |
| ADE20K-style semantic maps (uint8 PNG, 0 = background, 1..{n_classes} = classes) | `ade/images/{{training,validation}}/`, `ade/annotations/{{training,validation}}/` | the COCO scenes |

Class order (alphabetical) is shared by all parts: ImageFolder index `i` = COCO `category_id` `i + 1` = ADE value `i + 1`.

Readers:

* `torchvision.datasets.ImageFolder("classification/train")`
* mmdet: `CocoDataset(data_root="coco", ann_file="annotations/instances_train.json",
  data_prefix=dict(img="images/train/"), metainfo=dict(classes=CLASSES))`
* mmseg: `BaseSegDataset(data_root="ade", data_prefix=dict(img_path="images/training",
  seg_map_path="annotations/training"), img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=True,
  metainfo=dict(classes=CLASSES))`; `ADE20KDataset` reads the same folders with its own 150 class names
  (it refuses class names outside them).

`dataset.json` lists every parameter, the counts and a digest of all files.
"""


def _write_readme(root: Path, spec: SceneSpec, counts: dict[str, Any]) -> None:
    text = _README.format(
        n_classes=len(spec.classes), classes=", ".join(spec.classes), version=GENERATOR_VERSION, seed=spec.seed,
        image_size=spec.image_size, scene_size=spec.scene_size,
        cls_train=counts["classification"]["train"], cls_val=counts["classification"]["val"],
        coco_train=counts["coco"]["train"]["images"], coco_val=counts["coco"]["val"]["images"],
        inst_train=counts["coco"]["train"]["instances"], inst_val=counts["coco"]["val"]["instances"],
    )
    (root / "README.md").write_text(text)


def _build(spec: SceneSpec, root: Path) -> dict[str, Any]:
    """Write the whole data set into the (empty) folder ``root``; ``dataset.json`` comes last."""
    counts: dict[str, Any] = {
        "classification": {
            "train": _write_classification(spec, root, "train", spec.n_train_per_class),
            "val": _write_classification(spec, root, "val", spec.n_val_per_class),
        },
        "coco": {
            "train": _write_scenes(spec, root, "train", spec.n_scenes_train),
            "val": _write_scenes(spec, root, "val", spec.n_scenes_val),
        },
    }
    counts["ade"] = {"training": spec.n_scenes_train, "validation": spec.n_scenes_val}
    _write_readme(root, spec, counts)
    manifest = {
        "name": "ibot-suite default scenes",
        "generator": "ibot.scenes",
        "generator_version": GENERATOR_VERSION,
        "seed": spec.seed,
        "params": spec.to_dict(),
        "classes": list(spec.classes),
        "num_classes": len(spec.classes),
        "palette": _palette(len(spec.classes)),
        "photos": [f"skimage/data/{name}" for name in PHOTOS],
        "counts": counts,
        "paths": _paths(),
        "content_sha256": _tree_digest(root),
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _spec(kw: dict[str, Any]) -> SceneSpec:
    fields = {f.name for f in dataclasses.fields(SceneSpec)}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise TypeError(f"unknown scene parameters {unknown}; expected some of {sorted(fields)}")
    return SceneSpec(**kw)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


class _Staging:
    """A temporary sibling of the target folder, renamed onto it only after a complete build."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, overwrite: bool) -> None:
        old = None
        if overwrite and self.target.exists() and not _is_empty_dir(self.target):
            old = self.target.with_name(f"{self.path.name}-old")
            os.replace(self.target, old)
        try:
            os.replace(self.path, self.target)  # POSIX: also replaces an empty folder, refuses a non-empty one
        except OSError as err:
            self.discard()
            if old is not None:
                os.replace(old, self.target)  # put the user's folder back rather than lose it
            raise FileExistsError(f"{self.target} appeared while generating; left it untouched") from err
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def generate_scenes(out_dir: str | os.PathLike[str], *, overwrite: bool = False, **params: Any) -> dict[str, Any]:
    """Generate the data set into ``out_dir`` and return its manifest (also written as ``dataset.json``).

    ``params`` are :class:`SceneSpec` fields (``seed``, ``image_size``, ``scene_size``, ``n_train_per_class``,
    ``n_val_per_class``, ``n_scenes_train``, ``n_scenes_val``, ``objects_per_scene``, ``classes``, ...). The data
    set is built in a temporary sibling folder and renamed into place, so ``out_dir`` either holds a complete
    data set or is left as it was. A non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    spec = _spec(params)
    target = Path(out_dir).expanduser().absolute()
    if target.exists() and not _is_empty_dir(target) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    staging = _Staging(target)
    try:
        manifest = _build(spec, staging.path)
    except BaseException:
        staging.discard()
        raise
    staging.commit(overwrite)
    return manifest


def default_cache_dir() -> Path:
    """``$IBOT_CACHE_DIR/scenes``, else ``$XDG_CACHE_HOME/ibot-suite/scenes`` (``~/.cache`` by default)."""
    root = os.environ.get("IBOT_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ibot-suite")
    return Path(root) / "scenes"


def ensure_scenes(cache_dir: str | os.PathLike[str] | None = None, **params: Any) -> Path:
    """Path of the cached data set for ``params`` (:class:`SceneSpec` fields), generating it on first use.

    Entries live in ``<cache_dir>/<hash of params and GENERATOR_VERSION>/``; an entry counts only once its
    ``dataset.json`` exists, and it is renamed into place complete, so an interrupted run leaves nothing behind.
    Concurrent callers (e.g. every rank of a launch) may both build; the first rename wins, the other is dropped.
    """
    spec = _spec(params)
    entry = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    entry = entry / spec.cache_key()
    if (entry / "dataset.json").is_file():
        return entry
    try:
        generate_scenes(entry, **spec.to_dict())
    except FileExistsError:
        if not (entry / "dataset.json").is_file():
            raise
    return entry


# ---------------------------------------------------------------------------------------------- command line
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    d = SceneSpec()
    p = argparse.ArgumentParser(prog="python -m ibot.scenes",
                                description="Generate the embedded default data set (shape scenes on "
                                            "scikit-image's photos; nothing is downloaded).")
    p.add_argument("--out", help="output folder (default: the cache, reused when it already holds these settings)")
    p.add_argument("--cache-dir", help="cache root (default: $IBOT_CACHE_DIR/scenes or ~/.cache/ibot-suite/scenes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--image-size", type=int, default=d.image_size, help="classification image side (px)")
    p.add_argument("--scene-size", type=int, default=d.scene_size, help="COCO / ADE scene side (px)")
    p.add_argument("--train-per-class", type=int, default=d.n_train_per_class)
    p.add_argument("--val-per-class", type=int, default=d.n_val_per_class)
    p.add_argument("--scenes-train", type=int, default=d.n_scenes_train)
    p.add_argument("--scenes-val", type=int, default=d.n_scenes_val)
    p.add_argument("--objects-per-scene", type=int, nargs=2, default=d.objects_per_scene, metavar=("MIN", "MAX"))
    p.add_argument("--classes", default=",".join(d.classes), help=f"comma-separated, from {','.join(SHAPES)}")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """``tools/make_default_data.py`` / ``python -m ibot.scenes``: generate (or reuse) the data set; prints its
    folder on the last line and returns it."""
    a = _parse(argv)
    params = dict(seed=a.seed, image_size=a.image_size, scene_size=a.scene_size,
                  n_train_per_class=a.train_per_class, n_val_per_class=a.val_per_class,
                  n_scenes_train=a.scenes_train, n_scenes_val=a.scenes_val,
                  objects_per_scene=tuple(a.objects_per_scene), classes=tuple(a.classes.split(",")))
    start = time.perf_counter()
    if a.out:
        generate_scenes(a.out, overwrite=a.overwrite, **params)
        root = Path(a.out).resolve()
    else:
        root = ensure_scenes(a.cache_dir, **params)
    print(f"default data ready in {time.perf_counter() - start:.1f}s (see {root / 'README.md'}):", file=sys.stderr)
    print(root)
    return root


if __name__ == "__main__":
    main()
