"""Layer-wise learning-rate decay for ViT backbones, one constructor for MMDetection and MMSegmentation.

Layer ids follow BEiT / iBOT (``get_num_layer_for_vit``): 0 for the backbone's ``cls_token``, ``pos_embed``,
mask token and ``patch_embed``; i + 1 for ``blocks.i``; L + 1 for everything else (final norm, pyramid, neck,
heads). A parameter of layer id ``l`` gets ``lr = base_lr * rate ** (L + 1 - l)``.

Weight decay: 0 for every 1-D parameter (biases, norm scales), every ``*.bias`` and the backbone's
``pos_embed`` / ``cls_token`` / mask token; ``weight_decay`` for the rest. The official iBOT constructor meant to
do the same but compared the full names (``backbone.pos_embed``) against ``('pos_embed', 'cls_token')``, so it
decayed both by accident; we follow the intent (as BEiT's and mmseg's ``LayerDecayOptimizerConstructor``,
timm's ``no_weight_decay``). ``paramwise_cfg=dict(..., decay_embeddings=True)`` restores the official behaviour.
"""
from __future__ import annotations

import re
from collections import OrderedDict

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

#: Backbone parameters (last name component) that belong to layer 0 and get no weight decay.
EMBEDDING_NAMES = ("cls_token", "pos_embed", "mask_token", "masked_embed")
_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.")


def get_layer_id(name: str, num_layers: int, backbone_prefix: str = "backbone.") -> int:
    """Layer id of a parameter name of a detector / segmentor (see the module docstring)."""
    if name.startswith("module."):
        name = name[len("module."):]
    if not name.startswith(backbone_prefix):
        return num_layers + 1
    rest = name[len(backbone_prefix):]
    if rest.startswith("vit."):
        rest = rest[len("vit."):]
    if rest in EMBEDDING_NAMES or rest.startswith("patch_embed."):
        return 0
    match = _BLOCK.match(rest) if rest.startswith(("blocks.", "layers.")) else None
    if match is not None:
        return int(match.group(1)) + 1
    return num_layers + 1


def no_weight_decay(name: str, param: nn.Parameter, decay_embeddings: bool = False) -> bool:
    if param.ndim <= 1 or name.endswith(".bias"):
        return True
    return not decay_embeddings and name.rsplit(".", 1)[-1] in EMBEDDING_NAMES


def _count_blocks(model: nn.Module, backbone_prefix: str) -> int | None:
    ids = set()
    for name, _ in model.named_parameters():
        if name.startswith(backbone_prefix):
            rest = name[len(backbone_prefix):]
            rest = rest[len("vit."):] if rest.startswith("vit.") else rest
            match = _BLOCK.match(rest) if rest.startswith(("blocks.", "layers.")) else None
            if match is not None:
                ids.add(int(match.group(1)))
    return max(ids) + 1 if ids else None


class ViTLayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``optim_wrapper=dict(constructor='ViTLayerDecayOptimWrapperConstructor', paramwise_cfg=dict(
    layer_decay_rate=0.75, num_layers=12))``.

    ``paramwise_cfg`` keys: ``layer_decay_rate`` (required), ``num_layers`` (optional; checked against the
    backbone's block count, which is used when omitted), ``decay_embeddings`` (default False, see the module
    docstring), ``backbone_prefix`` (default ``'backbone.'``). Any other key raises, so a typo cannot silently
    fall back to uniform learning rates. Frozen parameters are left out. Param groups carry ``lr_scale``,
    ``layer_id`` and ``param_names``.
    """

    KNOWN_KEYS = {"layer_decay_rate", "num_layers", "decay_embeddings", "backbone_prefix"}

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        cfg = self.paramwise_cfg
        unknown = set(cfg) - self.KNOWN_KEYS
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown paramwise_cfg keys {sorted(unknown)}; "
                             f"supported: {sorted(self.KNOWN_KEYS)}")
        if "layer_decay_rate" not in cfg:
            raise ValueError(f"{type(self).__name__} needs paramwise_cfg.layer_decay_rate")
        rate = float(cfg["layer_decay_rate"])
        prefix = cfg.get("backbone_prefix", "backbone.")
        decay_embeddings = bool(cfg.get("decay_embeddings", False))
        found = _count_blocks(module, prefix)
        num_layers = cfg.get("num_layers", found)
        if num_layers is None:
            raise ValueError(f"no '{prefix}blocks.N' parameters found; pass paramwise_cfg.num_layers")
        if found is not None and found != num_layers:
            raise ValueError(f"paramwise_cfg.num_layers={num_layers} but the backbone has {found} blocks")

        groups: dict[tuple[int, bool], dict] = OrderedDict()
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = get_layer_id(name, num_layers, prefix)
            decay = not no_weight_decay(name, param, decay_embeddings)
            key = (layer_id, decay)
            if key not in groups:
                scale = rate ** (num_layers + 1 - layer_id)
                groups[key] = dict(params=[], param_names=[], lr=self.base_lr * scale,
                                   weight_decay=self.base_wd if decay else 0.0, lr_scale=scale, layer_id=layer_id)
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        ordered = [groups[k] for k in sorted(groups)]
        params.extend(ordered)
        lines = [f"{type(self).__name__}: rate {rate}, {num_layers} layers, base lr {self.base_lr}, "
                 f"weight decay {self.base_wd}"]
        for g in ordered:
            lines.append(f"  layer {g['layer_id']:>2} lr x{g['lr_scale']:.4g} wd {g['weight_decay']:g}: "
                         f"{len(g['params'])} tensors ({g['param_names'][0]}, ...)")
        print_log("\n".join(lines), logger="current")
