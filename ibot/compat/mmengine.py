"""mmengine 0.10.7 on torch >= 2.6: route its local checkpoint loading through ``ibot.checkpoint``.

mmengine's ``load_from_local`` calls ``torch.load`` without ``weights_only``; since torch 2.6 that
means weights-only loading, which refuses mmengine's own checkpoints (they pickle a
``HistoryBuffer`` in ``message_hub``) with an opaque ``UnpicklingError``. After :func:`install`,
tensors-only files load as before, and a file that pickles objects raises
:class:`~ibot.checkpoint.UntrustedCheckpointError` naming the opt-in — unless it was named with
:func:`trust_checkpoint` (our ``tools/train.py --resume`` and ``tools/test.py --trust-checkpoint``).
"""
from __future__ import annotations

import os
from typing import Any

from mmengine.runner.checkpoint import CheckpointLoader

from ibot.checkpoint import load_file

_TRUSTED: set[str] = set()


def trust_checkpoint(path: str | os.PathLike[str]) -> None:
    """Allow full unpickling of this one file (executes pickled code: only for files you trust)."""
    _TRUSTED.add(os.path.realpath(os.path.expanduser(os.fspath(path))))


def is_trusted(path: str | os.PathLike[str]) -> bool:
    return os.path.realpath(os.path.expanduser(os.fspath(path))) in _TRUSTED


def load_from_local(filename: str, map_location: Any = None) -> Any:
    """Replacement for mmengine's local-path scheme (same signature)."""
    filename = os.path.expanduser(filename)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return load_file(filename, trusted=is_trusted(filename), map_location=map_location or "cpu")


def install() -> None:
    """Register :func:`load_from_local` for plain paths (idempotent)."""
    CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
