"""The pretrained backbone of a transfer run: built with ``ibot.vit.build_vit``, loaded strictly through
``ibot.checkpoint``, and described (name, size, checkpoint hash) for the result JSON."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ibot.checkpoint import extract_backbone_state_dict, load_file, load_state_dict_report
from ibot.vit import ARCHS, build_vit, iBOTViT

__all__ = ["BackboneInfo", "build_backbone", "file_sha256", "LOAD_IGNORE"]

log = logging.getLogger(__name__)

#: Keys a pretrained file may hold that transfer never uses: the student's mask token and a pretrained
#: classifier (timm / DeiT flat dicts). Everything else must match the model exactly.
LOAD_IGNORE = ("masked_embed", "head.weight", "head.bias")


@dataclass
class BackboneInfo:
    """What the result JSON says about the model."""

    name: str
    arch: str
    patch_size: int
    embed_dim: int
    depth: int
    params: int
    pretrain_data: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    checkpoint_key: str | None
    load_report: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_backbone(model_cfg: dict[str, Any], drop_path_rate: float = 0.0) -> tuple[iBOTViT, BackboneInfo]:
    """Backbone from the ``model`` section of a resolved config (see ``transfer.configs.defaults.MODEL``).

    ``embed_dim`` / ``depth`` / ``num_heads`` override the ``arch`` preset (tiny test models); ``pretrained``
    ``None`` keeps the random initialisation (logged as a warning, recorded in the JSON).
    """
    arch = model_cfg["arch"]
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    shape = {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads") if model_cfg.get(k) is not None}
    model = build_vit(arch, patch_size=model_cfg["patch_size"], img_size=model_cfg["img_size"], pos_interp="size",
                      drop_path_rate=drop_path_rate, **shape)
    path, key = model_cfg.get("pretrained"), model_cfg.get("checkpoint_key")
    if path is None:
        log.warning("no --pretrained checkpoint: the backbone keeps its random initialisation")
        digest, report = None, "random initialisation"
    else:
        digest = file_sha256(path)
        sd = extract_backbone_state_dict(load_file(path, trusted=bool(model_cfg.get("trust_checkpoint"))), key)
        rep = load_state_dict_report(model, sd, strict=True, ignore=LOAD_IGNORE)
        report = str(rep).splitlines()[0]
        log.info("loaded '%s' (sha256 %s): %s", path, digest[:12], report)
    name = model_cfg.get("name") or _default_name(arch, model_cfg["patch_size"], path)
    info = BackboneInfo(
        name=name, arch=arch, patch_size=model_cfg["patch_size"], embed_dim=model.embed_dim,
        depth=len(model.blocks), params=sum(p.numel() for p in model.parameters()),
        pretrain_data=model_cfg.get("pretrain_data") or "unknown",
        checkpoint=os.fspath(path) if path is not None else None, checkpoint_sha256=digest, checkpoint_key=key,
        load_report=report,
    )
    return model, info


def _default_name(arch: str, patch: int, path: str | None) -> str:
    base = f"{arch}/{patch}"
    return f"{base} ({Path(path).stem})" if path else f"{base} (random init)"
