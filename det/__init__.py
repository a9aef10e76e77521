"""Object detection and instance segmentation with iBOT ViTs in MMDetection 3.

``custom_imports = dict(imports=['det'], allow_failed_imports=False)`` in a config (all of ``det/configs/`` have it)
registers the shared :mod:`dense` modules (backbone, simple feature pyramid, ``LN2d``, layer-decay optimizer
constructor) in ``mmdet.registry``, routes mmengine's checkpoint loading through the project's checkpoint policy,
and repairs ``imagecorruptions`` for mmdet's ``Corrupt`` transform on numpy 2.
"""
from ibot.compat.imagecorruptions import install as _install_imagecorruptions

import dense  # noqa: F401  (registers the dense modules in mmdet and mmseg)

_install_imagecorruptions()
