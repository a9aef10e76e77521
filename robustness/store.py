"""Resumable result files: one JSON per model run, one entry per finished (benchmark, variant, level) cell.

Layout (``format`` = :data:`FORMAT`)::

    {"format": "ibot-robustness/1", "model": "vit_s16_linear", "meta": {...},
     "groups": {"imagenet_c": {"config": {...}, "cells": {"gaussian_noise/3": {"correct": 7, "total": 10, ...}}},
                "occlusion": {...}, "backgrounds": {...}, "ood": {...}, "det_c": {...}, "seg_c": {...}}}

Every :meth:`ResultStore.put` rewrites the file atomically (temp file + ``os.replace``), so an interrupted run loses at
most the cell in flight and a re-run skips what is stored. A group remembers the ``config`` it was computed with; a
re-run with a different config refuses to mix results unless told to start the group afresh.
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ibot.atomic import atomic_write_text

__all__ = ["FORMAT", "ConfigMismatchError", "ResultStore", "atomic_write_json", "load_results"]

FORMAT: Final = "ibot-robustness/1"


class ConfigMismatchError(RuntimeError):
    """A stored group was computed with a different configuration than the one requested."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__} ({obj!r})")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (never leaves a half-written file)."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1, sort_keys=False) + "\n")


def load_results(path: str | os.PathLike[str]) -> dict:
    """Read a result file and check its format tag."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ibot robustness result file (format {data.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return data


class ResultStore:
    """The result file of one model, with per-cell resumability.

    Args:
        path: the JSON file (created on the first :meth:`put`).
        model: a display name for reports; kept from the file when ``None``.
        meta: free-form run information (checkpoint, arch, ...), merged into the file's.
        writable: ``False`` on non-zero ranks of a distributed run: reads work, writes are no-ops.
    """

    def __init__(self, path: str | os.PathLike[str], model: str | None = None,
                 meta: Mapping[str, Any] | None = None, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable
        self._lock = threading.Lock()
        if self.path.exists():
            self.data = load_results(self.path)
        else:
            self.data = {"format": FORMAT, "model": None, "meta": {}, "groups": {}}
        if model is not None:
            self.data["model"] = model
        if self.data.get("model") is None:
            self.data["model"] = self.path.stem
        if meta:
            self.data["meta"].update(_jsonable(meta))

    @property
    def model(self) -> str:
        return self.data["model"]

    def open_group(self, group: str, config: Mapping[str, Any], *, restart: bool = False) -> None:
        """Declare the configuration of ``group``; refuse to mix cells computed under another one.

        ``restart=True`` drops the group's stored cells when the configuration changed (or always, if it did not
        change: a forced recomputation).
        """
        config = _jsonable(config)
        groups = self.data["groups"]
        stored = groups.get(group)
        if stored is not None and not restart and stored.get("config") != config:
            diff = sorted(k for k in set(config) | set(stored.get("config", {}))
                          if config.get(k) != stored.get("config", {}).get(k))
            raise ConfigMismatchError(
                f"{self.path}: group {group!r} was computed with a different configuration (differs in {diff}); "
                "use another result file, or restart the group (--restart) to discard its stored cells"
            )
        if stored is None or restart:
            groups[group] = {"config": config, "cells": {}}
            self._write()

    def cells(self, group: str) -> dict[str, Any]:
        return self.data["groups"].get(group, {}).get("cells", {})

    def config(self, group: str) -> dict[str, Any]:
        return self.data["groups"].get(group, {}).get("config", {})

    def has(self, group: str, key: str) -> bool:
        return key in self.cells(group)

    def get(self, group: str, key: str) -> Any:
        return self.cells(group)[key]

    def put(self, group: str, key: str, value: Mapping[str, Any]) -> None:
        if group not in self.data["groups"]:
            raise KeyError(f"group {group!r} not opened (call open_group first)")
        with self._lock:
            self.data["groups"][group]["cells"][key] = _jsonable(value)
            self._write()

    def put_many(self, group: str, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several cells with one write."""
        if group not in self.data["groups"]:
            raise KeyError(f"group {group!r} not opened (call open_group first)")
        with self._lock:
            self.data["groups"][group]["cells"].update({k: _jsonable(v) for k, v in items.items()})
            self._write()

    def set_meta(self, **meta: Any) -> None:
        self.data["meta"].update(_jsonable(meta))
        self._write()

    def _write(self) -> None:
        if self.writable:
            atomic_write_json(self.path, self.data)
