"""Semantic segmentation with iBOT ViTs in MMSegmentation 1.

``custom_imports = dict(imports=['seg'], allow_failed_imports=False)`` in a config (all of ``seg/configs/`` have it)
registers the shared dense-prediction modules of :mod:`det` (backbone, simple feature pyramid, ``LN2d``, layer-decay
optimizer constructor) and :class:`~seg.datasets.CamVidDataset` in ``mmseg.registry``, and routes mmengine's
checkpoint loading through the project's checkpoint policy. Training and testing: ``python -m det.cli train|test``.
"""
import det  # noqa: F401  (registers the shared backbone, neck, LN2d and optimizer constructor)

from .datasets import CamVidDataset

__all__ = ["CamVidDataset"]
