"""Result records: one JSON file per run, the input of the leaderboard.

Schema (``schema = "ibot-suite/transfer-result/1"``)::

    {
      "schema": ..., "protocol": "finetune" | "knn" | "linear",
      "model":   {"name", "arch", "patch_size", "embed_dim", "depth", "params", "pretrain_data",
                  "checkpoint", "checkpoint_sha256", "checkpoint_key", "load_report"},
      "dataset": {"name" (leaderboard column: data.tag or the reader), "reader", "root", "num_classes",
                  "num_train", "num_test", "train_split", "test_split"},
      "metric":  {"name": "top1" | "top1@k=20" | ..., "value": <percent>, "selection": <how it was chosen>},
      "metrics": {...every number the protocol measured...},
      "seed": int, "config": {...the resolved config...}, "env": {...versions, device, world size, amp...},
      "history": [...per-epoch records...], "started": ISO time, "finished": ISO time, "wall_s": float
    }
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ibot.atomic import atomic_write_text

__all__ = ["SCHEMA", "REQUIRED", "ResultFormatError", "write_json", "write_text", "load_result", "find_result_files"]

SCHEMA = "ibot-suite/transfer-result/1"
#: Fields the leaderboard relies on, as (section, key); key None = the section itself.
REQUIRED = (("protocol", None), ("seed", None), ("model", "name"), ("dataset", "name"), ("metric", "name"),
            ("metric", "value"))


class ResultFormatError(ValueError):
    """A file is not a transfer result record."""


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temporary file in the same folder, then rename)."""
    atomic_write_text(path, text)


def _finite(obj: Any) -> Any:
    """JSON has no NaN / inf: store them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def load_result(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one result file."""
    try:
        with open(path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ResultFormatError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(rec, dict) or rec.get("schema") != SCHEMA:
        raise ResultFormatError(f"'{path}' is not a transfer result (schema {SCHEMA!r} expected, got "
                                f"{rec.get('schema') if isinstance(rec, dict) else type(rec).__name__!r})")
    for section, key in REQUIRED:
        node = rec.get(section)
        if node is None or (key is not None and (not isinstance(node, dict) or key not in node)):
            raise ResultFormatError(f"'{path}' lacks {section}{'.' + key if key else ''}")
    return rec


def find_result_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given directly, plus every ``*.json`` under given folders whose schema matches (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*.json")):
                try:
                    with open(f, encoding="utf-8") as fh:
                        if json.load(fh).get("schema") == SCHEMA:
                            found.append(f)
                except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                    continue
        elif p.exists():
            found.append(p)
        else:
            raise FileNotFoundError(f"result path '{p}' does not exist")
    return found
