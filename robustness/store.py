"""Resumable result files: one JSON per model run, one entry per finished (benchmark, variant, level) cell.

Layout (``schema`` = :data:`SCHEMA`, the :mod:`ibot.records` convention)::

    {"schema": "ibot-suite/robustness/2", "model": "vit_s16_linear", "meta": {...},
     "groups": {"imagenet_c": {"config": {...}, "cells": {"gaussian_noise/3": {"correct": 7, "total": 10, ...}}},
                "occlusion": {...}, "backgrounds": {...}, "ood": {...}, "det_c": {...}, "seg_c": {...}}}

Writes and what they guarantee:

* **Atomic**: every write replaces the file in one step (:func:`ibot.records.write_record`), so a crash leaves the
  old or the new file, never half of one; an interrupted run loses at most the cell in flight, and a re-run skips
  what is stored.
* **Nothing before the first finished cell**: :meth:`ResultStore.open_group` only checks the group's configuration;
  the group (and a ``restart``) reaches the file with the run's first finished cell. A run refused or failed before
  that leaves the file byte-identical.
* **Concurrent runs merge**: each write takes an exclusive ``fcntl.flock`` on the sidecar ``<file>.lock``, re-reads
  the file and merges this run's new cells into what is on disk, so two processes writing other cells or groups of
  the same file both keep theirs. A group another run restarted under a different configuration meanwhile is
  refused (:class:`ConfigMismatchError`), never mixed.

A group remembers the ``config`` it was computed with; a re-run with a different config refuses to mix results unless
told to start the group afresh. Keys added to a command's configuration after a file was written are matched through
``open_group(..., defaults=...)``: a stored configuration without such a key reads as having its default (``ANY``: a
key that describes the data but does not change the cells), and is upgraded to the new configuration. Files of the
first version (``{"format": "ibot-robustness/1", ...}``, same layout) are read and rewritten in this one.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from ibot.records import RecordError, json_safe, read_record, schema_tag, write_record

__all__ = ["ANY", "SCHEMA", "ConfigMismatchError", "ResultStore", "load_results"]

logger = logging.getLogger(__name__)

SCHEMA: Final = schema_tag("robustness", 2)
#: The tag of version 1 (before the suite-wide convention); same layout, read and migrated.
_LEGACY_FORMAT: Final = "ibot-robustness/1"
_FIX = ("move it away or delete it to start afresh, restore it from a backup, or write to another --out "
        "(--restart cannot repair a file that does not parse)")


#: ``open_group(defaults={key: ANY})``: a stored configuration without ``key`` matches whatever value is asked.
ANY: Final = object()


def _matches(stored: Mapping[str, Any], config: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """``stored == config``, where a key of ``defaults`` missing from ``stored`` stands for its default (``ANY``:
    for any value)."""
    for key in set(stored) | set(config):
        if key in stored or key not in defaults:
            if stored.get(key) != config.get(key):
                return False
        elif defaults[key] is not ANY and json_safe(defaults[key]) != config.get(key):
            return False
    return True


class ConfigMismatchError(RuntimeError):
    """A stored group was computed with a different configuration than the one requested."""


def _check_layout(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Raise :class:`RecordError` naming the file and the key when ``data`` is not laid out as a result file."""
    def bad(key: str, what: str) -> RecordError:
        return RecordError(f"{os.fspath(path)}: key {key!r} {what}; the file is damaged or was not written by "
                           f"robustness.cli: {_FIX}")

    if data.get("model") is not None and not isinstance(data["model"], str):
        raise bad("model", f"is a {type(data['model']).__name__}, expected a name (string) or null")
    if not isinstance(data.get("meta", {}), dict):
        raise bad("meta", f"is a {type(data['meta']).__name__}, expected an object")
    groups = data.get("groups")
    if not isinstance(groups, dict):
        raise bad("groups", "is missing" if groups is None else f"is a {type(groups).__name__}, expected an object")
    for name, group in groups.items():
        if not isinstance(group, dict):
            raise bad(f"groups.{name}", f"is a {type(group).__name__}, expected {{'config': ..., 'cells': ...}}")
        for part in ("config", "cells"):
            if not isinstance(group.get(part), dict):
                raise bad(f"groups.{name}.{part}", "is missing" if group.get(part) is None
                          else f"is a {type(group[part]).__name__}, expected an object")
        for key, cell in group["cells"].items():
            if not isinstance(cell, dict):
                raise bad(f"groups.{name}.cells.{key}", f"is a {type(cell).__name__}, expected an object")


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a result file (this version, or version 1 migrated in memory) and check its tag and layout.

    Raises:
        FileNotFoundError: no such file.
        RecordError: not JSON, not UTF-8, not laid out as a result file, or not a robustness result file (the message
            names the file, the key and what to do).
    """
    try:
        data = read_record(path)
    except RecordError as exc:
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):  # truncated or edited: name the file and the robustness fix
            raise RecordError(f"{os.fspath(path)} is not valid JSON ({cause}); {_FIX}") from exc
        raise RecordError(f"{exc}; {_FIX}") from exc
    except UnicodeDecodeError as exc:
        raise RecordError(f"{os.fspath(path)} is not a text (UTF-8 JSON) file ({exc}); {_FIX}") from exc
    if data.get("schema") == SCHEMA:
        _check_layout(path, data)
        data.setdefault("meta", {})
        return data
    if data.get("format") == _LEGACY_FORMAT and "schema" not in data:
        logger.info("%s: result file of version 1 (format %r), read as %s", path, _LEGACY_FORMAT, SCHEMA)
        data = {"schema": SCHEMA, **{k: v for k, v in data.items() if k != "format"}}
        _check_layout(path, data)
        data.setdefault("meta", {})
        return data
    found = data.get("schema", data.get("format"))
    raise RecordError(f"{path}: not a robustness result file (key 'schema' is {found!r}, expected {SCHEMA!r}); "
                      "write results to a fresh --out file")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class ResultStore:
    """The result file of one model, with per-cell resumability (see the module docstring for what writes do).

    Args:
        path: the JSON file (created with the first finished cell).
        model: a display name for reports; kept from the file when ``None``.
        meta: free-form run information (checkpoint, arch, ...), merged into the file's.
        writable: ``False`` on non-zero ranks of a distributed run: reads work, writes are no-ops.

    Raises:
        RecordError: the file exists but is not a readable robustness result file (names the file and the fix).
    """

    def __init__(self, path: str | os.PathLike[str], model: str | None = None,
                 meta: Mapping[str, Any] | None = None, writable: bool = True) -> None:
        self.path = Path(path)
        #: The sidecar file locked (``fcntl.flock``) around every read-merge-write.
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.writable = writable
        self._lock = threading.Lock()
        self._model = model
        self._meta = json_safe(meta) if meta else {}
        #: Groups this run opened -> their configuration; groups to empty on disk at the next write (restart).
        self._opened: dict[str, dict[str, Any]] = {}
        self._restart: set[str] = set()
        #: Cells this run computed, merged into the file at every write.
        self._new: dict[str, dict[str, Any]] = {}
        self._files: dict[str, dict[str, str]] = {}
        self._defaults: dict[str, dict[str, Any]] = {}
        #: Groups whose stored configuration lacked keys added since (upgraded at the next write, or :meth:`flush`).
        self._upgraded: set[str] = set()
        self.data = self._read()
        self._apply_identity(self.data)

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, Any]:
        if self.path.exists():
            return load_results(self.path)
        return {"schema": SCHEMA, "model": None, "meta": {}, "groups": {}}

    def _apply_identity(self, data: dict[str, Any]) -> None:
        if self._model is not None:
            data["model"] = self._model
        if data.get("model") is None:
            data["model"] = self.path.stem
        data["meta"].update(self._meta)

    @property
    def model(self) -> str:
        return self.data["model"]

    # ------------------------------------------------------------------ groups
    def _mismatch(self, group: str, stored: Mapping[str, Any], config: Mapping[str, Any], why: str,
                  files: Mapping[str, str]) -> ConfigMismatchError:
        defaults = self._defaults.get(group, {})
        diff = sorted(k for k in set(config) | set(stored)
                      if not _matches({k: stored[k]} if k in stored else {}, {k: config[k]} if k in config else {},
                                      defaults))
        details = []
        for k in diff[:6]:
            where = f" (file {files[k]})" if k in files else ""
            details.append(f"key {k!r}{where}: stored {_short(stored.get(k))}, now {_short(config.get(k))}")
        more = f"; and {len(diff) - 6} more" if len(diff) > 6 else ""
        changed = [f"{files[k]} (key {k!r})" for k in diff if k in files]
        hint = (f"; {' and '.join(changed)} changed since those cells were computed" if changed else "")
        return ConfigMismatchError(
            f"{self.path}: group {group!r} {why} ({'; '.join(details)}{more}){hint}; rerun with --restart to discard "
            "the stored cells of this group and recompute, or write to another --out file")

    def open_group(self, group: str, config: Mapping[str, Any], *, restart: bool = False,
                   files: Mapping[str, str | os.PathLike[str]] | None = None,
                   defaults: Mapping[str, Any] | None = None) -> None:
        """Declare the configuration of ``group``; refuse to mix cells computed under another one.

        Nothing is written here: the group reaches the file with the run's first finished cell.
        ``restart=True`` drops the group's stored cells (in memory now, in the file at the first write) when the
        configuration changed, or always, if it did not change (a forced recomputation). ``files``: ``{config key:
        file path}`` for keys that identify a file's content (``'head_sha256'``), named in the error message.
        ``defaults``: ``{key: value}`` of keys added to the configuration after files were written; a stored
        configuration without the key reads as having ``value`` (:data:`ANY`: any value), and is upgraded.

        Raises:
            ConfigMismatchError: the stored group has another configuration (names the file, the keys and the fix).
        """
        config = json_safe(config)  # compared with the stored (JSON) form: tuples -> lists, NaN -> None
        self._files[group] = {k: os.fspath(v) for k, v in (files or {}).items()}
        self._defaults[group] = dict(defaults or {})
        with self._lock:
            stored = self.data["groups"].get(group)
            if stored is not None and not restart and not _matches(stored.get("config", {}), config,
                                                                   self._defaults[group]):
                raise self._mismatch(group, stored.get("config", {}), config,
                                     "was computed with a different configuration", self._files[group])
            if stored is not None and not restart and stored.get("config") != config:
                stored["config"] = config  # only keys added since: upgraded
                self._upgraded.add(group)
            self._opened[group] = config
            self._new.setdefault(group, {})
            if stored is None or restart:
                self.data["groups"][group] = {"config": config, "cells": {}}
                self._new[group] = {}
                if restart:
                    self._restart.add(group)

    def cells(self, group: str) -> dict[str, Any]:
        return self.data["groups"].get(group, {}).get("cells", {})

    def config(self, group: str) -> dict[str, Any]:
        return self.data["groups"].get(group, {}).get("config", {})

    def has(self, group: str, key: str) -> bool:
        return key in self.cells(group)

    def get(self, group: str, key: str) -> Any:
        return self.cells(group)[key]

    def put(self, group: str, key: str, value: Mapping[str, Any]) -> None:
        self.put_many(group, {key: value})

    def put_many(self, group: str, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store several cells with one write (merged into the file as it is on disk now)."""
        if group not in self._opened:
            if group not in self.data["groups"]:
                raise KeyError(f"group {group!r} not opened (call open_group first)")
            self.open_group(group, self.config(group))  # a group of the file: add to it under its configuration
        with self._lock:
            self._new[group].update({k: json_safe(v) for k, v in items.items()})
            self.data["groups"][group]["cells"].update({k: json_safe(v) for k, v in items.items()})
            self._write()

    def set_meta(self, **meta: Any) -> None:
        with self._lock:
            self._meta.update(json_safe(meta))
            self.data["meta"].update(json_safe(meta))
            self._write()

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive ``flock`` on ``<file>.lock`` (held by one process at a time; released on exit or death)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _merged(self, disk: dict[str, Any]) -> dict[str, Any]:
        """``disk`` with this run's groups, restarts, cells, name and meta merged in; raises on a config clash."""
        groups = disk["groups"]
        for group, config in self._opened.items():
            stored = groups.get(group)
            if group in self._restart or stored is None:
                groups[group] = {"config": config, "cells": dict(self._new[group])}
                continue
            if not _matches(stored["config"], config, self._defaults.get(group, {})):
                raise self._mismatch(group, stored["config"], config, "was restarted by another run with a "
                                     "different configuration while this run was computing", self._files[group])
            stored["config"] = config
            stored["cells"].update(self._new[group])
        self._apply_identity(disk)
        return disk

    def flush(self) -> None:
        """Write now if a configuration was upgraded (:meth:`open_group` ``defaults``) and no cell wrote it since:
        a re-run that finds every cell stored still records the keys added since."""
        if self._upgraded:
            with self._lock:
                self._write()

    def _write(self) -> None:
        if not self.writable:
            return
        with self._file_lock():
            merged = self._merged(self._read())
            write_record(self.path, merged, schema=SCHEMA)
        self._restart.clear()  # applied: later writes merge into the restarted group
        self._upgraded.clear()
        self.data = merged
