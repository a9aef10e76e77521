"""The one frozen-feature definition of the suite, shared by k-NN, the linear probe and the robustness classifiers.

A :class:`FeatureSpec` names one feature vector built from ``get_intermediate_layers(x, n, norm=True)``: the
final-norm [CLS] tokens of the last ``n_last_blocks`` blocks concatenated (``pooling='cls'``), the mean final-norm
patch token of the last block (``'avgpool'``), or both, [CLS] first (``'cls+avgpool'``) — DINO / iBOT's
``--n_last_blocks`` with ``--avgpool_patchtokens`` 0 / 1 / 2. It is stored in result files as the dict of
:meth:`FeatureSpec.to_dict`, never as a display name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["POOLINGS", "FeatureSpec", "spec_features"]

Pooling = Literal["cls", "avgpool", "cls+avgpool"]
POOLINGS: tuple[str, ...] = ("cls", "avgpool", "cls+avgpool")


@dataclass(frozen=True)
class FeatureSpec:
    """Which blocks and which tokens make a frozen feature.

    Args:
        n_last_blocks: [CLS] tokens of this many last blocks (iBOT ViT-S: 4, ViT-B/L: 1); with ``'avgpool'`` only
            the last block is read, whatever this is.
        pooling: ``'cls'``, ``'avgpool'`` (mean patch token of the last block) or ``'cls+avgpool'``.
    """

    n_last_blocks: int = 1
    pooling: Pooling = "cls"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"feature pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if int(self.n_last_blocks) < 1:
            raise ValueError(f"feature n_last_blocks must be >= 1, got {self.n_last_blocks}")

    @property
    def uses_cls(self) -> bool:
        return self.pooling != "avgpool"

    @property
    def uses_avgpool(self) -> bool:
        return self.pooling != "cls"

    @property
    def blocks_read(self) -> int:
        """How many last blocks the backbone pass must return."""
        return self.n_last_blocks if self.uses_cls else 1

    def dim(self, embed_dim: int) -> int:
        """Feature width for a backbone of width ``embed_dim``."""
        return embed_dim * ((self.n_last_blocks if self.uses_cls else 0) + int(self.uses_avgpool))

    @property
    def label(self) -> str:
        """Display name (``cls4``, ``cls1+avgpool``, ``avgpool``) — for tables only, never parsed back."""
        if not self.uses_cls:
            return "avgpool"
        return f"cls{self.n_last_blocks}" + ("+avgpool" if self.uses_avgpool else "")

    def to_dict(self) -> dict[str, Any]:
        return {"n_last_blocks": int(self.n_last_blocks), "pooling": self.pooling}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; also reads the older ``{'n_last_blocks', 'avgpool': bool | 0/1/2}``."""
        if "pooling" in d:
            return cls(int(d["n_last_blocks"]), d["pooling"])
        if "avgpool" in d:
            return cls.from_avgpool(int(d["n_last_blocks"]), d["avgpool"])
        raise KeyError(f"a feature spec needs 'n_last_blocks' and 'pooling', got keys {sorted(d)}")

    @classmethod
    def from_avgpool(cls, n_last_blocks: int, avgpool: int | bool) -> FeatureSpec:
        """From DINO / iBOT's ``--avgpool_patchtokens`` 0 / 1 / 2 (``True`` means 2: [CLS] + mean patch)."""
        if isinstance(avgpool, bool):
            avgpool = 2 if avgpool else 0
        pooling = {0: "cls", 1: "avgpool", 2: "cls+avgpool"}.get(int(avgpool))
        if pooling is None:
            raise ValueError(f"avgpool must be 0, 1 or 2, got {avgpool}")
        return cls(int(n_last_blocks), pooling)  # type: ignore[arg-type]

    def check(self, depth: int) -> None:
        """Raise if the backbone (``depth`` blocks) cannot give this feature."""
        if self.blocks_read > depth:
            raise ValueError(f"feature {self.label}: n_last_blocks={self.n_last_blocks} must be in [1, {depth}] "
                             "(the backbone depth)")


def spec_features(model: nn.Module, x: Tensor, specs: Sequence[FeatureSpec]) -> list[Tensor]:
    """Images (B, 3, H, W) -> one (B, spec.dim(D)) tensor per spec, from a single backbone pass.

    ``model`` needs ``get_intermediate_layers(x, n, norm=True)`` returning ``n`` final-norm token sequences
    (B, 1 + N, D), oldest first (:class:`ibot.vit.iBOTViT`).
    """
    if not specs:
        raise ValueError("no feature specs given")
    depth = len(model.blocks) if hasattr(model, "blocks") else max(s.blocks_read for s in specs)
    for s in specs:
        s.check(depth)
    tokens = model.get_intermediate_layers(x, max(s.blocks_read for s in specs), norm=True)
    out = []
    for s in specs:
        parts = [t[:, 0] for t in tokens[len(tokens) - s.n_last_blocks:]] if s.uses_cls else []
        if s.uses_avgpool:
            parts.append(tokens[-1][:, 1:].mean(dim=1))
        out.append(torch.cat(parts, dim=-1))
    return out
