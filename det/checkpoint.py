"""Backbone initialisation for the dense harnesses, on top of :mod:`ibot.checkpoint` (the project's one loader).

Supported sources (all through :func:`ibot.checkpoint.extract_backbone_state_dict`, plus mmengine det/seg
checkpoints of :class:`~det.backbone.iBOTViTBackbone`, whose keys are ``backbone.vit.*``):

* our pre-training checkpoints and official iBOT / DINO full checkpoints (``student`` / ``teacher``; teacher by
  default). Official ones pickle an ``argparse.Namespace`` and need the trust opt-in;
* backbone-only files (``{'state_dict': ...}``, e.g. from ``tools/convert_checkpoint.py``), DINO's released
  flat dicts, timm ``VisionTransformer`` state dicts (``.pth`` / ``.safetensors``; classifier dropped);
* ``http(s)://`` URLs (downloaded once into ``torch.hub``'s checkpoint directory).

Trust: a file is unpickled with ``weights_only=False`` only if it was allow-listed with
:func:`ibot.compat.mmengine.trust_checkpoint` (``--trust-checkpoint`` in ``tools/train.py``).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ibot.checkpoint import LoadReport, extract_backbone_state_dict, load_file, load_state_dict_report
from ibot.compat.mmengine import is_trusted

#: Checkpoint keys never loaded into the dense backbone: the student's mask token, timm / DeiT classifiers and
#: pooling norms.
ALWAYS_IGNORED = ("masked_embed", "head", "head_dist", "fc_norm", "pre_logits")


def read_checkpoint(source: str, map_location: Any = "cpu") -> Any:
    """Load a local path or URL through :func:`ibot.checkpoint.load_file` with the trust allow-list."""
    if urlparse(source).scheme in ("http", "https"):
        directory = os.path.join(torch.hub.get_dir(), "checkpoints")
        local = os.path.join(directory, os.path.basename(urlparse(source).path))
        if not os.path.isfile(local):
            os.makedirs(directory, exist_ok=True)
            print_log(f"downloading {source} to {local}", logger="current")
            torch.hub.download_url_to_file(source, local)
        return load_file(local, trusted=is_trusted(source) or is_trusted(local), map_location=map_location)
    source = os.path.expanduser(source)
    return load_file(source, trusted=is_trusted(source), map_location=map_location)


def backbone_state_dict(ckpt: Mapping[str, Any], checkpoint_key: str | None = None) -> dict[str, Tensor]:
    """iBOT/timm-named backbone weights of any supported checkpoint (see the module docstring)."""
    sd = extract_backbone_state_dict(ckpt, checkpoint_key)
    if any(k.startswith("vit.") for k in sd):  # an mmengine checkpoint of iBOTViTBackbone
        sd = {k[len("vit."):]: v for k, v in sd.items() if k.startswith("vit.")}
    return sd


def split_ignored(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """(``sd`` without the :data:`ALWAYS_IGNORED` keys, the dropped key names)."""
    dropped = sorted(k for k in sd if any(k == p or k.startswith(p + ".") for p in ALWAYS_IGNORED))
    return {k: v for k, v in sd.items() if k not in dropped}, dropped


def load_pretrained(
    vit: nn.Module,
    checkpoint: str,
    checkpoint_key: str | None = None,
    strict: bool = False,
    map_location: Any = "cpu",
) -> LoadReport:
    """Load backbone weights into ``vit`` (an :class:`ibot.vit.iBOTViT`) and log what happened.

    ``pos_embed`` is resized to the model's grid; keys in :data:`ALWAYS_IGNORED` (and the final ``norm`` when the
    model has none) are reported as ignored. ``strict=True`` raises on missing or unexpected keys; in any case a
    checkpoint that matches nothing raises.
    """
    ckpt = read_checkpoint(checkpoint, map_location=map_location)
    sd = backbone_state_dict(ckpt, checkpoint_key)
    ignore = ALWAYS_IGNORED + (("norm",) if isinstance(vit.norm, nn.Identity) else ())
    report = load_state_dict_report(vit, sd, strict=strict, ignore=ignore)
    if report.loaded == 0:
        raise ValueError(f"no tensor of '{checkpoint}' matches the backbone:\n{report}")
    where = f"'{checkpoint}'" + (f"[{checkpoint_key!r}]" if checkpoint_key else "")
    print_log(f"backbone initialised from {where}\n{report}", logger="current",
              level=logging.INFO if report.ok else logging.WARNING)
    return report
