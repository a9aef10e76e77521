"""Frozen-backbone features of the k-NN and linear protocols: distributed extraction and an on-disk cache.

What a feature is (which blocks, which tokens) is :class:`ibot.features.FeatureSpec` / ``spec_features``, the one
definition the suite shares with the robustness classifiers; several specs share one backbone pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ibot.checkpoint import CorruptCheckpointError, load_file, save_file
from ibot.distributed import gather_rows
from ibot.features import FeatureSpec, spec_features
from ibot.vit import iBOTViT
from transfer.runtime import autocast

__all__ = ["extract_features", "cached_features", "cache_key"]

log = logging.getLogger(__name__)

#: ``compute()`` of :func:`cached_features`: per-spec features (N, F_s) and labels (N,).
FeatureFn = Callable[[], tuple[list[Tensor], Tensor]]


@torch.no_grad()
def extract_features(model: iBOTViT, loader: DataLoader, specs: list[FeatureSpec], device: torch.device,
                     amp: bool, progress: bool = True, desc: str = "features") -> tuple[list[Tensor], Tensor]:
    """Features of a whole (sharded) data set, gathered on every process.

    ``loader`` yields (images, labels, indices) (``transfer.loaders.eval_loader``). Returns one float32 CPU
    tensor (N, F_spec) per spec, in data-set order, and the labels (N,).
    """
    model.eval()
    n = len(loader.dataset)  # type: ignore[arg-type]
    rows: list[list[Tensor]] = [[] for _ in specs]
    labels, indices = [], []
    for images, y, idx in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with autocast(device, amp):
            feats = spec_features(model, images.to(device, non_blocking=True), specs)
        for r, f in zip(rows, feats):
            r.append(f.float())
        labels.append(y.to(device))
        indices.append(idx.to(device))
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    feats_out = []
    for spec, r in zip(specs, rows):
        local = torch.cat(r) if r else torch.zeros(0, spec.dim(model.embed_dim), device=device)
        feats_out.append(gather_rows(local, index, n).cpu())
    local_y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    return feats_out, gather_rows(local_y, index, n).cpu()


def cache_key(**parts: Any) -> str:
    """Hash of everything that determines the features (checkpoint hash, model shape, data, transform, spec)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def cached_features(cache_dir: str | os.PathLike | None, key: str, compute: FeatureFn, is_main: bool
                    ) -> tuple[list[Tensor], Tensor, bool]:
    """``compute()`` -> (features, labels), or the copy stored under ``cache_dir/<key>.pth``.

    Returns (features, labels, loaded_from_cache). Only the main process writes (atomically); every process
    computes when the file is absent, because extraction is a collective. A cache file that cannot be read (truncated
    by a copy) is recomputed and replaced, with a warning naming it.
    """
    path = Path(cache_dir) / f"{key}.pth" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            blob = load_file(path)
            log.info("features loaded from cache '%s'", path)
            return list(blob["features"]), blob["labels"], True
        except (CorruptCheckpointError, KeyError, TypeError) as exc:
            log.warning("feature cache '%s' is unreadable (%s): recomputing and replacing it", path, exc)
    feats, labels = compute()
    if path is not None and is_main:
        save_file({"features": feats, "labels": labels}, path)
        log.info("features cached at '%s'", path)
    return feats, labels, False
