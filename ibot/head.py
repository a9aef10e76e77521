"""iBOT projection head (official ``models/head.py::iBOTHead``, GELU, no norm layers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, ``W = g · v / ‖v‖`` row-wise.

    Stores ``weight_g`` (K, 1) and ``weight_v`` (K, C) under the names the deprecated
    ``torch.nn.utils.weight_norm`` used, which are the names in official iBOT/DINO checkpoints.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        v = nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone()  # nn.Linear's default init
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., K)."""
        return F.linear(x, self.weight)


class iBOTHead(nn.Module):
    """MLP D→hidden→hidden→bottleneck (GELU), L2-normalise, weight-normed linear to K logits.

    [CLS] goes through ``last_layer`` (``out_dim``), patch tokens through ``last_layer2``
    (``patch_out_dim``), which *is* ``last_layer`` when ``shared_head``. ``weight_g`` starts at 1 and
    is frozen when ``norm_last_layer``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        shared_head: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError("nlayers must be >= 1")
        if shared_head and out_dim != patch_out_dim:
            raise ValueError(f"shared_head needs out_dim == patch_out_dim, got {out_dim} and {patch_out_dim}")
        if nlayers == 1:  # a bare Linear, as the official DINOHead (keys mlp.weight / mlp.bias)
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.shared_head = shared_head
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer2 = self.last_layer if shared_head else WeightNormLinear(bottleneck_dim, patch_out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad_(False)
            self.last_layer2.weight_g.requires_grad_(False)

    def embed(self, x: Tensor) -> Tensor:
        """Tokens (..., D) -> L2-normalised bottleneck features (..., bottleneck)."""
        return F.normalize(self.mlp(x), dim=-1, p=2)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """(B, D) -> (B, K); (B, 1 + N, D) -> ((B, K), (B, N, K_patch)) as the official head."""
        z = self.embed(x)
        if x.ndim == 2:
            return self.last_layer(z)
        return self.last_layer(z[:, 0]), self.last_layer2(z[:, 1:])
