"""Resumable result files: one JSON per model run, one entry per finished (benchmark, variant, level) cell.

Layout (``schema`` = :data:`SCHEMA`, the :mod:`ibot.records` convention)::

    {"schema": "ibot-suite/robustness/2", "model": "vit_s16_linear", "meta": {...},
     "groups": {"imagenet_c": {"config": {...}, "cells": {"gaussian_noise/3": {"correct": 7, "total": 10, ...}}},
                "occlusion": {...}, "backgrounds": {...}, "ood": {...}, "det_c": {...}, "seg_c": {...}}}

Every :meth:`ResultStore.put` rewrites the file atomically (:func:`ibot.records.write_record`), so an interrupted run
loses at most the cell in flight and a re-run skips what is stored. A group remembers the ``config`` it was computed
with; a re-run with a different config refuses to mix results unless told to start the group afresh. Files of the
first version (``{"format": "ibot-robustness/1", ...}``, same layout) are read and rewritten in this one.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ibot.records import RecordError, json_safe, read_record, schema_tag, write_record

__all__ = ["SCHEMA", "ConfigMismatchError", "ResultStore", "load_results"]

logger = logging.getLogger(__name__)

SCHEMA: Final = schema_tag("robustness", 2)
#: The tag of version 1 (before the suite-wide convention); same layout, read and migrated.
_LEGACY_FORMAT: Final = "ibot-robustness/1"


class ConfigMismatchError(RuntimeError):
    """A stored group was computed with a different configuration than the one requested."""


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result file (this version, or version 1 migrated in memory) and check its tag.

    Raises:
        RecordError: not JSON, or not a robustness result file (the message names the file and the tag found).
    """
    data = read_record(path)
    if data.get("schema") == SCHEMA:
        return data
    if data.get("format") == _LEGACY_FORMAT and "schema" not in data:
        logger.info("%s: result file of version 1 (format %r), read as %s", path, _LEGACY_FORMAT, SCHEMA)
        return {"schema": SCHEMA, **{k: v for k, v in data.items() if k != "format"}}
    found = data.get("schema", data.get("format"))
    raise RecordError(f"{path}: not a robustness result file (key 'schema' is {found!r}, expected {SCHEMA!r}); "
                      "write results to a fresh --out file")


class ResultStore:
    """The result file of one model, with per-cell resumability.

    Args:
        path: the JSON file (created on the first write).
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
            self.data = {"schema": SCHEMA, "model": None, "meta": {}, "groups": {}}
        if model is not None:
            self.data["model"] = model
        if self.data.get("model") is None:
            self.data["model"] = self.path.stem
        if meta:
            self.data["meta"].update(json_safe(meta))

    @property
    def model(self) -> str:
        return self.data["model"]

    def open_group(self, group: str, config: Mapping[str, Any], *, restart: bool = False) -> None:
        """Declare the configuration of ``group``; refuse to mix cells computed under another one.

        ``restart=True`` drops the group's stored cells when the configuration changed (or always, if it did not
        change: a forced recomputation).
        """
        config = json_safe(config)  # compared with the stored (JSON) form: tuples -> lists, NaN -> None
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
            self.data["groups"][group]["cells"][key] = json_safe(value)
            self._write()

    def put_many(self, group: str, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several cells with one write."""
        if group not in self.data["groups"]:
            raise KeyError(f"group {group!r} not opened (call open_group first)")
        with self._lock:
            self.data["groups"][group]["cells"].update({k: json_safe(v) for k, v in items.items()})
            self._write()

    def set_meta(self, **meta: Any) -> None:
        self.data["meta"].update(json_safe(meta))
        self._write()

    def _write(self) -> None:
        if self.writable:
            write_record(self.path, self.data, schema=SCHEMA)
