"""Small layers shared by the dense-prediction modules."""
from __future__ import annotations

import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ViTDet's ``LN2d``); registered as ``LN2d``."""

    def __init__(self, num_channels: int, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(num_channels, eps=eps, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def build_norm(cfg: dict, num_channels: int) -> nn.Module:
    """``norm_cfg`` -> module: ``LN2d`` here, everything else through mmcv (``BN``, ``SyncBN``, ``GN``, ...)."""
    cfg = dict(cfg)
    if cfg.get("type") in ("LN2d", LayerNorm2d):
        cfg.pop("type")
        cfg.pop("requires_grad", None)
        return LayerNorm2d(num_channels, **cfg)
    return build_norm_layer(cfg, num_channels)[1]
