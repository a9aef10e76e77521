"""Tests for ibot.masking: official-parity masks, ratio sampling, the masked-token bound and gather indices.

Golden values are derived independently of `ibot.masking`:
* hand traces replay the documented sequence of `random` / `np.random` draws inline in the test;
* the parity test compares against `_reference_*`, a literal transcription (written for this test) of the
  algorithm as described in shared/notes/ibot-reference.md §3 (official loader.ImageFolderMask, da316d8),
  including its Python double loop and float hstack, so the fast numpy paths in the module are checked too.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ibot.masking import MaskGenerator, mask_to_indices, max_masked_tokens

LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
README_RATIO, README_VAR = [0.0, 0.3], [0.0, 0.2]


# --------------------------------------------------------------------------- reference transcription


def _reference_ratio(ratio, var, epoch, start):
    """Notes §3 'Ratio per crop' (ratio / var already unwrapped and broadcast)."""
    if epoch is not None and epoch < start:
        return 0
    if isinstance(ratio, list):
        drawn = []
        for prm, prv in zip(ratio, var):
            drawn.append(random.uniform(prm - prv, prm + prv) if prv > 0 else prm)
        return random.choice(drawn)
    return random.uniform(ratio - var, ratio + var) if var > 0 else ratio


def _reference_mask(H, W, ratio, var, shape, epoch=None, start=0):
    """Notes §3 'Block' / 'Rand', step by step with plain loops."""
    high = _reference_ratio(ratio, var, epoch, start) * H * W
    if shape == "rand":
        m = np.hstack([np.zeros(H * W - int(high)), np.ones(int(high))]).astype(bool)
        np.random.shuffle(m)
        return m.reshape(H, W)
    m = np.zeros((H, W), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for _attempt in range(10):
            target_area = random.uniform((min(H, W) // 3) ** 2, max_mask_patches)
            aspect = math.exp(random.uniform(*LOG_ASPECT))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if w < W and h < H:
                top = random.randint(0, H - h)
                left = random.randint(0, W - w)
                already = m[top : top + h, left : left + w].sum()
                if 0 < h * w - already <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not m[i, j]:
                                m[i, j] = True
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        mask_count += delta
    return m


# 2 global crops (224/16 -> 14x14) then 10 locals (96/16 -> 6x6), as in the README ViT-S run.
MULTICROP_GRIDS = [(14, 14)] * 2 + [(6, 6)] * 10

PARITY_CASES = [
    # (shape, ratio, var, grids, epoch, start)
    ("block", README_RATIO, README_VAR, MULTICROP_GRIDS, None, 0),
    ("block", 0.3, 0.0, [(14, 14), (6, 6)], None, 0),
    ("block", 0.3, 0.1, [(14, 14), (7, 12)], 3, 0),
    ("block", [0.1, 0.4, 0.5], [0.05, 0.0, 0.5], [(14, 14), (28, 28)], None, 0),
    ("rand", [0.65, 0.75], [0.0, 0.1], MULTICROP_GRIDS, None, 0),
    ("rand", 0.5, 0.25, [(14, 14), (5, 9)], None, 0),
    ("rand", 0.3, 0.0, [(14, 14), (6, 6)], 2, 5),  # before pred_start_epoch: ratio 0, shuffle still runs
]


@pytest.mark.parametrize("case", PARITY_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-e{c[4]}s{c[5]}")
def test_bit_identical_to_reference_over_200_seeds(case):
    shape, ratio, var, grids, epoch, start = case
    gen = MaskGenerator(ratio, var, pred_shape=shape, pred_start_epoch=start)
    for seed in range(200):
        random.seed(seed)
        np.random.seed(seed)
        ours = [gen(g, epoch) for g in grids]
        state_ours = (random.getstate(), np.random.get_state()[1].copy(), np.random.get_state()[2])
        random.seed(seed)
        np.random.seed(seed)
        ref = [_reference_mask(*g, ratio, var, shape, epoch, start) for g in grids]
        state_ref = (random.getstate(), np.random.get_state()[1].copy(), np.random.get_state()[2])
        for a, b in zip(ours, ref):
            assert a.dtype == np.bool_ and a.shape == b.shape
            np.testing.assert_array_equal(a, b, err_msg=f"seed {seed}")
        # Same number of draws from both streams, so later crops / blur draws stay aligned too.
        assert state_ours[0] == state_ref[0]
        np.testing.assert_array_equal(state_ours[1], state_ref[1])
        assert state_ours[2] == state_ref[2]


# --------------------------------------------------------------------------- hand traces


def test_block_hand_trace_single_rectangle():
    # high = 16.5 on 14x14 with a fixed ratio (no ratio draw). With random.seed(3) the first attempt draws
    # area U(16, 16.5) ~ 16.12 and aspect ~ 1.11, so h = w = round(sqrt(16.12 * 1.11)) = 4: a 4x4 block of
    # 16 <= 16.5 patches. The remaining budget 0.5 < 1 admits no block, so the next round makes 10 failed
    # attempts and the loop stops (undershoot: 16 < 16.5).
    H = W = 14
    ratio = 16.5 / 196
    high = ratio * H * W
    random.seed(3)
    area = random.uniform(16, high)
    aspect = math.exp(random.uniform(*LOG_ASPECT))
    h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
    assert (h, w) == (4, 4)  # precondition of the chosen seed
    top, left = random.randint(0, H - h), random.randint(0, W - w)
    for _ in range(10):  # the failed round still consumes draws: area, aspect, and top/left when it fits
        a = random.uniform(16, high - 16)
        s = math.exp(random.uniform(*LOG_ASPECT))
        hh, ww = int(round(math.sqrt(a * s))), int(round(math.sqrt(a / s)))
        if ww < W and hh < H:
            random.randint(0, H - hh)
            random.randint(0, W - ww)
    next_draw = random.random()
    expected = np.zeros((H, W), dtype=bool)
    expected[top : top + 4, left : left + 4] = True

    random.seed(3)
    mask = MaskGenerator(ratio, 0.0)((H, W))
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 16
    assert random.random() == next_draw


def test_rand_hand_trace_exact_count_and_positions():
    # ratio 0.3 on 14x14: high = 58.8 -> exactly int(58.8) = 58 masked patches. The mask starts as
    # 138 False then 58 True and is shuffled; np.random.permutation(196) performs the same shuffle on
    # arange(196), so position i ends up masked iff perm[i] >= 138.
    np.random.seed(7)
    perm = np.random.permutation(196)
    np.random.seed(7)
    mask = MaskGenerator(0.3, 0.0, pred_shape="rand")((14, 14))
    assert mask.dtype == np.bool_ and mask.shape == (14, 14)
    assert mask.sum() == 58
    np.testing.assert_array_equal(mask.reshape(-1), perm >= 138)


def test_ratio_draw_hand_trace_readme_setting():
    # README: pairs (0, 0) and (0.3, 0.2). Pair 1 draws nothing, pair 2 draws U(0.1, 0.5); then choice.
    gen = MaskGenerator(README_RATIO, README_VAR)
    picked = set()
    for seed in range(50):
        random.seed(seed)
        u = random.uniform(0.3 - 0.2, 0.3 + 0.2)
        expected = random.choice([0.0, u])
        random.seed(seed)
        assert gen.sample_ratio() == expected
        picked.add(expected == 0.0)
    assert picked == {True, False}


def test_scalar_and_len1_lists_draw_no_choice():
    # [0.3] / [0.1] unwrap to scalars: one uniform draw per crop and no random.choice draw. The bounds are
    # the float expressions 0.3 - 0.1 (= 0.19999999999999998) and 0.3 + 0.1, as in the official code.
    for gen in (MaskGenerator([0.3], [0.1]), MaskGenerator(0.3, 0.1)):
        random.seed(11)
        expected = random.uniform(0.3 - 0.1, 0.3 + 0.1)
        after = random.random()
        random.seed(11)
        assert gen.sample_ratio() == expected
        assert random.random() == after
    # A fixed scalar ratio draws nothing at all.
    random.seed(5)
    after = random.random()
    random.seed(5)
    assert MaskGenerator(0.3, 0.0).sample_ratio() == 0.3
    assert random.random() == after


def test_scalar_var_is_broadcast():
    a, b = MaskGenerator([0.2, 0.4], 0.1), MaskGenerator([0.2, 0.4], [0.1, 0.1])
    for seed in range(20):
        random.seed(seed)
        ra = a.sample_ratio()
        random.seed(seed)
        assert ra == b.sample_ratio()


# --------------------------------------------------------------------------- statistics and geometry


def test_readme_ratio_distribution_on_14x14():
    # Official sample (notes §3): 600 crops, mean masked fraction 0.143, 51 % unmasked, max 0.495.
    # Expected: half the crops unmasked, the rest U(0.1, 0.5) minus block undershoot -> ~0.295, so ~0.147
    # overall; 4000 crops give a standard error of ~0.0025.
    gen = MaskGenerator(README_RATIO, README_VAR)
    random.seed(0)
    frac = np.array([gen((14, 14)).mean() for _ in range(4000)])
    assert 0.13 < frac.mean() < 0.16
    assert 0.46 < (frac == 0).mean() < 0.54
    masked = frac[frac > 0]
    assert 0.27 < masked.mean() < 0.31
    assert masked.min() >= 12 / 196  # first block alone is >= 12 patches (see test_first_block_geometry)
    assert frac.max() <= 98 / 196  # bound: floor(0.5 * 196)


def test_first_block_geometry():
    # Min target area on 14x14 is (14 // 3)^2 = 16. After rounding h = round(sqrt(A a)), w = round(sqrt(A / a))
    # with A >= 16, a in [0.3, 1/0.3]: h * w >= (sqrt(16 * 0.3) - 0.5) * (sqrt(16 / 0.3) - 0.5) ~ 11.5, so >= 12,
    # and h / w <= (sqrt(A / 0.3) + 0.5) / (sqrt(0.3 A) - 0.5) <= 7.8 / 1.69 < 4.7 (symmetric for w / h).
    assert MaskGenerator.min_block_area((14, 14)) == 16
    assert MaskGenerator.min_block_area((6, 6)) == 4
    gen = MaskGenerator(0.5, 0.0)
    areas = []
    for seed in range(1000):
        random.seed(seed)
        mask = np.zeros((14, 14), dtype=bool)
        added = gen._place_block(mask, 98.0)
        rows, cols = np.nonzero(mask)
        h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert added == mask.sum() == h * w  # one solid rectangle
        assert h < 14 and w < 14
        assert 12 <= added <= 98
        assert 1 / 4.7 < h / w < 4.7
        areas.append(added)
    assert np.mean(np.array(areas) >= 16) > 0.9  # rounding below 16 is the exception


def test_pred_start_epoch_gives_empty_masks():
    gen = MaskGenerator(README_RATIO, README_VAR, pred_start_epoch=5)
    random.seed(0)
    state = random.getstate()
    for epoch in range(5):
        assert not gen((14, 14), epoch).any()
    assert random.getstate() == state  # block + ratio 0: no Python draws at all
    random.seed(0)
    assert any(gen((14, 14), 5).any() for _ in range(20))
    random.seed(0)
    assert any(gen((14, 14), None).any() for _ in range(20))  # epoch never set: no check (official)
    rand = MaskGenerator(0.3, 0.0, pred_shape="rand", pred_start_epoch=1)
    np.random.seed(0)
    np_state = np.random.get_state()[1].copy()
    assert not rand((14, 14), 0).any()
    assert not np.array_equal(np.random.get_state()[1], np_state)  # the shuffle still consumed numpy RNG


def test_masks_for_crops_grids():
    gen = MaskGenerator(0.3, 0.0)
    crops = [torch.zeros(3, 224, 224)] * 2 + [torch.zeros(3, 96, 96)] * 3
    masks = gen.masks_for_crops(crops, patch_size=16)
    assert [m.shape for m in masks] == [(14, 14)] * 2 + [(6, 6)] * 3
    assert all(m.dtype == np.bool_ for m in masks)
    swin = gen.masks_for_crops([torch.zeros(3, 224, 224)], patch_size=4 * 8)  # Swin: 7x7 last stage
    assert swin[0].shape == (7, 7)


# --------------------------------------------------------------------------- bound and gather indices


def test_max_masked_tokens_values():
    assert max_masked_tokens((14, 14), README_RATIO, README_VAR) == 98  # floor(0.5 * 196)
    assert max_masked_tokens((14, 14), 0.3) == 58  # floor(58.8)
    assert max_masked_tokens((6, 6), README_RATIO, README_VAR) == 18
    assert max_masked_tokens((14, 14), [0.3], [0.2]) == 98
    assert max_masked_tokens((14, 14), 1.0) == 196
    assert max_masked_tokens((14, 14), 0.0) == 0


@pytest.mark.parametrize(
    "shape,ratio,var,grid",
    [
        ("block", README_RATIO, README_VAR, (14, 14)),
        ("block", 0.3, 0.0, (14, 14)),
        ("block", 0.45, 0.05, (6, 6)),
        ("block", 0.7, 0.0, (7, 12)),
        ("rand", 0.3, 0.0, (14, 14)),
        ("rand", [0.65, 0.75], [0.0, 0.1], (14, 14)),
    ],
)
def test_bound_never_exceeded(shape, ratio, var, grid):
    gen = MaskGenerator(ratio, var, pred_shape=shape)
    bound = max_masked_tokens(grid, ratio, var)
    random.seed(1)
    np.random.seed(1)
    counts = np.array([gen(grid).sum() for _ in range(1500)])
    assert counts.max() <= bound
    if shape == "rand" and var == 0:
        assert (counts == bound).all()  # tight: 'rand' with a fixed ratio hits it every time
    if shape == "block" and var == 0 and isinstance(ratio, float):
        assert counts.max() >= bound - 3  # blocks get close to high but never past floor(high)


def test_mask_to_indices_round_trip_and_padding():
    torch.manual_seed(0)
    masks = torch.rand(6, 14, 14) < torch.tensor([0.0, 0.05, 0.2, 0.3, 0.4, 0.5])[:, None, None]
    masks[0] = False
    m = 120
    idx, weight = mask_to_indices(masks, m)
    assert idx.shape == weight.shape == (6, m)
    assert idx.dtype == torch.long and weight.dtype == torch.float32
    flat = masks.reshape(6, -1)
    counts = flat.sum(1)
    for b in range(6):
        n = int(counts[b])
        assert torch.equal(idx[b, :n], torch.nonzero(flat[b]).squeeze(1))  # increasing order
        assert (weight[b, :n] == 1).all() and (weight[b, n:] == 0).all() and (idx[b, n:] == 0).all()
    rebuilt = torch.zeros_like(flat, dtype=torch.float32).scatter_add_(1, idx, weight)
    assert torch.equal(rebuilt.bool(), flat)
    # The gathered masked mean equals the official full-sequence form sum(l * m) / clamp(sum(m), 1).
    loss = torch.rand(6, 196)
    full = (loss * flat).sum(1) / flat.sum(1).clamp(min=1)
    gathered = (loss.gather(1, idx) * weight).sum(1) / weight.sum(1).clamp(min=1)
    torch.testing.assert_close(gathered, full)


def test_mask_to_indices_more_slots_than_patches_and_overflow():
    masks = torch.ones(2, 3, 3, dtype=torch.bool)
    idx, weight = mask_to_indices(masks, 12)
    assert idx.shape == (2, 12)
    assert torch.equal(idx[:, :9], torch.arange(9).expand(2, 9)) and (weight[:, 9:] == 0).all()
    with pytest.raises(ValueError, match="max_masked"):
        mask_to_indices(masks, 5)
    idx, weight = mask_to_indices(masks, 5, check=False)  # truncates to the first 5
    assert torch.equal(idx, torch.arange(5).expand(2, 5)) and (weight == 1).all()
    idx, weight = mask_to_indices(torch.zeros(4, 196, dtype=torch.bool), 0)
    assert idx.shape == weight.shape == (4, 0)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(pred_ratio=0.3, pred_ratio_var=0.4),  # ratio - var < 0 (official assert)
        dict(pred_ratio=0.8, pred_ratio_var=0.3),  # ratio + var > 1
        dict(pred_ratio=[0.0, 0.3, 0.5], pred_ratio_var=[0.0, 0.2]),  # length mismatch
        dict(pred_ratio=0.3, pred_ratio_var=[0.1, 0.1]),
        dict(pred_ratio=[], pred_ratio_var=0.0),
        dict(pred_ratio=0.3, pred_ratio_var=-0.1),
        dict(pred_ratio=float("nan")),
        dict(pred_shape="grid"),
        dict(pred_aspect_ratio=(0.0, 3.0)),
        dict(pred_start_epoch=-1),
    ],
)
def test_generator_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MaskGenerator(**kwargs)


def test_bad_grids_and_shapes():
    gen = MaskGenerator()
    for grid in [(0, 14), (14,), (14.5, 14)]:
        with pytest.raises(ValueError):
            gen(grid)
    with pytest.raises(ValueError):
        max_masked_tokens((14, -1), 0.3)
    with pytest.raises(ValueError):
        mask_to_indices(torch.zeros(196, dtype=torch.bool), 10)
    with pytest.raises(ValueError):
        gen.masks_for_crops([torch.zeros(3, 224, 224)], patch_size=0)
