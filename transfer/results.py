"""Result records: one JSON file per run, the input of the leaderboard, written and read through
:mod:`ibot.records` (atomic, strict JSON with NaN -> null, ``schema`` first).

Schema (``schema = "ibot-suite/transfer-result/1"``)::

    {
      "schema": ..., "protocol": "finetune" | "knn" | "linear",
      "model":   {"name", "arch", "patch_size", "embed_dim", "depth", "params", "pretrain_data",
                  "checkpoint", "checkpoint_sha256", "checkpoint_key", "load_report",
                  "description" (the backbone description used: family, arch, patch_size, img_size, embed_dim,
                  depth, num_heads), "described" (the file carried it), "source" (the file's provenance)},
      "dataset": {"name" (leaderboard column: data.tag or the reader), "reader", "root", "num_classes",
                  "num_train", "num_test", "train_split", "test_split"},
      "metric":  {"name": "top1" | "top1@k=20" | ..., "value": <percent>, "selection": <how it was chosen>},
      "metrics": {...every number the protocol measured; feature specs as dicts (ibot.features.FeatureSpec)...},
      "seed": int, "config": {...the resolved config...}, "env": {...versions, device, world size, amp...},
      "history": [...per-epoch records...], "started": ISO time, "finished": ISO time, "wall_s": float
    }
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ibot.records import RecordError, read_record, schema_tag, write_record

__all__ = ["SCHEMA", "REQUIRED", "ResultFormatError", "write_result", "load_result", "find_result_files"]

SCHEMA = schema_tag("transfer-result", 1)
#: Fields the leaderboard relies on, as (section, key); key None = the section itself.
REQUIRED = (("protocol", None), ("seed", None), ("model", "name"), ("dataset", "name"), ("metric", "name"),
            ("metric", "value"))


class ResultFormatError(RecordError):
    """A file is not a transfer result record."""


def write_result(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Atomically write one transfer result record (tagged :data:`SCHEMA`); returns the path."""
    return write_record(path, record, schema=SCHEMA)


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one result file (schema tag and the fields the leaderboard needs)."""
    try:
        rec = read_record(path, schema=SCHEMA)
    except RecordError as exc:
        raise ResultFormatError(f"'{path}' is not a transfer result: {exc}") from exc
    for section, key in REQUIRED:
        node = rec.get(section)
        if node is None or (key is not None and (not isinstance(node, dict) or key not in node)):
            raise ResultFormatError(f"'{path}' lacks {section}{'.' + key if key else ''}")
    return rec


def _is_result(path: Path) -> bool:
    """Whether a JSON file found in a folder is a transfer result (other JSONs are skipped silently)."""
    try:
        read_record(path, schema=SCHEMA)
    except (RecordError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def find_result_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus every ``*.json`` under given folders whose schema matches (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += [f for f in sorted(p.rglob("*.json")) if _is_result(f)]
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"result path '{p}' does not exist")
    return found
