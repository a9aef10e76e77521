"""Occlusion robustness (PatchDrop, Naseer et al. 2021, "Intriguing Properties of Vision Transformers").

The image is divided into a ``grid`` (14 × 14 by default: 16-px patches at 224²) and a fraction of the patches is
dropped. Information loss (IL) = dropped patches / all patches; the default levels are IL = 0, 0.1, ..., 0.9, i.e.
``floor(i · N / 10)`` patches (0, 19, 39, 58, 78, 98, 117, 137, 156, 176 of 196, as Naseer's ``evaluate.py``).

Modes:

* ``random``: a per-image random permutation of the patches (seeded by the image); the first k are dropped, so the
  dropped sets are nested across IL levels. (Naseer draws one set per batch; per image is independent of batching.)
* ``salient`` / ``non_salient``: patches ranked by the model's own last-block [CLS]->patch attention (mean over heads
  unless ``head`` is given) on the clean image; ``salient`` drops the k most attended patches, ``non_salient`` the k
  least attended (keeping the salient ones). With ``threshold='mass'`` the level is instead Naseer's λ, a fraction
  of attention *mass*: the patches holding the top-λ mass are salient and the IL varies per image (the stored
  ``info_loss`` is its mean, as iBOT's ``analysis/occlusion`` prints).
* ``salient_mask`` / ``non_salient_mask``: the same ranking by a given foreground mask (fraction of foreground pixels
  per patch), for data sets with masks.

Fill (``fill``): ``'black'`` (default) sets dropped pixels to 0 before normalisation, as Naseer et al. (who normalise
after dropping); ``'mean'`` sets them to the normalisation mean (= 0 after normalisation), as iBOT's
``analysis/occlusion/eval.py`` (normalises before dropping) — use it to compare with iBOT's Table 8. Ties in a
ranking are broken by a seeded random order.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .classifier import ImageClassifier, resize_scores
from .corruptions import sample_seed
from .engine import Cell, Predict, argmax_predict

__all__ = [
    "GROUP",
    "IL_LEVELS",
    "MODES",
    "PatchDrop",
    "cell_key",
    "cells",
    "format_level",
    "mask_patch_scores",
    "num_dropped",
    "patch_mask_to_pixels",
    "random_patch_masks",
    "ranked_patch_masks",
    "summarize",
]

GROUP = "occlusion"
IL_LEVELS: tuple[float, ...] = tuple(i / 10 for i in range(10))
MODES = ("random", "salient", "non_salient", "salient_mask", "non_salient_mask")
FILLS = ("black", "mean")


def format_level(level: float) -> str:
    """A level for display, as typed: 0.25 -> ``'0.25'``, 0.5 -> ``'0.5'``, 0 -> ``'0.0'`` (never rounded: ``:.1f``
    would show 0.25 and 0.75 as 0.2 and 0.8)."""
    text = f"{float(level):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def cell_key(mode: str, level: float) -> str:
    """``'random/0.25'``: two decimals (the stored layout), more when the level has more (0.125 -> ``'0.125'``), so
    two levels never share a key."""
    level = float(level)
    return f"{mode}/{level:.2f}" if abs(round(level, 2) - level) < 1e-12 else f"{mode}/{format_level(level)}"


def num_dropped(fraction: float, num_patches: int) -> int:
    """``floor(fraction · N)`` (with a guard against 0.3 · 10 = 2.9999...)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return int(math.floor(fraction * num_patches + 1e-9))


def _edges(size: int, parts: int) -> list[int]:
    return [(i * size) // parts for i in range(parts + 1)]


def patch_mask_to_pixels(mask: Tensor, height: int, width: int) -> Tensor:
    """(B, gh, gw) bool patch mask -> (B, H, W) bool pixel mask; patch ``(i, j)`` covers rows
    ``[floor(i·H/gh), floor((i+1)·H/gh))`` and the same for columns (equal patches when ``gh`` divides ``H``)."""
    gh, gw = mask.shape[-2:]
    rows = torch.diff(torch.tensor(_edges(height, gh), device=mask.device))
    cols = torch.diff(torch.tensor(_edges(width, gw), device=mask.device))
    return mask.repeat_interleave(rows, dim=-2).repeat_interleave(cols, dim=-1)


def _tiebreak_order(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)


def random_patch_masks(seeds: Sequence[int], grid: tuple[int, int], k: int) -> Tensor:
    """(B, gh, gw) masks with exactly ``k`` dropped patches each, the first ``k`` of a per-seed permutation."""
    n = grid[0] * grid[1]
    out = torch.zeros(len(seeds), n, dtype=torch.bool)
    for b, seed in enumerate(seeds):
        out[b, _tiebreak_order(n, seed)[:k]] = True
    return out.view(len(seeds), *grid)


def ranked_patch_masks(scores: Tensor, k: int, *, highest: bool = True, seeds: Sequence[int] | None = None) -> Tensor:
    """Drop the ``k`` patches with the highest (``highest=True``) or lowest scores: (B, gh, gw) -> bool mask.

    Equal scores are ordered by a random permutation drawn from ``seeds[b]`` (raster order without seeds).
    """
    b, gh, gw = scores.shape
    flat = scores.reshape(b, -1).detach().float().cpu()
    out = torch.zeros(b, gh * gw, dtype=torch.bool)
    for i in range(b):
        perm = _tiebreak_order(gh * gw, seeds[i]) if seeds is not None else torch.arange(gh * gw)
        order = perm[torch.argsort(flat[i, perm], descending=highest, stable=True)]
        out[i, order[:k]] = True
    return out.view(b, gh, gw).to(scores.device)


def mass_patch_masks(scores: Tensor, mass: float, *, salient: bool) -> Tensor:
    """Naseer's λ mode: the patches holding the top-``mass`` share of (normalised) attention are salient.

    ``salient=True`` drops them; ``salient=False`` drops all others.
    """
    b, gh, gw = scores.shape
    flat = scores.reshape(b, -1).float()
    flat = flat / flat.sum(dim=1, keepdim=True).clamp_min(1e-12)
    vals, idx = torch.sort(flat, dim=1)  # ascending
    fg_sorted = vals.cumsum(dim=1) > (1.0 - mass)
    fg = torch.zeros_like(fg_sorted).scatter(1, idx, fg_sorted)
    return (fg if salient else ~fg).view(b, gh, gw)


def mask_patch_scores(masks: Tensor, grid: tuple[int, int]) -> Tensor:
    """Fraction of foreground pixels per patch: (B, H, W) masks in [0, 1] -> (B, gh, gw)."""
    h, w = masks.shape[-2:]
    x = masks.float().unsqueeze(1)
    if h % grid[0] == 0 and w % grid[1] == 0:
        return F.avg_pool2d(x, (h // grid[0], w // grid[1])).squeeze(1)
    return F.interpolate(x, size=grid, mode="area").squeeze(1)


class PatchDrop:
    """Batch edit for :func:`robustness.engine.run_cells`: drop patches of a batch of pixel-space images.

    ``attention_cache`` (shared between the cells of one run) keeps each image's attention scores, so the clean
    attention is computed once per image, not once per IL level.
    """

    def __init__(self, mode: str, level: float, *, grid: tuple[int, int] = (14, 14), fill: str = "black",
                 mean: Sequence[float] | None = None, seed: int = 0, head: int | None = None,
                 threshold: str = "fraction", attention_cache: dict[int, Tensor] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if threshold not in ("fraction", "mass"):
            raise ValueError(f"threshold must be 'fraction' or 'mass', got {threshold!r}")
        if threshold == "mass" and mode not in ("salient", "non_salient", "salient_mask", "non_salient_mask"):
            raise ValueError("threshold='mass' applies to the salient / non-salient modes only")
        self.mode, self.level, self.grid, self.fill = mode, float(level), tuple(grid), fill
        self.mean, self.seed, self.head, self.threshold = mean, seed, head, threshold
        self.attention_cache = attention_cache if attention_cache is not None else {}

    def _scores(self, images: Tensor, batch: dict, classifier: ImageClassifier) -> Tensor:
        if self.mode.endswith("_mask"):
            if "mask" not in batch:
                raise ValueError(f"mode {self.mode!r} needs a data set that yields foreground masks")
            return mask_patch_scores(batch["mask"].to(images.device), self.grid)
        idx = [int(i) for i in batch["index"]]
        missing = [j for j, i in enumerate(idx) if i not in self.attention_cache]
        if missing:
            att = resize_scores(classifier.patch_attention(images[missing], self.head), self.grid).cpu()
            for j, a in zip(missing, att):
                self.attention_cache[idx[j]] = a
        return torch.stack([self.attention_cache[i] for i in idx]).to(images.device)

    def masks(self, images: Tensor, batch: dict, classifier: ImageClassifier) -> Tensor:
        """(B, gh, gw) bool: the patches to drop."""
        b = images.shape[0]
        n = self.grid[0] * self.grid[1]
        seeds = [sample_seed(self.seed, "patchdrop", int(i)) for i in batch["index"]]
        if self.mode == "random":
            return random_patch_masks(seeds, self.grid, num_dropped(self.level, n)).to(images.device)
        scores = self._scores(images, batch, classifier)
        salient = self.mode.startswith("salient")
        if self.threshold == "mass":
            if self.level == 0.0:
                return torch.zeros(b, *self.grid, dtype=torch.bool, device=images.device)
            return mass_patch_masks(scores, self.level, salient=salient)
        return ranked_patch_masks(scores, num_dropped(self.level, n), highest=salient, seeds=seeds)

    def __call__(self, images: Tensor, batch: dict, classifier: ImageClassifier) -> tuple[Tensor, dict[str, Tensor]]:
        drop = self.masks(images, batch, classifier)
        pix = patch_mask_to_pixels(drop, images.shape[-2], images.shape[-1]).unsqueeze(1)
        if self.fill == "black":
            fill = torch.zeros(1, 3, 1, 1, device=images.device, dtype=images.dtype)
        else:
            mean = self.mean if self.mean is not None else classifier.mean.flatten().tolist()
            fill = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        out = torch.where(pix, fill, images)
        info_loss = drop.flatten(1).float().mean(dim=1)
        return out, {"info_loss": info_loss}


def cells(dataset: Dataset, modes: Sequence[str] = ("random", "salient", "non_salient"),
          levels: Sequence[float] = IL_LEVELS, *, grid: tuple[int, int] = (14, 14), fill: str = "black",
          seed: int = 0, head: int | None = None, threshold: str = "fraction",
          predict: Predict = argmax_predict) -> list[Cell]:
    """One cell per (mode, level) over ``dataset`` (clean images; masks needed for the ``*_mask`` modes)."""
    cache: dict[int, Tensor] = {}
    out = []
    for mode in modes:
        for level in levels:
            edit = PatchDrop(mode, level, grid=grid, fill=fill, seed=seed, head=head,
                             threshold="fraction" if mode == "random" else threshold, attention_cache=cache)
            out.append(Cell(cell_key(mode, level), dataset, predict, edit, info={"mode": mode, "level": level}))
    return out


def summarize(cells_: dict[str, dict]) -> dict:
    """Curves ``{mode: {"level": [...], "info_loss": [...], "acc": [...]}}`` sorted by level."""
    points: dict[str, list[tuple[float, float, float]]] = {}
    for key, rec in cells_.items():
        mode, level = key.rsplit("/", 1)
        level = float(rec.get("level", level))  # the exact level (the key has two decimals)
        points.setdefault(mode, []).append((level, float(rec.get("info_loss", level)), float(rec["acc"])))
    curves = {}
    for mode, pts in points.items():
        pts.sort()
        curves[mode] = {"level": [p[0] for p in pts], "info_loss": [p[1] for p in pts], "acc": [p[2] for p in pts]}
    return {"curves": curves}
