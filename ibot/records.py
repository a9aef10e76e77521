"""The one result-record writer and reader of the suite: JSON files that say what they are.

Every result file carries ``"schema": "ibot-suite/<kind>/<version>"`` as its first key (one convention for every
harness), non-finite floats are written as ``null`` (strict JSON that browsers and ``jq`` read), and the write is
atomic (a crash never leaves half a file; a reader sees the old or the new record). :func:`read_record` checks the
tag and names the file, the key and the fix when it does not match.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ibot.atomic import atomic_write_text

__all__ = ["RecordError", "SCHEMA_PREFIX", "file_sha256", "json_safe", "read_record", "schema_tag", "write_record"]

SCHEMA_PREFIX = "ibot-suite/"

PathLike = str | os.PathLike[str]


class RecordError(ValueError):
    """A result file is not the record the caller expected (wrong or missing schema, not JSON)."""


def schema_tag(kind: str, version: int) -> str:
    """``schema_tag('robustness', 2)`` -> ``'ibot-suite/robustness/2'``."""
    if not kind or "/" in kind:
        raise ValueError(f"record kind must be a non-empty name without '/', got {kind!r}")
    return f"{SCHEMA_PREFIX}{kind}/{int(version)}"


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(allow_nan=False)`` accepts: NaN / ±inf -> ``None``, tuples -> lists,
    paths -> strings, numpy / torch scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(obj, "ndim", 0) == 0:
        return json_safe(item())
    raise TypeError(f"cannot write {type(obj).__name__} to a JSON record: {obj!r}")


def write_record(path: PathLike, obj: Mapping[str, Any], *, schema: str) -> Path:
    """Atomically write ``{"schema": schema, **obj}`` as indented strict JSON (NaN -> null) and return the path.

    ``schema`` is a :func:`schema_tag`; an ``obj`` that holds another ``schema`` value is refused.
    """
    if not schema.startswith(SCHEMA_PREFIX):
        raise ValueError(f"schema {schema!r} must come from ibot.records.schema_tag (prefix {SCHEMA_PREFIX!r})")
    if obj.get("schema", schema) != schema:
        raise ValueError(f"record for {os.fspath(path)} holds schema {obj['schema']!r}, written as {schema!r}")
    body = json.dumps(json_safe({"schema": schema, **{k: v for k, v in obj.items() if k != "schema"}}),
                      indent=2, allow_nan=False)
    atomic_write_text(path, body + "\n")
    return Path(path)


def read_record(path: PathLike, *, schema: str | None = None, kind: str | None = None) -> dict[str, Any]:
    """Read a record written by :func:`write_record`.

    Args:
        path: the JSON file.
        schema: the exact tag expected (e.g. ``schema_tag('suite', 2)``), or ``None``.
        kind: accept any version of this record kind (``'ibot-suite/<kind>/*'``), or ``None``.

    Raises:
        FileNotFoundError: no such file.
        RecordError: not JSON, not an object, or a schema other than the one expected (the message names the file,
            the tag found and what to do).
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path} is not valid JSON ({exc}): it was damaged outside the suite (its writes are "
                          "atomic); move it away or delete it and re-run the tool that made it, or restore a "
                          "copy") from exc
    if not isinstance(obj, dict):
        raise RecordError(f"{path} holds a JSON {type(obj).__name__}, not a result record")
    found = obj.get("schema")
    want = schema or (f"{SCHEMA_PREFIX}{kind}/" if kind else None)
    if want is not None:
        ok = found == schema if schema else isinstance(found, str) and found.startswith(want)
        if not ok:
            raise RecordError(f"{path}: key 'schema' is {found!r}, expected {want!r}"
                              f"{'<version>' if not schema else ''}; this file was written by another tool or "
                              "version: re-run the tool that makes it into a fresh output path")
    return obj


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
