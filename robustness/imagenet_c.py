"""ImageNet-C: top-1 error per corruption × severity, CE / mCE / relative mCE (see :mod:`robustness.metrics`).

Two sources, one cell layout (``clean``, ``<corruption>/<severity>``):

* the released folders ``<root>/<corruption>/<severity>/<wnid>/*.JPEG`` (:func:`released_cells`; evaluated with
  ``CenterCrop(224)`` only, as hendrycks' ``test.py``; clean error from an ImageNet val folder with ``Resize(256) +
  CenterCrop(224)``);
* corruptions computed on the fly for any image folder (:func:`on_the_fly_cells`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from torch.utils.data import Dataset

from .corruptions import CorruptedImages, released_imagenet_c
from .data import ImageList, ImageListDataset, list_image_folder
from .engine import Cell, Predict, argmax_predict
from .metrics import (
    ALEXNET_CLEAN_ERR,
    ALEXNET_ERR,
    ALL_CORRUPTIONS,
    BENCHMARK_CORRUPTIONS,
    SEVERITIES,
    imagenet_c_summary,
)

__all__ = ["DATASETS", "GROUP", "baseline_from_cells", "cell_key", "dataset_of", "is_imagenet_folder",
           "on_the_fly_cells", "released_cells", "summarize"]

GROUP = "imagenet_c"
#: What ``--dataset`` records in the group's configuration: CE / mCE (normalised by AlexNet's ImageNet-C errors)
#: mean something only for ``imagenet``.
DATASETS = ("imagenet", "other")


def cell_key(corruption: str | None, severity: int) -> str:
    return "clean" if severity == 0 else f"{corruption}/{severity}"


def is_imagenet_folder(images: ImageList) -> bool:
    """Whether every class folder of ``images`` is an ImageNet-1k WordNet id (ImageNet val or a subset of it)."""
    from .data import imagenet_synsets

    return bool(images.classes) and set(images.classes) <= set(imagenet_synsets())


def dataset_of(config: Mapping) -> str | None:
    """The data set of an ``imagenet_c`` group: its ``dataset`` entry; for files written before it was recorded,
    ``'imagenet'`` when the group read the released ImageNet-C folders or an ImageNet-1k label space, else ``None``
    (unknown)."""
    if config.get("dataset") in DATASETS:
        return config["dataset"]
    if config.get("released") or config.get("label_space") == "imagenet1k":
        return "imagenet"
    return None


def _check(corruptions: Sequence[str], severities: Sequence[int]) -> None:
    bad = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruptions {bad}; choose from {list(ALL_CORRUPTIONS)}")
    if not set(severities) <= set(SEVERITIES):
        raise ValueError(f"severities must be in 1..5, got {list(severities)}")


def on_the_fly_cells(images: ImageList, corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
                     severities: Sequence[int] = SEVERITIES, *, resize: int | None = 256, crop: int | None = 224,
                     seed: int = 0, jpeg_quality: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                     predict: Predict = argmax_predict) -> list[Cell]:
    """Clean + every (corruption, severity) cell of ``images``, corrupted in data-loader workers."""
    _check(corruptions, severities)
    kw = dict(resize=resize, crop=crop, seed=seed, jpeg_quality=jpeg_quality, cache_dir=cache_dir)
    cells = [Cell("clean", CorruptedImages(images, None, 0, **kw), predict, info={"severity": 0})]
    for c in corruptions:
        for s in severities:
            cells.append(Cell(cell_key(c, s), CorruptedImages(images, c, s, **kw), predict,
                              info={"corruption": c, "severity": s}))
    return cells


def released_cells(root: str | os.PathLike[str], clean_root: str | os.PathLike[str] | None = None,
                   corruptions: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES, *,
                   crop: int | None = 224, clean_resize: int | None = 256, label_space: str = "auto",
                   predict: Predict = argmax_predict) -> list[Cell]:
    """Cells over the released ImageNet-C folders (the corruptions found under ``root`` by default)."""
    if corruptions is None:
        corruptions = [c for c in ALL_CORRUPTIONS if os.path.isdir(os.path.join(root, c))]
        if not corruptions:
            raise FileNotFoundError(f"no ImageNet-C corruption folders under {root} "
                                    "(expected <root>/<corruption>/<severity>/<wnid>/*.JPEG)")
    _check(corruptions, severities)
    cells = []
    if clean_root is not None:
        clean: Dataset = ImageListDataset(list_image_folder(clean_root, label_space), clean_resize, crop)
        cells.append(Cell("clean", clean, predict, info={"severity": 0}))
    for c in corruptions:
        for s in severities:
            cells.append(Cell(cell_key(c, s), released_imagenet_c(root, c, s, crop=crop, label_space=label_space),
                              predict, info={"corruption": c, "severity": s}))
    return cells


def errors_from_cells(cells: Mapping[str, Mapping]) -> tuple[dict[str, dict[int, float]], float | None]:
    errors: dict[str, dict[int, float]] = {}
    for key, rec in cells.items():
        if key == "clean":
            continue
        c, s = key.rsplit("/", 1)
        errors.setdefault(c, {})[int(s)] = float(rec["err"])
    clean = cells.get("clean")
    return errors, (float(clean["err"]) if clean else None)


def baseline_from_cells(cells: Mapping[str, Mapping]) -> tuple[dict[str, float], float | None]:
    """Per-corruption mean errors and clean error of a baseline model (e.g. AlexNet) evaluated in this harness."""
    errors, clean = errors_from_cells(cells)
    return {c: sum(v.values()) / len(v) for c, v in errors.items() if v}, clean


def summarize(cells: Mapping[str, Mapping], *, baseline: Mapping[str, float] | None = None,
              baseline_clean_err: float | None = None) -> dict:
    """mCE & co. of one model's ``imagenet_c`` cells; AlexNet-normalised unless a ``baseline`` is given."""
    errors, clean = errors_from_cells(cells)
    if baseline is None:
        baseline, baseline_clean_err = ALEXNET_ERR, ALEXNET_CLEAN_ERR
    out = imagenet_c_summary(errors, clean, baseline=baseline, baseline_clean_err=baseline_clean_err)
    out["errors"] = {c: {str(s): e for s, e in sorted(v.items())} for c, v in errors.items()}
    out["baseline"] = "AlexNet (hendrycks/robustness via AugMix)" if baseline is ALEXNET_ERR else "custom"
    out["benchmark_order"] = [c for c in BENCHMARK_CORRUPTIONS if c in errors]
    return out
