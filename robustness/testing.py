"""Helpers for the robustness tests: the shared real-data folder and a tiny ViT classifier."""
from __future__ import annotations

from pathlib import Path

import torch

from ibot.vit import build_vit

from .classifier import BackboneWithLinearHead, ImageClassifier

__all__ = ["REPO", "shared_data", "tiny_vit_classifier"]

REPO = Path(__file__).resolve().parents[1]


def shared_data(*parts: str) -> Path:
    """``<repo>/../shared/data/<parts>``; fails the calling test (never skips) when it is missing."""
    import pytest

    path = REPO.parent / "shared" / "data"
    path = path.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"test data {path} is missing: these tests need the real images under <repo>/../shared/data "
                    "(CIFAR-10 test, GrabCut, tiny COCO, ADE20K sample, CamVid); see that folder's README")
    return path


def tiny_vit_classifier(num_classes: int = 10, img_size: int = 32, patch_size: int = 4, depth: int = 2,
                        seed: int = 0) -> ImageClassifier:
    """A random ViT-Tiny (depth 2) + linear head, wrapped for the benchmarks."""
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny", depth=depth, patch_size=patch_size, img_size=img_size, pos_interp="size")
    return ImageClassifier(BackboneWithLinearHead(vit, num_classes).eval(), patch_size=patch_size)
