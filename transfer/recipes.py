"""Resolve a run's configuration: protocol defaults → data-set recipe → per-arch recipe → ``key=value`` overrides.

The data lives in ``transfer/configs/`` (``defaults.py`` and one file per data set). Every override must name an
existing key (``optim.lr=1e-5``; a typo raises with the valid keys listed), and the resolved config is plain
JSON (lists, not tuples) so it can be stored in checkpoints and result files and compared on resume.
"""
from __future__ import annotations

import ast
import copy
import importlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from transfer.configs import defaults

__all__ = ["PROTOCOLS", "DATASET_NAMES", "ConfigKeyError", "resolve", "parse_overrides", "merge"]

PROTOCOLS = ("finetune", "knn", "linear")
DATASET_NAMES = ("cifar10", "cifar100", "flowers102", "cars", "inat2018", "inat2019", "imagefolder")


class ConfigKeyError(KeyError):
    __str__ = BaseException.__str__


def merge(base: dict[str, Any], delta: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Recursive update of ``base`` by ``delta`` (in place); keys of ``delta`` must exist in ``base``."""
    for key, value in delta.items():
        if key not in base:
            raise ConfigKeyError(f"unknown config key '{where}{key}'; valid keys here: {sorted(base)}")
        if isinstance(base[key], dict) and isinstance(value, Mapping):
            merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = copy.deepcopy(value)
    return base


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # paths and names stay strings


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``['optim.lr=1e-5', 'model.name=ibot']`` -> nested dict ``{'optim': {'lr': 1e-5}, 'model': {...}}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-5)")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(value)
    return out


def _dataset_module(name: str):
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose from {list(DATASET_NAMES)}")
    return importlib.import_module(f"transfer.configs.{name}")


def resolve(protocol: str, dataset: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full configuration of a ``protocol`` run on ``dataset`` (see ``transfer/configs/``)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    overrides = copy.deepcopy(dict(overrides or {}))
    cfg = copy.deepcopy(defaults.COMMON)
    cfg.update(copy.deepcopy({"finetune": defaults.FINETUNE, "knn": defaults.KNN, "linear": defaults.LINEAR}[protocol]))
    cfg["protocol"] = protocol
    module = _dataset_module(dataset)
    merge(cfg["data"], module.DATA, "data.")
    arch = overrides.get("model", {}).get("arch", cfg["model"]["arch"])
    if protocol == "finetune":
        merge(cfg, module.FINETUNE)
        merge(cfg, module.FINETUNE_BY_ARCH.get(arch, {}))
    merge(cfg, overrides)
    if protocol == "linear" and cfg["features"] == "auto":
        if cfg["model"]["arch"] not in defaults.LINEAR_FEATURES_BY_ARCH:
            raise ValueError(f"no linear feature preset for arch {cfg['model']['arch']!r}: set features=[...]")
        cfg["features"] = copy.deepcopy(defaults.LINEAR_FEATURES_BY_ARCH[cfg["model"]["arch"]])
    return json.loads(json.dumps(cfg))
