"""Out-of-distribution test sets for ImageNet-1k classifiers: ImageNet-A, ImageNet-R, ImageNet-Sketch.

* ImageNet-A / -R (``<root>/<wnid>/*``, 200 WordNet-id folders each): labels are positions in the set's sorted
  200-class list, and a 1000-way model's logits are restricted to those 200 ImageNet-1k classes before the argmax
  (iBOT ``analysis/natural_adv_examples/eval.py`` for IN-A; hendrycks for IN-R). The 200-class lists are timm's
  ``imagenet_{a,r}_synsets.txt`` (shipped in ``timm/data/_info``). A 200-way model is evaluated directly.
* ImageNet-Sketch (``<root>/<wnid>/*``, 1000 classes): plain 1000-way top-1.

Pre-processing: ``Resize(256) + CenterCrop(224)``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache

import torch
from torch import Tensor

from .data import DataLayoutError, ImageListDataset, imagenet_synsets, list_image_folder, timm_info_lines
from .engine import Cell, argmax_predict

__all__ = ["GROUP", "OOD_SETS", "cells", "restricted_predict", "subset_indices", "summarize"]

GROUP = "ood"
OOD_SETS = ("imagenet_a", "imagenet_r", "imagenet_sketch")
_SYNSET_FILES = {"imagenet_a": "imagenet_a_synsets.txt", "imagenet_r": "imagenet_r_synsets.txt"}


@lru_cache(maxsize=None)
def _subset_synsets(name: str) -> tuple[str, ...]:
    synsets = tuple(sorted(timm_info_lines(_SYNSET_FILES[name])))
    if len(synsets) != 200:
        raise RuntimeError(f"timm's {_SYNSET_FILES[name]} has {len(synsets)} entries, expected 200")
    return synsets


def subset_indices(name: str) -> list[int]:
    """ImageNet-1k indices of the 200 classes of ``imagenet_a`` / ``imagenet_r``, in the set's label order."""
    index = {w: i for i, w in enumerate(imagenet_synsets())}
    return [index[w] for w in _subset_synsets(name)]


class restricted_predict:  # noqa: N801 - used like a function
    """argmax over the given ImageNet-1k indices (label = position in ``indices``); a model with exactly
    ``len(indices)`` outputs is taken as already restricted."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)

    def __call__(self, logits: Tensor) -> Tensor:
        if logits.shape[1] == len(self.indices):
            return logits.argmax(dim=1)
        return logits[:, self.indices.to(logits.device)].argmax(dim=1)


def cells(roots: Mapping[str, str | os.PathLike[str]], *, resize: int | None = 256,
          crop: int | None = 224, per_class: int | None = None, limit: int | None = None) -> list[Cell]:
    """One cell per given set, e.g. ``cells({'imagenet_a': '/data/imagenet-a'})``; ``per_class`` / ``limit``: the
    first images of each class / overall (sorted order)."""
    out = []
    for name, root in roots.items():
        if name not in OOD_SETS:
            raise ValueError(f"unknown OOD set {name!r}; choose from {OOD_SETS}")
        if name == "imagenet_sketch":
            images = list_image_folder(root, "imagenet1k", layout_hint="<root>/<wnid>/*.JPEG (1000 classes)")
            images = images.subset(per_class=per_class, limit=limit)
            out.append(Cell(name, ImageListDataset(images, resize, crop), argmax_predict, info={"set": name}))
            continue
        synsets = _subset_synsets(name)
        mapping = {w: i for i, w in enumerate(synsets)}
        images = list_image_folder(root, mapping, layout_hint=f"<root>/<wnid>/*.jpg (the 200 {name} classes)")
        unknown = [c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c)) and c not in mapping]
        if unknown:
            raise DataLayoutError(f"{root}: folders {unknown[:5]} are not {name} classes (WordNet ids of timm's "
                                  f"{_SYNSET_FILES[name]}); remove them or pass the right set's flag")
        images = images.subset(per_class=per_class, limit=limit)
        out.append(Cell(name, ImageListDataset(images, resize, crop), restricted_predict(subset_indices(name)),
                        info={"set": name}))
    return out


def summarize(cells_: Mapping[str, Mapping]) -> dict:
    return {"acc": {k: float(v["acc"]) for k, v in cells_.items()}}
