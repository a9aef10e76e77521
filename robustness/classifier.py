"""The classifier API the benchmarks evaluate: any ``nn.Module`` mapping normalised images to logits.

:class:`ImageClassifier` adds the input normalisation (benchmarks hand it pixel-space images in [0, 1]) and, for
models that expose ``get_last_selfattention`` (our :class:`ibot.vit.iBOTViT`, DINO-style ViTs, or a wrapper whose
``backbone`` has it), the last block's [CLS]->patch attention used by salient PatchDrop.
:class:`BackboneWithLinearHead` is the iBOT / DINO linear-probe model: frozen-backbone features
(:class:`ibot.features.FeatureSpec`, the suite's one feature definition) + one ``nn.Linear``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibot.checkpoint import BackboneReport, build_backbone, load_backbone, load_file
from ibot.features import FeatureSpec, spec_features
from ibot.vit import ARCHS

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneWithLinearHead",
    "ImageClassifier",
    "LinearHead",
    "build_ibot_linear_classifier",
    "linear_head_state_dict",
    "read_linear_head",
    "shape_overrides",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PathLike = str | os.PathLike[str]

#: The backbone built when no backbone file is given (random weights, pipeline tests only): the old CLI defaults.
_RANDOM_BACKBONE = {"family": "vit", "arch": "vit_small", **ARCHS["vit_small"], "patch_size": 16, "img_size": 224}


class BackboneWithLinearHead(nn.Module):
    """``backbone`` features -> ``nn.Linear``; the features of iBOT's linear evaluation.

    Args:
        backbone: a ViT with ``get_intermediate_layers(x, n, norm=True)`` returning final-norm token sequences
            (B, 1 + N, D) and an ``embed_dim`` attribute.
        num_classes: outputs of the head.
        feature: which tokens of which blocks make the feature (iBOT ViT-S: ``FeatureSpec(4, 'cls')``, ViT-B/L:
            ``FeatureSpec(1, 'cls+avgpool')``); the head's input width is ``feature.dim(backbone.embed_dim)``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, feature: FeatureSpec = FeatureSpec()) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature = feature
        self.head = nn.Linear(feature.dim(backbone.embed_dim), num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        #: What :func:`build_ibot_linear_classifier` loaded (``None`` for a random backbone).
        self.backbone_report: BackboneReport | None = None

    def features(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W), normalised -> features (B, feature.dim(D))."""
        return spec_features(self.backbone, x, [self.feature])[0]

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W), normalised -> logits (B, num_classes)."""
        return self.head(self.features(x))

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Last block's attention (B, heads, 1 + N, 1 + N)."""
        return self.backbone.get_last_selfattention(x)


def _attention_source(model: nn.Module) -> nn.Module | None:
    for candidate in (model, getattr(model, "backbone", None), getattr(model, "module", None)):
        if candidate is not None and callable(getattr(candidate, "get_last_selfattention", None)):
            return candidate
    return None


def _patch_size_of(model: nn.Module) -> int | None:
    """``patch_size`` or ``patch_embed.patch_size`` of the model or of its ``backbone`` (a linear-probe wrapper)."""
    for candidate in (model, getattr(model, "backbone", None)):
        patch_size = getattr(candidate, "patch_size", None)
        if patch_size is None:
            ps = getattr(getattr(candidate, "patch_embed", None), "patch_size", None)
            patch_size = ps[0] if isinstance(ps, (tuple, list)) else ps
        if patch_size is not None:
            return int(patch_size)
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
            patch_size = _patch_size_of(self._attn)
        self.patch_size = int(patch_size) if patch_size is not None else None

    def normalize(self, images: Tensor) -> Tensor:
        """Pixel-space images (B, 3, H, W) in [0, 1] -> normalised images (B, 3, H, W)."""
        return (images - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        """Pixel-space images (B, 3, H, W) in [0, 1] -> logits (B, K)."""
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


# ------------------------------------------------------------------------------------------------ head files
def linear_head_state_dict(ckpt: Mapping[str, Any]) -> dict[str, Tensor]:
    """``{'weight' (K, F), 'bias' (K,)}`` of a linear head from the usual layouts.

    Accepts a flat ``{'weight', 'bias'}`` (the suite's head files, which may also hold a ``'feature'`` entry); DINO /
    iBOT ``eval_linear`` files (``{'state_dict': {'module.linear.weight', ...}}``); ``head.weight`` / ``fc.weight``
    / ``linear.weight`` prefixes; and a combined backbone + head dict (the head keys are picked).
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


@dataclass(frozen=True)
class LinearHead:
    """A linear-head file: its weights and, when the file says so, the feature they were trained on.

    Attributes:
        state_dict: ``{'weight' (K, F), 'bias' (K,)}``.
        feature: the file's ``'feature'`` entry (a :meth:`FeatureSpec.to_dict`), or ``None`` when it has none.
        path: the file read.
    """

    state_dict: dict[str, Tensor]
    feature: FeatureSpec | None
    path: str

    @property
    def num_classes(self) -> int:
        return int(self.state_dict["weight"].shape[0])

    @property
    def in_features(self) -> int:
        return int(self.state_dict["weight"].shape[1])


def read_linear_head(path: PathLike, *, trusted: bool = False) -> LinearHead:
    """Read a head file (:func:`linear_head_state_dict` layouts); a top-level ``'feature'`` entry (the suite writes
    ``{'weight', 'bias', 'feature': FeatureSpec.to_dict()}`` with :func:`ibot.checkpoint.save_file`) gives the
    feature spec the head expects."""
    obj = load_file(path, trusted=trusted)
    feature = None
    if isinstance(obj, Mapping) and obj.get("feature") is not None:
        try:
            feature = FeatureSpec.from_dict(obj["feature"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"head file '{os.fspath(path)}': key 'feature' is not a feature spec "
                             f"({{'n_last_blocks', 'pooling'}}): {exc}") from exc
    return LinearHead(linear_head_state_dict(obj), feature, os.fspath(path))


def resolve_feature(head: LinearHead | None, n_last_blocks: int | None = None,
                    avgpool: int | None = None) -> FeatureSpec:
    """The feature spec: the head file's ``'feature'`` entry (default ``FeatureSpec(1, 'cls')``), with explicit
    ``n_last_blocks`` / ``avgpool`` (DINO / iBOT's ``--avgpool_patchtokens`` 0 / 1 / 2) replacing its parts."""
    base = (head.feature if head is not None else None) or FeatureSpec()
    n = base.n_last_blocks if n_last_blocks is None else int(n_last_blocks)
    pooling = base.pooling if avgpool is None else FeatureSpec.from_avgpool(n, avgpool).pooling
    return FeatureSpec(n, pooling)


# ------------------------------------------------------------------------------------------------ backbone
def shape_overrides(arch: str | None = None, *, patch_size: int | None = None, img_size: int | None = None,
                    embed_dim: int | None = None, depth: int | None = None,
                    num_heads: int | None = None) -> dict[str, Any]:
    """Backbone-description entries from the CLI's shape flags (``None`` = keep the file's).

    A preset ``arch`` stands for its whole shape (width, depth, heads), as ``build_vit(arch)`` did; explicit
    ``embed_dim`` / ``depth`` / ``num_heads`` then replace parts of it (toy models, non-standard sizes), which
    makes the ``arch`` label ``None`` unless the result is still that preset.
    """
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    out: dict[str, Any] = {"arch": arch, **ARCHS[arch]} if arch is not None else {}
    given = {"patch_size": patch_size, "img_size": img_size, "embed_dim": embed_dim, "depth": depth,
             "num_heads": num_heads}
    out.update({k: int(v) for k, v in given.items() if v is not None})
    if arch is not None and any(out[k] != v for k, v in ARCHS[arch].items()):
        out["arch"] = None
    return out


def _check_head(model: BackboneWithLinearHead, head: LinearHead, explicit: bool) -> None:
    """Raise a clear error when the head's input width is not the feature's."""
    want = model.head.weight.shape
    got = head.state_dict["weight"].shape
    if got == want:
        return
    source = ("the --n-last-blocks / --avgpool flags" if explicit else
              "the head file's 'feature' entry" if head.feature is not None else "the default (no 'feature' entry)")
    raise ValueError(
        f"head file '{head.path}': weight {tuple(got)} does not fit the feature {model.feature.label} "
        f"(n_last_blocks={model.feature.n_last_blocks}, pooling={model.feature.pooling!r}, from {source}) of a "
        f"width-{model.backbone.embed_dim} backbone, which gives {tuple(want)}; check n_last_blocks / avgpool")


def build_ibot_linear_classifier(
    backbone_ckpt: PathLike | None, head_ckpt: PathLike | None = None, *,
    overrides: Mapping[str, Any] | None = None, n_last_blocks: int | None = None, avgpool: int | None = None,
    num_classes: int | None = None, checkpoint_key: str | None = None, trusted: bool = False,
) -> BackboneWithLinearHead:
    """An iBOT ViT backbone (:func:`ibot.checkpoint.load_backbone`, strict) + a linear head, in eval mode.

    Args:
        backbone_ckpt: any backbone file ``load_backbone`` reads; a self-describing one needs no ``overrides``.
            ``None``: a random ViT-S/16 (or what ``overrides`` say) — only useful for pipeline tests.
        head_ckpt: a head file (:func:`read_linear_head`); may be the backbone file when it holds both
            (``backbone.*`` + ``head.*``). ``None``: a random head with ``num_classes`` outputs.
        overrides: backbone-description entries replacing the file's (:func:`shape_overrides` of the CLI flags).
        n_last_blocks, avgpool: replace parts of the head file's feature spec (:func:`resolve_feature`).
        checkpoint_key: checkpoint entry of the backbone (``None``: auto-detect).
        trusted: allow checkpoints that pickle objects (only for files you trust).

    Raises:
        ValueError: no ``num_classes`` without a head, or a head whose width does not fit the feature (names the
            head file and where the feature spec came from).
    """
    if backbone_ckpt is None:
        backbone = build_backbone({**_RANDOM_BACKBONE, **dict(overrides or {})}, pos_interp="size")
        report = None
    else:
        backbone, report = load_backbone(backbone_ckpt, trusted=trusted, key=checkpoint_key, overrides=overrides,
                                         pos_interp="size")
    head = read_linear_head(head_ckpt, trusted=trusted) if head_ckpt is not None else None
    if head is None and num_classes is None:
        raise ValueError("num_classes is needed when no head checkpoint is given")
    feature = resolve_feature(head, n_last_blocks, avgpool)
    feature.check(len(backbone.blocks))  # fail before any data is read, not at the first batch
    model = BackboneWithLinearHead(backbone, head.num_classes if head else int(num_classes), feature)
    model.backbone_report = report
    if head is not None:
        _check_head(model, head, explicit=n_last_blocks is not None or avgpool is not None)
        model.head.load_state_dict(head.state_dict)
    return model.eval()


def resize_scores(scores: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resample (B, h, w) patch scores to another (gh, gw) grid by area averaging / bilinear upsampling."""
    if tuple(scores.shape[-2:]) == tuple(grid):
        return scores
    x = scores.unsqueeze(1).float()
    if scores.shape[-2] % grid[0] == 0 and scores.shape[-1] % grid[1] == 0:
        return F.adaptive_avg_pool2d(x, grid).squeeze(1)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False).squeeze(1)
