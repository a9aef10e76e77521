"""Dense prediction with iBOT ViTs in MMDetection 3 / MMSegmentation 1 (shared by ``det`` and ``seg``).

Importing this package registers :class:`iBOTViTBackbone`, :class:`SimpleFeaturePyramid`, ``LN2d`` and
:class:`ViTLayerDecayOptimWrapperConstructor` in both toolkits' registries, and routes mmengine's local checkpoint
loading through the project's checkpoint policy (:func:`ibot.compat.mmengine.install`).
"""
from ibot.compat.mmengine import install as _install_checkpoint_policy

from .backbone import DeconvPyramid, default_out_indices, iBOTViTBackbone
from .checkpoint import backbone_state_dict, load_pretrained
from .layers import LayerNorm2d
from .neck import SimpleFeaturePyramid
from .optim import ViTLayerDecayOptimWrapperConstructor, get_layer_id
from .registry import register_modules

_install_checkpoint_policy()
register_modules()

__all__ = [
    "DeconvPyramid",
    "LayerNorm2d",
    "SimpleFeaturePyramid",
    "ViTLayerDecayOptimWrapperConstructor",
    "backbone_state_dict",
    "default_out_indices",
    "get_layer_id",
    "iBOTViTBackbone",
    "load_pretrained",
    "register_modules",
]
