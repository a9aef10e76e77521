"""The pretrained backbone of a transfer run: built and strictly loaded by :func:`ibot.checkpoint.load_backbone`
(the one backbone loader), and described (name, size, description, checkpoint hash) for the result JSON.

A self-describing backbone file (``ibot.checkpoint.save_backbone``) needs no shape flags; a foreign checkpoint
is described from its tensor shapes. ``model.arch`` / ``model.patch_size`` / ``model.embed_dim`` / ``depth`` /
``num_heads`` are optional overrides of that description (``None`` = the file's). Without ``model.pretrained``
the backbone is randomly initialised at ``vit_small`` / 16 unless the flags say otherwise.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ibot.checkpoint import build_backbone as build_described
from ibot.checkpoint import load_backbone, read_backbone
from ibot.vit import ARCHS, iBOTViT

__all__ = ["RANDOM_INIT", "BackboneInfo", "build_backbone", "description_overrides", "recipe_arch"]

log = logging.getLogger(__name__)

#: Architecture of a randomly initialised backbone (no ``model.pretrained``) when the flags do not name one.
RANDOM_INIT = {"arch": "vit_small", "patch_size": 16}
_SHAPE_KEYS = ("embed_dim", "depth", "num_heads")


@dataclass
class BackboneInfo:
    """What the result JSON says about the model (``description``: the backbone description it was built from)."""

    name: str
    arch: str | None
    patch_size: int
    embed_dim: int
    depth: int
    params: int
    pretrain_data: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    checkpoint_key: str | None
    load_report: str
    description: dict[str, Any] = field(default_factory=dict)
    described: bool = False
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for the result record's ``model`` section."""
        return asdict(self)


def _check_arch(arch: str) -> None:
    """Raise for a name that is not an ``ibot.vit.ARCHS`` preset."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")


def description_overrides(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Description entries the flags replace: ``arch`` brings its preset shape, explicit
    ``embed_dim`` / ``depth`` / ``num_heads`` / ``patch_size`` win over it; unset (``None``) flags give nothing."""
    out: dict[str, Any] = {}
    if model_cfg.get("arch") is not None:
        _check_arch(model_cfg["arch"])
        out.update(arch=model_cfg["arch"], **ARCHS[model_cfg["arch"]])
    if model_cfg.get("patch_size") is not None:
        out["patch_size"] = int(model_cfg["patch_size"])
    out.update({k: int(model_cfg[k]) for k in _SHAPE_KEYS if model_cfg.get(k) is not None})
    return out


def recipe_arch(model_cfg: dict[str, Any]) -> str | None:
    """The arch preset whose recipe applies (per-arch fine-tuning settings, linear-probe features): the flag,
    else the checkpoint's description (read from the file), else the random-initialisation default. A checkpoint of
    a non-preset size takes the recipe of the preset of the nearest width (a 96-d or a 2-block 192-d toy ViT gets
    ViT-Tiny's), which is logged."""
    if model_cfg.get("arch") is not None:
        return model_cfg["arch"]
    if model_cfg.get("pretrained") is None:
        return RANDOM_INIT["arch"]
    found = read_backbone(model_cfg["pretrained"], trusted=bool(model_cfg.get("trust_checkpoint")),
                          key=model_cfg.get("checkpoint_key"))
    if found.model["arch"] is not None:
        return found.model["arch"]
    width = int(found.model["embed_dim"])
    nearest = min(ARCHS, key=lambda a: (abs(ARCHS[a]["embed_dim"] - width), ARCHS[a]["embed_dim"]))
    log.info("'%s' is a non-preset ViT (width %d, depth %d): using the %s recipe (nearest width)",
             model_cfg["pretrained"], width, found.model["depth"], nearest)
    return nearest


def _random_description(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Description of a randomly initialised backbone: the random-init defaults under the flags."""
    arch = model_cfg.get("arch") or RANDOM_INIT["arch"]
    _check_arch(arch)
    desc = {"family": "vit", "arch": arch, "patch_size": RANDOM_INIT["patch_size"],
            "img_size": int(model_cfg["img_size"]), **ARCHS[arch]}
    return {**desc, **description_overrides(model_cfg)}


def _random_backbone(model_cfg: dict[str, Any], build: dict[str, Any]) -> tuple[iBOTViT, dict[str, Any]]:
    """A randomly initialised backbone and its provenance fields of :class:`BackboneInfo`."""
    log.warning("no --pretrained checkpoint: the backbone keeps its random initialisation")
    desc = _random_description(model_cfg)
    return build_described(desc, **build), {"description": desc, "checkpoint_sha256": None,
                                             "load_report": "random initialisation", "described": False,
                                             "source": {}}


def _loaded_backbone(model_cfg: dict[str, Any], build: dict[str, Any]) -> tuple[iBOTViT, dict[str, Any]]:
    """The checkpoint's backbone (strict load) and its provenance fields of :class:`BackboneInfo`."""
    model, rep = load_backbone(model_cfg["pretrained"], trusted=bool(model_cfg.get("trust_checkpoint")),
                               key=model_cfg.get("checkpoint_key"), overrides=description_overrides(model_cfg),
                               **build)
    return model, {"description": dict(rep.model), "checkpoint_sha256": rep.sha256,
                   "load_report": str(rep.load).splitlines()[0], "described": rep.described,
                   "source": dict(rep.source)}


def build_backbone(model_cfg: dict[str, Any], drop_path_rate: float = 0.0) -> tuple[iBOTViT, BackboneInfo]:
    """Backbone from the ``model`` section of a resolved config (see ``transfer.configs.defaults.COMMON``).

    The model takes ``model.img_size`` inputs (the checkpoint's position embedding is resized on load).
    ``model.pretrained`` ``None`` keeps the random initialisation (logged as a warning, recorded in the JSON).
    """
    build = {"img_size": int(model_cfg["img_size"]), "pos_interp": "size", "drop_path_rate": drop_path_rate}
    path = model_cfg.get("pretrained")
    model, found = (_random_backbone if path is None else _loaded_backbone)(model_cfg, build)
    desc = found["description"]
    info = BackboneInfo(
        name=model_cfg.get("name") or _default_name(desc, path), arch=desc["arch"], patch_size=desc["patch_size"],
        embed_dim=model.embed_dim, depth=len(model.blocks), params=sum(p.numel() for p in model.parameters()),
        pretrain_data=model_cfg.get("pretrain_data") or "unknown",
        checkpoint=os.fspath(path) if path is not None else None, checkpoint_key=model_cfg.get("checkpoint_key"),
        **found,
    )
    return model, info


def _default_name(desc: dict[str, Any], path: str | None) -> str:
    """``vit_small/16 (<checkpoint stem>)``; a non-preset size shows as ``vit-<width>x<depth>``."""
    arch = desc["arch"] or f"vit-{desc['embed_dim']}x{desc['depth']}"
    base = f"{arch}/{desc['patch_size']}"
    return f"{base} ({Path(path).stem})" if path else f"{base} (random init)"
