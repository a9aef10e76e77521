"""Where the dense backbones' init checkpoint comes from: URL download and the trust allow-list, in front of
:func:`ibot.checkpoint.load_backbone` (the project's one backbone loader, which reads every supported format:
self-describing backbone files, our pre-training checkpoints, official iBOT / DINO full checkpoints, DINO / timm
flat state dicts, mmengine det/seg checkpoints of :class:`~det.backbone.iBOTViTBackbone`).

Trust: a file is unpickled with ``weights_only=False`` only if it was allow-listed with
:func:`ibot.compat.mmengine.trust_checkpoint` (``--trust-checkpoint`` in ``python -m det.cli train``).
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log

from ibot.compat.mmengine import is_trusted


def resolve_checkpoint(source: str) -> tuple[str, bool]:
    """(local path, whether it is trusted) of a checkpoint path or ``http(s)://`` URL.

    URLs are downloaded once into ``torch.hub``'s checkpoint directory; a download is trusted when the URL or the
    local copy is on the allow-list.
    """
    if urlparse(source).scheme not in ("http", "https"):
        path = os.path.expanduser(source)
        return path, is_trusted(path)
    directory = os.path.join(torch.hub.get_dir(), "checkpoints")
    local = os.path.join(directory, os.path.basename(urlparse(source).path))
    if not os.path.isfile(local):
        os.makedirs(directory, exist_ok=True)
        print_log(f"downloading {source} to {local}", logger="current")
        torch.hub.download_url_to_file(source, local)
    return local, is_trusted(source) or is_trusted(local)
