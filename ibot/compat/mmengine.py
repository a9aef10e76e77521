"""mmengine 0.10.7 on torch >= 2.6: route its local checkpoint loading through ``ibot.checkpoint``.

mmengine's ``load_from_local`` calls ``torch.load`` without ``weights_only``; since torch 2.6 that means
weights-only loading, which refuses mmengine's own checkpoints (they pickle a ``HistoryBuffer`` in
``message_hub``) with an opaque ``UnpicklingError``. After :func:`install`, every local checkpoint is read by
:func:`load_checkpoint_file`:

* trust is decided by the file's **content**, never by where it lies: ``torch.load(weights_only=True)`` with the
  few globals an mmengine runner checkpoint pickles registered for that one call (:data:`RUNNER_SAFE_GLOBALS`:
  ``HistoryBuffer``, numpy's array / scalar / dtype reconstruction, and ``getattr`` restricted to the
  ``HistoryBuffer`` statistics methods). So the runner's own ``epoch_N.pth`` / ``iter_N.pth`` and tensors-only
  files load from any directory without an opt-in;
* any other pickled global (an ``argparse.Namespace`` of an official checkpoint, a planted ``__reduce__``
  payload) raises :class:`~ibot.checkpoint.UntrustedCheckpointError` naming the file and ``--trust-checkpoint``
  — unless that one file was allow-listed with :func:`trust_checkpoint` (``--trust-checkpoint`` on our command
  lines), which unpickles it fully.

:func:`check_checkpoint` applies the same rule without loading (a static scan of the pickle's globals), so the
command lines refuse an untrusted file before they build anything. :func:`install` also makes mmengine's local
file writes (``LocalBackend.put``, which saves the runner's checkpoints) atomic.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from ibot.atomic import atomic_write
from ibot.checkpoint import UntrustedCheckpointError, load_file

_TRUSTED: set[str] = set()

#: ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, name)``.
_HISTORY_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_statistic(obj: Any, name: Any) -> Any:
    """``builtins.getattr`` as a runner checkpoint may use it: only ``HistoryBuffer``'s own statistics methods."""
    if obj is HistoryBuffer and name in _HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f"GLOBAL builtins.getattr is only accepted as getattr(HistoryBuffer, {'|'.join(_HISTORY_STATISTICS)}) "
        f"(what mmengine's runner pickles), not getattr({type(obj).__name__}, {name!r})")


def _numpy_helpers() -> list[tuple[Any, str]]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    out = []
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # files written under numpy 2 and 1
        out += [(core.multiarray._reconstruct, f"{module}._reconstruct"), (core.multiarray.scalar, f"{module}.scalar")]
    out += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    # a dtype is rebuilt as numpy.dtype(...) and then given its state: its concrete class must be allowed too
    return out + [(cls, f"numpy.dtypes.{name}") for name, cls in sorted(vars(np.dtypes).items())
                  if isinstance(cls, type) and issubclass(cls, np.dtype) and cls is not np.dtype]


#: (callable, pickled name) of every global an mmengine runner checkpoint holds beyond torch's own allow-list.
RUNNER_SAFE_GLOBALS: list[tuple[Any, str]] = [
    (HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer"),
    (_history_buffer_statistic, "builtins.getattr"),
    *_numpy_helpers(),
]
RUNNER_SAFE_GLOBAL_NAMES = frozenset(name for _, name in RUNNER_SAFE_GLOBALS)


def trust_checkpoint(path: str | os.PathLike[str]) -> None:
    """Allow full unpickling of this one file (executes pickled code: only for files you trust)."""
    _TRUSTED.add(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_trusted(path: str | os.PathLike[str]) -> bool:
    return os.path.realpath(os.path.expanduser(os.fspath(path))) in _TRUSTED


@contextmanager
def runner_safe_globals() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` also accepts :data:`RUNNER_SAFE_GLOBALS`.

    ``HistoryBuffer.__setstate__`` merges the file's statistics methods into a class-level table: on exit that
    table keeps only what it held before and ``HistoryBuffer``'s own methods, so nothing else a file holds
    outlives the load.
    """
    table = HistoryBuffer._statistics_methods
    saved = dict(table)
    try:
        with torch.serialization.safe_globals(RUNNER_SAFE_GLOBALS):
            yield
    finally:
        for name, method in list(table.items()):
            if name in saved:
                table[name] = saved[name]
            elif not (name in _HISTORY_STATISTICS and method is getattr(HistoryBuffer, name)):
                del table[name]


def load_checkpoint_file(path: str | os.PathLike[str], *, trusted: bool | None = None,
                         map_location: Any = "cpu") -> Any:
    """:func:`ibot.checkpoint.load_file` that also reads mmengine runner checkpoints without trust.

    ``trusted=None``: trusted when the file is on the :func:`trust_checkpoint` allow-list.
    """
    trusted = is_trusted(path) if trusted is None else trusted
    if trusted:
        return load_file(path, trusted=True, map_location=map_location)
    with runner_safe_globals():
        return load_file(path, trusted=False, map_location=map_location)


def unsafe_globals(path: str | os.PathLike[str]) -> list[str] | None:
    """Pickled globals of a ``torch.save`` zip file that weights-only loading (with :data:`RUNNER_SAFE_GLOBALS`)
    refuses, found by a static scan (nothing is executed); ``None`` for files that are not ``torch.save`` zips."""
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with torch.serialization.safe_globals(RUNNER_SAFE_GLOBALS):
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, KeyError):
        return None
    return sorted(found)


def _pickled_globals(path: str, max_pickles: int = 6) -> set[str]:
    """Globals named by the first pickles of a non-zip file (a raw pickle, torch's legacy format), statically."""
    import pickletools

    found: set[str] = set()
    with open(path, "rb") as fh:
        for _ in range(max_pickles):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(fh):
                    if op.name == "GLOBAL":
                        found.add(".".join(str(arg).split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.add(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # noqa: BLE001 - past the pickles (raw storage bytes) or damaged: stop scanning
                break
    return {"builtins." + g[len("__builtin__."):] if g.startswith("__builtin__.") else g for g in found}


def _allowed_global_names() -> set[str]:
    from torch import _weights_only_unpickler as wo

    return set(wo._get_allowed_globals()) | set(RUNNER_SAFE_GLOBAL_NAMES)


def check_checkpoint(path: str | os.PathLike[str]) -> None:
    """Refuse, before anything is built, a local checkpoint that would need trust to load.

    Trusted (allow-listed) files, ``.safetensors``, URLs and missing files pass (the loader reports the latter).
    A ``torch.save`` zip is scanned statically; any other file (a raw pickle, torch's legacy format) is scanned
    statically and, when that finds nothing, loaded once weights-only (the real check).

    Raises:
        UntrustedCheckpointError: naming the file, the offending globals and ``--trust-checkpoint``.
    """
    path = os.path.expanduser(os.fspath(path))
    if "://" in path or not os.path.isfile(path) or is_trusted(path) or path.lower().endswith(".safetensors"):
        return
    found = unsafe_globals(path)
    if found is None:
        found = sorted(_pickled_globals(path) - _allowed_global_names())
        if not found:
            load_checkpoint_file(path, trusted=False)
            return
    if found:
        raise UntrustedCheckpointError(
            f"Refusing to unpickle checkpoint '{path}': it pickles {', '.join(f'`{g}`' for g in found)}, which "
            "neither tensors nor an mmengine runner checkpoint hold (loading it would execute code from the file). "
            "If you trust this file (e.g. the official release or your own run), pass --trust-checkpoint "
            "(`trusted=True` in Python); better, convert it once with tools/convert_checkpoint.py to a "
            "tensors-only file.", path, found[0])


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """Replacement for mmengine's local-path scheme (same signature)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return load_checkpoint_file(filename, map_location=map_location or "cpu")


def _atomic_put(self: Any, obj: bytes, filepath: str | os.PathLike[str]) -> None:
    """``LocalBackend.put`` (how mmengine's runner writes checkpoints), atomically: an interrupted or failed save
    never leaves a truncated ``epoch_N.pth`` in place of the file that was there."""
    atomic_write(filepath, lambda fh: fh.write(obj))


def install() -> None:
    """Register :func:`load_from_local` for plain paths and make mmengine's local file writes atomic
    (idempotent)."""
    from mmengine.fileio.backends.local_backend import LocalBackend

    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
    LocalBackend.put = _atomic_put


__all__ = ["RUNNER_SAFE_GLOBALS", "RUNNER_SAFE_GLOBAL_NAMES", "check_checkpoint", "install", "is_trusted",
           "load_checkpoint_file", "load_from_local", "runner_safe_globals", "trust_checkpoint", "unsafe_globals"]
