"""Per-epoch training state for resumption: one atomic ``checkpoint.pth`` per run directory.

The file holds the trainable modules, optimizer, scheduler, epoch counter, the protocol's bookkeeping
(best accuracy, history) and every process's RNG state (``ibot.distributed.gathered_rng_states``), written with
``ibot.checkpoint.save_file`` (temporary file + rename, so an interrupted write never leaves a torn checkpoint)
and read back with ``weights_only=True``.
Resuming refuses a checkpoint written under a different configuration, except for keys that may change
between a run and its continuation (``RESUMABLE_CHANGES``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ibot.checkpoint import CorruptCheckpointError, load_file, save_file
from ibot.distributed import DistEnv, set_rng_state
from transfer.runtime import seed_all

__all__ = ["CHECKPOINT_NAME", "ResumeMismatchError", "save_state", "load_state", "checkpoint_path", "restore_rng"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
#: Config keys allowed to differ on resume (paths, worker counts, progress display, run-time flags).
RESUMABLE_CHANGES = ("num_workers", "progress", "output_dir", "device", "data.root", "model.pretrained")


class ResumeMismatchError(RuntimeError):
    """The checkpoint in the run directory was written under a different configuration."""


def checkpoint_path(output_dir: str | os.PathLike) -> Path:
    """``<output_dir>/checkpoint.pth``."""
    return Path(output_dir) / CHECKPOINT_NAME


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{'optim.lr': ..., ...}`` (to compare configs key by key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_state(output_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (must include ``config`` and ``epoch``) to ``<output_dir>/checkpoint.pth``."""
    path = checkpoint_path(output_dir)
    save_file(state, path)
    return path


def load_state(output_dir: str | os.PathLike, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run directory's checkpoint, or ``None`` when there is none; raises if its config differs."""
    path = checkpoint_path(output_dir)
    if not path.exists():
        return None
    try:
        state = load_file(path)
    except CorruptCheckpointError as exc:
        raise CorruptCheckpointError(f"{exc} It is the resume state of the run in '{path.parent}': delete it to start "
                                     "that run over (or restore it from a copy)") from exc
    old, new = _flatten(state["config"]), _flatten(config)
    diff = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and not any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES))
    if diff:
        lines = "\n".join(f"  {k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in diff[:20])
        raise ResumeMismatchError(
            f"'{path}' was written with a different configuration:\n{lines}\n"
            "Use another --output-dir for a new run, or delete the checkpoint to start over."
        )
    log.info("resuming from '%s' (epoch %d done)", path, state["epoch"])
    return state


def restore_rng(states: list[dict[str, Any]], env: DistEnv, seed: int, epoch: int) -> None:
    """Give each process back its own RNG streams (``states``: ``ibot.distributed.gathered_rng_states()`` of the
    run, one per rank); with a different process count, reseed deterministically."""
    if len(states) == env.world:
        set_rng_state(states[env.rank], env.device)
    else:
        log.warning("checkpoint has RNG states of %d processes, now %d: reseeding (the continuation will not "
                    "replay the original random stream)", len(states), env.world)
        seed_all(seed + env.rank + 1000 * epoch)
