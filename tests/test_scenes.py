"""ibot.scenes: the embedded default data set is deterministic, cached atomically, and read by the real readers
(torchvision ImageFolder, pycocotools, mmdet CocoDataset, mmseg ADE20K / BaseSegDataset)."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ibot import scenes
from ibot.scenes import SceneSpec, ensure_scenes, generate_scenes, render_object_image, render_scene

REPO = Path(__file__).resolve().parents[1]
# Small enough to generate in a fraction of a second; still every class, both splits and multi-object scenes.
SMALL = dict(seed=3, n_train_per_class=3, n_val_per_class=2, n_scenes_train=6, n_scenes_val=3)
SPEC = SceneSpec(**SMALL)
C = len(SPEC.classes)


def _tree_digest(root: Path) -> str:
    """Independent of the generator's own digest: every file's path and bytes."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "data"
    generate_scenes(out, **SMALL)
    return out


@pytest.fixture(scope="module")
def manifest(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _bbox_of(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes(root: Path, tmp_path: Path, manifest: dict) -> None:
    again = generate_scenes(tmp_path / "again", **SMALL)
    assert _tree_digest(tmp_path / "again") == _tree_digest(root)
    assert again["content_sha256"] == manifest["content_sha256"]


def test_different_seed_differs(root: Path, tmp_path: Path) -> None:
    other = generate_scenes(tmp_path / "other", **{**SMALL, "seed": SMALL["seed"] + 1})
    assert other["content_sha256"] != json.loads((root / "dataset.json").read_text())["content_sha256"]
    rel = "classification/train/disk/disk_0000.png"
    assert (tmp_path / "other" / rel).read_bytes() != (root / rel).read_bytes()
    assert (tmp_path / "other/coco/images/val/val_00000.jpg").read_bytes() != \
        (root / "coco/images/val/val_00000.jpg").read_bytes()


def test_growing_a_split_keeps_its_first_images() -> None:
    bigger = SceneSpec(**{**SMALL, "n_scenes_train": 50, "n_train_per_class": 30})
    assert np.array_equal(render_scene(bigger, "train", 2).image, render_scene(SPEC, "train", 2).image)
    assert np.array_equal(render_object_image(bigger, "val", 1, 0).image, render_object_image(SPEC, "val", 1, 0).image)


def test_photos_are_read_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the generator tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    scenes._photos.cache_clear()
    photos = scenes._photos()
    assert len(photos) == len(scenes.PHOTOS) >= 10
    assert all(p.pixels.dtype == np.uint8 and p.pixels.ndim == 3 and min(p.pixels.shape[:2]) >= 100 for p in photos)
    # Real photographs, not flat synthetic images: plenty of distinct grey levels in each.
    assert all(len(np.unique(p.pixels[..., 1])) > 50 for p in photos)


# ------------------------------------------------------------------------------------------- classification


def test_imagefolder_and_foreground_masks(root: Path, manifest: dict) -> None:
    from torchvision.datasets import ImageFolder

    assert manifest["classes"] == list(SPEC.classes) == sorted(SPEC.classes)
    for split, per_class in (("train", SMALL["n_train_per_class"]), ("val", SMALL["n_val_per_class"])):
        ds = ImageFolder(str(root / manifest["paths"]["classification"][split]))
        assert ds.classes == list(SPEC.classes)
        assert len(ds) == per_class * C == manifest["counts"]["classification"][split]
        assert sorted(ds.targets) == sorted(list(range(C)) * per_class)
        for path, label in ds.samples:
            image = np.asarray(Image.open(path))
            assert image.shape == (SPEC.image_size, SPEC.image_size, 3)
            mask_path = root / manifest["paths"]["classification"]["masks"][split] / SPEC.classes[label] / \
                Path(path).name
            mask = np.asarray(Image.open(mask_path))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
            index = int(Path(path).stem.rsplit("_", 1)[1])
            rendered = render_object_image(SPEC, split, label, index)
            assert np.array_equal(mask == 255, rendered.mask)
            assert np.array_equal(image, rendered.image)  # PNG is lossless
            # One dominant object, fully inside the frame.
            assert 0.05 < rendered.mask.mean() < 0.6
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def test_foreground_differs_from_background_photo() -> None:
    """The object is pasted, not a no-op: pixels under the mask differ from what the background alone gives."""
    for label in range(C):
        obj = render_object_image(SPEC, "train", label, 0)
        rng = scenes._rng(SPEC, "classification", "train", label, 0)
        background = np.rint(scenes._background(rng, SPEC.image_size)).astype(np.uint8)
        assert np.array_equal(obj.image[~obj.mask], background[~obj.mask])
        diff = np.abs(obj.image[obj.mask].astype(int) - background[obj.mask].astype(int)).sum(-1).mean()
        assert diff > 30


# ------------------------------------------------------------------------------------------- COCO


def test_coco_loads_with_pycocotools_and_masks_match(root: Path, manifest: dict) -> None:
    from pycocotools.coco import COCO

    for split, n in (("train", SMALL["n_scenes_train"]), ("val", SMALL["n_scenes_val"])):
        paths = manifest["paths"]["coco"][split]
        coco = COCO(str(root / "coco" / paths["ann_file"]))
        cats = coco.loadCats(coco.getCatIds())
        assert [(c["id"], c["name"]) for c in cats] == [(i + 1, name) for i, name in enumerate(SPEC.classes)]
        assert sorted(coco.getImgIds()) == list(range(1, n + 1))
        total = 0
        for image_id in coco.getImgIds():
            info = coco.loadImgs(image_id)[0]
            image = Image.open(root / "coco" / paths["img"] / info["file_name"])
            assert image.format == "JPEG" and image.size == (info["width"], info["height"])
            scene = render_scene(SPEC, split, image_id - 1)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert len(anns) == len(scene.masks) >= 1
            seen = np.zeros((info["height"], info["width"]), dtype=bool)
            for ann, mask, label in zip(anns, scene.masks, scene.labels):
                decoded = coco.annToMask(ann).astype(bool)
                assert np.array_equal(decoded, mask)
                assert ann["category_id"] == label + 1 and ann["iscrowd"] == 0
                assert ann["bbox"] == _bbox_of(decoded)
                assert ann["area"] == decoded.sum() > 0
                assert not (seen & decoded).any()  # visible instance masks never overlap
                seen |= decoded
            total += len(anns)
        assert total == manifest["counts"]["coco"][split]["instances"]


def test_mmdet_coco_dataset(root: Path, manifest: dict) -> None:
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations

    for split, n in (("train", SMALL["n_scenes_train"]), ("val", SMALL["n_scenes_val"])):
        paths = manifest["paths"]["coco"][split]
        ds = CocoDataset(data_root=str(root / "coco"), ann_file=paths["ann_file"],
                         data_prefix=dict(img=paths["img"]), metainfo=dict(classes=SPEC.classes), pipeline=[])
        assert len(ds) == n
        assert ds.cat_ids == list(range(1, C + 1))
    ds = CocoDataset(data_root=str(root / "coco"), ann_file="annotations/instances_train.json",
                     data_prefix=dict(img="images/train/"), metainfo=dict(classes=SPEC.classes),
                     pipeline=[LoadImageFromFile(), LoadAnnotations(with_bbox=True, with_mask=True)])
    for i in range(len(ds)):
        item = ds[i]
        scene = render_scene(SPEC, "train", int(Path(item["img_path"]).stem.split("_")[1]))
        assert item["img"].shape == (SPEC.scene_size, SPEC.scene_size, 3)
        assert item["gt_bboxes_labels"].tolist() == list(scene.labels)
        assert not item["gt_ignore_flags"].any()
        assert np.array_equal(item["gt_masks"].masks.astype(bool), np.stack(scene.masks))
        xyxy = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in map(_bbox_of, scene.masks)]
        assert np.allclose(item["gt_bboxes"].tensor.numpy(), xyxy)


# ------------------------------------------------------------------------------------------- ADE20K


def test_ade_label_maps(root: Path, manifest: dict) -> None:
    for split, ade_split, n in (("train", "training", SMALL["n_scenes_train"]),
                                ("val", "validation", SMALL["n_scenes_val"])):
        maps = sorted((root / "ade/annotations" / ade_split).iterdir())
        images = sorted((root / "ade/images" / ade_split).iterdir())
        assert [p.stem for p in maps] == [p.stem for p in images]
        assert len(maps) == n == manifest["counts"]["ade"][ade_split]
        for index, path in enumerate(maps):
            label = Image.open(path)
            assert label.mode == "L" and label.size == (SPEC.scene_size, SPEC.scene_size)
            values = np.asarray(label)
            assert values.max() <= C and values.min() == 0
            scene = render_scene(SPEC, split, index)
            for c in range(C):  # each class's pixels are the union of its visible instance masks
                union = np.zeros(values.shape, dtype=bool)
                for mask in (m for m, lab in zip(scene.masks, scene.labels) if lab == c):
                    union |= mask
                assert np.array_equal(values == c + 1, union)
            coco_jpeg = root / "coco/images" / split / images[index].name
            assert images[index].read_bytes() == coco_jpeg.read_bytes()


def test_mmseg_datasets(root: Path, manifest: dict) -> None:
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    paths = manifest["paths"]["ade"]
    for split, n in (("train", SMALL["n_scenes_train"]), ("val", SMALL["n_scenes_val"])):
        ade = ADE20KDataset(data_root=str(root / paths["data_root"]), data_prefix=paths[split], pipeline=[])
        assert len(ade) == n
    ds = BaseSegDataset(data_root=str(root / paths["data_root"]), data_prefix=paths["val"], img_suffix=".jpg",
                        seg_map_suffix=".png", reduce_zero_label=paths["reduce_zero_label"],
                        metainfo=dict(classes=SPEC.classes, palette=manifest["palette"]),
                        pipeline=[LoadImageFromFile(), LoadAnnotations()])
    assert len(ds) == SMALL["n_scenes_val"] and ds.metainfo["classes"] == SPEC.classes
    for i in range(len(ds)):
        item = ds[i]
        raw = render_scene(SPEC, "val", i).label_map().astype(int)
        expected = np.where(raw == 0, 255, raw - 1)  # reduce_zero_label: background ignored, classes 0..C-1
        assert np.array_equal(item["gt_seg_map"], expected)
        assert set(np.unique(item["gt_seg_map"])) <= set(range(C)) | {255}


# ------------------------------------------------------------------------------------------- manifest, cache, CLI


def test_manifest_matches_disk(root: Path, manifest: dict) -> None:
    assert manifest["generator_version"] == scenes.GENERATOR_VERSION and manifest["seed"] == SMALL["seed"]
    assert manifest["params"] == SPEC.to_dict() and manifest["num_classes"] == C == len(manifest["palette"])
    assert manifest["content_sha256"] == scenes._tree_digest(root, exclude=["dataset.json"])
    paths = manifest["paths"]
    for rel in (paths["classification"]["train"], paths["classification"]["masks"]["val"],
                f"coco/{paths['coco']['train']['ann_file']}", f"ade/{paths['ade']['val']['seg_map_path']}"):
        assert (root / rel).exists(), rel
    readme = (root / "README.md").read_text()
    assert all(name in readme for name in SPEC.classes) and "seed 3" in readme
    assert not list(root.parent.glob(".*tmp*")), "staging folder left behind"


def test_cache_is_reused_without_regenerating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_scenes(tmp_path, **SMALL)
    assert first.parent == tmp_path and (first / "dataset.json").is_file()

    def must_not_build(*args, **kwargs):
        raise AssertionError("cache entry was regenerated")

    monkeypatch.setattr(scenes, "_build", must_not_build)
    start = time.perf_counter()
    assert ensure_scenes(tmp_path, **SMALL) == first
    assert time.perf_counter() - start < 0.5
    with pytest.raises(AssertionError, match="regenerated"):  # other parameters: another entry
        ensure_scenes(tmp_path, **{**SMALL, "seed": 4})


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IBOT_CACHE_DIR", str(tmp_path / "cache"))
    assert scenes.default_cache_dir() == tmp_path / "cache" / "scenes"
    path = ensure_scenes(**SMALL)
    assert path == tmp_path / "cache" / "scenes" / SPEC.cache_key()
    monkeypatch.delenv("IBOT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert scenes.default_cache_dir() == tmp_path / "xdg" / "ibot-suite" / "scenes"


def test_cache_key_depends_on_params_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    key = SPEC.cache_key()
    assert SceneSpec(**{**SMALL, "classes": tuple(reversed(SPEC.classes))}).cache_key() == key  # order-free
    assert SceneSpec(**{**SMALL, "n_scenes_val": 4}).cache_key() != key
    monkeypatch.setattr(scenes, "GENERATOR_VERSION", scenes.GENERATOR_VERSION + 1)
    assert SPEC.cache_key() != key


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = scenes._write_scenes

    def crash_midway(spec, root, split, count):
        if split == "val":  # classification and the train scenes are already on disk by now
            raise KeyboardInterrupt("simulated interruption")
        return real(spec, root, split, count)

    monkeypatch.setattr(scenes, "_write_scenes", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_scenes(tmp_path / "cache", **SMALL)
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        generate_scenes(tmp_path / "out", **SMALL)
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "cache"]
    monkeypatch.setattr(scenes, "_write_scenes", real)
    assert (ensure_scenes(tmp_path / "cache", **SMALL) / "dataset.json").is_file()


def test_existing_folder_needs_overwrite(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate_scenes(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    generate_scenes(out, overwrite=True, **SMALL)
    assert not (out / "keep.txt").exists() and _tree_digest(out) == _tree_digest(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old copy left


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="classes"):
        SceneSpec(classes=("disk", "blob"))
    with pytest.raises(ValueError, match="objects_per_scene"):
        SceneSpec(objects_per_scene=(0, 3))
    with pytest.raises(TypeError, match="unknown scene parameters"):
        ensure_scenes("/nonexistent", n_train=3)


def test_cli(root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "tools/make_default_data.py"), "--out", str(tmp_path / "cli"),
           "--seed", "3", "--train-per-class", "3", "--val-per-class", "2", "--scenes-train", "6", "--scenes-val", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str((tmp_path / "cli").resolve())
    assert _tree_digest(tmp_path / "cli") == _tree_digest(root)
