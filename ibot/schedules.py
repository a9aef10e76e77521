"""Schedules of the official iBOT training: per-iteration cosine arrays, per-epoch temperatures."""
from __future__ import annotations

import numpy as np


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
    warmup_steps: int = -1,
) -> np.ndarray:
    """Values for every iteration, shape (epochs * niter_per_ep,).

    Linear warm-up from ``start_warmup_value`` over ``warmup_epochs`` epochs (or ``warmup_steps``
    iterations if > 0), then ``final + 0.5 (base - final)(1 + cos(pi i / n))`` over the rest —
    the official ``utils.cosine_scheduler``.
    """
    if epochs <= 0 or niter_per_ep <= 0:
        raise ValueError(f"epochs ({epochs}) and niter_per_ep ({niter_per_ep}) must be positive")
    warmup_iters = warmup_epochs * niter_per_ep if warmup_steps <= 0 else warmup_steps
    total = epochs * niter_per_ep
    if warmup_iters > total:
        raise ValueError(f"warm-up ({warmup_iters} iterations) is longer than training ({total})")
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(total - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, cosine))


def teacher_temp_schedule(
    warmup_temp: float, final_temp: float, warmup_epochs: int, epochs: int, hold_epochs: int = 0
) -> np.ndarray:
    """Teacher temperature per epoch, shape (epochs,).

    ``hold_epochs`` epochs at ``warmup_temp`` (the official patch schedule with ``pred_start_epoch``),
    then a linear ramp over ``warmup_epochs`` epochs, then ``final_temp``.
    """
    rest = epochs - warmup_epochs - hold_epochs
    if rest < 0:
        raise ValueError(f"warm-up ({warmup_epochs}) + hold ({hold_epochs}) epochs exceed training ({epochs})")
    return np.concatenate((
        np.ones(hold_epochs) * warmup_temp,
        np.linspace(warmup_temp, final_temp, warmup_epochs),
        np.ones(rest) * final_temp,
    ))
