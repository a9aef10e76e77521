"""Masked-image-modeling masks with the semantics of the official iBOT loader.

`MaskGenerator` reproduces `loader.ImageFolderMask` of bytedance/ibot (commit da316d8): the prediction
ratio is drawn per crop (`get_pred_ratio`), then either a BEiT-style block mask or a uniformly random mask
is built. It draws from the same RNG streams in the same order — Python's global `random` for the ratio
and the block geometry, NumPy's global RNG for 'rand' — so for equal seeds the masks are bit-identical to
the official ones (checked in tests/test_masking.py against an independent transcription).

`mask_to_indices` / `max_masked_tokens` turn a batch of masks into fixed-shape gather indices for the
training loop, so the student / teacher patch heads only run on masked tokens without shape changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

__all__ = ["MaskGenerator", "mask_to_indices", "max_masked_tokens", "RatioSpec"]

RatioSpec = float | Sequence[float]
MaskShape = Literal["block", "rand"]

# Official value: `pred_aspect_ratio=(0.3, 1/0.3)` is hard-coded in main_ibot.train_ibot.
DEFAULT_ASPECT_RATIO = (0.3, 1 / 0.3)
# Attempts per block before a round counts as "nothing added" (BEiT / official loader).
_ATTEMPTS_PER_BLOCK = 10


def _normalize_ratio(
    pred_ratio: RatioSpec, pred_ratio_var: RatioSpec
) -> tuple[float | list[float], float | list[float]]:
    """Apply the official unwrapping: length-1 lists become scalars, a scalar var is broadcast to a list ratio.

    Scalar vs list matters beyond convenience: a list ratio costs an extra `random.choice` draw per crop.
    """

    def as_value(x: RatioSpec, name: str) -> float | list[float]:
        if isinstance(x, (str, bytes)):
            raise ValueError(f"{name} must be a number or a sequence of numbers, got {x!r}")
        if isinstance(x, (Sequence, np.ndarray)):
            values = [float(v) for v in x]
            if not values:
                raise ValueError(f"{name} must not be empty")
            return values[0] if len(values) == 1 else values
        return float(x)

    ratio = as_value(pred_ratio, "pred_ratio")
    var = as_value(pred_ratio_var, "pred_ratio_var")
    if isinstance(ratio, list):
        if not isinstance(var, list):
            var = [var] * len(ratio)
        elif len(var) != len(ratio):
            # The official code zips and silently drops the extra entries; refuse instead.
            raise ValueError(f"pred_ratio_var has {len(var)} entries but pred_ratio has {len(ratio)}")
    elif isinstance(var, list):
        raise ValueError("pred_ratio_var is a list but pred_ratio is a scalar")

    pairs = zip(ratio, var) if isinstance(ratio, list) else [(ratio, var)]
    for r, v in pairs:  # type: ignore[arg-type]
        if not (math.isfinite(r) and math.isfinite(v)):
            raise ValueError(f"pred_ratio / pred_ratio_var must be finite, got {r}, {v}")
        if v < 0:
            raise ValueError(f"pred_ratio_var must be >= 0, got {v}")
        if r - v < 0 or r + v > 1:
            # Official asserts r >= v; r + v > 1 would ask for more than H*W patches.
            raise ValueError(f"need 0 <= pred_ratio - var and pred_ratio + var <= 1, got ratio {r}, var {v}")
    return ratio, var


def _check_grid(grid_hw: Sequence[int]) -> tuple[int, int]:
    if len(grid_hw) != 2:
        raise ValueError(f"grid_hw must be (H, W), got {grid_hw!r}")
    h, w = (int(s) for s in grid_hw)
    if h <= 0 or w <= 0 or h != grid_hw[0] or w != grid_hw[1]:
        raise ValueError(f"grid_hw must be two positive integers, got {grid_hw!r}")
    return h, w


class MaskGenerator:
    """Per-crop MIM mask generator (official `ImageFolderMask` semantics).

    Args:
        pred_ratio: masking ratio, a float or a list (one entry per mode, e.g. README ViT-S `[0, 0.3]`).
        pred_ratio_var: half-width of the uniform draw around each ratio (0 = fixed), scalar or same-length list.
        pred_aspect_ratio: (min, max) block aspect ratio; sampled log-uniformly.
        pred_shape: 'block' (BEiT block-wise) or 'rand' (exactly int(ratio * H * W) random patches).
        pred_start_epoch: epochs before this one get all-False masks (Swin recipes use 50).

    RNG: uses the *global* `random` and `np.random` state, exactly like the official loader, so seeding
    (e.g. DataLoader worker seeding) controls it the same way.
    """

    def __init__(
        self,
        pred_ratio: RatioSpec = 0.3,
        pred_ratio_var: RatioSpec = 0.0,
        pred_aspect_ratio: tuple[float, float] = DEFAULT_ASPECT_RATIO,
        pred_shape: MaskShape = "block",
        pred_start_epoch: int = 0,
    ) -> None:
        self.pred_ratio, self.pred_ratio_var = _normalize_ratio(pred_ratio, pred_ratio_var)
        if len(pred_aspect_ratio) != 2 or not all(a > 0 and math.isfinite(a) for a in pred_aspect_ratio):
            raise ValueError(f"pred_aspect_ratio must be two positive numbers, got {pred_aspect_ratio!r}")
        self.log_aspect_ratio = (math.log(pred_aspect_ratio[0]), math.log(pred_aspect_ratio[1]))
        if pred_shape not in ("block", "rand"):
            raise ValueError(f"pred_shape must be 'block' or 'rand', got {pred_shape!r}")
        self.pred_shape: MaskShape = pred_shape
        if int(pred_start_epoch) != pred_start_epoch or pred_start_epoch < 0:
            raise ValueError(f"pred_start_epoch must be a non-negative integer, got {pred_start_epoch!r}")
        self.pred_start_epoch = int(pred_start_epoch)

    def __repr__(self) -> str:
        return (
            f"MaskGenerator(pred_ratio={self.pred_ratio}, pred_ratio_var={self.pred_ratio_var}, "
            f"pred_aspect_ratio={tuple(math.exp(a) for a in self.log_aspect_ratio)}, "
            f"pred_shape={self.pred_shape!r}, pred_start_epoch={self.pred_start_epoch})"
        )

    def sample_ratio(self, epoch: int | None = None) -> float:
        """Draw one crop's masking ratio (official `get_pred_ratio`).

        `epoch=None` means "never set", as when the official `set_epoch` was not called: no start-epoch check.
        """
        if epoch is not None and epoch < self.pred_start_epoch:
            return 0.0  # no RNG draw, as in the official early return
        if isinstance(self.pred_ratio, list):
            # One draw per pair with var > 0, in order, then a choice among all candidates.
            candidates = [
                random.uniform(r - v, r + v) if v > 0 else r
                for r, v in zip(self.pred_ratio, self.pred_ratio_var)  # type: ignore[arg-type]
            ]
            return random.choice(candidates)
        var = self.pred_ratio_var
        assert not isinstance(var, list)
        return random.uniform(self.pred_ratio - var, self.pred_ratio + var) if var > 0 else self.pred_ratio

    @staticmethod
    def min_block_area(grid_hw: Sequence[int]) -> int:
        """Lower end of the block *target* area, (min(H, W) // 3) ** 2 (16 on 14x14).

        Rounding h and w can still yield a rectangle slightly smaller than this (down to 12 on 14x14),
        and late rounds with a small remaining budget draw target areas below it.
        """
        h, w = _check_grid(grid_hw)
        return (min(h, w) // 3) ** 2

    def _place_block(self, mask: np.ndarray, budget: float) -> int:
        """Try up to 10 random rectangles; fill the first one adding 1..budget new patches. Returns the count added."""
        height, width = mask.shape
        low = (min(height, width) // 3) ** 2
        for _ in range(_ATTEMPTS_PER_BLOCK):
            # Draw order matters for parity: area, aspect, then top, left (only if the rectangle fits).
            target_area = random.uniform(low, budget)
            aspect = math.exp(random.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < width and h < height:
                top = random.randint(0, height - h)
                left = random.randint(0, width - w)
                region = mask[top : top + h, left : left + w]
                new = h * w - int(region.sum())
                # Strictly positive and within budget: the total can never exceed `high` (see max_masked_tokens).
                if 0 < new <= budget:
                    region[...] = True
                    return new
        return 0

    def _block_mask(self, height: int, width: int, high: float) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        count = 0
        while count < high:
            delta = self._place_block(mask, high - count)
            if delta == 0:  # a whole round of attempts failed: stop, possibly short of `high`
                break
            count += delta
        return mask

    @staticmethod
    def _rand_mask(height: int, width: int, high: float) -> np.ndarray:
        n = height * width
        k = int(high)
        # False first, then True, then an in-place shuffle: the same permutation (and NumPy draws)
        # as the official hstack(zeros, ones); the shuffle runs even for k == 0, consuming RNG.
        flat = np.zeros(n, dtype=bool)
        flat[n - k :] = True
        np.random.shuffle(flat)
        return flat.reshape(height, width)

    def __call__(self, grid_hw: Sequence[int], epoch: int | None = None) -> np.ndarray:
        """One crop's mask: bool array (H, W), True = masked (predicted) patch."""
        height, width = _check_grid(grid_hw)
        # Same float expression (ratio * H) * W as the official code, so int(high) agrees bit for bit.
        high = self.sample_ratio(epoch) * height * width
        if self.pred_shape == "block":
            return self._block_mask(height, width, high)
        return self._rand_mask(height, width, high)

    def masks_for_crops(
        self, crops: Sequence[torch.Tensor], patch_size: int, epoch: int | None = None
    ) -> list[np.ndarray]:
        """Masks for every crop of one sample, in crop order; crop (C, h, w) -> grid (h // patch_size, w // patch_size).

        As in the official loader, local crops get masks too (and consume RNG) although training only uses
        the global-crop masks; keeping them keeps the random streams identical to the official ones.
        """
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        return [self((c.shape[-2] // patch_size, c.shape[-1] // patch_size), epoch) for c in crops]


def _max_ratio(pred_ratio: RatioSpec, pred_ratio_var: RatioSpec) -> float:
    ratio, var = _normalize_ratio(pred_ratio, pred_ratio_var)
    pairs = zip(ratio, var) if isinstance(ratio, list) else [(ratio, var)]
    return max(r + v if v > 0 else r for r, v in pairs)  # type: ignore[misc]


def max_masked_tokens(grid_hw: Sequence[int], pred_ratio: RatioSpec, pred_ratio_var: RatioSpec = 0.0) -> int:
    """Upper bound M on the masked-patch count of one (H, W) mask for this ratio config (both shapes).

    Derivation. Let high = ratio * H * W. 'rand' masks exactly int(high) = floor(high) patches. 'block':
    each round adds delta with 0 < delta <= budget = high - count (the official acceptance test), so after
    the round count' = count + delta <= high; the count is an integer, hence count <= floor(high) at all
    times — the last block can *reach* but never overshoot `high`, so ceil(high) is not needed.
    ratio <= r_max = max(r + v if v > 0 else r) up to float rounding of `random.uniform` (a few ulps),
    which the relative 1e-9 slack absorbs; the slack can only make M one larger near an integer.
    """
    h, w = _check_grid(grid_hw)
    high_max = _max_ratio(pred_ratio, pred_ratio_var) * h * w
    return min(h * w, math.floor(high_max * (1 + 1e-9)))


def mask_to_indices(
    masks: torch.Tensor, max_masked: int, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-shape gather indices of the masked patches of a batch.

    Args:
        masks: bool (B, N) or (B, H, W); True = masked.
        max_masked: M, the static number of slots (use `max_masked_tokens`).
        check: raise if some row has more than M masked patches. This reads a value back to the host
            (a device sync), so a hot training loop that relies on the proven bound may pass False;
            then rows are silently truncated to their first M masked patches.

    Returns:
        idx: long (B, M), flat patch indices of masked patches in increasing order, padded with 0.
        weight: float32 (B, M), 1 for real slots and 0 for padding.
        Gather tokens with `x.gather(1, idx[..., None].expand(-1, -1, D))`; per-image masked means are
        `(loss * weight).sum(1) / weight.sum(1).clamp(min=1)`, equal to the official full-sequence form.
    """
    if masks.dim() not in (2, 3):
        raise ValueError(f"masks must be (B, N) or (B, H, W), got shape {tuple(masks.shape)}")
    if max_masked < 0:
        raise ValueError(f"max_masked must be >= 0, got {max_masked}")
    flat = masks.reshape(masks.shape[0], -1).bool()
    batch, n = flat.shape
    counts = flat.sum(dim=1)
    if check and bool((counts > max_masked).any()):
        raise ValueError(f"a mask has {int(counts.max())} masked patches, more than max_masked={max_masked}")
    # Stable sort of the keys 0 (masked) / 1 (visible): masked positions come first, in increasing order.
    order = torch.argsort((~flat).to(torch.uint8), dim=1, stable=True)
    keep = min(max_masked, n)
    idx = order[:, :keep]
    if keep < max_masked:  # more slots than patches: pad so the shape is always (B, M)
        idx = torch.cat([idx, idx.new_zeros(batch, max_masked - keep)], dim=1)
    valid = torch.arange(max_masked, device=flat.device) < counts[:, None]
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx, valid.to(torch.float32)
