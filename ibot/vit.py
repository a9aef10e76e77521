"""iBOT Vision Transformer: timm's ``VisionTransformer`` plus the student's mask token.

Parameter names equal the official iBOT/DINO ViT (``cls_token, pos_embed, patch_embed.proj,
blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm``) and timm's, so checkpoints of
all three load without renaming. What this class adds to timm:

* ``masked_embed`` (1, D), zero-initialised, written over masked patch embeddings after the patch
  projection and before [CLS] and position embeddings are added (official ``prepare_tokens``);
* position-embedding interpolation that reproduces the official one bit for bit
  (``pos_interp='official'``: bicubic with ``scale_factor=(h0 + 0.1) / sqrt(N)``) or a size-based
  resize for arbitrary downstream inputs (``pos_interp='size'``);
* a stochastic-depth implementation with the official random-number consumption;
* one feature API for the harnesses: final-norm [CLS], all tokens, intermediate blocks as token
  sequences or BCHW maps, and the last block's attention maps.
"""
from __future__ import annotations

from functools import partial
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

PosInterp = Literal["official", "size"]

ARCHS: dict[str, dict[str, int]] = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
}


class OfficialDropPath(nn.Module):
    """Stochastic depth drawing ``torch.rand`` per sample like the official code.

    timm's ``DropPath`` draws with ``bernoulli_``: same distribution, different random stream.
    Keeping the official draw makes a seeded student forward reproduce the official one.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        rand = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep) * rand

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class iBOTViT(VisionTransformer):
    """ViT backbone of iBOT.

    Args:
        img_size: size the position embeddings are created for (224 for pretraining).
        patch_size: 16 or 8.
        embed_dim, depth, num_heads: width, depth, heads (see ``ARCHS``).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        masked_im_modeling: create the mask token ``masked_embed`` (student only).
        pos_interp: ``'official'`` for pretraining parity, ``'size'`` for arbitrary input sizes.
        grad_checkpointing: recompute blocks in backward to save activation memory.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        masked_im_modeling: bool = False,
        pos_interp: PosInterp = "official",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            drop_path_rate=drop_path_rate,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
        )
        if pos_interp not in ("official", "size"):
            raise ValueError(f"pos_interp must be 'official' or 'size', got {pos_interp!r}")
        self.pos_interp = pos_interp
        self.patch_size = patch_size
        self.grad_checkpointing = grad_checkpointing
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        for blk, p in zip(self.blocks, dpr):
            blk.drop_path1 = OfficialDropPath(p) if p > 0 else nn.Identity()
            blk.drop_path2 = OfficialDropPath(p) if p > 0 else nn.Identity()
        # Official init: trunc_normal(0.02) for cls_token too (timm uses normal(1e-6)).
        trunc_normal_(self.cls_token, std=0.02)
        self.masked_embed = nn.Parameter(torch.zeros(1, embed_dim)) if masked_im_modeling else None

    # ------------------------------------------------------------------ tokens
    @property
    def num_patches_grid(self) -> tuple[int, int]:
        """(h, w) grid the stored ``pos_embed`` was created for."""
        return tuple(self.patch_embed.grid_size)  # type: ignore[return-value]

    def interpolate_pos_encoding(self, h0: int, w0: int) -> Tensor:
        """Position embeddings for an (h0, w0) patch grid: (1, 1 + h0*w0, D)."""
        gh, gw = self.num_patches_grid
        if (h0, w0) == (gh, gw):
            return self.pos_embed
        if self.pos_interp == "size" or gh != gw:
            return resample_abs_pos_embed(self.pos_embed, (h0, w0), (gh, gw), num_prefix_tokens=1)
        # The official (DINO) form: the +0.1 makes the output size robust to float rounding, and the
        # scale_factor (not the size) sets the sampling grid; a size-based resize differs by ~2e-2.
        n = gh
        dim = self.pos_embed.shape[-1]
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = F.interpolate(
            patch_pos.reshape(1, n, n, dim).permute(0, 3, 1, 2),
            scale_factor=((h0 + 0.1) / n, (w0 + 0.1) / n),
            mode="bicubic",
        )
        assert patch_pos.shape[-2:] == (h0, w0), patch_pos.shape
        return torch.cat((cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def prepare_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Images (B, 3, H, W) [+ mask (B, h, w) bool] -> tokens (B, 1 + h*w, D)."""
        x = self.patch_embed.proj(x)  # (B, D, h, w)
        b, d, h0, w0 = x.shape
        if mask is not None:
            if self.masked_embed is None:
                raise ValueError("a mask was given but this backbone has no mask token "
                                 "(build it with masked_im_modeling=True)")
            if mask.shape != (b, h0, w0):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match the patch grid {(b, h0, w0)}")
            token = self.masked_embed.to(x.dtype).view(1, d, 1, 1)
            x = torch.where(mask.unsqueeze(1), token, x)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(b, -1, -1).to(x.dtype), x), dim=1)
        x = x + self.interpolate_pos_encoding(h0, w0)
        return self.pos_drop(x)

    def _run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    # ------------------------------------------------------------------ features
    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Final-norm tokens (B, 1 + N, D); [CLS] first."""
        x = self.prepare_tokens(x, mask)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self.norm(x)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_all_tokens: bool = False) -> Tensor:  # type: ignore[override]
        """(B, 3, H, W) -> final-norm [CLS] (B, D), or all tokens (B, 1 + N, D)."""
        x = self.forward_features(x, mask)
        return x if return_all_tokens else x[:, 0]

    def get_intermediate_layers(  # type: ignore[override]
        self, x: Tensor, n: int | Sequence[int] = 1, norm: bool = True, mask: Tensor | None = None
    ) -> list[Tensor]:
        """Tokens (B, 1 + N, D) after the last ``n`` blocks, or after the given block indices.

        With ``norm`` the final LayerNorm is applied to each (official linear-probe features).
        """
        idx = _resolve_indices(n, len(self.blocks))
        x = self.prepare_tokens(x, mask)
        out = []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x)
            if i in idx:
                out.append(self.norm(x) if norm else x)
            if i >= max(idx):
                break
        return out

    def feature_maps(self, x: Tensor, indices: Sequence[int], norm: bool = False) -> list[Tensor]:
        """Patch tokens of the given blocks as maps (B, D, H/p, W/p) for dense heads."""
        h0, w0 = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        feats = self.get_intermediate_layers(x, indices, norm=norm)
        return [f[:, 1:].transpose(1, 2).reshape(f.shape[0], -1, h0, w0) for f in feats]

    @torch.no_grad()
    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Softmax attention of the last block: (B, heads, 1 + N, 1 + N)."""
        x = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            x = blk(x)
        return attention_probs(self.blocks[-1].attn, self.blocks[-1].norm1(x))


def attention_probs(attn: nn.Module, x: Tensor) -> Tensor:
    """Explicit softmax(q kᵀ · scale) of a timm ``Attention`` for input (B, N, D) -> (B, h, N, N)."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


def _resolve_indices(n: int | Sequence[int], depth: int) -> set[int]:
    if isinstance(n, int):
        if not 1 <= n <= depth:
            raise ValueError(f"n={n} must be in [1, {depth}]")
        return set(range(depth - n, depth))
    idx = {i % depth if i < 0 else i for i in n}
    if not idx or max(idx) >= depth:
        raise ValueError(f"block indices {list(n)} out of range for depth {depth}")
    return idx


def build_vit(arch: str, **kwargs) -> iBOTViT:
    """``build_vit('vit_small', patch_size=16, masked_im_modeling=True)``; see ``ARCHS``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    return iBOTViT(**{**ARCHS[arch], **kwargs})
