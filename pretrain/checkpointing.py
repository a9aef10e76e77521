"""Training-state checkpoints: atomic writes, keep-last-K, auto-resume.

Layout (tensors and plain Python values only, so it loads with ``weights_only=True``), a superset
of the official full checkpoint: ``schema`` (:data:`SCHEMA`), ``student``, ``teacher``
(``backbone.*`` / ``head.*``), ``ibot_loss`` (centers), ``optimizer``, ``fp16_scaler``, ``epoch``
(epochs completed), ``iteration`` (global iterations completed), ``sampler``, ``rng`` (one
:func:`ibot.distributed.rng_state` snapshot per rank, in rank order), ``world_size``, ``config``.

Resuming (:func:`find_resumable`) takes the newest *usable* checkpoint: a truncated, foreign or incomplete newer
file is reported by name and skipped (the engine then moves it aside as ``<name>.corrupt``); when no checkpoint is
usable the run is refused with the list of files. :func:`stale_temp_files` finds what an interrupted atomic write
(``ibot.atomic``: ``.<name>.<random>.tmp`` next to the destination) left behind.

Version 1 files (``'format': 'ibot-suite/pretrain-v1'``, ``rng`` a flat rank-major list of torch
CPU (and CUDA) generator states) are still read: :func:`load_checkpoint` upgrades them in memory.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any

from torch import Tensor

from ibot.checkpoint import CheckpointError, load_file, save_file
from ibot.distributed import rng_state
from ibot.records import schema_tag

#: Schema tag of a training checkpoint (the ``ibot.records`` convention). Version 2: per-rank RNG snapshots of
#: Python, NumPy, torch and CUDA (version 1 saved torch's generators only).
SCHEMA = schema_tag("pretrain-checkpoint", 2)
#: The tag of version 1 files, under the key ``format``.
LEGACY_FORMAT = "ibot-suite/pretrain-v1"
#: Older name of :data:`SCHEMA`, kept for importers.
FORMAT = SCHEMA
_NAME = re.compile(r"checkpoint_iter(\d+)\.pth$")
#: Keys a checkpoint needs to resume from.
REQUIRED_KEYS = ("student", "teacher", "optimizer", "ibot_loss", "iteration", "rng")
#: Suffix given to an unusable checkpoint moved aside on resume (no longer matched by :func:`list_checkpoints`).
CORRUPT_SUFFIX = ".corrupt"
#: Temporary files of interrupted atomic writes (``ibot.atomic``): in ``checkpoints/`` and in the work dir.
_TEMP_IN_CHECKPOINTS = re.compile(r"^\.checkpoint_iter\d+\.pth\.[A-Za-z0-9_]+\.tmp$")
_TEMP_IN_WORK_DIR = re.compile(r"^\.(config\.py|log\.jsonl|teacher_backbone\.pth)\.[A-Za-z0-9_]+\.tmp$")


class ResumeError(RuntimeError):
    """A run that cannot start or resume as asked; raised before anything in the work dir is changed."""


class WorkDirInUseError(ResumeError, FileExistsError):
    """A fresh start (``--no-resume``) in a work dir that holds checkpoints."""


def checkpoint_path(work_dir: str, iteration: int) -> str:
    return os.path.join(work_dir, "checkpoints", f"checkpoint_iter{iteration:08d}.pth")


def list_checkpoints(work_dir: str) -> list[tuple[int, str]]:
    """(iteration, path) of complete checkpoints, oldest first (temp files are never matched)."""
    found = []
    for p in glob.glob(os.path.join(work_dir, "checkpoints", "checkpoint_iter*.pth")):
        m = _NAME.search(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(work_dir: str) -> str | None:
    ckpts = list_checkpoints(work_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(state: dict[str, Any], work_dir: str, keep_last: int, keep_every_epochs: int = 0,
                    iters_per_epoch: int = 1) -> str:
    """Write ``state`` atomically (tagged :data:`SCHEMA`), then delete older checkpoints beyond the last
    ``keep_last`` (checkpoints at multiples of ``keep_every_epochs`` epochs are kept, like ``saveckp_freq``)."""
    path = checkpoint_path(work_dir, state["iteration"])
    save_file({"schema": SCHEMA, **state}, path)
    ckpts = list_checkpoints(work_dir)
    for it, p in ckpts[: max(0, len(ckpts) - keep_last)]:
        keep = keep_every_epochs and it % (keep_every_epochs * iters_per_epoch) == 0
        if not keep:
            os.remove(p)
    return path


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a training checkpoint (weights-only: ours hold tensors and plain values); version 1 files are
    upgraded to the current layout."""
    state = load_file(path)
    if state.get("schema") == SCHEMA:
        return state
    if state.get("format") == LEGACY_FORMAT:
        return _upgrade_v1(state)
    found = state.get("schema", state.get("format"))
    raise ValueError(f"{path} is not a checkpoint of this pretraining engine (key 'schema' is {found!r}, expected "
                     f"{SCHEMA!r}); to initialise from other weights, use ibot.checkpoint.load_backbone or the "
                     "official-format loaders, not --resume")


def _upgrade_v1(state: dict[str, Any]) -> dict[str, Any]:
    """A version 1 checkpoint in the version 2 layout.

    Version 1 kept only torch's CPU generator (and the CUDA generator of the rank's device) per rank, flattened
    rank-major. Each rank's entry becomes a snapshot whose Python / NumPy states are this process's current ones,
    so restoring it changes only what version 1 restored.
    """
    flat: list[Tensor] = state.pop("rng")
    world = int(state.get("world_size") or 1)
    per_rank = max(1, len(flat) // world)
    rng = []
    for r in range(world):
        mine = flat[r * per_rank:(r + 1) * per_rank]
        snap = {k: v for k, v in rng_state().items() if k in ("python", "numpy")}
        snap["torch"] = mine[0]
        if per_rank == 2:
            snap["cuda_device"] = mine[1]
        rng.append(snap)
    state.pop("format")
    return {"schema": SCHEMA, **state, "rng": rng}


def read_resumable(path: str) -> dict[str, Any]:
    """:func:`load_checkpoint` plus a check that the state has what a resume needs.

    Raises:
        FileNotFoundError, ibot.checkpoint.CheckpointError (truncated, corrupt, pickles code: never unpickled),
        ValueError (not a checkpoint of this engine, or lacking keys).
    """
    state = load_checkpoint(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {', '.join(missing)} a resume needs (an incomplete checkpoint)")
    return state


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (CheckpointError, ValueError)) else f"{type(exc).__name__}: {exc}"


def find_resumable(work_dir: str) -> tuple[str | None, dict[str, Any] | None, list[tuple[str, str]]]:
    """(path, state) of the newest usable checkpoint of ``work_dir`` and the (path, reason) of every newer file that
    is not usable; (None, None, []) when there are no checkpoints.

    Raises:
        ResumeError: checkpoints exist but none is usable (the message names each file and why).
    """
    bad: list[tuple[str, str]] = []
    for _, path in reversed(list_checkpoints(work_dir)):
        try:
            return path, read_resumable(path), bad
        except (OSError, CheckpointError, ValueError, KeyError, EOFError, RuntimeError, TypeError, IndexError) as e:
            bad.append((path, _why(e)))
    if not bad:
        return None, None, []
    listing = "\n".join(f"  {p}: {why}" for p, why in bad)
    raise ResumeError(
        f"cannot resume: none of the {len(bad)} checkpoint(s) in {os.path.join(work_dir, 'checkpoints')} is usable:\n"
        f"{listing}\nDelete them (or the whole work dir) to start over, replace them with intact copies, or pass "
        "--resume PATH with a good checkpoint (or use another --work-dir). Nothing in the work dir was changed.")


def set_aside(paths: list[str]) -> list[str]:
    """Rename unusable checkpoints to ``<name>.corrupt`` (kept for inspection, never resumed from or counted by
    ``keep_last``); returns the new paths."""
    out = []
    for p in paths:
        if os.path.exists(p):
            os.replace(p, p + CORRUPT_SUFFIX)
            out.append(p + CORRUPT_SUFFIX)
    return out


def stale_temp_files(work_dir: str) -> list[str]:
    """Temporary files left by interrupted atomic writes of the engine in ``work_dir`` and its ``checkpoints/``."""
    found = []
    for folder, pattern in ((os.path.join(work_dir, "checkpoints"), _TEMP_IN_CHECKPOINTS),
                            (work_dir, _TEMP_IN_WORK_DIR)):
        if os.path.isdir(folder):
            found += [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if pattern.match(f)]
    return found


def remove_stale_temp_files(work_dir: str) -> list[str]:
    """Delete :func:`stale_temp_files` (call before the run writes anything: no write of its own is under way);
    returns the removed paths."""
    removed = []
    for p in stale_temp_files(work_dir):
        try:
            os.remove(p)
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed
