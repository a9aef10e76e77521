"""Training-state checkpoints: atomic writes, keep-last-K, auto-resume.

Layout (tensors and plain Python values only, so it loads with ``weights_only=True``), a superset
of the official full checkpoint: ``student``, ``teacher`` (``backbone.*`` / ``head.*``),
``ibot_loss`` (centers), ``optimizer``, ``fp16_scaler``, ``epoch`` (epochs completed), and
``iteration`` (global iterations completed), ``sampler``, ``rng`` (per rank), ``config``, ``format``.
"""
from __future__ import annotations

import glob
import os
import re

from ibot.checkpoint import load_file, save_file

FORMAT = "ibot-suite/pretrain-v1"
_NAME = re.compile(r"checkpoint_iter(\d+)\.pth$")


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


def save_checkpoint(state: dict, work_dir: str, keep_last: int, keep_every_epochs: int = 0,
                    iters_per_epoch: int = 1) -> str:
    """Write ``state`` atomically, then delete older checkpoints beyond the last ``keep_last``
    (checkpoints at multiples of ``keep_every_epochs`` epochs are kept, like ``saveckp_freq``)."""
    path = checkpoint_path(work_dir, state["iteration"])
    save_file({**state, "format": FORMAT}, path)
    ckpts = list_checkpoints(work_dir)
    for it, p in ckpts[: max(0, len(ckpts) - keep_last)]:
        keep = keep_every_epochs and it % (keep_every_epochs * iters_per_epoch) == 0
        if not keep:
            os.remove(p)
    return path


def load_checkpoint(path: str) -> dict:
    """Read a training checkpoint (weights-only: ours hold tensors and plain values)."""
    state = load_file(path)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this pretraining engine (format "
                         f"{state.get('format')!r}, expected {FORMAT!r}); to initialise from other "
                         "weights, use ibot.checkpoint / model.init_from")
    return state
