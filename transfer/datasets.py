"""Readers for the transfer data sets, in their published on-disk layouts. Nothing is downloaded.

Every reader returns a :class:`ClassificationDataset` yielding ``(image, label)`` (a PIL RGB image, or whatever
``transform`` makes of it) and exposing ``classes`` (names, index = label) and ``targets`` (one int per sample).
A missing or malformed layout raises :class:`DatasetLayoutError`, whose message names the files that were looked
for, the expected layout and where the data set is published; a truncated or corrupt annotation / pickle file raises
:class:`DatasetFileError` naming the file. Images are decoded by ``ibot.images.open_rgb`` (16-bit and float images
scaled, not clipped); an unreadable image or a decompression bomb raises ``ibot.images.BadImageError`` naming the file
and the sample. An ImageFolder class folder without images is an error (every class needs at least one image).

=============  ======================================================================================
name           layouts (``root`` may also be the one folder above the layout, as torchvision places it)
=============  ======================================================================================
cifar10        ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (python pickles);
               or ImageFolder ``<split>/<class>/*.png``
cifar100       ``cifar-100-python/{train, test, meta}`` (python pickles, fine labels); or ImageFolder
flowers102     ``flowers-102/{jpg/image_00001.jpg.., imagelabels.mat, setid.mat}``
cars           devkit: ``cars_train/*.jpg, cars_test/*.jpg, devkit/{cars_train_annos.mat,
               cars_test_annos_withlabels.mat, cars_meta.mat}``; or all-in-one ``cars_annos.mat`` +
               ``car_ims/*.jpg``; or ImageFolder
inat2018/2019  ``train{year}.json, val{year}.json`` (COCO-style) + the image tree they reference
               (``train_val{year}/<super>/<id>/<file>.jpg``); optional ``categories.json`` for names
imagefolder    ``<split>/<class>/*.<img ext>``; without ``test/``, the one of ``val/`` / ``validation/`` that
               exists is the test split (:func:`resolve_imagefolder_splits`)
=============  ======================================================================================
"""
from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ibot.images import BadImageError, open_rgb

__all__ = [
    "DATASETS",
    "ClassificationDataset",
    "DatasetFileError",
    "DatasetLayoutError",
    "SplitNotFoundError",
    "FileImages",
    "ArrayImages",
    "build_dataset",
    "check_root",
    "read_cifar",
    "read_flowers102",
    "read_cars",
    "read_inat",
    "read_imagefolder",
    "resolve_imagefolder_splits",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

SOURCES = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar.html ('CIFAR-10 python version', cifar-10-python.tar.gz)",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar.html ('CIFAR-100 python version', cifar-100-python.tar.gz)",
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat)",
    "cars": "the Stanford Cars release (ai.stanford.edu/~jkrause/cars/car_dataset.html, now offline; use a mirror "
            "that keeps the devkit .mat files, e.g. the one torchvision's StanfordCars documents)",
    "inat2018": "https://github.com/visipedia/inat_comp/tree/master/2018 (train_val2018.tar.gz, train2018.json, "
                "val2018.json, categories.json)",
    "inat2019": "https://github.com/visipedia/inat_comp/tree/master/2019 (train_val2019.tar.gz, train2019.json, "
                "val2019.json)",
    "imagefolder": "your own data, one folder per class",
}


class DatasetLayoutError(FileNotFoundError):
    """The data set is not where it was looked for, or not in the expected layout."""


class SplitNotFoundError(DatasetLayoutError):
    """An ImageFolder split folder (``data.train_split`` / ``data.test_split``) is not under the data root; the
    one-line message names the folders that are there and the option that picks another."""


class DatasetFileError(ValueError):
    """A file of the data set is there but truncated or corrupt; the message names it and how to replace it."""


def _layout_error(name: str, root: Path, problem: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(
        f"{name}: {problem}\n  root: {root}\n  expected layout:\n{layout}\n"
        f"  where to get it: {SOURCES[name]}\n  (nothing is downloaded; unpack the files under the root)"
    )


# ------------------------------------------------------------------------------------------------ dataset classes
class ClassificationDataset(Dataset):
    """Base class: ``classes`` (list of names), ``targets`` (list of int), optional ``transform``."""

    classes: list[str]
    targets: list[int]
    transform: Callable[[Image.Image], Any] | None

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.load(index)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class FileImages(ClassificationDataset):
    """Images stored as files: ``samples`` = [(path, label)], decoded by ``ibot.images.open_rgb`` (8-bit RGB).

    A missing file raises :class:`DatasetLayoutError`, an unreadable one ``ibot.images.BadImageError``; both name the
    file and the sample index."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Callable | None = None) -> None:
        self.samples = [(str(p), int(t)) for p, t in samples]
        self.targets = [t for _, t in self.samples]
        self.classes = list(classes)
        self.transform = transform

    def load(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            return open_rgb(path)
        except BadImageError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise DatasetLayoutError(f"image listed by the data set is missing: '{path}' (sample {index}); "
                                         "restore it, or check the data root / layout") from exc
            raise BadImageError(f"{exc} (sample {index} of {len(self)}); replace the file with a good copy, or "
                                "remove it from the data set") from exc


class ArrayImages(ClassificationDataset):
    """Images held in memory: uint8 array (N, H, W, 3) (the CIFAR pickles)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable | None = None) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.transform = transform

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


# ------------------------------------------------------------------------------------------------------ ImageFolder
def _find_dir(root: Path, candidates: Sequence[str], marker: str) -> Path | None:
    """First of ``root/<c>`` (``''`` = root itself) that contains ``marker``."""
    for c in candidates:
        d = root / c if c else root
        if (d / marker).exists():
            return d
    return None


def _loadmat(path: Path, name: str, **kwargs: Any) -> dict[str, Any]:
    """``scipy.io.loadmat`` with a truncated / foreign file named in the error."""
    from scipy.io import loadmat

    try:
        return loadmat(path, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy's parser fails on a cut file in many ways; re-raised naming it
        raise DatasetFileError(f"{name}: '{path}' cannot be read as a MATLAB file ({type(exc).__name__}: {exc}); it is "
                               f"truncated or not the published file: re-download it from {SOURCES[name]}") from exc


def _load_json(path: Path, name: str) -> Any:
    """A JSON annotation file, with a truncated one named in the error."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFileError(f"{name}: '{path}' is not valid JSON ({exc}); it is truncated or corrupt: re-download "
                               f"it from {SOURCES[name]}") from exc


IMAGEFOLDER_LAYOUT = "    <root>/<split>/<class name>/<image>.{jpg,png,...}   (split = train | test | ...)"


def read_imagefolder(root: str | os.PathLike, split: str, transform: Callable | None = None,
                     name: str = "imagefolder", classes: Sequence[str] | None = None,
                     allow_empty_classes: bool = False, train_split: str = "train") -> FileImages:
    """``<root>/<split>/<class>/*.<ext>``; classes sorted by folder name.

    The class list of ``<root>/<train_split>`` (when it exists) is used for every split, so a split missing a class
    folder keeps the same label indices; ``classes`` overrides it. Every class folder present must hold at least
    one image (an empty one is a failed copy or extraction, and would silently add a class nothing is ever labelled
    with): :class:`DatasetLayoutError` naming the folder, unless ``allow_empty_classes``.
    """
    root = Path(root)
    if classes is None and split != train_split and (root / train_split).is_dir():
        classes = sorted(d.name for d in (root / train_split).iterdir() if d.is_dir()) or None
    split_dir = root / split
    layout = IMAGEFOLDER_LAYOUT if name == "imagefolder" else IMAGEFOLDER_LAYOUT + f"\n  or the {name} layouts above"
    if not split_dir.is_dir():
        raise _layout_error(name, root, f"split folder '{split_dir}' does not exist", layout)
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not found:
        raise _layout_error(name, root, f"'{split_dir}' has no class folders", layout)
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise _layout_error(name, root, f"'{split_dir}' has class folders not in the class list: {unknown[:5]}",
                            layout)
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in found:
        before = len(samples)
        for dirpath, _, files in sorted(os.walk(split_dir / c, followlinks=True)):
            samples += [(os.path.join(dirpath, f), index[c]) for f in sorted(files)
                        if f.lower().endswith(IMG_EXTENSIONS)]
        if len(samples) == before and not allow_empty_classes:
            exts = ", ".join(IMG_EXTENSIONS)
            raise _layout_error(name, root, f"class folder '{split_dir / c}' has no images ({exts}); every class "
                                "needs at least one image: put its images there, or delete the folder"
                                + (" (that removes the class)" if split == "train" else ""), layout)
    if not samples:
        raise _layout_error(name, root, f"no images ({', '.join(IMG_EXTENSIONS)}) under '{split_dir}'", layout)
    return FileImages(samples, classes, transform)


#: Folder names a test split falls back to when the default ``test/`` is missing (exactly one must exist).
VAL_SPLIT_NAMES = ("val", "validation")


def _folders(root: Path) -> str:
    """The sub-folders of ``root`` for an error message: ``'train/', 'val/'`` or ``none``."""
    names = sorted(d.name + "/" for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    shown = ", ".join(repr(n) for n in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return shown or "none"


def resolve_imagefolder_splits(root: str | os.PathLike, train_split: str = "train", test_split: str = "test",
                               name: str = "imagefolder") -> tuple[str, str, list[str]]:
    """The split folders an ImageFolder run reads: ``(train_split, test_split, notes)``.

    A configured split folder that exists is used as is. When the test split is the default ``test`` and
    ``<root>/test`` is missing, the one of ``val/`` / ``validation/`` that exists is used instead, with a note saying
    so (a train / val ImageFolder, as ImageNet and most custom data sets ship). Anything else missing raises
    :class:`SplitNotFoundError`, one line naming the folders under the root and the option to pass.
    """
    root = Path(root)
    notes: list[str] = []
    if not (root / train_split).is_dir():
        raise SplitNotFoundError(
            f"{name}: no train split folder '{train_split}/' under '{root}' (folders there: {_folders(root)}); "
            f"pass --train-split NAME (--set data.train_split=NAME), or point --data-root at the folder that holds "
            f"the split folders (<root>/<split>/<class>/<image>)")
    if (root / test_split).is_dir():
        return train_split, test_split, notes
    found = [v for v in VAL_SPLIT_NAMES if (root / v).is_dir()]
    if test_split == "test" and len(found) == 1:
        notes.append(f"{name}: no '{test_split}/' folder under '{root}': testing on '{found[0]}/' instead (data."
                     f"test_split = '{found[0]}'; pass --test-split NAME to choose another folder)")
        return train_split, found[0], notes
    why = (f"both {' and '.join(repr(v + '/') for v in found)} exist, so neither is picked for you; "
           if test_split == "test" and len(found) > 1 else "")
    raise SplitNotFoundError(
        f"{name}: no test split folder '{test_split}/' under '{root}' (folders there: {_folders(root)}); {why}"
        f"pass --test-split NAME (--set data.test_split=NAME)")


# ------------------------------------------------------------------------------------------------------------ CIFAR
class _RefusedPickle(pickle.UnpicklingError):
    """A CIFAR pickle that refers to something other than arrays and builtins (it could run code)."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR files hold (dicts, lists, strings, numpy arrays): a CIFAR pickle from an
    untrusted mirror cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise _RefusedPickle(f"CIFAR pickle refers to {module}.{name}, which a CIFAR batch never holds")
        return super().find_class(module, name)


def _unpickle(path: Path, name: str) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys; a truncated or foreign file is an error naming it."""
    fix = f"re-download and unpack {SOURCES[name]}, or check that --data-root points at the right folder"
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
    except _RefusedPickle as exc:  # keeps its type (an UnpicklingError), names the file
        raise _RefusedPickle(f"'{path}': {exc}; {fix}") from exc
    except pickle.UnpicklingError as exc:
        raise DatasetFileError(f"{name}: '{path}' ({path.stat().st_size} bytes) is truncated or corrupt ({exc}); "
                               f"{fix}") from exc
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        raise DatasetFileError(f"{name}: '{path}' ({path.stat().st_size} bytes) is truncated or not a CIFAR pickle "
                               f"({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(obj, dict):
        raise DatasetFileError(f"{name}: '{path}' holds a {type(obj).__name__}, not the dict of a CIFAR pickle; {fix}")
    # Python-2 pickles give str keys with latin1 decoding; files re-pickled from bytes keys give bytes.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key="labels", names_key="label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key="fine_labels", names_key="fine_label_names"),
}


def _cifar_layout(name: str) -> str:
    spec = _CIFAR[name]
    files = ", ".join(spec["train"] + spec["test"] + [spec["meta"]])
    return (f"    <root>/{spec['folder']}/{{{files}}}   (python pickle version)\n"
            f"  or {IMAGEFOLDER_LAYOUT.strip()}")


def read_cifar(root: str | os.PathLike, split: str, transform: Callable | None = None, name: str = "cifar10",
               layout: str = "auto") -> ClassificationDataset:
    """CIFAR-10/100 from the python pickles (``layout='pickle'``) or an ImageFolder (``'imagefolder'``)."""
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {sorted(_CIFAR)}, got {name!r}")
    spec = _CIFAR[name]
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
    folder = _find_dir(root, (spec["folder"], ""), spec["meta"])
    if layout == "auto":
        layout = "pickle" if folder is not None else "imagefolder" if (root / split).is_dir() else ""
    if layout == "imagefolder":
        return read_imagefolder(root, split, transform, name=name)
    if layout != "pickle" or folder is None:
        raise _layout_error(name, root, f"found neither '{spec['folder']}/{spec['meta']}' nor '{split}/'",
                            _cifar_layout(name))
    images, labels = [], []
    fix = f"re-download and unpack {SOURCES[name]}"
    for fname in spec[split]:
        path = folder / fname
        if not path.exists():
            raise _layout_error(name, root, f"batch file '{path}' is missing", _cifar_layout(name))
        batch = _unpickle(path, name)
        if "data" not in batch or spec["label_key"] not in batch:
            raise _layout_error(name, root, f"'{path}' lacks 'data' / '{spec['label_key']}' "
                                f"(keys: {sorted(batch)})", _cifar_layout(name))
        data = np.asarray(batch["data"])
        if (data.dtype.kind not in "ui" or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
                or (data.size and (data.min() < 0 or data.max() > 255))):
            raise DatasetFileError(f"{name}: '{path}' key 'data' is {data.dtype} {data.shape}, not rows of 3072 "
                                   f"values in 0..255 (32 x 32 x 3); {fix}")
        batch_labels = [int(t) for t in batch[spec["label_key"]]]
        if len(batch_labels) != len(data):
            raise DatasetFileError(f"{name}: '{path}' has {len(data)} images but {len(batch_labels)} "
                                   f"'{spec['label_key']}'; {fix}")
        images.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        labels += batch_labels
    meta_path = folder / spec["meta"]
    meta = _unpickle(meta_path, name)
    if spec["names_key"] not in meta:
        raise DatasetFileError(f"{name}: '{meta_path}' has no '{spec['names_key']}' (keys: {sorted(meta)}); {fix}")
    classes = [str(c) for c in meta[spec["names_key"]]]
    if labels and not 0 <= min(labels) <= max(labels) < len(classes):
        raise DatasetFileError(f"{name}: the '{split}' labels run {min(labels)}..{max(labels)} but '{meta_path}' names "
                               f"{len(classes)} classes; {fix}")
    # Stored channel-major (N, 3072) = R plane, G plane, B plane.
    return ArrayImages(np.concatenate(images).transpose(0, 2, 3, 1).copy(), labels, classes, transform)


# ------------------------------------------------------------------------------------------------------ Flowers-102
FLOWERS_LAYOUT = ("    <root>/jpg/image_00001.jpg ... image_08189.jpg\n"
                  "    <root>/imagelabels.mat   ('labels': 1..102, one per image)\n"
                  "    <root>/setid.mat         ('trnid', 'valid', 'tstid': 1-based image ids)\n"
                  "  (<root>/flowers-102/... as torchvision's Flowers102 places it works too)")
#: iBOT / DeiT train on the official train + val ids and test on the test ids.
FLOWERS_SPLITS = {"train": ("trnid", "valid"), "test": ("tstid",), "trnid": ("trnid",), "valid": ("valid",)}


def read_flowers102(root: str | os.PathLike, split: str, transform: Callable | None = None) -> FileImages:
    """Oxford Flowers-102: ``train`` = trnid + valid (2,040 images, as iBOT), ``test`` = tstid (6,149)."""
    root = Path(root)
    base = _find_dir(root, ("", "flowers-102"), "imagelabels.mat")
    if base is None or not (base / "setid.mat").exists():
        raise _layout_error("flowers102", root, "imagelabels.mat / setid.mat not found", FLOWERS_LAYOUT)
    if split not in FLOWERS_SPLITS:
        raise ValueError(f"flowers102: split must be one of {sorted(FLOWERS_SPLITS)}, got {split!r}")
    labels_mat = _loadmat(base / "imagelabels.mat", "flowers102")
    setid = _loadmat(base / "setid.mat", "flowers102")
    for path, mat, keys in ((base / "imagelabels.mat", labels_mat, ("labels",)),
                            (base / "setid.mat", setid, FLOWERS_SPLITS[split])):
        missing = [k for k in keys if k not in mat]
        if missing:
            raise DatasetFileError(f"flowers102: '{path}' has no {missing} entry; re-download it from "
                                   f"{SOURCES['flowers102']}")
    labels = np.asarray(labels_mat["labels"]).reshape(-1)
    ids = np.concatenate([np.asarray(setid[k]).reshape(-1) for k in FLOWERS_SPLITS[split]])
    if ids.min() < 1 or ids.max() > len(labels):
        raise _layout_error("flowers102", root, f"setid.mat ids outside 1..{len(labels)}", FLOWERS_LAYOUT)
    samples = [(str(base / "jpg" / f"image_{i:05d}.jpg"), int(labels[i - 1]) - 1) for i in sorted(ids.tolist())]
    missing = [p for p, _ in samples[:1] if not os.path.exists(p)]
    if missing:
        raise _layout_error("flowers102", root, f"image '{missing[0]}' is missing", FLOWERS_LAYOUT)
    return FileImages(samples, [str(c) for c in range(1, int(labels.max()) + 1)], transform)


# ---------------------------------------------------------------------------------------------------- Stanford Cars
CARS_LAYOUT = ("    devkit:     <root>/cars_train/*.jpg, <root>/cars_test/*.jpg,\n"
               "                <root>/devkit/{cars_train_annos.mat, cars_test_annos_withlabels.mat, cars_meta.mat}\n"
               "    all-in-one: <root>/cars_annos.mat (relative_im_path, class, test) + <root>/car_ims/*.jpg\n"
               "  or " + IMAGEFOLDER_LAYOUT.strip() + "\n"
               "  (<root>/stanford_cars/... as torchvision's StanfordCars places it works too)")


def _struct_records(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise _layout_error("cars", path.parent, f"'{path}' has no '{key}' entry", CARS_LAYOUT)
    return np.atleast_1d(mat[key])


def _names(values: Any) -> list[str]:
    return [str(v) for v in np.atleast_1d(values)]


def read_cars(root: str | os.PathLike, split: str, transform: Callable | None = None,
              layout: str = "auto") -> FileImages:
    """Stanford Cars (196 classes; 8,144 train / 8,041 test) from devkit annotations or an ImageFolder."""
    if split not in ("train", "test"):
        raise ValueError(f"cars: split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    devkit_base = _find_dir(root, ("", "stanford_cars"), "devkit/cars_train_annos.mat")
    annos_base = _find_dir(root, ("", "stanford_cars"), "cars_annos.mat")
    if layout == "auto":
        layout = ("devkit" if devkit_base is not None else "annos" if annos_base is not None
                  else "imagefolder" if (root / split).is_dir() else "")
    if layout == "imagefolder":
        return read_imagefolder(root, split, transform, name="cars")
    if layout == "devkit" and devkit_base is not None:
        # the test labels were released later, as cars_test_annos_withlabels.mat
        ann_name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        ann = devkit_base / "devkit" / ann_name
        if not ann.exists():
            raise _layout_error("cars", root, f"'{ann}' is missing", CARS_LAYOUT)
        recs = _struct_records(_loadmat(ann, "cars", squeeze_me=True), "annotations", ann)
        img_dir = devkit_base / f"cars_{split}"
        samples = [(str(img_dir / str(r["fname"])), int(r["class"]) - 1) for r in recs]
        meta = devkit_base / "devkit" / "cars_meta.mat"
        num = max(t for _, t in samples) + 1
        classes = (_names(_struct_records(_loadmat(meta, "cars", squeeze_me=True), "class_names", meta))
                   if meta.exists()
                   else [str(i + 1) for i in range(num)])
    elif layout == "annos" and annos_base is not None:
        ann = annos_base / "cars_annos.mat"
        mat = _loadmat(ann, "cars", squeeze_me=True)
        recs = _struct_records(mat, "annotations", ann)
        want = 1 if split == "test" else 0
        samples = [(str(annos_base / str(r["relative_im_path"])), int(r["class"]) - 1)
                   for r in recs if int(r["test"]) == want]
        num = max(int(r["class"]) for r in recs)
        classes = _names(mat["class_names"]) if "class_names" in mat else [str(i + 1) for i in range(num)]
    else:
        raise _layout_error("cars", root, f"no '{layout}' layout found" if layout else "no known layout found",
                            CARS_LAYOUT)
    if not samples:
        raise _layout_error("cars", root, f"the annotations list no '{split}' images", CARS_LAYOUT)
    if not os.path.exists(samples[0][0]):
        raise _layout_error("cars", root, f"image '{samples[0][0]}' is missing", CARS_LAYOUT)
    return FileImages(samples, classes, transform)


# ------------------------------------------------------------------------------------------------------ iNaturalist
def _inat_layout(year: int) -> str:
    return (f"    <root>/train{year}.json, <root>/val{year}.json   (COCO-style: images, annotations, categories)\n"
            f"    <root>/train_val{year}/<supercategory>/<category id>/<image>.jpg   (the 'file_name' paths)\n"
            f"    <root>/categories.json   (optional: category names)")


def _read_json(path: Path, year: int) -> dict:
    name = f"inat{year}"
    if not path.exists():
        raise _layout_error(name, path.parent, f"annotation file '{path}' is missing", _inat_layout(year))
    data = _load_json(path, name)
    if not isinstance(data, dict):
        raise DatasetFileError(f"{name}: '{path}' holds a JSON {type(data).__name__}, not the COCO-style dict of "
                               f"the release; re-download it from {SOURCES[name]}")
    for key in ("images", "annotations"):
        if key not in data:
            raise _layout_error(name, path.parent, f"'{path}' has no '{key}' list (the test json is unlabeled and "
                                "cannot be used)", _inat_layout(year))
    return data


def read_inat(root: str | os.PathLike, split: str, transform: Callable | None = None, year: int = 2018) -> FileImages:
    """iNaturalist 2018 (8,142 classes) / 2019 (1,010): ``train`` = train{year}.json, ``test`` = val{year}.json.

    Labels are category ids mapped to 0..C-1 in ascending id order, from the train json (the ids of both
    releases already run 0..C-1, so the map is the identity there); names from ``categories.json`` when present.
    """
    if year not in (2018, 2019):
        raise ValueError(f"iNaturalist year must be 2018 or 2019, got {year}")
    if split not in ("train", "test", "val"):
        raise ValueError(f"inat{year}: split must be 'train' or 'test' (= val{year}.json), got {split!r}")
    root = Path(root)
    train = _read_json(root / f"train{year}.json", year)
    data = train if split == "train" else _read_json(root / f"val{year}.json", year)
    cats = train.get("categories") or []
    ids = sorted({int(c["id"]) for c in cats} or {int(a["category_id"]) for a in train["annotations"]})
    label_of = {cid: i for i, cid in enumerate(ids)}
    names_by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
    if (root / "categories.json").exists():
        names_by_id.update({int(c["id"]): str(c.get("name", c["id"]))
                            for c in _load_json(root / "categories.json", f"inat{year}")})
    files = {int(im["id"]): im["file_name"] for im in data["images"]}
    samples = []
    for a in data["annotations"]:
        cid = int(a["category_id"])
        if cid not in label_of:
            raise _layout_error(f"inat{year}", root, f"category id {cid} of image {a['image_id']} is not among the "
                                f"train{year}.json categories", _inat_layout(year))
        samples.append((str(root / files[int(a["image_id"])]), label_of[cid]))
    if not samples:
        raise _layout_error(f"inat{year}", root, f"no annotated images for split '{split}'", _inat_layout(year))
    if not os.path.exists(samples[0][0]):
        raise _layout_error(f"inat{year}", root, f"image '{samples[0][0]}' is missing", _inat_layout(year))
    return FileImages(samples, [names_by_id.get(i, str(i)) for i in ids], transform)


# ------------------------------------------------------------------------------------------------------- dispatcher
DATASETS: dict[str, Callable[..., ClassificationDataset]] = {
    "cifar10": lambda root, split, transform, layout: read_cifar(root, split, transform, "cifar10", layout),
    "cifar100": lambda root, split, transform, layout: read_cifar(root, split, transform, "cifar100", layout),
    "flowers102": lambda root, split, transform, layout: read_flowers102(root, split, transform),
    "cars": lambda root, split, transform, layout: read_cars(root, split, transform, layout),
    "inat2018": lambda root, split, transform, layout: read_inat(root, split, transform, 2018),
    "inat2019": lambda root, split, transform, layout: read_inat(root, split, transform, 2019),
    "imagefolder": lambda root, split, transform, layout, train_split="train": read_imagefolder(
        root, split, transform, train_split=train_split),
}


def check_root(name: str, root: str | os.PathLike | None) -> Path:
    """The data root of data set ``name`` as a path; raises if it is unset or does not exist (config key
    ``data.root``, option ``--data-root``)."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r} (config key 'data.name'); choose from {sorted(DATASETS)}")
    if root is None:
        raise ValueError(f"{name}: no data root given (config key 'data.root': pass --data-root); expected under it: "
                         f"{SOURCES[name]}")
    if not Path(root).exists():
        raise DatasetLayoutError(f"{name}: data root '{root}' does not exist; get the data from {SOURCES[name]}, or "
                                 "fix --data-root (config key 'data.root')")
    return Path(root)


def build_dataset(name: str, root: str | os.PathLike | None, split: str, transform: Callable | None = None,
                  layout: str = "auto", train_split: str = "train") -> ClassificationDataset:
    """Reader dispatch: ``build_dataset('cifar10', '/data/cifar', 'train', tf)``; see the module table.
    ``train_split``: the ImageFolder split whose class folders fix the labels of every split."""
    check_root(name, root)
    if name == "imagefolder":
        return DATASETS[name](root, split, transform, layout, train_split=train_split)
    return DATASETS[name](root, split, transform, layout)
