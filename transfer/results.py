"""Result records: one JSON file per run, the input of the leaderboard, written and read through
:mod:`ibot.records` (atomic, strict JSON with NaN -> null, ``schema`` first).

Schema (``schema = "ibot-suite/transfer-result/1"``)::

    {
      "schema": ..., "protocol": "finetune" | "knn" | "linear",
      "model":   {"name", "arch", "patch_size", "embed_dim", "depth", "params", "pretrain_data",
                  "checkpoint", "checkpoint_sha256", "checkpoint_key", "load_report",
                  "description" (the backbone description used: family, arch, patch_size, img_size, embed_dim,
                  depth, num_heads), "described" (the file carried it), "source" (the file's provenance)},
      "dataset": {"name" (leaderboard column: data.tag, else the reader, else for the imagefolder reader the data
                  root's folder name: :func:`dataset_column`), "reader", "root", "num_classes",
                  "num_train", "num_test", "train_split", "test_split" (the split folders actually read)},
      "metric":  {"name": "top1" | "top1@k=20" | ..., "value": <percent>, "selection": <how it was chosen>,
                  "selected_over" (linear / fine-tune 'best': {"heads": H, "epochs": E} the maximum was taken over)},
      "metrics": {...every number the protocol measured; feature specs as dicts (ibot.features.FeatureSpec)...},
      "chance":  {"test_class_counts": [per class, label order], "majority_class", "majority_index",
                  "majority_top1": <percent of the test set in its most frequent class>},
      "notes": [...what the run decided for the user, e.g. the test split it fell back to...],
      "warnings": [...settings that make the number meaningless, e.g. a schedule that never reaches its lr...],
      "seed": int, "config": {...the resolved config...}, "env": {...versions, device, world size, amp...},
      "history": [...per-epoch records...], "started": ISO time, "finished": ISO time, "wall_s": float
    }

``chance``, ``notes``, ``warnings`` and ``metric.selected_over`` are absent from files written before they existed;
readers treat them as unknown.

Reading (the leaderboard): :func:`load_result` refuses a file that is not JSON (e.g. truncated by a copy), lacks the
schema tag or a field the leaderboard needs, or holds one of the wrong type, with a :class:`ResultFormatError` naming
the file and the field. :func:`find_result_files` collects ``*.json`` under folders: other tools' JSON files are
skipped, but a ``result.json`` or a file that starts like a transfer result and cannot be read is reported (see
:func:`find_result_files`). :func:`metric_problem` says why a readable record's headline metric is not a result
(missing, NaN, outside [0, 100], a failed run); the leaderboard shows such a cell as invalid.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ibot.records import RecordError, read_record, schema_tag, write_record

__all__ = ["SCHEMA", "REQUIRED", "RESULT_NAME", "ResultFormatError", "write_result", "load_result",
           "find_result_files", "metric_problem", "dataset_column"]

SCHEMA = schema_tag("transfer-result", 1)
#: Fields the leaderboard relies on, as (section, key); key None = the section itself.
REQUIRED = (("protocol", None), ("seed", None), ("model", "name"), ("dataset", "name"), ("metric", "name"),
            ("metric", "value"))
#: Types of the required fields (``metric.value`` is checked by :func:`metric_problem`: a bad value is an invalid
#: cell, not an unreadable file).
_FIELD_TYPES = {("protocol", None): str, ("seed", None): int, ("model", "name"): str, ("dataset", "name"): str,
                ("metric", "name"): str}
#: The file name the protocols write (``transfer.session``).
RESULT_NAME = "result.json"
_FIX = ("re-run the run that wrote it (same command and --output-dir: a linear / fine-tune run continues from its "
        "checkpoint.pth), or move the file out of the folders given to the leaderboard")


def dataset_column(data: Mapping[str, Any]) -> str:
    """The leaderboard column (``dataset.name`` of a result) of a ``data`` config section: ``data.tag`` when set,
    else the reader name, except for the generic ``imagefolder`` reader: the data root's folder name
    (``/data/flowers_mine`` -> ``flowers_mine``), so that two ImageFolder data sets do not share one column."""
    if data.get("tag"):
        return str(data["tag"])
    name = str(data.get("name"))
    root = data.get("root")
    if name == "imagefolder" and root:
        folder = os.path.basename(os.path.normpath(os.path.abspath(os.path.expanduser(str(root)))))
        return folder or name
    return name


class ResultFormatError(RecordError):
    """A file is not a transfer result record."""


def write_result(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Atomically write one transfer result record (tagged :data:`SCHEMA`); returns the path."""
    return write_record(path, record, schema=SCHEMA)


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one result file (schema tag, and the fields the leaderboard needs with their types).

    Raises:
        ResultFormatError: not JSON (truncated?), another schema, a field missing or of the wrong type; the message
            names the file, the field and what to do.
    """
    try:
        rec = read_record(path, schema=SCHEMA)
    except UnicodeDecodeError as exc:
        raise ResultFormatError(f"'{path}' is not a transfer result: it is not UTF-8 text ({exc}); {_FIX}") from exc
    except RecordError as exc:
        raise ResultFormatError(f"'{path}' is not a transfer result: {exc}; {_FIX}") from exc
    for section, key in REQUIRED:
        node = rec.get(section)
        field = f"{section}{'.' + key if key else ''}"
        if node is None or (key is not None and (not isinstance(node, dict) or key not in node)):
            raise ResultFormatError(f"'{path}' lacks {field}; {_FIX}")
        value = node if key is None else node[key]
        want = _FIELD_TYPES.get((section, key))
        if want is not None and (not isinstance(value, want) or isinstance(value, bool)):
            raise ResultFormatError(f"'{path}': field {field} = {value!r} is not a {want.__name__}; {_FIX}")
    return rec


def metric_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a record's headline metric is not a result, or ``None`` when it is one: the run failed (a ``status`` other
    than ``'ok'``, or an ``error``), or ``metric.value`` is missing, not a number, NaN / infinite (written as
    ``null``) or outside [0, 100] (every transfer metric is an accuracy in percent)."""
    status = rec.get("status")
    if status is not None and status != "ok":
        return f"the run failed (status {status!r}{': ' + str(rec['error']) if rec.get('error') else ''})"
    if rec.get("error"):
        return f"the run failed ({rec['error']})"
    metric = rec.get("metric")
    value = metric.get("value") if isinstance(metric, Mapping) else None
    if value is None:
        return "metric.value is null (the run produced no number, or a NaN)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"metric.value = {value!r} is not a number"
    if not math.isfinite(value):
        return f"metric.value = {value!r} is not finite"
    if not 0.0 <= value <= 100.0:
        return f"metric.value = {value!r} is not an accuracy in [0, 100]"
    return None


def _looks_like_result(path: Path) -> bool:
    """A JSON file the protocols wrote or meant to write: named ``result.json``, or starting with the transfer
    schema tag (``write_record`` puts it first) — even when the rest is cut off."""
    if path.name == RESULT_NAME:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return SCHEMA.encode() in head


def _classify(path: Path) -> str:
    """``'result'`` (a readable transfer result), ``'broken'`` (meant to be one, unreadable) or ``'other'``."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError):
        return "broken" if _looks_like_result(path) else "other"
    if isinstance(obj, dict) and obj.get("schema") == SCHEMA:
        return "result"
    return "other"


def find_result_files(paths: Iterable[str | os.PathLike], broken: list[Path] | None = None) -> list[Path]:
    """Files given directly, plus every ``*.json`` under given folders that is a transfer result (sorted).

    Under folders, JSON files of other tools (another or no schema) are skipped. A file that was meant to be a
    transfer result but cannot be read as JSON — a ``result.json``, or a file starting with the transfer schema tag,
    e.g. truncated by an interrupted copy — is returned too, so that :func:`load_result` reports it; with ``broken``
    given it is appended there instead of returned (the caller decides: ``transfer_leaderboard --skip-invalid``).
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                kind = _classify(f)
                if kind == "result" or (kind == "broken" and broken is None):
                    found.append(f)
                elif kind == "broken":
                    broken.append(f)  # type: ignore[union-attr]
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"result path '{p}' does not exist")
    return found
