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
from types import ModuleType
from typing import Any

from ibot.features import FeatureSpec
from transfer.backbone import recipe_arch
from transfer.configs import defaults

__all__ = ["PROTOCOLS", "DATASET_NAMES", "ConfigKeyError", "resolve", "parse_overrides", "merge"]

PROTOCOLS = ("finetune", "knn", "linear")
DATASET_NAMES = ("cifar10", "cifar100", "flowers102", "cars", "inat2018", "inat2019", "imagefolder")


class ConfigKeyError(KeyError):
    """An override names a key the config does not have (the message lists the valid ones)."""

    __str__ = BaseException.__str__  # KeyError would print the message in quotes, escaped


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
    """``--set`` value text -> a Python literal (bool / None case-insensitively), else the text itself."""
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


def _dataset_module(name: str) -> ModuleType:
    """The recipe module ``transfer.configs.<name>``."""
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
    # The per-arch recipe follows the backbone actually evaluated: --arch, else the checkpoint's description.
    arch = recipe_arch(merge(copy.deepcopy(cfg["model"]), overrides.get("model", {}), "model."))
    if protocol == "finetune":
        merge(cfg, module.FINETUNE)
        merge(cfg, module.FINETUNE_BY_ARCH.get(arch, {}))
    merge(cfg, overrides)
    if protocol == "linear":
        cfg["features"] = _linear_features(cfg["features"], arch)
    if protocol == "knn":
        cfg["feature"] = FeatureSpec.from_dict(cfg["feature"]).to_dict()
    return json.loads(json.dumps(cfg))


def _linear_features(features: str | list[Mapping[str, Any]], arch: str | None) -> list[dict[str, Any]]:
    """The linear-probe feature specs as ``FeatureSpec.to_dict()`` dicts (the older ``avgpool`` form is read too);
    ``'auto'``: the preset of ``arch``."""
    if features == "auto":
        if arch not in defaults.LINEAR_FEATURES_BY_ARCH:
            raise ValueError(f"no linear feature preset for arch {arch!r}: set features=[...]")
        features = defaults.LINEAR_FEATURES_BY_ARCH[arch]
    if isinstance(features, str) or not features:
        raise ValueError(f"features must be 'auto' or a non-empty list of feature specs, got {features!r}")
    return [FeatureSpec.from_dict(d).to_dict() for d in features]
