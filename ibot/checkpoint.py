"""The one checkpoint loader of the project: reading, writing, unwrapping and loading weights.

Formats understood by :func:`extract_backbone_state_dict` (see ``ibot-reference.md`` §10):

* official iBOT / DINO full checkpoints and our own pre-training checkpoints:
  ``{'student': {'module.backbone.*', 'module.head.*'}, 'teacher': {'backbone.*' | 'module.backbone.*', 'head.*'},
  'optimizer', 'epoch', 'args': argparse.Namespace, 'ibot_loss': {'center', 'center2'}, ...}``;
* official backbone-only files ``{'state_dict': {...}}`` (a student file still holds ``masked_embed``);
* flat backbone dicts (DINO's released ``*_pretrain.pth``, iBOT's fine-tuning extraction, timm ``VisionTransformer``
  state dicts, possibly with a classifier ``head.weight`` / ``head.bias``, ``fc_norm``, ``norm``);
* ``{'model': ...}`` (MAE / DeiT), ``{'module': ...}`` and ``{'state_dict': ...}`` (mmengine, keys ``backbone.*``);
* ``.safetensors`` files holding any of the flat dicts.

Security: :func:`load_file` uses ``torch.load(weights_only=True)`` unless ``trusted=True``. Full checkpoints pickle
an ``argparse.Namespace`` (and mmengine checkpoints a ``HistoryBuffer``), which weights-only loading refuses; such a
file raises :class:`UntrustedCheckpointError` explaining the opt-in. Convert them once with :func:`export_backbone`
to a tensors-only file that loads without trust.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ibot.atomic import atomic_write

__all__ = [
    "BACKBONE_IGNORE",
    "BACKBONE_SCHEMA",
    "BackboneFile",
    "BackboneReport",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKeyError",
    "CorruptCheckpointError",
    "LoadReport",
    "StateDictMismatchError",
    "UntrustedCheckpointError",
    "build_backbone",
    "describe_backbone",
    "export_backbone",
    "extract_backbone_state_dict",
    "infer_backbone_description",
    "load_backbone",
    "load_file",
    "load_state_dict_report",
    "map_weight_norm_keys",
    "read_backbone",
    "save_backbone",
    "save_file",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Top-level keys of a full (student/teacher) checkpoint, in auto-detection preference order.
FULL_CHECKPOINT_KEYS = ("teacher", "student")
#: Wrapper keys unwrapped when looking for a state dict (``model``: MAE/DeiT, ``state_dict``: mmengine / extracted).
WRAPPER_KEYS = ("state_dict", "model", "module")
#: Leading prefixes removed from every key (DDP, torch.compile).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
BACKBONE_PREFIX = "backbone."
#: Key prefixes of the iBOT / DINO projection head in a flat dict (``last_layer`` also covers ``last_layer2``).
PROJECTION_HEAD_PREFIXES = ("head.mlp.", "head.last_layer", "head.last_norm")
#: ``resample_abs_pos_embed`` settings: bicubic, no antialias, as the official mmcv_custom loader (F.interpolate).
POS_EMBED_INTERPOLATION = "bicubic"
POS_EMBED_ANTIALIAS = False

_TRUST_HINT = (
    "If you trust this file, opt in with `trusted=True` in Python (e.g. ibot.checkpoint.load_file(path, "
    "trusted=True)) or `--trust-checkpoint` on our command lines. This executes pickled code from the file, so only "
    "do it for files you trust (e.g. the official release or your own runs). Better: convert it once with "
    "ibot.checkpoint.export_backbone(src, dst, trusted=True) to a tensors-only file that loads without trust."
)


# ----------------------------------------------------------------------------------------------------------- errors
class CheckpointError(RuntimeError):
    """Base class of the errors raised by this module while reading a checkpoint file."""


class UntrustedCheckpointError(CheckpointError):
    """The file pickles non-tensor objects, so ``weights_only=True`` loading refused it.

    Attributes:
        path: the file.
        global_name: the offending global as torch reports it (e.g. ``argparse.Namespace``), or ``None``.
    """

    def __init__(self, message: str, path: str, global_name: str | None) -> None:
        super().__init__(message)
        self.path = path
        self.global_name = global_name


class CorruptCheckpointError(CheckpointError):
    """The file exists but cannot be parsed (truncated, corrupt, or not a checkpoint)."""


class CheckpointFormatError(ValueError):
    """A loaded checkpoint has no recognisable backbone weights."""


class CheckpointKeyError(CheckpointFormatError, KeyError):
    """The requested checkpoint key is absent (instead of silently loading nothing)."""

    __str__ = BaseException.__str__  # KeyError would repr() the message


class StateDictMismatchError(RuntimeError):
    """Strict loading found missing, unexpected or shape-mismatched keys. ``report`` holds the details."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


# -------------------------------------------------------------------------------------------------------- file I/O
def _is_safetensors(path: PathLike) -> bool:
    return str(path).lower().endswith(".safetensors")


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


#: Phrases of torch's weights-only unpickler that mean "this file pickles objects beyond tensors" (others,
#: such as "Unsupported operand", mean a damaged pickle stream).
_UNTRUSTED_PHRASES = ("GLOBAL ", "unrecognized function", "Can only create new object", "Can only build")


def _is_untrusted_failure(exc: BaseException) -> bool:
    text = str(exc)
    return "Weights only load failed" in text and any(p in text for p in _UNTRUSTED_PHRASES)


def _untrusted_error(path: str, exc: BaseException) -> UntrustedCheckpointError:
    text = str(exc)
    match = re.search(r"GLOBAL\s+([\w.]+)", text)
    global_name = match.group(1) if match else None
    if global_name is not None:
        what = f"it pickles the non-tensor global `{global_name}`"
    else:
        reason = re.search(r"WeightsUnpickler error:\s*(.*)", text)
        what = f"it pickles non-tensor objects (torch: {_first_line(reason.group(1) if reason else text)})"
    message = f"Refusing to unpickle checkpoint '{path}' with torch.load(weights_only=True): {what}. {_TRUST_HINT}"
    return UntrustedCheckpointError(message, path, global_name)


def _corrupt_error(path: str, exc: BaseException) -> CorruptCheckpointError:
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"Could not read checkpoint '{path}' ({size} bytes): the file looks truncated, corrupt or is not a "
        f"checkpoint ({type(exc).__name__}: {_first_line(str(exc)) or 'no message'}). "
        "Re-download or re-create it."
    )


def load_file(path: PathLike, *, trusted: bool = False, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a ``.pth`` / ``.pt`` / ``.safetensors`` checkpoint.

    Args:
        path: the file. ``.safetensors`` files are read with ``safetensors`` (never executes code).
        trusted: if ``False`` (default), use ``torch.load(weights_only=True)``; if ``True``, allow arbitrary
            pickled objects (``weights_only=False``) — this executes code from the file.
        map_location: passed to ``torch.load``; for safetensors a device (string or ``torch.device``).

    Returns:
        The loaded object (a dict for every supported format).

    Raises:
        FileNotFoundError: the file does not exist.
        UntrustedCheckpointError: the file pickles non-tensor objects and ``trusted`` is ``False``.
        CorruptCheckpointError: the file is truncated or not a checkpoint.
        CheckpointError: a trusted file needs a module that cannot be imported.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "Checkpoint file not found", path)
    if _is_safetensors(path):
        return _load_safetensors(path, map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=not trusted)
    except (PermissionError, IsADirectoryError):
        raise
    except ImportError as exc:
        raise CheckpointError(
            f"Checkpoint '{path}' pickles objects from a module that cannot be imported here: {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        if not trusted and _is_untrusted_failure(exc):
            raise _untrusted_error(path, exc) from exc
        raise _corrupt_error(path, exc) from exc
    return obj


def _load_safetensors(path: str, map_location: Any) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file as st_load_file

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        tensors = st_load_file(path, device=device)
    except (SafetensorError, ValueError, EOFError) as exc:
        raise _corrupt_error(path, exc) from exc
    if not isinstance(map_location, (str, torch.device)) and map_location is not None:
        logger.warning("map_location=%r is not a device; safetensors file '%s' loaded on cpu", map_location, path)
    return dict(tensors)


def _flat_tensor_dict(obj: Any, path: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        kinds = sorted({type(v).__name__ for v in obj.values()}) if isinstance(obj, Mapping) else [type(obj).__name__]
        raise TypeError(
            f"Cannot save '{path}' as safetensors: it needs a flat dict of str -> Tensor (got {kinds}). "
            "Use a .pth suffix for nested objects."
        )
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for key, value in obj.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage()
        ptr = storage.data_ptr()
        # safetensors refuses tensors that share storage (tied weights, views): give those their own copy
        if ptr in seen or storage.nbytes() != value.numel() * value.element_size():
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def save_file(obj: Any, path: PathLike) -> None:
    """Atomically write ``obj`` to ``path`` (creating parent directories).

    The data is written to a temporary file in the destination directory, flushed to disk and moved into place
    with ``os.replace``, so a crash or error never leaves a partial file at ``path`` (an existing file stays
    intact). A ``.safetensors`` suffix writes a flat ``dict[str, Tensor]`` with safetensors (``TypeError``
    otherwise); any other suffix uses ``torch.save``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    payload = None
    if _is_safetensors(path):
        from safetensors.torch import save as st_save

        payload = st_save(_flat_tensor_dict(obj, path))
    atomic_write(path, (lambda fh: fh.write(payload)) if payload is not None else (lambda fh: torch.save(obj, fh)))


# ---------------------------------------------------------------------------------------------- backbone extraction
def _summarise(keys: Iterable[str], depth: int = 2) -> str:
    """Group keys by their first ``depth`` components: ``head.mlp.* (6), head.last_layer.* (2)``."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(".".join(key.split(".")[:depth]), []).append(key)
    return ", ".join(ks[0] if len(ks) == 1 else f"{p}.* ({len(ks)})" for p, ks in groups.items())


def _strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _has_tensors(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, Tensor) for v in obj.values())


def _describe_keys(ckpt: Mapping[str, Any]) -> str:
    return repr(sorted(map(str, ckpt.keys())))


def extract_backbone_state_dict(ckpt: Mapping[str, Any], key: str | None = None) -> dict[str, Tensor]:
    """Return the backbone weights of any supported checkpoint, with timm / iBOT ``VisionTransformer`` key names.

    Args:
        ckpt: the object returned by :func:`load_file`.
        key: which entry to take. ``None`` auto-detects: ``teacher`` (then ``student``) for full checkpoints, then
            the wrappers ``state_dict`` / ``model`` / ``module``, else the dict itself when it holds tensors. An
            explicit key must exist — e.g. ``key='teacher'`` on a backbone-only ``{'state_dict': ...}`` file
            raises instead of silently loading nothing (the official ``load_pretrained_weights`` trap).

    Leading ``module.`` / ``_orig_mod.`` prefixes are stripped. If any key then starts with ``backbone.``, only those
    keys are kept (prefix removed) and all others (``head.*``, ``neck.*``, ...) are dropped; otherwise the dict is
    taken as a flat backbone dict and only iBOT / DINO projection-head keys (``head.mlp.*``, ``head.last_layer*``,
    ``head.last_norm*``) are dropped. A timm classifier ``head.weight`` / ``head.bias`` and ``fc_norm`` are kept, as
    is ``masked_embed`` (ignore it when loading into a model without one). Dropped keys are logged.

    Raises:
        CheckpointKeyError: ``key`` is not in ``ckpt`` (the message lists the keys present).
        CheckpointFormatError: no backbone tensors were found (the message lists the top-level keys seen).
    """
    if not isinstance(ckpt, Mapping):
        raise CheckpointFormatError(f"Expected a checkpoint dict, got {type(ckpt).__name__}")
    trail: list[str] = []
    if key is not None:
        if key not in ckpt:
            hint = ""
            if any(k in ckpt for k in WRAPPER_KEYS) and key in FULL_CHECKPOINT_KEYS:
                hint = " This looks like a backbone-only / wrapped file: pass key=None (auto) or key='state_dict'."
            elif _has_tensors(ckpt):
                hint = " This looks like a flat state dict: pass key=None."
            raise CheckpointKeyError(
                f"Checkpoint key {key!r} not found; top-level keys: {_describe_keys(ckpt)}.{hint}"
            )
        obj: Any = ckpt[key]
        trail.append(key)
    else:
        obj = ckpt
        for candidate in FULL_CHECKPOINT_KEYS:
            if isinstance(ckpt.get(candidate), Mapping):
                obj = ckpt[candidate]
                trail.append(candidate)
                if candidate == "student":
                    logger.warning("checkpoint has 'student' but no 'teacher': extracting the student backbone")
                break
    # unwrap {'state_dict': ...} / {'model': ...} / {'module': ...} until a dict holding tensors
    while isinstance(obj, Mapping) and not _has_tensors(obj):
        inner = next((w for w in WRAPPER_KEYS if isinstance(obj.get(w), Mapping)), None)
        if inner is None:
            break
        obj = obj[inner]
        trail.append(inner)
    where = "".join(f"[{t!r}]" for t in trail) or "the checkpoint itself"
    if not _has_tensors(obj):
        raise CheckpointFormatError(
            f"No backbone weights found in {where}; top-level keys: {_describe_keys(ckpt)}"
            + (f", keys under {where}: {_describe_keys(obj)}" if trail and isinstance(obj, Mapping) else "")
            + ". Pass key= to choose the entry holding the state dict."
        )

    non_tensor = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if non_tensor:
        logger.warning("ignoring non-tensor entries under %s: %s", where, non_tensor)
    stripped = {_strip_prefixes(str(k), WRAPPER_PREFIXES): v for k, v in obj.items() if isinstance(v, Tensor)}
    if any(k.startswith(BACKBONE_PREFIX) for k in stripped):
        kept = {_strip_prefixes(k[len(BACKBONE_PREFIX):], WRAPPER_PREFIXES): v
                for k, v in stripped.items() if k.startswith(BACKBONE_PREFIX)}
        dropped = [k for k in stripped if not k.startswith(BACKBONE_PREFIX)]
    else:
        kept = {k: v for k, v in stripped.items() if not k.startswith(PROJECTION_HEAD_PREFIXES)}
        dropped = [k for k in stripped if k.startswith(PROJECTION_HEAD_PREFIXES)]
    if not kept:
        raise CheckpointFormatError(
            f"No backbone weights found in {where} (all {len(dropped)} tensors are head / non-backbone keys: "
            f"{_summarise(dropped)}); top-level keys: {_describe_keys(ckpt)}"
        )
    if dropped:
        logger.info("extracted %d backbone tensors from %s; dropped %d non-backbone keys: %s",
                    len(kept), where, len(dropped), _summarise(dropped))
    else:
        logger.info("extracted %d backbone tensors from %s", len(kept), where)
    return kept


# -------------------------------------------------------------------------------------------------- weight norm keys
_WN_OLD = ("weight_g", "weight_v")
_WN_NEW = ("parametrizations.weight.original0", "parametrizations.weight.original1")


def map_weight_norm_keys(
    sd: Mapping[str, Tensor], target: nn.Module | Mapping[str, Any] | Iterable[str] | None = None
) -> dict[str, Tensor]:
    """Translate weight-norm key names between ``torch.nn.utils.weight_norm`` and its parametrization version.

    Old: ``<m>.weight_g`` / ``<m>.weight_v``; new: ``<m>.parametrizations.weight.original0`` / ``original1``
    (same shapes). With ``target`` (a module, a state dict or its keys), each weight-norm pair is renamed to the
    naming ``target`` uses for that module; without it, new names are mapped to the old ones (the official iBOT
    checkpoint naming). Other keys pass through unchanged; tensors are not copied.
    """
    if target is None:
        target_keys = None
    elif isinstance(target, nn.Module):
        target_keys = set(target.state_dict().keys())
    else:
        target_keys = set(target.keys() if isinstance(target, Mapping) else target)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new_key = key
        for old_suffix, new_suffix in zip(_WN_OLD, _WN_NEW):
            for src, dst in ((old_suffix, new_suffix), (new_suffix, old_suffix)):
                if key == src or key.endswith("." + src):
                    candidate = key[: len(key) - len(src)] + dst
                    if target_keys is None:
                        if src in _WN_NEW:
                            new_key = candidate
                    elif key not in target_keys and candidate in target_keys:
                        new_key = candidate
        out[new_key] = value
    return out


# ----------------------------------------------------------------------------------------------- model loading
@dataclass
class LoadReport:
    """What :func:`load_state_dict_report` did. All lists hold state-dict key names."""

    missing: list[str]
    unexpected: list[str]
    resized: list[str]
    ignored: list[str]
    mismatched: list[str] = field(default_factory=list)
    loaded: int = 0
    details: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """``True`` when nothing is missing, unexpected or shape-mismatched (ignored keys do not count)."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [
            f"LoadReport: {self.loaded} tensors loaded, {len(self.missing)} missing, {len(self.unexpected)} "
            f"unexpected, {len(self.mismatched)} shape-mismatched, {len(self.resized)} resized, "
            f"{len(self.ignored)} ignored"
        ]
        for name in ("missing", "unexpected", "mismatched", "resized", "ignored"):
            for key in getattr(self, name):
                detail = self.details.get(key)
                lines.append(f"  {name}: {key}" + (f" ({detail})" if detail else ""))
        return "\n".join(lines)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)


def _grid_for(model: nn.Module, key: str, num_patches: int) -> list[int]:
    owner_name = key.rsplit(".", 1)[0] if "." in key else ""
    owner = model.get_submodule(owner_name) if owner_name else model
    grid = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
    if grid is not None:
        grid = [int(g) for g in grid]
        if grid[0] * grid[1] == num_patches:
            return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"Cannot resize '{key}': the model has {num_patches} patch positions and no matching "
            "`patch_embed.grid_size` to give a non-square grid"
        )
    return [side, side]


def _resize_pos_embed(model: nn.Module, key: str, posemb: Tensor, target_shape: torch.Size) -> Tensor:
    from timm.layers import resample_abs_pos_embed

    owner_name = key.rsplit(".", 1)[0] if "." in key else ""
    owner = model.get_submodule(owner_name) if owner_name else model
    num_prefix = 0 if getattr(owner, "no_embed_class", False) else int(getattr(owner, "num_prefix_tokens", 1))
    new_grid = _grid_for(model, key, target_shape[1] - num_prefix)
    old_patches = posemb.shape[1] - num_prefix
    old_side = math.isqrt(old_patches)
    if old_side * old_side != old_patches:
        raise ValueError(
            f"Cannot resize '{key}' of shape {tuple(posemb.shape)}: {old_patches} checkpoint positions (after "
            f"{num_prefix} prefix token(s)) do not form a square grid"
        )
    return resample_abs_pos_embed(
        posemb, new_size=new_grid, old_size=[old_side, old_side], num_prefix_tokens=num_prefix,
        interpolation=POS_EMBED_INTERPOLATION, antialias=POS_EMBED_ANTIALIAS,
    )


def load_state_dict_report(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    resize_pos_embed: bool = True,
    ignore: tuple[str, ...] = (),
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report exactly what happened — never silently.

    * Weight-norm key names are mapped to the model's naming (:func:`map_weight_norm_keys`).
    * ``ignore``: patterns (exact key, key prefix before a ``.``, or ``fnmatch`` glob such as ``'head.*'``) for keys
      that are neither loaded nor checked: matching checkpoint entries are dropped, matching model keys may stay
      missing. They are listed in ``report.ignored`` (e.g. ``ignore=('masked_embed',)`` for a student backbone
      loaded into a model without a mask token).
    * ``*pos_embed`` tensors whose length differs from the model's are resampled (bicubic, one class-token prefix,
      timm's ``resample_abs_pos_embed``) to the model's ``patch_embed.grid_size``, which may be non-square.
    * ``strict=True``: missing, unexpected or shape-mismatched keys raise :class:`StateDictMismatchError` before the
      model is modified. ``strict=False``: shape-mismatched keys are skipped, everything else is loaded and the
      report is logged (WARNING when anything is missing/unexpected/mismatched, INFO otherwise).
    """
    expected = model.state_dict()
    sd = map_weight_norm_keys(state_dict, expected.keys())
    report = LoadReport(missing=[], unexpected=[], resized=[], ignored=[])

    to_load: dict[str, Tensor] = {}
    for key, value in sd.items():
        if _matches(key, ignore):
            report.ignored.append(key)
            continue
        if key in expected and value.shape != expected[key].shape:
            target = expected[key].shape
            if (resize_pos_embed and key.split(".")[-1] == "pos_embed" and value.ndim == 3 and len(target) == 3
                    and value.shape[0] == target[0] and value.shape[2] == target[2]):
                resized = _resize_pos_embed(model, key, value, target)
                report.resized.append(key)
                report.details[key] = f"{tuple(value.shape)} -> {tuple(resized.shape)}"
                value = resized
            else:
                report.mismatched.append(key)
                report.details[key] = f"checkpoint {tuple(value.shape)} vs model {tuple(target)}"
                continue
        to_load[key] = value
    report.unexpected = [k for k in to_load if k not in expected]
    for key in expected:
        if key not in sd:
            (report.ignored if _matches(key, ignore) else report.missing).append(key)

    if strict and not report.ok:
        raise StateDictMismatchError(
            "State dict does not match the model (strict=True; pass ignore=(...) for keys that may differ, or "
            f"strict=False):\n{report}", report,
        )
    result = model.load_state_dict({k: v for k, v in to_load.items() if k in expected}, strict=False)
    # torch's own view, in case load hooks renamed keys
    extra_missing = [k for k in result.missing_keys
                     if k not in report.missing and k not in report.ignored and k not in report.mismatched]
    report.missing.extend(extra_missing)
    report.loaded = len([k for k in to_load if k in expected])
    if strict and extra_missing:
        raise StateDictMismatchError(f"State dict does not match the model (strict=True):\n{report}", report)
    logger.log(logging.INFO if report.ok else logging.WARNING, "%s: %s", type(model).__name__, report)
    return report


# ----------------------------------------------------------------------------------------------------------- export
def export_backbone(
    src: PathLike, dst: PathLike, *, key: str | None = "teacher", trusted: bool = False,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Tensor]:
    """Convert any supported checkpoint to a self-describing, tensors-only backbone file; return the weights.

    ``dst`` is written by :func:`save_backbone` (atomic; ``.pth`` or ``.safetensors``) with the description
    ``model`` (default: inferred from the tensor shapes) and the source file, entry and SHA-256. ``key`` is as in
    :func:`extract_backbone_state_dict` (default ``'teacher'`` for full checkpoints; ``None`` auto-detects other
    formats). ``trusted`` is as in :func:`load_file` (needed for official full checkpoints). The mask token and
    classifier / projection heads are dropped.
    """
    from ibot.records import file_sha256

    found = read_backbone(src, trusted=trusted, key=key)
    backbone = {k: v.detach().to("cpu").contiguous() for k, v in found.state_dict.items()
                if not _matches(k, BACKBONE_IGNORE)}
    source = {**found.source, "converted_from": os.path.abspath(os.fspath(src)), "checkpoint_key": key,
              "checkpoint_sha256": file_sha256(src)}
    save_backbone(dst, backbone, model if model is not None else found.model, source)
    logger.info("exported %d backbone tensors from '%s' to '%s'", len(backbone), os.fspath(src), os.fspath(dst))
    return backbone


# ------------------------------------------------------------------------------------------ self-describing backbones
#: Schema tag of a backbone file written by :func:`save_backbone` (the ``ibot.records`` convention).
BACKBONE_SCHEMA = "ibot-suite/backbone/1"
#: What the ``model`` entry of a backbone file must say (``arch``: the preset name, or ``None`` for another size).
BACKBONE_MODEL_KEYS = ("family", "arch", "patch_size", "img_size", "embed_dim", "depth", "num_heads")
#: Keys a pretrained file may hold that a backbone never uses: the student's mask token, timm / DeiT classifiers
#: and pooling norms. Everything else must match the model exactly.
BACKBONE_IGNORE = ("masked_embed", "head", "head_dist", "fc_norm", "pre_logits")
_FAMILIES = ("vit",)


@dataclass
class BackboneFile:
    """What :func:`read_backbone` found in a file.

    Attributes:
        state_dict: backbone weights with iBOT / timm key names.
        model: the description (:data:`BACKBONE_MODEL_KEYS`), from the file or inferred from tensor shapes.
        source: where the weights came from (from the file; ``{}`` for foreign files).
        described: ``True`` when the file carries its own description (no inference was needed).
        path: the file read.
        key: the checkpoint entry the weights were taken from (``None``: auto-detected).
    """

    state_dict: dict[str, Tensor]
    model: dict[str, Any]
    source: dict[str, Any]
    described: bool
    path: str
    key: str | None = None


@dataclass
class BackboneReport:
    """What :func:`load_backbone` did: the file, its SHA-256, the description used and the strict load report."""

    path: str
    sha256: str
    model: dict[str, Any]
    source: dict[str, Any]
    described: bool
    load: LoadReport

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a result record."""
        return {"path": self.path, "sha256": self.sha256, "model": dict(self.model), "source": dict(self.source),
                "described": self.described, "load": str(self.load).splitlines()[0]}


def describe_backbone(model: nn.Module) -> dict[str, Any]:
    """The description of a live backbone (:class:`ibot.vit.iBOTViT`), as written into backbone files."""
    from ibot.vit import ARCHS

    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    patch = int(model.patch_embed.patch_size[0])
    desc = {"family": "vit", "arch": None, "patch_size": patch, "img_size": grid[0] * patch,
            "embed_dim": int(model.embed_dim), "depth": len(model.blocks),
            "num_heads": int(model.blocks[0].attn.num_heads)}
    desc["arch"] = _preset_name(desc, ARCHS)
    return desc


def _preset_name(desc: Mapping[str, Any], archs: Mapping[str, Mapping[str, int]]) -> str | None:
    return next((name for name, shape in archs.items()
                 if all(desc.get(k) == v for k, v in shape.items())), None)


def infer_backbone_description(sd: Mapping[str, Tensor], where: str = "the state dict") -> dict[str, Any]:
    """A backbone description from tensor shapes alone (foreign files: official, DINO, timm, mmengine).

    Width, patch size, position grid and depth are read from ``pos_embed``, ``patch_embed.proj.weight`` and the
    ``blocks.N.*`` keys. The head count is not stored in the weights: a preset of the same width and depth gives
    it, otherwise 64 channels per head (the ViT / DeiT / DINO convention) are assumed and logged.
    """
    from ibot.vit import ARCHS

    missing = [k for k in ("pos_embed", "patch_embed.proj.weight") if k not in sd]
    if missing:
        raise CheckpointFormatError(
            f"{where} is not a ViT backbone: no {missing} (keys: {_summarise(sorted(sd))}); pass the description "
            "by hand (overrides=...) or convert the file with tools/convert_checkpoint.py")
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if not blocks:
        raise CheckpointFormatError(f"{where} has no 'blocks.N.*' tensors: not a ViT backbone")
    pos, proj = sd["pos_embed"], sd["patch_embed.proj.weight"]
    patch, dim = int(proj.shape[-1]), int(pos.shape[-1])
    tokens = int(pos.shape[1])
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        side = math.isqrt(tokens)
    desc: dict[str, Any] = {"family": "vit", "arch": None, "patch_size": patch, "img_size": side * patch,
                            "embed_dim": dim, "depth": max(blocks) + 1, "num_heads": None}
    preset = next((name for name, shape in ARCHS.items()
                   if shape["embed_dim"] == dim and shape["depth"] == desc["depth"]), None)
    if preset is not None:
        desc.update(arch=preset, num_heads=ARCHS[preset]["num_heads"])
    else:
        if dim % 64:  # left open: load_backbone / save_backbone ask for it
            logger.warning("%s: non-standard ViT (width %d, depth %d) whose head count is not stored in the weights",
                           where, dim, desc["depth"])
            return desc
        desc["num_heads"] = dim // 64
        logger.warning("%s: non-standard ViT (width %d, depth %d); head count not stored in the weights, assuming "
                       "%d (64 channels per head); override with num_heads= if it differs", where, dim,
                       desc["depth"], desc["num_heads"])
    return desc


def _check_description(model: Any, path: str) -> dict[str, Any]:
    if not isinstance(model, Mapping):
        raise CheckpointFormatError(f"'{path}': key 'model' must be a dict describing the backbone, got "
                                    f"{type(model).__name__}; re-export it with ibot.checkpoint.save_backbone")
    missing = [k for k in BACKBONE_MODEL_KEYS if k not in model]
    if missing:
        raise CheckpointFormatError(f"'{path}': key 'model' lacks {missing}; re-export it with "
                                    "ibot.checkpoint.save_backbone (or tools/convert_checkpoint.py)")
    if model["num_heads"] is None:
        raise CheckpointFormatError(
            f"'{path}': the head count of this non-standard ViT (width {model.get('embed_dim')}) is not stored in its "
            "weights; pass it (overrides={'num_heads': H} in Python, --num-heads H on the command lines)")
    if model["family"] not in _FAMILIES:
        raise CheckpointFormatError(f"'{path}': model family {model['family']!r} is not supported here "
                                    f"(supported: {list(_FAMILIES)})")
    return dict(model)


def save_backbone(
    path: PathLike, state_dict: Mapping[str, Tensor], model: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write a self-describing backbone file (tensors and plain values only: weights-only loadable).

    ``.pth``: ``{'schema': BACKBONE_SCHEMA, 'state_dict': ..., 'model': {family, arch, patch_size, img_size,
    embed_dim, depth, num_heads}, 'source': {...}}``. ``.safetensors``: the flat tensors, with ``model`` and
    ``source`` as JSON in the file's metadata.
    """
    import json

    desc = _check_description(model, os.fspath(path))
    sd = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    src = dict(source or {})
    if _is_safetensors(path):
        from safetensors.torch import save as st_save

        meta = {"schema": BACKBONE_SCHEMA, "model": json.dumps(desc), "source": json.dumps(src, default=str)}
        payload = st_save(_flat_tensor_dict(sd, os.fspath(path)), metadata=meta)
        atomic_write(path, lambda fh: fh.write(payload))
        return
    save_file({"schema": BACKBONE_SCHEMA, "state_dict": sd, "model": desc, "source": src}, path)


def _safetensors_description(path: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    import json

    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("schema") != BACKBONE_SCHEMA:
        return None
    return _check_description(json.loads(meta["model"]), path), json.loads(meta.get("source", "{}"))


def read_backbone(path: PathLike, *, trusted: bool = False, key: str | None = None) -> BackboneFile:
    """Backbone weights and description of any supported file, without building a model.

    A file written by :func:`save_backbone` carries its description (``described=True``); any other format (see
    :func:`extract_backbone_state_dict`; mmengine det/seg checkpoints of ``iBOTViTBackbone`` included) is described
    from its tensor shapes (:func:`infer_backbone_description`).
    """
    path = os.fspath(path)
    obj = load_file(path, trusted=trusted)
    if isinstance(obj, Mapping) and obj.get("schema") == BACKBONE_SCHEMA:
        if key not in (None, "state_dict"):
            raise CheckpointKeyError(f"'{path}' is a backbone file (only 'state_dict'): drop key={key!r}")
        desc = _check_description(obj.get("model"), path)
        sd = {k: v for k, v in obj["state_dict"].items()}
        return BackboneFile(sd, desc, dict(obj.get("source") or {}), True, path, key)
    found = _safetensors_description(path) if _is_safetensors(path) else None
    sd = extract_backbone_state_dict(obj, key)
    if any(k.startswith("vit.") for k in sd):  # an mmengine checkpoint of det/seg's iBOTViTBackbone
        sd = {k[len("vit."):]: v for k, v in sd.items() if k.startswith("vit.")}
    if found is not None:
        return BackboneFile(sd, found[0], found[1], True, path, key)
    return BackboneFile(sd, infer_backbone_description(sd, f"'{path}'"), {}, False, path, key)


def build_backbone(model: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone from a description; ``kwargs`` go to the model (``pos_interp``,
    ``drop_path_rate``, ``img_size`` for another input size, ...)."""
    from ibot.vit import build_vit

    desc = _check_description(model, "the description")
    shape = {k: desc[k] for k in ("patch_size", "img_size", "embed_dim", "depth", "num_heads")}
    return build_vit(desc["arch"] or "vit_small", **{**shape, **kwargs})


def load_backbone(
    path: PathLike,
    *,
    trusted: bool = False,
    key: str | None = None,
    model: nn.Module | None = None,
    overrides: Mapping[str, Any] | None = None,
    **build_kwargs: Any,
) -> tuple[nn.Module, BackboneReport]:
    """The one backbone loader: read any supported file, build the model it describes and load it strictly.

    Args:
        path: a backbone file (:func:`save_backbone`), a pretraining / official / DINO / timm / mmengine checkpoint.
        trusted: allow pickled objects (:func:`load_file`); only for files you trust.
        key: checkpoint entry (:func:`extract_backbone_state_dict`); ``None`` auto-detects.
        model: load into this existing backbone instead of building one (det / seg wrap theirs).
        overrides: description entries that replace the file's (``{'num_heads': 6}``; flags of the tools).
        build_kwargs: passed to the model constructor (``img_size``, ``pos_interp``, ``drop_path_rate``, ...).

    Returns:
        ``(model, report)``. Keys in :data:`BACKBONE_IGNORE` (and ``norm.*`` for a model without a final norm) are
        reported as ignored; any other missing, unexpected or mis-shaped key raises
        :class:`StateDictMismatchError` naming the file — a checkpoint of another size never loads partially.
    """
    from ibot.records import file_sha256

    found = read_backbone(path, trusted=trusted, key=key)
    desc = _check_description({**found.model, **dict(overrides or {})}, found.path)
    if model is None:
        model = build_backbone(desc, **build_kwargs)
    ignore = BACKBONE_IGNORE + (("norm",) if isinstance(getattr(model, "norm", None), nn.Identity) else ())
    try:
        load = load_state_dict_report(model, found.state_dict, strict=True, ignore=ignore)
    except StateDictMismatchError as exc:
        what = "described as" if found.described else "inferred from its tensors as"
        rep = exc.report
        raise StateDictMismatchError(
            f"'{found.path}' ({what} {desc}) does not fit the backbone it is loaded into "
            f"({describe_backbone(model) if hasattr(model, 'patch_embed') else type(model).__name__}): "
            f"{len(rep.missing)} missing, {len(rep.unexpected)} unexpected, {len(rep.mismatched)} mis-shaped keys; "
            "nothing was loaded. Fix: drop the shape options / config entries that contradict the file, or give the "
            f"checkpoint of this model.\n{rep}", rep) from exc
    report = BackboneReport(found.path, file_sha256(found.path), desc, found.source, found.described, load)
    logger.info("loaded backbone '%s' (%s, sha256 %s): %s", found.path,
                "described" if found.described else "shape inferred", report.sha256[:12], str(load).splitlines()[0])
    return model, report
