"""transfer.datasets: each reader on a fixture written in the data set's published on-disk format, plus the
ImageFolder reader on real CIFAR-10 images (../shared/data relative to the repository root)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
from conftest import shared_data_path
from PIL import Image

from transfer.datasets import DatasetLayoutError, build_dataset, read_cifar, read_imagefolder
from transfer.subset import make_imagefolder_subset


@pytest.fixture(scope="module")
def cifar_real() -> Path:
    """The real CIFAR-10 test ImageFolder (``../shared/data/cifar10/test/<class>/*.jpg``); fails when missing."""
    return shared_data_path("cifar10", "test")


def _rand_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save_jpg(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)


# ------------------------------------------------------------------------------------------------------------ CIFAR
def _cifar_batch(images: np.ndarray, labels: list[int], label_key: str) -> dict:
    # The published files store each image channel-major: 1024 R, then 1024 G, then 1024 B values.
    return {"batch_label": "fixture", label_key: labels, "data": images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            "filenames": [f"img_{i}.png" for i in range(len(images))]}


def test_cifar10_pickle_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train_imgs, train_labels = [], []
    for b in range(1, 6):
        imgs, labels = _rand_images(2, b), [b % 10, (b + 3) % 10]
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump(_cifar_batch(imgs, labels, "labels"), fh, protocol=2)
        train_imgs.append(imgs)
        train_labels += labels
    test_imgs = _rand_images(3, 99)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(_cifar_batch(test_imgs, [7, 8, 9], "labels"), fh, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names, "num_cases_per_batch": 2, "num_vis": 3072}, fh, protocol=2)

    train = build_dataset("cifar10", tmp_path, "train")
    assert len(train) == 10 and train.targets == train_labels and train.classes == names
    # pixel layout: the reader must undo the channel-major storage exactly
    np.testing.assert_array_equal(np.asarray(train[3][0]), np.concatenate(train_imgs)[3])
    test = build_dataset("cifar10", folder, "test")  # the batches folder itself also works as root
    assert test.targets == [7, 8, 9]
    np.testing.assert_array_equal(np.asarray(test.load(2)), test_imgs[2])


def test_cifar100_pickle_layout_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = _rand_images(4, 5)
    batch = _cifar_batch(imgs, [3, 99, 0, 42], "fine_labels")
    batch["coarse_labels"] = [1, 19, 4, 8]
    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)],
                     "coarse_label_names": [f"s{i}" for i in range(20)]}, fh, protocol=2)
    ds = build_dataset("cifar100", tmp_path, "train")
    assert ds.targets == [3, 99, 0, 42] and ds.num_classes == 100 and ds.classes[99] == "c99"
    np.testing.assert_array_equal(np.asarray(ds[1][0]), imgs[1])


def test_cifar_pickle_refuses_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": Evil()}, fh, protocol=2)
    for b in range(1, 6):
        with open(folder / f"data_batch_{b}", "wb") as fh:
            pickle.dump(_cifar_batch(_rand_images(1, b), [0], "labels"), fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="print, which a CIFAR batch never holds"):
        read_cifar(tmp_path, "train")


def test_cifar_imagefolder_layout_on_real_images(tmp_path: Path, cifar_real: Path) -> None:
    counts = make_imagefolder_subset(cifar_real, tmp_path, train_per_class=3, test_per_class=2, seed=1)
    assert counts == {"train": 30, "test": 20}
    train, test = build_dataset("cifar10", tmp_path, "train"), build_dataset("cifar10", tmp_path, "test")
    assert train.classes == sorted(p.name for p in cifar_real.iterdir()) and len(train.classes) == 10
    assert {Path(p).resolve() for p, _ in train.samples}.isdisjoint({Path(p).resolve() for p, _ in test.samples})
    img, label = test[5]
    assert img.size == (32, 32) and img.mode == "RGB" and test.classes[label] == Path(test.samples[5][0]).parent.name


def test_cifar_missing_names_layout_and_source(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("cifar10", tmp_path, "train")
    msg = str(err.value)
    assert "cifar-10-batches-py/{data_batch_1" in msg and "cs.toronto.edu/~kriz/cifar.html" in msg
    assert "<root>/<split>/<class name>/" in msg and str(tmp_path) in msg


# ------------------------------------------------------------------------------------------------------ Flowers-102
def test_flowers102_mat_layout(tmp_path: Path) -> None:
    base = tmp_path / "flowers-102"  # torchvision's placement under the root
    labels = np.array([[1, 2, 3, 1, 2, 3, 102, 5]], dtype=np.uint8)
    for i in range(labels.shape[1]):
        _save_jpg(base / "jpg" / f"image_{i + 1:05d}.jpg", _rand_images(1, i, 20)[0])
    sio.savemat(base / "imagelabels.mat", {"labels": labels})
    sio.savemat(base / "setid.mat", {"trnid": np.array([[1, 4]], dtype=np.uint16),
                                     "valid": np.array([[2, 7]], dtype=np.uint16),
                                     "tstid": np.array([[3, 5, 6, 8]], dtype=np.uint16)})
    train = build_dataset("flowers102", tmp_path, "train")  # iBOT: train = trnid + valid
    assert [Path(p).name for p, _ in train.samples] == ["image_00001.jpg", "image_00002.jpg", "image_00004.jpg",
                                                       "image_00007.jpg"]
    assert train.targets == [0, 1, 0, 101] and train.num_classes == 102
    test = build_dataset("flowers102", base, "test")
    assert test.targets == [2, 1, 2, 4] and len(build_dataset("flowers102", base, "valid")) == 2
    assert test[0][0].size == (20, 20)
    with pytest.raises(DatasetLayoutError, match=r"robots\.ox\.ac\.uk/~vgg/data/flowers/102"):
        build_dataset("flowers102", tmp_path / "flowers-102" / "jpg", "train")


# ---------------------------------------------------------------------------------------------------- Stanford Cars
_ANN_DTYPE = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]


def _annotations(rows: list[tuple[str, int]], extra: list[tuple[str, int]] | None = None) -> np.ndarray:
    dtype = _ANN_DTYPE if extra is None else [("relative_im_path", "O")] + _ANN_DTYPE[:5] + [("test", "O")]
    arr = np.zeros((1, len(rows)), dtype=dtype)
    for i, (fname, cls) in enumerate(rows):
        box = (np.array([[1]]), np.array([[2]]), np.array([[30]]), np.array([[25]]))
        if extra is None:
            arr[0, i] = (*box, np.array([[cls]], dtype=np.uint8), np.array([fname]))
        else:
            arr[0, i] = (np.array([fname]), *box, np.array([[cls]], dtype=np.uint8),
                         np.array([[extra[i][1]]], dtype=np.uint8))
    return arr


def test_cars_devkit_layout(tmp_path: Path) -> None:
    root = tmp_path / "stanford_cars"
    train_rows, test_rows = [("00001.jpg", 1), ("00002.jpg", 196), ("00003.jpg", 5)], [("00001.jpg", 2)]
    for split, rows in (("train", train_rows), ("test", test_rows)):
        for k, (fname, _) in enumerate(rows):
            _save_jpg(root / f"cars_{split}" / fname, _rand_images(1, k, 24)[0])
    (root / "devkit").mkdir(parents=True)
    sio.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(train_rows)})
    sio.savemat(root / "devkit" / "cars_test_annos_withlabels.mat", {"annotations": _annotations(test_rows)})
    names = np.array([f"Make Model {i} 2012" for i in range(1, 197)], dtype=object).reshape(1, -1)
    sio.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    train = build_dataset("cars", tmp_path, "train")
    assert train.targets == [0, 195, 4] and train.num_classes == 196 and train.classes[195] == "Make Model 196 2012"
    assert Path(train.samples[1][0]) == root / "cars_train" / "00002.jpg"
    test = build_dataset("cars", root, "test")
    assert test.targets == [1] and test[0][0].size == (24, 24)


def test_cars_all_in_one_annos_layout(tmp_path: Path) -> None:
    rows = [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 3), ("car_ims/000003.jpg", 3)]
    test_flags = [("", 0), ("", 1), ("", 0)]
    for k, (rel, _) in enumerate(rows):
        _save_jpg(tmp_path / rel, _rand_images(1, k, 16)[0])
    sio.savemat(tmp_path / "cars_annos.mat", {"annotations": _annotations(rows, test_flags),
                                              "class_names": np.array(["A", "B", "C"], dtype=object).reshape(1, -1)})
    train, test = build_dataset("cars", tmp_path, "train"), build_dataset("cars", tmp_path, "test")
    assert train.targets == [0, 2] and test.targets == [2] and train.classes == ["A", "B", "C"]
    assert Path(test.samples[0][0]).name == "000002.jpg"


def test_cars_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("cars", tmp_path, "train")
    assert "devkit/{cars_train_annos.mat" in str(err.value) and "cars_annos.mat" in str(err.value)


# ------------------------------------------------------------------------------------------------------ iNaturalist
@pytest.mark.parametrize("year", [2018, 2019])
def test_inat_json_layout(tmp_path: Path, year: int) -> None:
    cats = [{"id": 0, "name": "Aves sp", "supercategory": "Aves"}, {"id": 1, "name": "Plantae sp",
                                                                    "supercategory": "Plantae"},
            {"id": 2, "name": "Fungi sp", "supercategory": "Fungi"}]

    def split_json(name: str, items: list[tuple[int, int]]) -> None:
        images, annotations = [], []
        for image_id, cat in items:
            sup = cats[cat]["supercategory"]
            rel = f"train_val{year}/{sup}/{cat}/{image_id:08x}.jpg"
            _save_jpg(tmp_path / rel, _rand_images(1, image_id, 20)[0])
            images.append({"id": image_id, "file_name": rel, "width": 20, "height": 20})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": cat})
        with open(tmp_path / f"{name}{year}.json", "w") as fh:
            json.dump({"info": {"year": year}, "images": images, "annotations": annotations,
                       "categories": [{"id": c["id"], "name": c["name"]} for c in cats]}, fh)

    split_json("train", [(10, 0), (11, 2), (12, 1), (13, 2)])
    split_json("val", [(20, 1), (21, 0)])
    if year == 2018:  # the 2018 release ships the names separately
        with open(tmp_path / "categories.json", "w") as fh:
            json.dump([{**c, "name": c["name"].upper()} for c in cats], fh)
    train = build_dataset(f"inat{year}", tmp_path, "train")
    assert train.targets == [0, 2, 1, 2] and train.num_classes == 3
    assert train.classes[2] == ("FUNGI SP" if year == 2018 else "Fungi sp")
    test = build_dataset(f"inat{year}", tmp_path, "test")  # test = val{year}.json
    assert test.targets == [1, 0] and test[0][0].size == (20, 20)
    assert Path(test.samples[1][0]) == tmp_path / f"train_val{year}" / "Aves" / "0" / f"{21:08x}.jpg"


def test_inat_unlabeled_json_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match=r"train2019\.json.*missing(.|\n)*inat_comp/tree/master/2019"):
        build_dataset("inat2019", tmp_path, "train")
    with open(tmp_path / "train2018.json", "w") as fh:
        json.dump({"images": [{"id": 1, "file_name": "x.jpg"}]}, fh)  # like test2018.json: no annotations
    with pytest.raises(DatasetLayoutError, match="no 'annotations' list"):
        build_dataset("inat2018", tmp_path, "train")


# ------------------------------------------------------------------------------------------------------ ImageFolder
def test_imagefolder_keeps_train_classes_for_other_splits(tmp_path: Path) -> None:
    for split, classes in (("train", ["ant", "bee", "cat"]), ("test", ["ant", "cat"])):
        for k, c in enumerate(classes):
            _save_jpg(tmp_path / split / c / f"{k}.png", _rand_images(1, k, 8)[0])
    (tmp_path / "train" / "bee" / "notes.txt").write_text("not an image")
    train = build_dataset("imagefolder", tmp_path, "train")
    test = build_dataset("imagefolder", tmp_path, "test")
    assert train.classes == test.classes == ["ant", "bee", "cat"]
    assert train.targets == [0, 1, 2] and test.targets == [0, 2]  # 'cat' stays label 2 without a 'bee' folder
    with pytest.raises(DatasetLayoutError, match="class folders not in the class list"):
        read_imagefolder(tmp_path, "train", classes=["ant"])
    with pytest.raises(DatasetLayoutError, match=r"split folder .*val' does not exist"):
        build_dataset("imagefolder", tmp_path, "val")


def test_unknown_dataset_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        build_dataset("svhn", tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match="does not exist; get the data from"):
        build_dataset("flowers102", tmp_path / "nope", "train")
