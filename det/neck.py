"""ViTDet-style simple feature pyramid (Li et al., 2022): every level built from one stride-16 map."""
from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import Tensor, nn

from .layers import build_norm


class SimpleFeaturePyramid(BaseModule):
    """Neck turning the last backbone map into a feature pyramid, as detectron2's ``SimpleFeaturePyramid``.

    Per scale factor: 4 -> ConvT(D, D/2) + norm + GELU + ConvT(D/2, D/4); 2 -> ConvT(D, D/2); 1 -> identity;
    0.5 -> MaxPool(2); then a 1x1 and a 3x3 convolution (no bias, each followed by ``norm_cfg``) to
    ``out_channels``. With ``num_outs`` > number of scales, extra levels are max-pooled (k=1, s=2) from the last
    one (detectron2's ``LastLevelMaxPool``, the P6 of Mask R-CNN).

    Use with ``iBOTViTBackbone(pyramid=None, out_indices=(depth - 1,))``.

    Args:
        in_channels: channels of the backbone map (D).
        out_channels: channels of every output level.
        scale_factors: upsampling factor of each level w.r.t. the input map (powers of two).
        num_outs: number of outputs (5 for Cascade Mask R-CNN, 4 for UperNet).
        norm_cfg: ``LN2d`` (ViTDet), ``BN``, ``SyncBN``, ``GN``, ...
        in_index: which backbone output to use (default: the last).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        num_outs: int = 5,
        norm_cfg: dict | None = None,
        in_index: int = -1,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        norm_cfg = norm_cfg or dict(type="LN2d")
        if num_outs < len(scale_factors):
            raise ValueError(f"num_outs={num_outs} < {len(scale_factors)} scale factors")
        self.in_index = in_index
        self.num_outs = num_outs
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            steps = math.log2(scale)
            if steps != int(steps):
                raise ValueError(f"scale factor {scale} is not a power of two")
            layers: list[nn.Module] = []
            dim = in_channels
            for k in range(int(steps)):
                if k > 0:
                    layers += [build_norm(norm_cfg, dim), nn.GELU()]
                layers.append(nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2))
                dim //= 2
            if steps < 0:
                layers.append(nn.MaxPool2d(kernel_size=2 ** -int(steps), stride=2 ** -int(steps)))
            layers += [
                nn.Conv2d(dim, out_channels, kernel_size=1, bias=False),
                build_norm(norm_cfg, out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                build_norm(norm_cfg, out_channels),
            ]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs: Sequence[Tensor] | Tensor) -> tuple[Tensor, ...]:
        x = inputs if isinstance(inputs, Tensor) else inputs[self.in_index]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
