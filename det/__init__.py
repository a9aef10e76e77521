"""Object detection and instance segmentation with iBOT ViTs in MMDetection 3 — and the dense-prediction
modules MMSegmentation shares (``seg`` imports this package).

``custom_imports = dict(imports=['det'], allow_failed_imports=False)`` in a config (all of ``det/configs/`` have it)
registers :class:`iBOTViTBackbone`, :class:`SimpleFeaturePyramid`, ``LN2d`` and
:class:`ViTLayerDecayOptimWrapperConstructor` in both toolkits' registries, routes mmengine's local checkpoint
loading through the project's checkpoint policy (:func:`ibot.compat.mmengine.install`), and repairs
``imagecorruptions`` for mmdet's ``Corrupt`` transform on numpy 2.
"""
from ibot.compat.imagecorruptions import install as _install_imagecorruptions
from ibot.compat.mmengine import install as _install_checkpoint_policy

from .backbone import DeconvPyramid, default_out_indices, iBOTViTBackbone
from .checkpoint import resolve_checkpoint
from .layers import LayerNorm2d
from .neck import SimpleFeaturePyramid
from .optim import ViTLayerDecayOptimWrapperConstructor, get_layer_id
from .registry import register_modules

_install_checkpoint_policy()
_install_imagecorruptions()
register_modules()

__all__ = [
    "DeconvPyramid",
    "LayerNorm2d",
    "SimpleFeaturePyramid",
    "ViTLayerDecayOptimWrapperConstructor",
    "default_out_indices",
    "get_layer_id",
    "iBOTViTBackbone",
    "register_modules",
    "resolve_checkpoint",
]
