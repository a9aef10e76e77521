"""The classifier API the benchmarks evaluate: any ``nn.Module`` mapping normalised images to logits.

:class:`ImageClassifier` adds the input normalisation (benchmarks hand it pixel-space images in [0, 1]) and, for
models that expose ``get_last_selfattention`` (our :class:`ibot.vit.iBOTViT`, DINO-style ViTs, or a wrapper whose
``backbone`` has it), the last block's [CLS]->patch attention used by salient PatchDrop.
:class:`BackboneWithLinearHead` is the iBOT / DINO linear-probe model: frozen-backbone features + one ``nn.Linear``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibot.checkpoint import extract_backbone_state_dict, load_file, load_state_dict_report
from ibot.vit import build_vit

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneWithLinearHead",
    "ImageClassifier",
    "build_ibot_linear_classifier",
    "linear_head_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWithLinearHead(nn.Module):
    """``backbone`` features -> ``nn.Linear``; the features of iBOT's linear evaluation.

    Args:
        backbone: a ViT with ``get_intermediate_layers(x, n)`` returning final-norm token sequences (B, 1 + N, D).
        num_classes: outputs of the head.
        n_last_blocks: concatenate the [CLS] token of the last ``n`` blocks (iBOT ViT-S: 4, ViT-B/L: 1).
        avgpool: 0 = [CLS] tokens only; 1 = mean of the last block's patch tokens only; 2 = [CLS] tokens followed by
            that mean (iBOT's ``--avgpool_patchtokens``; ViT-B/L use 2).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, n_last_blocks: int = 1, avgpool: int = 0) -> None:
        super().__init__()
        if avgpool not in (0, 1, 2):
            raise ValueError(f"avgpool must be 0, 1 or 2, got {avgpool}")
        self.backbone = backbone
        self.n_last_blocks = n_last_blocks
        self.avgpool = avgpool
        dim = backbone.embed_dim
        in_dim = {0: dim * n_last_blocks, 1: dim, 2: dim * (n_last_blocks + 1)}[avgpool]
        self.head = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def features(self, x: Tensor) -> Tensor:
        tokens = self.backbone.get_intermediate_layers(x, self.n_last_blocks)
        parts = [] if self.avgpool == 1 else [t[:, 0] for t in tokens]
        if self.avgpool in (1, 2):
            parts.append(tokens[-1][:, 1:].mean(dim=1))
        return torch.cat(parts, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        return self.backbone.get_last_selfattention(x)


def _attention_source(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "backbone", None), getattr(model, "module", None)):
        if candidate is not None and callable(getattr(candidate, "get_last_selfattention", None)):
            return candidate
    return None


class ImageClassifier(nn.Module):
    """Normalise pixel-space images, run ``model``, return logits; optionally expose [CLS] attention.

    Args:
        model: images (B, 3, H, W), normalised with ``mean`` / ``std`` -> logits (B, K).
        mean, std: per-channel normalisation (ImageNet's by default).
        patch_size: the ViT patch size, to lay attention out on the patch grid (read from the model if it has a
            ``patch_size`` attribute or ``patch_embed.patch_size``).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, patch_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._attn = _attention_source(model)
        if patch_size is None and self._attn is not None:
            patch_size = getattr(self._attn, "patch_size", None)
            if patch_size is None:
                ps = getattr(getattr(self._attn, "patch_embed", None), "patch_size", None)
                patch_size = ps[0] if isinstance(ps, (tuple, list)) else ps
        self.patch_size = int(patch_size) if patch_size is not None else None

    def normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))

    @property
    def has_attention(self) -> bool:
        return self._attn is not None and self.patch_size is not None

    @torch.no_grad()
    def patch_attention(self, images: Tensor, head: int | None = None) -> Tensor:
        """Last-block [CLS]->patch attention (B, H/p, W/p); the mean over heads, or one ``head``."""
        if not self.has_attention:
            raise TypeError(
                f"{type(self.model).__name__} exposes no get_last_selfattention (nor does its .backbone); salient "
                "PatchDrop by the model's attention needs a ViT, or use a foreground mask / an attention_model"
            )
        attn = self._attn.get_last_selfattention(self.normalize(images))  # (B, heads, 1 + N, 1 + N)
        cls = attn[:, :, 0, 1:]
        cls = cls.mean(dim=1) if head is None else cls[:, head]
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        if cls.shape[-1] != h * w:
            raise ValueError(f"attention has {cls.shape[-1]} patch tokens, expected {h}x{w} for patch size "
                             f"{self.patch_size} (extra prefix tokens are not supported)")
        return cls.reshape(-1, h, w)


def linear_head_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """``{'weight', 'bias'}`` of a linear head from the usual layouts.

    Accepts a flat ``{'weight', 'bias'}``; DINO / iBOT ``eval_linear`` files (``{'state_dict':
    {'module.linear.weight', ...}}``); ``head.weight`` / ``fc.weight`` / ``linear.weight`` prefixes; and a
    combined backbone + head dict (the head keys are picked).
    """
    obj: Any = ckpt
    while isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in ("state_dict", "model", "module", "head") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise ValueError("no state dict found in the head checkpoint")
    flat = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("", "linear.", "head.", "fc.", "classifier."):
        w, b = flat.get(prefix + "weight"), flat.get(prefix + "bias")
        if w is not None and w.ndim == 2 and b is not None:
            return {"weight": w, "bias": b}
    raise ValueError(f"no linear head (weight, bias) found; keys: {sorted(flat)[:20]}")


def build_ibot_linear_classifier(
    arch: str, patch_size: int, backbone_ckpt: str | os.PathLike[str] | None, head_ckpt: str | os.PathLike[str] | None,
    *, num_classes: int | None = None, n_last_blocks: int = 1, avgpool: int = 0, img_size: int = 224,
    checkpoint_key: str | None = None, trusted: bool = False, depth: int | None = None,
    embed_dim: int | None = None, num_heads: int | None = None,
) -> BackboneWithLinearHead:
    """An iBOT ViT backbone + linear head from checkpoints (strict loading; ``masked_embed`` ignored).

    ``head_ckpt`` may be the same file as ``backbone_ckpt`` when it holds both (keys ``backbone.*`` + ``head.*``).
    Without ``head_ckpt`` the head is random (``num_classes`` needed) — only useful for pipeline tests.
    """
    kwargs: dict[str, Any] = dict(patch_size=patch_size, img_size=img_size, pos_interp="size")
    for name, value in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads)):
        if value is not None:  # non-standard sizes (tests, toy models)
            kwargs[name] = value
    backbone = build_vit(arch, **kwargs)
    if backbone_ckpt is not None:
        sd = extract_backbone_state_dict(load_file(backbone_ckpt, trusted=trusted), checkpoint_key)
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
        load_state_dict_report(backbone, sd, strict=True, ignore=("masked_embed",))
    head_sd = None
    if head_ckpt is not None:
        head_sd = linear_head_state_dict(load_file(head_ckpt, trusted=trusted))
        num_classes = head_sd["weight"].shape[0]
    if num_classes is None:
        raise ValueError("num_classes is needed when no head checkpoint is given")
    model = BackboneWithLinearHead(backbone, num_classes, n_last_blocks=n_last_blocks, avgpool=avgpool)
    if head_sd is not None:
        if head_sd["weight"].shape != model.head.weight.shape:
            raise ValueError(f"head weight {tuple(head_sd['weight'].shape)} does not match the features "
                             f"{tuple(model.head.weight.shape)} (check n_last_blocks / avgpool)")
        model.head.load_state_dict(head_sd)
    return model.eval()


def resize_scores(scores: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample (B, h, w) patch scores to another (gh, gw) grid by area averaging / bilinear upsampling."""
    if tuple(scores.shape[-2:]) == tuple(grid):
        return scores
    x = scores.unsqueeze(1).float()
    if scores.shape[-2] % grid[0] == 0 and scores.shape[-1] % grid[1] == 0:
        return F.adaptive_avg_pool2d(x, grid).squeeze(1)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False).squeeze(1)
