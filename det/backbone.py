"""The iBOT ViT as an MMDetection / MMSegmentation backbone.

One class, :class:`iBOTViTBackbone`, registered in both toolkits (see :mod:`det.registry`). It wraps the
project's :class:`ibot.vit.iBOTViT` (parameter names = official iBOT / DINO / timm, so checkpoints load without
renaming) and returns the patch tokens of chosen blocks as (B, D, H/p, W/p) maps, optionally turned into a
stride 4/8/16/32 pyramid the way the iBOT/BEiT recipe does (:class:`DeconvPyramid`).

Differences from the official ``register_backbone.py`` (mmdet 2.11 / mmseg 0.12), all opt-in except the first:

* position embeddings: created for ``img_size``, resized to that grid when a checkpoint is loaded, and resized
  again at run time to every input's patch grid (the official code does the same with ``scale_factor``; we
  resize by size so any grid works);
* ``window_size`` / ``window_block_indices``: ViTDet-style windowed attention in chosen blocks (global attention
  elsewhere) for large inputs; the official recipe uses global attention everywhere;
* ``grad_checkpointing``: recompute blocks in backward (official ``use_checkpoint``).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ibot.checkpoint import StateDictMismatchError, load_backbone
from ibot.compat.mmengine import runner_safe_globals
from ibot.vit import ARCHS, iBOTViT

from .checkpoint import resolve_checkpoint
from .layers import build_norm

#: Blocks the iBOT/BEiT dense recipes read features from in a 12-block ViT.
REFERENCE_OUT_INDICES = (3, 5, 7, 11)


def default_out_indices(depth: int) -> tuple[int, ...]:
    """(3, 5, 7, 11) for 12 blocks, scaled to other depths: 24 -> (7, 11, 15, 23), 6 -> (1, 2, 3, 5)."""
    return tuple(max(0, int((i + 1) * depth / 12 + 0.5) - 1) for i in REFERENCE_OUT_INDICES)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"img_size must be an int or (h, w), got {size}")
    return size  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------ attention
def window_attention(attn: nn.Module, x: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """Self-attention of a timm ``Attention`` restricted to non-overlapping ``window`` x ``window`` patch windows.

    ``x`` is (B, 1 + h*w, D) with the [CLS] token first. The patch grid is zero-padded to a multiple of the window
    and padded positions are masked out as keys (ViTDet attends to them; masking keeps a window that covers the
    whole grid identical to global attention). [CLS] is prepended to every window, so every patch still sees it;
    its output is the mean over windows.
    """
    b, n, d = x.shape
    h, w = grid
    if n != 1 + h * w:
        raise ValueError(f"{n} tokens do not match a [CLS] token plus a {h}x{w} grid")
    ph, pw = (-h) % window, (-w) % window
    hp, wp = h + ph, w + pw
    nh, nw = hp // window, wp // window
    patches = F.pad(x[:, 1:].reshape(b, h, w, d), (0, 0, 0, pw, 0, ph))
    windows = patches.reshape(b, nh, window, nw, window, d).permute(0, 1, 3, 2, 4, 5)
    windows = windows.reshape(b * nh * nw, window * window, d)
    cls = x[:, :1].repeat_interleave(nh * nw, dim=0)
    mask = None
    if ph or pw:
        valid = torch.zeros(hp, wp, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        valid = valid.reshape(nh, window, nw, window).permute(0, 2, 1, 3).reshape(nh * nw, window * window)
        valid = torch.cat((valid.new_ones(nh * nw, 1), valid), dim=1)  # [CLS] is always a valid key
        mask = valid.repeat(b, 1)[:, None, None, :]  # (B * nW, 1, 1, 1 + window²), True = attend
    out = attn(torch.cat((cls, windows), dim=1), attn_mask=mask)
    cls_out = out[:, :1].reshape(b, nh * nw, 1, d).mean(dim=1)
    out = out[:, 1:].reshape(b, nh, nw, window, window, d).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, d)
    return torch.cat((cls_out, out[:, :h, :w].reshape(b, h * w, d)), dim=1)


def windowed_block_forward(block: nn.Module, x: Tensor, grid: tuple[int, int], window: int) -> Tensor:
    """timm ``Block.forward`` with :func:`window_attention` in place of global attention."""
    x = x + block.drop_path1(block.ls1(window_attention(block.attn, block.norm1(x), grid, window)))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


# -------------------------------------------------------------------------------------------------- pyramid
class DeconvPyramid(nn.Module):
    """iBOT/BEiT multi-scale adapter: one stride-``patch_size`` map per output -> maps at ``strides``.

    Per output, with ``scale = patch_size / stride``: scale 4 -> ConvT(2, 2) + norm + GELU + ConvT(2, 2)
    (official ``fpn1``), 2 -> ConvT(2, 2) (``fpn2``), 1 -> identity (``fpn3``), 1/2 -> MaxPool(2) (``fpn4``),
    1/4 -> MaxPool(4). Patch 8 with strides (4, 8, 16, 32) gives the official patch-8 variant. Channels stay D.
    """

    def __init__(self, embed_dim: int, patch_size: int, strides: Sequence[int],
                 norm_cfg: dict | None = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg or dict(type="SyncBN", requires_grad=True)
        self.strides = tuple(strides)
        self.scales = nn.ModuleList(
            [self._level(embed_dim, patch_size / s, norm_cfg) for s in self.strides])

    @staticmethod
    def _level(dim: int, scale: float, norm_cfg: dict) -> nn.Module:
        steps = math.log2(scale)
        if steps != int(steps):
            raise ValueError(f"pyramid scale {scale} (patch size / stride) must be a power of two")
        steps = int(steps)
        if steps == 0:
            return nn.Identity()
        if steps < 0:
            return nn.MaxPool2d(kernel_size=2 ** -steps, stride=2 ** -steps)
        layers: list[nn.Module] = [nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)]
        for _ in range(steps - 1):
            layers += [build_norm(norm_cfg, dim), nn.GELU(), nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)]
        return nn.Sequential(*layers)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(feats) != len(self.scales):
            raise ValueError(f"got {len(feats)} feature maps for {len(self.scales)} pyramid levels")
        return tuple(op(f) for op, f in zip(self.scales, feats))


# ------------------------------------------------------------------------------------------------- backbone
class iBOTViTBackbone(BaseModule):
    """iBOT ViT backbone for MMDetection 3 / MMSegmentation 1.

    Args:
        arch: ``vit_tiny`` / ``vit_small`` / ``vit_base`` / ``vit_large`` (``ibot.vit.ARCHS``) or ``None``;
            ``embed_dim`` / ``depth`` / ``num_heads`` override its values.
        img_size: (h, w) or int the position embeddings are stored for; a checkpoint's ``pos_embed`` is resized
            to this grid at load time, and at run time the stored one is resized to each input's grid.
        patch_size, mlp_ratio, drop_path_rate: ViT hyper-parameters (drop path rises linearly over blocks).
        out_indices: blocks whose outputs are returned; default (3, 5, 7, 11) scaled to ``depth``.
        out_with_norm: apply the final LayerNorm to every output (iBOT's seg README sets it; det does not).
            Without it the final norm is removed, and its checkpoint weights are reported as ignored.
        pyramid: ``'deconv'`` (iBOT/BEiT :class:`DeconvPyramid`, default) or ``None`` (stride-``patch_size``
            maps; use with a linear head or the :class:`~det.neck.SimpleFeaturePyramid` neck).
        pyramid_strides: output strides of the deconv pyramid, one per output index.
        pyramid_norm_cfg: norm between the two deconvolutions (recipe: SyncBN; mmengine turns SyncBN into BN in
            non-distributed runs).
        window_size: window side in patches for the blocks in ``window_block_indices`` (0: global everywhere).
        window_block_indices: blocks using windowed attention, e.g. all but (2, 5, 8, 11) as in ViTDet.
        frozen_stages: -1 trains everything; k >= 0 freezes the patch/position embeddings and the first k blocks
            (and the final norm when k = depth) and keeps them in eval mode (official semantics).
        grad_checkpointing: recompute blocks in backward to save activation memory.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH_OR_URL, checkpoint_key=None)``, loaded by
            :func:`ibot.checkpoint.load_backbone` into this ViT: self-describing backbone files, our pre-training
            checkpoints and official iBOT / DINO full checkpoints (teacher by default), backbone-only files, timm
            ViT state dicts and mmengine det/seg checkpoints of this backbone. The load is strict: a checkpoint of
            another width or depth raises, naming the file (set the shape from the file with
            ``python -m det.cli train CONFIG --backbone FILE``). Files that pickle objects (full checkpoints)
            need the trust opt-in (``--trust-checkpoint``).
    """

    def __init__(
        self,
        arch: str | None = "vit_small",
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        out_indices: Sequence[int] | None = None,
        out_with_norm: bool = False,
        pyramid: str | None = "deconv",
        pyramid_strides: Sequence[int] = (4, 8, 16, 32),
        pyramid_norm_cfg: dict | None = None,
        window_size: int = 0,
        window_block_indices: Sequence[int] = (),
        frozen_stages: int = -1,
        grad_checkpointing: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if arch is not None and arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)} or pass arch=None")
        dims = dict(ARCHS[arch]) if arch is not None else {}
        for key, value in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if value is not None:
                dims[key] = value
            elif key not in dims:
                raise ValueError(f"{key} is required when arch is None")
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.embed_dim = dims["embed_dim"]
        self.depth = dims["depth"]
        self.vit = iBOTViT(img_size=self.img_size, patch_size=patch_size, mlp_ratio=mlp_ratio,
                           drop_path_rate=drop_path_rate, pos_interp="size", **dims)
        self.out_with_norm = out_with_norm
        if not out_with_norm:
            self.vit.norm = nn.Identity()  # unused parameters would break DDP without find_unused_parameters
        self.out_indices = tuple(default_out_indices(self.depth) if out_indices is None else out_indices)
        if not self.out_indices or not all(0 <= i < self.depth for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must be block indices in [0, {self.depth})")
        if max(self.out_indices) < self.depth - 1:
            print_log(f"blocks {max(self.out_indices) + 1}..{self.depth - 1} are never run (out_indices "
                      f"{self.out_indices}); distributed training then needs find_unused_parameters=True",
                      logger="current", level=logging.WARNING)
        self.window_size = int(window_size)
        self.window_block_indices = frozenset(window_block_indices)
        if self.window_block_indices and self.window_size <= 0:
            raise ValueError("window_block_indices needs window_size > 0")
        if not all(0 <= i < self.depth for i in self.window_block_indices):
            raise ValueError(f"window_block_indices {sorted(self.window_block_indices)} out of range")
        if pyramid not in ("deconv", None):
            raise ValueError(f"pyramid must be 'deconv' or None, got {pyramid!r} (the ViTDet simple pyramid "
                             "is the SimpleFeaturePyramid neck)")
        if pyramid == "deconv" and len(pyramid_strides) != len(self.out_indices):
            raise ValueError(f"{len(pyramid_strides)} pyramid strides for {len(self.out_indices)} outputs")
        self.pyramid = (DeconvPyramid(self.embed_dim, patch_size, pyramid_strides, pyramid_norm_cfg)
                        if pyramid == "deconv" else None)
        self.frozen_stages = frozen_stages
        self.grad_checkpointing = grad_checkpointing
        self._freeze_stages()

    @property
    def out_channels(self) -> list[int]:
        return [self.embed_dim] * len(self.out_indices)

    # ------------------------------------------------------------------ freezing
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.vit.patch_embed, self.vit.pos_drop]
        mods += list(self.vit.blocks[: self.frozen_stages])
        if self.frozen_stages >= self.depth:
            mods.append(self.vit.norm)
        return mods

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        self.vit.cls_token.requires_grad_(False)
        self.vit.pos_embed.requires_grad_(False)
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "iBOTViTBackbone":
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    @property
    def fully_frozen(self) -> bool:
        return self.frozen_stages >= self.depth

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """Random init happened in the constructors (official trunc-normal ViT init); this loads ``init_cfg``."""
        if self.is_init:
            print_log(f"init_weights of {type(self).__name__} has been called more than once.",
                      logger="current", level=logging.WARNING)
            return
        if self.init_cfg:
            self._load_pretrained(dict(self.init_cfg))
        self._is_init = True

    def _load_pretrained(self, cfg: dict) -> None:
        """Load ``init_cfg`` strictly into the ViT (``pos_embed`` resized to ``img_size``; the final norm's
        weights reported as ignored when ``out_with_norm`` is off); sets ``load_report`` (a
        :class:`ibot.checkpoint.LoadReport`) and ``backbone_report``."""
        kind, source, key = cfg.pop("type", None), cfg.pop("checkpoint", None), cfg.pop("checkpoint_key", None)
        if kind != "Pretrained" or not source or cfg:
            extra = f" (unsupported keys {sorted(cfg)}: the load is always strict)" if cfg else ""
            raise ValueError(f"{type(self).__name__} supports init_cfg=dict(type='Pretrained', checkpoint=PATH, "
                             f"checkpoint_key=None) only, got {self.init_cfg}{extra}")
        path, trusted = resolve_checkpoint(str(source))
        try:
            with runner_safe_globals():  # det / seg runner checkpoints load weights-only too
                _, self.backbone_report = load_backbone(path, trusted=trusted, key=key, model=self.vit)
        except StateDictMismatchError as exc:
            raise StateDictMismatchError(
                f"{exc}\nThis backbone is {self._shape()}. Fix: take the shape from the file with "
                f"`python -m det.cli train CONFIG --backbone {source}` (it also sets the widths of the neck / "
                "heads), or set model.backbone.arch / embed_dim / depth / num_heads with --cfg-options",
                exc.report) from exc
        self.load_report = self.backbone_report.load
        where = f"'{source}'" + (f"[{key!r}]" if key else "")
        print_log(f"backbone initialised from {where}\n{self.load_report}", logger="current")

    def _shape(self) -> str:
        return (f"a ViT of width {self.embed_dim}, depth {self.depth}, {self.vit.blocks[0].attn.num_heads} heads, "
                f"patch {self.patch_size}")

    # ------------------------------------------------------------------ forward
    def _run_block(self, i: int, x: Tensor, grid: tuple[int, int]) -> Tensor:
        blk = self.vit.blocks[i]
        if i in self.window_block_indices:
            fn = lambda t: windowed_block_forward(blk, t, grid, self.window_size)  # noqa: E731
        else:
            fn = blk
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Patch tokens after each ``out_indices`` block as (B, D, H/p, W/p) maps (before the pyramid)."""
        b = x.shape[0]
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        tokens = self.vit.prepare_tokens(x)
        wanted = set(self.out_indices)
        found: dict[int, Tensor] = {}
        for i in range(max(wanted) + 1):
            tokens = self._run_block(i, tokens, grid)
            if i in wanted:
                out = self.vit.norm(tokens) if self.out_with_norm else tokens
                found[i] = out[:, 1:].transpose(1, 2).reshape(b, -1, *grid).contiguous()
        return [found[i] for i in self.out_indices]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.fully_frozen:  # linear-probe setting: nothing in the backbone needs gradients
            with torch.no_grad():
                feats = self.feature_maps(x)
        else:
            feats = self.feature_maps(x)
        return self.pyramid(feats) if self.pyramid is not None else tuple(feats)
