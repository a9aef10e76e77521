"""Registration of the dense modules in MMDetection's and MMSegmentation's registries.

The same classes go into ``mmdet.registry`` and ``mmseg.registry`` (each only if that toolkit imports), so a config
of either toolkit can say ``type='iBOTViTBackbone'`` once ``custom_imports=dict(imports=['det'])`` (or ``['seg']``,
or ``['det']``) has imported this package.
"""
from __future__ import annotations

import importlib

from .backbone import iBOTViTBackbone
from .layers import LayerNorm2d
from .neck import SimpleFeaturePyramid
from .optim import ViTLayerDecayOptimWrapperConstructor

MODELS = {"iBOTViTBackbone": iBOTViTBackbone, "SimpleFeaturePyramid": SimpleFeaturePyramid, "LN2d": LayerNorm2d}
OPTIM_WRAPPER_CONSTRUCTORS = {"ViTLayerDecayOptimWrapperConstructor": ViTLayerDecayOptimWrapperConstructor}
TOOLKITS = ("mmdet", "mmseg")


def _register(registry, name: str, cls: type) -> None:
    existing = registry.module_dict.get(name)
    if existing is cls:
        return
    if existing is not None:
        raise KeyError(f"{name} is already registered in {registry.scope}::{registry.name} as {existing}")
    registry.register_module(name=name, module=cls)


def register_modules(toolkits: tuple[str, ...] = TOOLKITS) -> list[str]:
    """Register into every importable toolkit of ``toolkits``; returns the toolkits registered into."""
    done = []
    for toolkit in toolkits:
        try:
            reg = importlib.import_module(f"{toolkit}.registry")
        except ImportError:
            continue
        for name, cls in MODELS.items():
            _register(reg.MODELS, name, cls)
        for name, cls in OPTIM_WRAPPER_CONSTRUCTORS.items():
            _register(reg.OPTIM_WRAPPER_CONSTRUCTORS, name, cls)
        done.append(toolkit)
    return done
