"""Pretraining settings: up-front validation of a merged config, and what a resume may change.

:func:`validate_config` checks a config (a file plus ``--cfg-options``) against the keys and value kinds of
``pretrain/configs/_base_/default.py`` and against value ranges, before anything is built or written: an unknown
key is named with the nearest known one, a wrong kind with the key, the value and the kind expected, an
out-of-range value with the range. Every problem is reported at once (:class:`PretrainConfigError`).

:func:`result_differences` lists the settings that differ between a checkpoint's stored config and the config
now, except :data:`NON_RESULT_KEYS`: settings that change how a run is executed, observed or saved but not the
weights it computes. A resume refuses other differences unless forced (``--force-resume``).
"""
from __future__ import annotations

import copy
import fnmatch
import inspect
import math
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from mmengine.config import Config

from ibot import config_check as cc
from ibot.masking import MaskGenerator
from ibot.vit import ARCHS, iBOTViT
from pretrain.fsdp import PARALLEL_MODES

#: The config every pretraining config derives from: its keys (and their kinds) are the valid ones.
BASE_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "_base_", "default.py")

#: Settings a resume may change freely (fnmatch patterns of dotted keys); every other setting changes the result.
#:
#: * ``log.*``: logging interval, TensorBoard.
#: * ``checkpoint.*``: how often checkpoints are written and how many are kept.
#: * ``monitor.*``: the k-NN monitor only reads the teacher (and leaves the training RNG streams untouched).
#: * ``data.num_workers``: loader processes; every sample is seeded by (seed, epoch, index).
#: * ``data.on_bad_file``: 'skip' or 'fail' on an unreadable image; a run that completes read the same images.
#: * ``train.parallel``: DDP or FSDP; same losses up to float rounding, same checkpoint files.
#: * ``train.compile``: ``torch.compile`` of the student pass; the same computation.
#: * ``model.grad_checkpointing``: recomputes activations in the backward pass; the same numbers, less memory.
NON_RESULT_KEYS: tuple[str, ...] = (
    "log.*", "checkpoint.*", "monitor.*", "data.num_workers", "data.on_bad_file", "train.parallel",
    "train.compile", "model.grad_checkpointing",
)


class PretrainConfigError(ValueError):
    """A pretraining config that cannot run; the message names each key and what to do."""


@lru_cache(maxsize=1)
def _base() -> dict[str, Any]:
    return Config.fromfile(BASE_CONFIG).to_dict()


def base_config() -> dict[str, Any]:
    """The resolved default config (a fresh copy)."""
    return copy.deepcopy(_base())


# ----------------------------------------------------------------------------------------------------- kinds
#: Kind names as a Python config file writes them (:mod:`ibot.config_check` names the rest).
_KIND_NAMES = {**cc.KIND_NAMES, "bool": "a bool (True / False)", "int": "an int", "dict": "a dict of settings"}

#: Keys whose value may take another kind than their default's.
_ALTERNATE_KINDS: dict[str, tuple[str, ...]] = {
    "data.root": ("str", "none"),  # None (the demo configs' default) is refused by the range checks, with a hint
    "monitor.knn.root": ("str", "none"),
    "train.amp": ("str", "none"),
    "masking.pred_ratio": ("float", "float_list"),
    "masking.pred_ratio_var": ("float", "float_list"),
}
#: Sections whose keys are free (checked by :func:`_check_vit_overrides`).
_FREE_SECTIONS = ("model.vit_overrides",)


def _check_keys_and_kinds(cfg: Mapping[str, Any], base: Mapping[str, Any], problems: list[str],
                          known: list[str], prefix: str = "") -> None:
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if key not in base:
            section = f"keys of '{prefix[:-1]}'" if prefix else "sections"
            for leaf in cc.flatten({key: value}, prefix):
                hint = cc.did_you_mean(cc.nearest_keys(leaf, known, n=1))
                problems.append(f"unknown config key '{leaf}'{hint} (valid {section}: {', '.join(sorted(base))})")
            continue
        default = base[key]
        if isinstance(default, Mapping) and full not in _FREE_SECTIONS:
            if not isinstance(value, Mapping):
                problems.append(f"config key '{full}' is a section, not a value (got {value!r}); set its keys, "
                                f"e.g. {full}.{next(iter(default), 'key')}=...")
            else:
                _check_keys_and_kinds(value, default, problems, known, full + ".")
            continue
        kinds = cc.key_kinds(full, default, _ALTERNATE_KINDS)
        if not cc.accepts(value, kinds):
            got = cc.kind_name(cc.kind_of(value), _KIND_NAMES)
            problems.append(f"config key '{full}' is {value!r} ({got}); "
                            f"expected {cc.describe_kinds(kinds, _KIND_NAMES)}, e.g. {full}={default!r}")
            continue
        if cc.kind_of(default) == "list" and cc.kind_of(value) == "list":  # fixed-length number pairs (crop scales)
            if len(value) != len(default) or not cc.accepts(value, ("float_list",)):
                problems.append(f"config key '{full}' is {value!r}; expected {len(default)} numbers, "
                                f"e.g. {full}={tuple(default)!r}")


def _check_vit_overrides(cfg: Mapping[str, Any], problems: list[str]) -> None:
    model = cfg.get("model")
    over = model.get("vit_overrides") if isinstance(model, Mapping) else None  # a non-dict `model` is reported
    # by the kind check
    if not isinstance(over, Mapping):
        if over is not None:
            problems.append(f"config key 'model.vit_overrides' is {over!r}; expected a dict of ViT arguments, "
                            "e.g. model.vit_overrides=dict(embed_dim=64, depth=2, num_heads=2)")
        return
    valid = [p for p in inspect.signature(iBOTViT.__init__).parameters if p != "self"]
    for k in over:
        if k not in valid:
            near = cc.nearest_keys(str(k), valid, n=1)
            hint = cc.did_you_mean(f"model.vit_overrides.{name}" for name in near)
            problems.append(f"unknown config key 'model.vit_overrides.{k}'{hint} (ViT arguments: {', '.join(valid)})")


# ---------------------------------------------------------------------------------------------------- ranges
def _at_least(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= lo), f">= {lo:g}"


def _above(lo: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > lo), f"> {lo:g}"


def _within(lo: float, hi: float, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    if hi_open:
        return (lambda v: lo <= v < hi), f"in [{lo:g}, {hi:g})"
    return (lambda v: lo <= v <= hi), f"in [{lo:g}, {hi:g}]"


_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.patch_size": _at_least(1), "model.img_size": _at_least(1), "model.drop_path_rate": _within(0, 1, True),
    "model.out_dim": _at_least(1), "model.patch_out_dim": _at_least(1), "model.head_hidden_dim": _at_least(1),
    "model.head_bottleneck_dim": _at_least(1),
    "loss.warmup_teacher_temp": _above(0), "loss.teacher_temp": _above(0),
    "loss.warmup_teacher_patch_temp": _above(0), "loss.teacher_patch_temp": _above(0),
    "loss.warmup_teacher_temp_epochs": _at_least(0), "loss.lambda1": _at_least(0), "loss.lambda2": _at_least(0),
    "masking.pred_start_epoch": _at_least(0),
    "augmentation.global_crops_number": _at_least(1), "augmentation.local_crops_number": _at_least(0),
    "augmentation.global_crop_size": _at_least(1), "augmentation.local_crop_size": _at_least(1),
    "data.batch_size_per_gpu": _at_least(1), "data.num_workers": _at_least(0),
    "optim.lr": _above(0), "optim.min_lr": _at_least(0), "optim.warmup_epochs": _at_least(0),
    "optim.weight_decay": _at_least(0), "optim.weight_decay_end": _at_least(0),
    "optim.momentum_teacher": _within(0, 1), "optim.clip_grad": _at_least(0), "optim.freeze_last_layer": _at_least(0),
    "train.epochs": _at_least(1), "train.seed": _at_least(0),
    "checkpoint.interval_iters": _at_least(0), "checkpoint.keep_last": _at_least(1),
    "checkpoint.saveckp_freq": _at_least(0), "log.interval": _at_least(1),
    "monitor.knn.img_size": _at_least(1), "monitor.knn.k": _at_least(1), "monitor.knn.temperature": _above(0),
    "monitor.knn.batch_size": _at_least(1), "monitor.knn.num_workers": _at_least(0),
    "monitor.knn.interval_epochs": _at_least(1),
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "model.arch": tuple(ARCHS), "masking.pred_shape": ("block", "rand"), "data.layout": ("imagefolder", "flat"),
    "data.on_bad_file": ("skip", "fail"), "train.amp": ("bf16", "fp16", None), "train.parallel": PARALLEL_MODES,
}


def _check_ranges(cfg: Mapping[str, Any], problems: list[str]) -> None:
    flat = cc.flatten(cfg)
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"config key '{key}' is {value!r}; expected a finite number")
    for key, (ok, text) in _RANGES.items():
        value = flat.get(key)
        if cc.is_finite_number(value) and not ok(value):
            problems.append(f"config key '{key}' is {value!r}; it must be {text}")
    for key, choices in _CHOICES.items():
        if key in flat and flat[key] not in choices:
            problems.append(f"config key '{key}' is {flat[key]!r}; expected one of {', '.join(map(repr, choices))}")
    data = cfg.get("data", {})
    if "root" in data and not data["root"]:
        problems.append("config key 'data.root' is not set; pass the image folder, e.g. --cfg-options "
                        "data.root=/data/imagenet/train")
    m = cfg.get("masking", {})
    ratio, var = m.get("pred_ratio"), m.get("pred_ratio_var")
    if all(cc.accepts(v, ("float", "float_list")) for v in (ratio, var)):
        try:
            MaskGenerator(ratio, var)
        except ValueError as e:
            problems.append(f"config keys 'masking.pred_ratio' ({ratio!r}) and 'masking.pred_ratio_var' ({var!r}): "
                            f"{e}")
    a = cfg.get("augmentation", {})
    for key in ("global_crops_scale", "local_crops_scale"):
        sc = a.get(key)
        if isinstance(sc, (list, tuple)) and len(sc) == 2 and cc.accepts(sc, ("float_list",)):
            if not 0.0 < sc[0] <= sc[1] <= 1.0:
                problems.append(f"config key 'augmentation.{key}' is {tuple(sc)!r}; expected (min, max) area "
                                "fractions with 0 < min <= max <= 1")
    _check_relations(cfg, problems)


def _number(cfg: Mapping[str, Any], key: str) -> float | None:
    found, value = cc.lookup(cfg, key)
    return value if found and cc.is_finite_number(value) else None


def _check_relations(cfg: Mapping[str, Any], problems: list[str]) -> None:
    """Checks between keys (each only when the keys involved are valid numbers)."""
    n = {k: _number(cfg, k) for k in (
        "train.epochs", "optim.warmup_epochs", "loss.warmup_teacher_temp_epochs", "masking.pred_start_epoch",
        "augmentation.global_crops_number", "augmentation.local_crops_number", "augmentation.global_crop_size",
        "augmentation.local_crop_size", "model.patch_size")}
    epochs = n["train.epochs"]
    if epochs is not None and epochs >= 1:
        if n["optim.warmup_epochs"] is not None and n["optim.warmup_epochs"] > epochs:
            problems.append(f"config key 'optim.warmup_epochs' is {n['optim.warmup_epochs']!r}, more than "
                            f"train.epochs ({epochs}); lower it or train longer")
        warm, hold = n["loss.warmup_teacher_temp_epochs"], n["masking.pred_start_epoch"]
        if warm is not None and hold is not None and warm + hold > epochs:
            problems.append(f"config keys 'loss.warmup_teacher_temp_epochs' ({warm}) + 'masking.pred_start_epoch' "
                            f"({hold}) exceed train.epochs ({epochs}); lower them or train longer")
    ng, nl = n["augmentation.global_crops_number"], n["augmentation.local_crops_number"]
    if ng is not None and nl is not None and ng >= 1 and nl >= 0 and ng + nl < 2:
        problems.append(f"config keys 'augmentation.global_crops_number' ({ng}) + 'augmentation.local_crops_number' "
                        f"({nl}) give one view: the [CLS] loss compares at least two")
    p = n["model.patch_size"]
    if p is not None and p >= 1:
        for key, used in (("augmentation.global_crop_size", True), ("augmentation.local_crop_size", bool(nl))):
            size = n[key]
            if used and size is not None and size >= 1 and size < p:
                problems.append(f"config key '{key}' is {size}, smaller than model.patch_size ({p})")


def validate_config(cfg: Config | Mapping[str, Any]) -> None:
    """Check a merged pretraining config: known keys, value kinds, ranges. Raises :class:`PretrainConfigError`
    listing every problem (the message names each key); returns None when the config can run."""
    d = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    base = _base()
    known = list(cc.flatten(base))
    problems: list[str] = []
    _check_keys_and_kinds(d, base, problems, known)
    _check_vit_overrides(d, problems)
    _check_ranges(d, problems)
    if problems:
        source = cfg.filename if isinstance(cfg, Config) and cfg.filename else "built in code"
        raise PretrainConfigError(
            f"invalid pretraining config ({source}, with any --cfg-options; {len(problems)} "
            f"problem{'s' if len(problems) > 1 else ''}; nothing was run or written):\n  " + "\n  ".join(problems)
            + f"\n(valid keys and their defaults: {_shown_path(BASE_CONFIG)})")


def _shown_path(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ------------------------------------------------------------------------------------------ resume settings
def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _with_defaults(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` over the base defaults: a config stored before a key existed ran with its default."""
    def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
        for k, v in over.items():
            if isinstance(v, Mapping) and isinstance(base.get(k), dict) and k != "vit_overrides":
                merge(base[k], v)
            else:
                base[k] = copy.deepcopy(v)
        return base
    return merge(base_config(), cfg)


def is_result_key(key: str) -> bool:
    """Whether a dotted config key changes the trained weights (not one of :data:`NON_RESULT_KEYS`)."""
    return not any(fnmatch.fnmatchcase(key, pattern) for pattern in NON_RESULT_KEYS)


_ABSENT = object()


def result_differences(stored: Mapping[str, Any], now: Mapping[str, Any], stored_world: int | None = None,
                       world: int | None = None) -> list[str]:
    """The result-changing settings that differ between a checkpoint's config and the config now, one line each:
    ``data.batch_size_per_gpu: 64 (checkpoint) vs 32 (now)``.

    The batch is compared as the global batch (``data.batch_size_per_gpu`` x processes): the same global batch
    split over another number of processes gives the same samples and schedules.
    """
    a, b = cc.flatten(_with_defaults(stored)), cc.flatten(_with_defaults(now))
    out = []
    for key in sorted(set(a) | set(b)):
        if not is_result_key(key) or key == "data.batch_size_per_gpu":
            continue
        x, y = _normalise(a.get(key, _ABSENT)), _normalise(b.get(key, _ABSENT))
        if x != y:
            out.append(f"{key}: {_show(x)} (checkpoint) vs {_show(y)} (now)")
    bx, by = a.get("data.batch_size_per_gpu"), b.get("data.batch_size_per_gpu")
    wx, wy = stored_world or 1, world or 1
    if isinstance(bx, int) and isinstance(by, int) and bx * wx != by * wy:
        if wx == wy:
            out.append(f"data.batch_size_per_gpu: {bx} (checkpoint) vs {by} (now)")
        else:
            out.append(f"data.batch_size_per_gpu: {bx} x {wx} processes = global batch {bx * wx} (checkpoint) vs "
                       f"{by} x {wy} processes = global batch {by * wy} (now)")
    return sorted(out)


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)
