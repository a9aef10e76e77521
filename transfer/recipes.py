"""Resolve a run's configuration: protocol defaults → data-set recipe → per-arch recipe → ``key=value`` overrides.

The data lives in ``transfer/configs/`` (``defaults.py`` and one file per data set). Every override must name an
existing key (``optim.lr=1e-5``; a typo raises with the valid keys listed and the nearest key suggested) and have
the type of that key's default (int / float / bool / str / list, ``None`` where :data:`VALUE_KINDS` allows it; an
int is accepted for a float). The resolved config is then checked value by value (:func:`validate`: ``epochs >= 1``,
positive learning rates, ...) before any run starts, and is plain JSON (lists, not tuples) so it can be stored in
checkpoints and result files and compared on resume. Errors are :class:`ConfigKeyError` (unknown key) and
:class:`ConfigValueError` (wrong type or value); both name the key and the value.
"""
from __future__ import annotations

import ast
import copy
import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

from ibot import config_check as cc
from ibot.features import FeatureSpec
from transfer.backbone import recipe_arch
from transfer.configs import defaults

__all__ = ["PROTOCOLS", "DATASET_NAMES", "VALUE_KINDS", "ConfigKeyError", "ConfigValueError", "resolve",
           "parse_overrides", "merge", "check_value", "suggest_keys", "validate"]

PROTOCOLS = ("finetune", "knn", "linear")
DATASET_NAMES = ("cifar10", "cifar100", "flowers102", "cars", "inat2018", "inat2019", "imagefolder")


class ConfigKeyError(KeyError):
    """An override names a key the config does not have (the message lists the valid ones and the nearest)."""

    __str__ = BaseException.__str__  # KeyError would print the message in quotes, escaped


class ConfigValueError(ValueError):
    """A config value of the wrong type or out of range; the message names the key, the value and the fix."""


#: Keys whose value may take kinds other than their default's (``"none"`` = may be ``None``): every key whose
#: default is ``None`` is listed with the kind it takes when set. Other keys take their default's kind.
VALUE_KINDS: dict[str, tuple[str, ...]] = {
    "amp": ("bool", "none"), "output_dir": ("str", "none"),
    "data.name": ("str",), "data.root": ("str", "none"), "data.num_classes": ("int", "none"),
    "data.tag": ("str", "none"),
    "model.arch": ("str", "none"), "model.patch_size": ("int", "none"), "model.embed_dim": ("int", "none"),
    "model.depth": ("int", "none"), "model.num_heads": ("int", "none"), "model.pretrained": ("str", "none"),
    "model.checkpoint_key": ("str", "none"), "model.name": ("str", "none"), "model.pretrain_data": ("str", "none"),
    "optim.layer_decay": ("float", "none"), "optim.clip_grad": ("float", "none"),
    "aug.auto_augment": ("str", "none"),  # None = no RandAugment
    "features": ("str", "list"),  # 'auto' or a list of feature-spec dicts
}
#: Element kind of list-valued keys whose default does not show it.
ELEMENT_KINDS = {"features": "dict"}

#: Up to three known dotted keys nearest to an unknown one (:func:`ibot.config_check.nearest_keys`).
suggest_keys = cc.nearest_keys


def _kinds(key: str, default: Any) -> tuple[str, ...]:
    """The kinds ``key`` accepts: :data:`VALUE_KINDS`, else its default's (``None`` default: any)."""
    return cc.key_kinds(key, default, VALUE_KINDS)


def check_value(key: str, value: Any, default: Any) -> Any:
    """``value`` for config ``key`` checked against the kinds the key takes (see :data:`VALUE_KINDS`); an int for a
    float key becomes a float, a tuple a list. Raises :class:`ConfigValueError` naming the key."""
    try:
        return cc.check_kind(key, value, _kinds(key, default), cc.element_kind(key, default, ELEMENT_KINDS))
    except cc.KindMismatch as e:
        shown = cc.EXAMPLES.get(e.kinds[0]) if e.element else default
        example = f"{e.key}={shown!r}" if shown is not None else f"{e.key}=<{cc.describe_kinds(e.kinds)}>"
        raise ConfigValueError(f"config key '{e.key}' must be {cc.describe_kinds(e.kinds)}, got {e.value!r} "
                               f"({cc.kind_name(cc.kind_of(e.value))}); e.g. --set {example}") from None


def merge(base: dict[str, Any], delta: Mapping[str, Any], where: str = "",
          known: Iterable[str] | None = None) -> dict[str, Any]:
    """Recursive update of ``base`` by ``delta`` (in place); keys of ``delta`` must exist in ``base`` and values must
    have their kind (:func:`check_value`). ``known``: every key of the whole config, for "did you mean" hints."""
    known = list(known) if known is not None else list(cc.flatten(base, where))
    for key, value in delta.items():
        full = f"{where}{key}"
        if key not in base:
            hint = cc.did_you_mean(suggest_keys(full, known))
            raise ConfigKeyError(f"unknown config key '{full}'; valid keys here: {sorted(base)}{hint} "
                                 "(--print-config shows every key)")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigValueError(f"config key '{full}' is a section, not a value (got {value!r}): set its keys, "
                                       f"e.g. --set {full}.{next(iter(base[key]), 'key')}=...")
            merge(base[key], value, f"{full}.", known)
        else:
            base[key] = copy.deepcopy(check_value(full, value, base[key]))
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


def parse_overrides(items: Iterable[str], reference: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``['optim.lr=1e-5', 'model.name=ibot']`` -> nested dict ``{'optim': {'lr': 1e-5}, 'model': {...}}``.

    Values are Python literals (``true`` / ``none`` in any case), else text. With ``reference`` (the resolved
    default config), a key that takes text keeps the text as written (``model.name=007``, ``data.tag=2018``);
    :func:`resolve` then checks every value's kind against the config.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-5)")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ValueError(f"override {item!r} has no valid key before '=' (e.g. optim.lr=1e-5)")
        value = _parse_value(text)
        if reference is not None:
            found, default = cc.lookup(reference, key)
            kinds = _kinds(key, default) if found and not isinstance(default, Mapping) else ()
            if "str" in kinds and cc.kind_of(value) not in kinds:
                value = text.strip()
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} sets a key below '{part}', which an earlier override set to a "
                                 "value")
        node[parts[-1]] = value
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
    model_overrides = overrides.get("model", {})  # not a dict: the full merge below names the error
    arch = recipe_arch(merge(copy.deepcopy(cfg["model"]),
                             model_overrides if isinstance(model_overrides, Mapping) else {}, "model."))
    if protocol == "finetune":
        merge(cfg, module.FINETUNE)
        merge(cfg, module.FINETUNE_BY_ARCH.get(arch, {}))
    merge(cfg, overrides, known=list(cc.flatten(cfg)))
    if protocol == "linear":
        cfg["features"] = _linear_features(cfg["features"], arch)
    if protocol == "knn":
        cfg["feature"] = _feature_spec("feature", cfg["feature"]).to_dict()
    cfg = json.loads(json.dumps(cfg))
    validate(cfg)
    return cfg


def _feature_spec(key: str, d: Any) -> FeatureSpec:
    """``FeatureSpec.from_dict(d)`` with errors naming the config key."""
    if not isinstance(d, Mapping):
        raise ConfigValueError(f"config key '{key}' must be a feature spec dict like "
                               f"{{'n_last_blocks': 1, 'pooling': 'cls'}}, got {d!r}")
    try:
        return FeatureSpec.from_dict(d)
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ConfigValueError(f"config key '{key}' = {dict(d)!r}: {msg}") from exc


def _linear_features(features: str | list[Mapping[str, Any]], arch: str | None) -> list[dict[str, Any]]:
    """The linear-probe feature specs as ``FeatureSpec.to_dict()`` dicts (the older ``avgpool`` form is read too);
    ``'auto'``: the preset of ``arch``."""
    if features == "auto":
        if arch not in defaults.LINEAR_FEATURES_BY_ARCH:
            presets = sorted(defaults.LINEAR_FEATURES_BY_ARCH)
            raise ConfigValueError(f"config key 'features' = 'auto': no linear feature preset for arch {arch!r} "
                                   f"(presets: {presets}); pass --arch or "
                                   "--set features=[{'n_last_blocks':4,'pooling':'cls'}]")
        features = defaults.LINEAR_FEATURES_BY_ARCH[arch]
    if isinstance(features, str) or not features:
        raise ConfigValueError(f"config key 'features' must be 'auto' or a non-empty list of feature specs like "
                               f"[{{'n_last_blocks': 4, 'pooling': 'cls'}}], got {features!r}")
    return [_feature_spec(f"features[{i}]", d).to_dict() for i, d in enumerate(features)]


# ------------------------------------------------------------------------------------------------------ validation
#: Command-line options of config keys (named in error messages next to ``--set``).
OPTIONS = {"epochs": "--epochs", "batch_size": "--batch-size", "optim.lr": "--lr", "optim.layer_decay": "--layer-decay",
           "seed": "--seed", "num_workers": "--num-workers", "model.img_size": "--img-size",
           "model.patch_size": "--patch-size", "model.num_heads": "--num-heads"}


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: cc.kind_of(v) == "int" and v >= low), f"an integer >= {low}"


_POSITIVE = (lambda v: cc.is_finite_number(v) and v > 0), "a finite number > 0"
_NON_NEGATIVE = (lambda v: cc.is_finite_number(v) and v >= 0), "a finite number >= 0"
_PROBABILITY = (lambda v: cc.is_finite_number(v) and 0 <= v <= 1), "a number in [0, 1]"
_UNIT_OPEN = (lambda v: cc.is_finite_number(v) and 0 <= v < 1), "a number in [0, 1)"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"None or {text}"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


_INT_LIST = (lambda v: isinstance(v, list) and len(v) > 0 and all(cc.kind_of(k) == "int" and k >= 1 for k in v),
             "a non-empty list of integers >= 1")
_LR_LIST = (lambda v: isinstance(v, list) and len(v) > 0 and all(cc.is_finite_number(x) and x > 0 for x in v),
            "a non-empty list of finite learning rates > 0")
_BETAS = (lambda v: isinstance(v, list) and len(v) == 2
          and all(cc.is_finite_number(b) and 0 <= b < 1 for b in v), "two numbers in [0, 1)")

#: Per protocol: config key -> (check, what a valid value is). Keys of every protocol under ``"common"``.
RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "common": {
        "seed": _int_at_least(0), "num_workers": _int_at_least(0), "batch_size": _int_at_least(1),
        "model.img_size": _int_at_least(1), "model.patch_size": _optional(_int_at_least(1)),
        "model.embed_dim": _optional(_int_at_least(1)), "model.depth": _optional(_int_at_least(1)),
        "model.num_heads": _optional(_int_at_least(1)), "data.num_classes": _optional(_int_at_least(1)),
    },
    "knn": {"ks": _INT_LIST, "temperature": _POSITIVE},
    "linear": {
        "epochs": _int_at_least(1), "lrs": _LR_LIST, "lr_batch_ref": _POSITIVE, "momentum": _UNIT_OPEN,
        "weight_decay": _NON_NEGATIVE, "eval_every": _int_at_least(1),
    },
    "finetune": {
        "epochs": _int_at_least(1), "drop_path_rate": _UNIT_OPEN, "optim.lr": _POSITIVE,
        "optim.lr_batch_ref": _POSITIVE, "optim.weight_decay": _NON_NEGATIVE, "optim.betas": _BETAS,
        "optim.eps": _POSITIVE,
        "optim.layer_decay": ((lambda v: v is None or (cc.is_finite_number(v) and 0 < v <= 1)),
                              "None or a number in (0, 1]"),
        "optim.clip_grad": _optional(_POSITIVE), "sched.warmup_epochs": _int_at_least(0),
        "sched.warmup_lr": _NON_NEGATIVE, "sched.min_lr": _NON_NEGATIVE, "aug.color_jitter": _NON_NEGATIVE,
        "aug.reprob": _PROBABILITY, "aug.recount": _int_at_least(1), "aug.remode": _one_of("pixel", "rand", "const"),
        "aug.mixup": _NON_NEGATIVE, "aug.cutmix": _NON_NEGATIVE, "aug.mixup_prob": _PROBABILITY,
        "aug.mixup_switch_prob": _PROBABILITY, "aug.mixup_mode": _one_of("batch", "pair", "elem"),
        "aug.smoothing": _UNIT_OPEN, "eval_every": _int_at_least(1), "report": _one_of("best", "last"),
    },
}


def _how_to_set(key: str) -> str:
    option = OPTIONS.get(key)
    return f"pass {option} or --set {key}=<value>" if option else f"pass --set {key}=<value>"


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every value of a resolved config before a run starts (nothing is written by a refused run).

    Raises:
        ConfigValueError: the first key with an invalid value, named with its value, what is valid and how to set it.
    """
    protocol = cfg.get("protocol")
    if protocol not in PROTOCOLS:
        raise ConfigValueError(f"config key 'protocol' = {protocol!r}: must be one of {list(PROTOCOLS)}")
    for key, (check, valid) in {**RULES["common"], **RULES[protocol]}.items():
        found, value = cc.lookup(cfg, key)
        if not found:
            raise ConfigValueError(f"config key '{key}' is missing from the {protocol} config (build configs with "
                                   "transfer.recipes.resolve)")
        if not check(value):
            raise ConfigValueError(f"config key '{key}' = {value!r} is invalid: it must be {valid}; "
                                   f"{_how_to_set(key)}")
    if protocol == "knn":
        _feature_spec("feature", cfg["feature"])
    if protocol == "linear":
        features = cfg["features"]
        if not isinstance(features, list) or not features:
            raise ConfigValueError(f"config key 'features' = {features!r} is invalid: the resolved config holds a "
                                   "non-empty list of feature specs (build configs with transfer.recipes.resolve)")
        for i, d in enumerate(features):
            _feature_spec(f"features[{i}]", d)
    if protocol == "knn" and cfg["report_k"] not in cfg["ks"]:
        raise ConfigValueError(f"config key 'report_k' = {cfg['report_k']!r} is invalid: it must be one of "
                               f"ks = {cfg['ks']}; pass --set report_k=<k> or add it to ks")
    if protocol == "finetune":
        aug = cfg["aug"]
        if (aug["mixup"] > 0 or aug["cutmix"] > 0) and cfg["batch_size"] % 2:
            raise ConfigValueError(f"config key 'batch_size' = {cfg['batch_size']} is invalid: mixup / cutmix pair "
                                   "the samples of a batch, so it must be even (or set aug.mixup=0 aug.cutmix=0); "
                                   "pass --batch-size N")
