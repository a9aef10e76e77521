"""Validation of a config's annotation data before ``python -m det.cli train|test`` starts the runner.

MMDetection and MMSegmentation drop bad annotations silently (a COCO box of negative width, an unknown
``category_id``, a 2-point polygon: the instance is skipped, an image whose every box is bad trains with zero loss)
or fail deep in a stack without naming the file (malformed JSON, an ADE label above the class count in training, a
label map of another size than its image); in testing a label above the class count is silently left out of the
mIoU. :func:`validate_data` checks every dataset the run will read first:

* COCO json files (``CocoDataset`` and subclasses, and the ``ann_file`` of ``CocoMetric`` evaluators): malformed
  JSON, missing / empty ``images``, ``categories``, ``annotations``; per annotation an unknown ``image_id`` or
  ``category_id``, a duplicate id, a bbox that is not 4 numbers, of zero or negative width / height, outside its
  image, a missing or non-positive area, a polygon of fewer than 3 points (6 coordinates) or an odd number of
  coordinates, an RLE mask of another size than its image; per image a missing id / file name / size, a duplicate
  id, a missing image file;
* label-map datasets (``BaseSegDataset`` and subclasses, e.g. ADE20K, CamVid): a missing image or label map, a
  label map that is unreadable, not single-channel, of another size than its image (EXIF orientation applied as the
  loader does), or holding a value that is neither a class (after ``reduce_zero_label`` / the label map) nor the
  ignore index.

Problems are counted per kind, each with the file and the annotation id / image name. By default any problem is an
error (:class:`DataValidationError`, before anything is built or written); with ``skip_invalid`` (``--skip-invalid``)
the invalid annotations / images are dropped: a cleaned copy of the annotation file (COCO) or an image list
(label maps) is written under ``<work_dir>/validated/`` and the config pointed at it, the counts are logged. The
source files are never modified. Problems that cannot be skipped (malformed JSON, no annotations at all, a missing
image folder) stay errors.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import os.path as osp
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DataValidationError", "FileCheck", "check_coco", "check_label_maps", "validate_data"]

#: How many annotation ids / image names a message lists per kind of problem.
SHOW = 5
SKIP_HINT = ("Fix the file(s), or pass --skip-invalid to drop the invalid annotations / images (the counts are "
             "logged; a cleaned copy is written under <work_dir>/validated/, the source files stay as they are).")


class DataValidationError(ValueError):
    """The data a config points at has problems; the message names every file, kind, count and id."""


@dataclass
class FileCheck:
    """Findings for one annotation file (COCO) or one label-map dataset.

    Attributes:
        path: the annotation file, or the label-map folder.
        what: ``"COCO annotations"`` or a dataset description.
        where: config keys that read it (``train_dataloader.dataset``, ``val_evaluator``, ...).
        fatal: problems that cannot be skipped (malformed JSON, no annotations, missing folder).
        annotations: kind -> descriptions of invalid annotations (``id 12 (category_id 999, image 3)``).
        images: kind -> descriptions of invalid images (``id 7 (000000391895.jpg)`` / an image name).
        notes: kind -> count of things the toolkit ignores by design (logged, not errors).
        bad_annotation_index / bad_images: what ``skip_invalid`` drops (annotation positions; image ids (COCO)
            or image names (label maps)).
        names: label-map datasets: every image name (path under the image folder), in order.
        img_suffix: label-map datasets: the image suffix (dropped in the image list ``skip_invalid`` writes).
    """

    path: str
    what: str
    where: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)
    annotations: dict[str, list[str]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    bad_annotation_index: set[int] = field(default_factory=set)
    bad_images: set[Any] = field(default_factory=set)
    data: Any = None  # the parsed COCO json (for cleaning)
    names: list[str] = field(default_factory=list)
    img_suffix: str = ""
    log: list[str] = field(default_factory=list)  # what ``skip_invalid`` did (also logged)

    @property
    def ok(self) -> bool:
        return not (self.fatal or self.annotations or self.images)

    @property
    def skippable(self) -> bool:
        return not self.fatal

    def counts(self) -> tuple[int, int]:
        return sum(map(len, self.annotations.values())), sum(map(len, self.images.values()))

    def add_annotation(self, kind: str, index: int, text: str) -> None:
        self.annotations.setdefault(kind, []).append(text)
        self.bad_annotation_index.add(index)

    def add_image(self, kind: str, key: Any, text: str) -> None:
        self.images.setdefault(kind, []).append(text)
        self.bad_images.add(key)

    def summary(self) -> str:
        """A multi-line message: the file, where it is used, every kind with its count and first ids."""
        n_ann, n_img = self.counts()
        parts = [f"{n_ann} invalid annotation{'s' * (n_ann != 1)}"] if n_ann else []
        parts += [f"{n_img} invalid image{'s' * (n_img != 1)}"] if n_img else []
        parts += ["unusable"] if self.fatal else []
        used = f" ({', '.join(self.where)})" if self.where else ""
        head = f"{self.what} {self.path}{used}: {', '.join(parts)}"
        lines = [head] + [f"  - {text}" for text in self.fatal]
        for unit, table in (("annotation", self.annotations), ("image", self.images)):
            for kind, items in table.items():
                more = f", ... and {len(items) - SHOW} more" if len(items) > SHOW else ""
                lines.append(f"  - {kind}: {len(items)} {unit}{'s' * (len(items) != 1)}: "
                             f"{'; '.join(items[:SHOW])}{more}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------- COCO
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_segmentation(seg: Any, image: dict | None) -> tuple[str, str] | None:
    """(kind, detail) of an invalid ``segmentation``, or ``None``."""
    if isinstance(seg, list):
        if not seg:
            return "empty segmentation (no polygon)", "segmentation []"
        for poly in seg:
            if not isinstance(poly, list) or not all(_number(v) for v in poly):
                return "segmentation neither polygons nor RLE", f"segmentation {_short(seg)}"
            if len(poly) < 6:
                return ("polygon with fewer than 3 points (6 coordinates)",
                        f"a polygon of {len(poly)} coordinate{'s' * (len(poly) != 1)}")
            if len(poly) % 2:
                return "polygon with an odd number of coordinates", f"a polygon of {len(poly)} coordinates"
        return None
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not (isinstance(size, list) and len(size) == 2):
            return "RLE mask without counts / size", f"segmentation keys {sorted(seg)}"
        if image is not None and list(size) != [image.get("height"), image.get("width")]:
            return ("RLE mask size differs from its image",
                    f"mask {size[1]}x{size[0]}, image {image.get('width')}x{image.get('height')}")
        return None
    return "segmentation neither polygons nor RLE", f"segmentation {_short(seg)}"


def check_coco(path: str, *, img_dir: str | None = None, need_annotations: bool = True) -> FileCheck:
    """Check a COCO instances json (see the module doc). ``img_dir``: also check that every image file exists."""
    check = FileCheck(path=path, what="COCO annotations")
    if not osp.isfile(path):
        check.fatal.append("the annotation file does not exist")
        return check
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        check.fatal.append(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
        return check
    except (UnicodeDecodeError, OSError) as exc:
        check.fatal.append(f"cannot be read as UTF-8 JSON ({type(exc).__name__}: {exc})")
        return check
    if not isinstance(data, dict):
        check.fatal.append(f"the top level is a JSON {type(data).__name__}, not an object with images / "
                           "annotations / categories")
        return check
    check.data = data
    for key in ("images", "categories", "annotations"):
        if key not in data:
            if key != "annotations" or need_annotations:
                check.fatal.append(f"no '{key}' list")
        elif not isinstance(data[key], list):
            check.fatal.append(f"'{key}' is a {type(data[key]).__name__}, not a list")
    if check.fatal:
        return check
    if not data["categories"]:
        check.fatal.append("the 'categories' list is empty")
    if need_annotations and not data.get("annotations"):
        check.fatal.append("the 'annotations' list is empty: there is nothing to train on / evaluate against")
    cat_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}

    images: dict[Any, dict] = {}
    if img_dir is not None and not osp.isdir(img_dir):
        check.fatal.append(f"the image folder {img_dir} does not exist")
        img_dir = None
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            check.fatal.append(f"images[{i}] has no 'id' ({_short(img)})")
            continue
        iid, name = img["id"], img.get("file_name")
        label = f"id {iid} ({name})" if name else f"id {iid}"
        if iid in images:
            check.add_image("duplicate image id", iid, label)
        elif not isinstance(name, str) or not name:
            check.add_image("image without a file_name", iid, label)
        elif not all(isinstance(img.get(k), int) and img.get(k) > 0 for k in ("width", "height")):
            check.add_image("image without a positive integer width / height", iid,
                            f"{label}: width {img.get('width')!r}, height {img.get('height')!r}")
        elif img_dir is not None and not osp.isfile(osp.join(img_dir, name)):
            check.add_image(f"image file missing under {img_dir}", iid, label)
        images.setdefault(iid, img)
    if check.fatal:
        return check

    seen_ids: set[Any] = set()
    for i, ann in enumerate(data.get("annotations") or []):
        if not isinstance(ann, dict) or "id" not in ann:
            check.add_annotation("annotation without an id", i, f"annotations[{i}] {_short(ann)}")
            continue
        aid = ann["id"]
        img = images.get(ann.get("image_id"))
        where = f"id {aid} (image {ann.get('image_id')}"
        problem = _annotation_problem(ann, img, cat_ids, aid in seen_ids)
        seen_ids.add(aid)
        if problem is not None:
            kind, detail = problem
            check.add_annotation(kind, i, f"{where}, {detail})")
            continue
        w, h = ann["bbox"][2:]
        if w < 1 or h < 1:
            check.notes["boxes under 1 pixel wide or high (mmdet ignores them)"] = \
                check.notes.get("boxes under 1 pixel wide or high (mmdet ignores them)", 0) + 1
    return check


def _annotation_problem(ann: dict, img: dict | None, cat_ids: set, duplicate: bool) -> tuple[str, str] | None:
    """(kind, detail) of the first problem of one annotation, or ``None``."""
    if duplicate:
        return "duplicate annotation id", "a second annotation with this id"
    if img is None:
        return "unknown image_id (not in 'images')", f"image_id {ann.get('image_id')!r}"
    if ann.get("category_id") not in cat_ids:
        return "unknown category_id (not in 'categories')", f"category_id {ann.get('category_id')!r}"
    box = ann.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
        return "bbox missing or not 4 numbers", f"bbox {_short(box)}"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "box with zero or negative width / height", f"bbox {_short(box)}"
    if min(x + w, img["width"]) <= max(x, 0) or min(y + h, img["height"]) <= max(y, 0):
        return "box outside its image", f"bbox {_short(box)}, image {img['width']}x{img['height']}"
    area = ann.get("area")
    if not _number(area):
        return "area missing or not a number", f"area {_short(area)}"
    if area <= 0:
        return "zero or negative area", f"area {area}"
    if "segmentation" in ann:
        return _check_segmentation(ann["segmentation"], img)
    return None


def clean_coco(check: FileCheck) -> tuple[dict, dict[str, int]]:
    """The json without the invalid annotations and images (and the annotations of those images); stats."""
    data = check.data
    images = [img for img in data["images"] if img.get("id") not in check.bad_images]
    kept_ids = {img["id"] for img in images}
    before = {a.get("image_id") for a in data.get("annotations") or [] if isinstance(a, dict)}
    anns = [a for i, a in enumerate(data.get("annotations") or [])
            if i not in check.bad_annotation_index and a.get("image_id") in kept_ids]
    after = {a["image_id"] for a in anns}
    out = dict(data)
    out["images"], out["annotations"] = images, anns
    stats = {"annotations dropped": len(data.get("annotations") or []) - len(anns),
             "images dropped": len(data["images"]) - len(images),
             "images left without annotations": len((before & kept_ids) - after)}
    return out, stats


# --------------------------------------------------------------------------------------------------- label maps
def _ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``'0..2, 5, 255'``."""
    out, values = [], sorted(values)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(str(values[i]) if i == j else f"{values[i]}..{values[j]}")
        i = j + 1
    return ", ".join(out)


def valid_raw_labels(num_classes: int, ignore_index: int, reduce_zero_label: bool,
                     label_map: dict | None) -> np.ndarray:
    """Which 8-bit values of a label map mmseg's ``LoadAnnotations`` turns into a class or the ignore index."""
    raw = np.arange(256, dtype=np.uint8)
    mapped = raw.copy()
    if reduce_zero_label:  # as mmseg: 0 -> 255 (ignore), v -> v - 1, 255 stays 255
        mapped[raw == 0] = 255
        mapped = mapped - 1
        mapped[mapped == 254] = 255
    if label_map:
        before = mapped.copy()
        for old, new in label_map.items():
            mapped[before == old] = new
    return (mapped.astype(np.int64) < num_classes) | (mapped == ignore_index)


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) the loader sees: cv2 applies the EXIF orientation, which swaps the sides for 5..8."""
    from PIL import Image

    with Image.open(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - no / broken EXIF: as stored
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _label_map_problem(img_path: str, seg_path: str, valid: np.ndarray) -> tuple[str, str] | None:
    from PIL import Image

    if not osp.isfile(img_path):
        return "image missing", f"no {img_path}"
    if not osp.isfile(seg_path):
        return "label map missing", f"no {seg_path}"
    try:
        with Image.open(seg_path) as seg:
            arr = np.asarray(seg)
    except Exception as exc:  # noqa: BLE001 - reported with the file named
        return "unreadable label map", f"{seg_path}: {type(exc).__name__}: {exc}"
    arr = arr.squeeze() if arr.ndim == 3 else arr
    if arr.ndim != 2:
        return ("label map not single-channel (class indices expected)",
                f"{osp.basename(seg_path)} has shape {tuple(arr.shape)}")
    try:
        iw, ih = _image_size(img_path)
    except Exception as exc:  # noqa: BLE001
        return "unreadable image", f"{img_path}: {type(exc).__name__}: {exc}"
    if (arr.shape[1], arr.shape[0]) != (iw, ih):
        return ("label map size differs from its image",
                f"label map {arr.shape[1]}x{arr.shape[0]}, image {iw}x{ih}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            return ("label values outside 0..255 (mmseg reads label maps as 8-bit)",
                    f"{osp.basename(seg_path)} holds {int(arr.min())}..{int(arr.max())}")
        arr = arr.astype(np.uint8)
    present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
    bad = [int(v) for v in present if not valid[v]]
    if bad:
        return ("label value that is no class (above the class count) and not the ignore index",
                f"{osp.basename(seg_path)} holds {_ranges(bad)}")
    return None


def check_label_maps(samples: Sequence[dict], *, path: str, what: str, num_classes: int, ignore_index: int,
                     reduce_zero_label: bool, label_map: dict | None, img_dir: str) -> FileCheck:
    """Check the label maps of a segmentation dataset's ``data_list`` (``img_path`` / ``seg_map_path``)."""
    check = FileCheck(path=path, what=what)
    valid = valid_raw_labels(num_classes, ignore_index, reduce_zero_label, label_map)
    valid_text = _ranges(np.flatnonzero(valid).tolist())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda s: _label_map_problem(s["img_path"], s.get("seg_map_path") or "", valid),
                                samples))
    for sample, problem in zip(samples, results):
        name = osp.relpath(sample["img_path"], img_dir) if img_dir else sample["img_path"]
        check.names.append(name)
        if problem is not None:
            kind, detail = problem
            if kind.startswith("label value"):
                kind = f"{kind} (valid values: {valid_text})"
            check.add_image(kind, name, f"{name} ({detail})")
    return check


# ------------------------------------------------------------------------------------------------ the config
def _rank0() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _log(message: str, level: int = logging.WARNING) -> None:
    if _rank0():
        from mmengine.logging import print_log

        print_log(message, logger="current", level=level)


def _datasets(cfg: Any, phase: str) -> Iterator[tuple[str, Any]]:
    """(config key, dataset config) of every dataset a ``train`` / ``test`` run builds, wrappers unwrapped."""
    loaders = ["train_dataloader"] if phase == "train" else ["test_dataloader"]
    if phase == "train" and cfg.get("val_cfg") and cfg.get("val_dataloader") and cfg.get("val_evaluator"):
        loaders.append("val_dataloader")

    def unwrap(key: str, ds: Any) -> Iterator[tuple[str, Any]]:
        if not isinstance(ds, dict):
            return
        if isinstance(ds.get("dataset"), dict):
            yield from unwrap(f"{key}.dataset", ds["dataset"])
        elif isinstance(ds.get("datasets"), list):
            for i, sub in enumerate(ds["datasets"]):
                yield from unwrap(f"{key}.datasets.{i}", sub)
        else:
            yield key, ds

    for loader in loaders:
        if isinstance(cfg.get(loader), dict):
            yield from unwrap(f"{loader}.dataset", cfg[loader].get("dataset"))


def _evaluators(cfg: Any, phase: str) -> list[tuple[str, Any]]:
    key = "test_evaluator" if phase == "test" else "val_evaluator"
    if phase == "train" and not (cfg.get("val_cfg") and cfg.get("val_dataloader")):
        return []
    ev = cfg.get(key)
    if isinstance(ev, dict) and isinstance(ev.get("metrics"), (list, dict)):  # mmengine Evaluator(metrics=...)
        ev = ev["metrics"]
    if isinstance(ev, dict):
        return [(key, ev)]
    if isinstance(ev, (list, tuple)):
        return [(f"{key}.{i}", e) for i, e in enumerate(ev) if isinstance(e, dict)]
    return []


def _build_lazily(scope: str, ds_cfg: Any) -> Any:
    from mmengine.registry import init_default_scope

    init_default_scope(scope)
    registry = __import__(f"{scope}.registry", fromlist=["DATASETS"]).DATASETS
    cfg = copy.deepcopy(ds_cfg)
    cfg["pipeline"], cfg["lazy_init"] = [], True
    return registry.build(cfg)


def _cleaned_path(work_dir: str, source: str, suffix: str, salt: str = "") -> str:
    """``<work_dir>/validated/<source stem>.<hash of its real path>.<suffix>``."""
    tag = hashlib.sha1((osp.realpath(source) + salt).encode()).hexdigest()[:8]
    stem = osp.splitext(osp.basename(source.rstrip("/")))[0] or "data"
    return osp.join(osp.abspath(work_dir), "validated", f"{stem}.{tag}{suffix}")


def _needs_annotations(cfg: Any, phase: str) -> bool:
    """Evaluation needs ground truth unless every evaluator only formats results (``format_only``)."""
    evs = _evaluators(cfg, phase)
    return not evs or not all(e.get("format_only") for _, e in evs)


def validate_data(cfg: Any, phase: str, *, skip_invalid: bool = False) -> list[FileCheck]:
    """Check the datasets a ``train`` (``train`` + ``val`` loaders and evaluator) or ``test`` run reads.

    Raises :class:`DataValidationError` listing every problem (file, kind, count, ids); with ``skip_invalid``,
    drops what can be dropped instead (cleaned copies under ``<work_dir>/validated/``, the config pointed at
    them, counts logged) and raises only for what cannot. Returns the checks made.
    """
    from .cli import toolkit_of

    scope = toolkit_of(cfg)
    checks: dict[str, FileCheck] = {}
    users: dict[str, list[Any]] = {}  # check key -> config dicts whose ann_file reads it

    def remember(key: str, check: FileCheck, where: str, node: Any) -> None:
        if key not in checks:
            checks[key] = check
        checks[key].where.append(where)
        users.setdefault(key, []).append(node)

    for where, ds_cfg in _datasets(cfg, phase):
        try:
            ds = _build_lazily(scope, ds_cfg)
        except Exception as exc:  # noqa: BLE001 - the runner reports it with its own stack
            _log(f"data validation: {where} ({ds_cfg.get('type')}) was not checked: it cannot be built "
                 f"({type(exc).__name__}: {exc})")
            continue
        if scope == "mmdet":
            from mmdet.datasets import CocoDataset

            if not isinstance(ds, CocoDataset):
                _log(f"data validation: {where} ({type(ds).__name__}) is not a COCO dataset: not checked",
                     logging.INFO)
                continue
            path = ds.ann_file
            key = "coco:" + osp.realpath(path)
            if key not in checks:
                need = phase == "train" and where.startswith("train") or _needs_annotations(cfg, phase)
                checks[key] = check_coco(path, img_dir=ds.data_prefix.get("img"), need_annotations=need)
            remember(key, checks[key], where, ds_cfg)
        else:
            from mmseg.datasets import BaseSegDataset

            if not isinstance(ds, BaseSegDataset):
                _log(f"data validation: {where} ({type(ds).__name__}) is not a label-map dataset: not checked",
                     logging.INFO)
                continue
            img_dir, seg_dir = ds.data_prefix.get("img_path", ""), ds.data_prefix.get("seg_map_path")
            if not seg_dir:
                _log(f"data validation: {where} has no label maps (data_prefix.seg_map_path): not checked",
                     logging.INFO)
                continue
            try:
                samples = ds.load_data_list()
            except Exception as exc:  # noqa: BLE001 - a missing folder / split file
                check = FileCheck(path=seg_dir, what=type(ds).__name__)
                check.fatal.append(f"its images / label maps cannot be listed ({type(exc).__name__}: {exc})")
                remember(f"seg:{where}", check, where, ds_cfg)
                continue
            if not samples:
                check = FileCheck(path=img_dir, what=type(ds).__name__)
                check.fatal.append(f"no image with suffix {ds.img_suffix!r} under {img_dir}")
                remember(f"seg:{where}", check, where, ds_cfg)
                continue
            key = "seg:" + json.dumps([osp.realpath(seg_dir), osp.realpath(img_dir), str(ds.ann_file), ds.img_suffix,
                                       ds.seg_map_suffix, list(ds.metainfo["classes"]), bool(ds.reduce_zero_label),
                                       sorted((ds.label_map or {}).items()), ds.ignore_index], default=str)
            if key in checks:
                remember(key, checks[key], where, ds_cfg)
                continue
            what = (f"{type(ds).__name__} label maps ({len(ds.metainfo['classes'])} classes, "
                    f"reduce_zero_label={ds.reduce_zero_label}, ignore index {ds.ignore_index})")
            check = check_label_maps(samples, path=seg_dir, what=what,
                                     num_classes=len(ds.metainfo["classes"]), ignore_index=ds.ignore_index,
                                     reduce_zero_label=bool(ds.reduce_zero_label), label_map=ds.label_map,
                                     img_dir=img_dir)
            check.img_suffix = ds.img_suffix
            remember(key, check, where, ds_cfg)

    if scope == "mmdet":
        for where, ev in _evaluators(cfg, phase):
            path = ev.get("ann_file")
            if not path or "Coco" not in str(ev.get("type", "")):
                continue
            key = "coco:" + osp.realpath(path)
            if key not in checks:
                checks[key] = check_coco(path, need_annotations=not ev.get("format_only"))
            remember(key, checks[key], where, ev)

    bad = [c for c in checks.values() if not c.ok]
    for check in checks.values():
        for kind, n in check.notes.items():
            _log(f"data validation: {check.path}: {n} {kind}", logging.INFO)
    if not bad:
        return list(checks.values())
    if not skip_invalid or any(not c.skippable for c in bad):
        shown = bad if not skip_invalid else [c for c in bad if not c.skippable]
        tail = SKIP_HINT if not skip_invalid else "These problems cannot be skipped: fix the file(s)."
        raise DataValidationError("invalid data, nothing was started:\n" + "\n".join(c.summary() for c in shown)
                                  + "\n" + tail)
    for key, check in checks.items():
        if not check.ok:
            _apply_skip(cfg, key, check, users[key], phase)
    return list(checks.values())


def _apply_skip(cfg: Any, key: str, check: FileCheck, nodes: list[Any], phase: str) -> None:
    """Write the cleaned annotation file / image list and point the config entries at it; log the counts."""
    from ibot.atomic import atomic_write_text

    n_img = check.counts()[1]
    kinds = "; ".join(f"{kind}: {len(items)}" for table in (check.annotations, check.images)
                      for kind, items in table.items())
    if key.startswith("coco:"):
        data, stats = clean_coco(check)
        if not data["annotations"] and any(w.startswith("train") for w in check.where):
            raise DataValidationError(f"invalid data, nothing was started:\n{check.summary()}\nwith the invalid "
                                      "entries dropped no annotation is left to train on: fix the file.")
        out = _cleaned_path(cfg.work_dir, check.path, ".json")
        atomic_write_text(out, json.dumps(data))
        for node in nodes:
            node["ann_file"] = out
        check.log.append(f"data validation (--skip-invalid): {check.path} ({', '.join(check.where)}): dropped "
                         f"{stats['annotations dropped']} annotations and {stats['images dropped']} images ({kinds}); "
                         f"{stats['images left without annotations']} images left without annotations; reading the "
                         f"cleaned copy {out}")
        _log(check.log[-1])
        return
    suffix = check.img_suffix
    keep = [n[: len(n) - len(suffix)] if suffix and n.endswith(suffix) else n
            for n in check.names if n not in check.bad_images]
    if not keep:
        raise DataValidationError(f"invalid data, nothing was started:\n{check.summary()}\nwith the invalid "
                                  "images dropped no image is left: fix the data.")
    out = _cleaned_path(cfg.work_dir, check.path, ".txt", salt=check.where[0])
    atomic_write_text(out, "\n".join(keep) + "\n")
    for node in nodes:
        node["ann_file"] = out
    check.log.append(f"data validation (--skip-invalid): {check.path} ({', '.join(check.where)}): dropped {n_img} "
                     f"of {len(check.names)} images ({kinds}); reading the image list {out}")
    _log(check.log[-1])
