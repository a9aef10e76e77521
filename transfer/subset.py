"""Class-balanced train/test subsets of an ImageFolder, written as a new ImageFolder of symbolic links.

For smoke runs and tests: e.g. the 10,000-image CIFAR-10 test folder split into disjoint small ``train/`` and
``test/`` folders that every ImageFolder-capable reader accepts.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from transfer.datasets import IMG_EXTENSIONS, DatasetLayoutError

__all__ = ["make_imagefolder_subset"]


def make_imagefolder_subset(src: str | os.PathLike, dst: str | os.PathLike, train_per_class: int,
                            test_per_class: int, seed: int = 0, copy: bool = False) -> dict[str, int]:
    """Link ``train_per_class`` + ``test_per_class`` disjoint images of every class of ``src/<class>/`` into
    ``dst/train/<class>/`` and ``dst/test/<class>/`` (copies with ``copy=True``). Returns image counts per split.

    The choice is a seeded shuffle of each class's sorted file list, so the same arguments give the same subset.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise DatasetLayoutError(f"source ImageFolder '{src}' does not exist (expected <src>/<class>/<image>)")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    if not classes:
        raise DatasetLayoutError(f"'{src}' has no class folders (expected <src>/<class>/<image>)")
    rng = random.Random(seed)
    counts = {"train": 0, "test": 0}
    for c in classes:
        files = sorted(f for f in os.listdir(src / c) if f.lower().endswith(IMG_EXTENSIONS))
        need = train_per_class + test_per_class
        if len(files) < need:
            raise DatasetLayoutError(f"class '{c}' in '{src}' has {len(files)} images, {need} requested")
        rng.shuffle(files)
        for split, chosen in (("train", files[:train_per_class]), ("test", files[train_per_class:need])):
            out = dst / split / c
            out.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                target = out / f
                if target.exists() or target.is_symlink():
                    target.unlink()
                if copy:
                    shutil.copy2(src / c / f, target)
                else:
                    target.symlink_to((src / c / f).resolve())
            counts[split] += len(chosen)
    return counts
