"""Tests for ibot.augment: crop shapes, seeding, blur / solarization semantics and the mask dataset order.

Expected values are derived independently: RNG consumption is counted by replaying plain `random.random()`
draws; solarization is checked against its pixel formula (v < 128 ? v : 255 - v); the dataset order is
checked by replaying "augment, then one mask per crop" by hand.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from ibot.augment import GaussianBlur, MultiCropAugmentation, MultiCropMaskDataset, Solarization
from ibot.masking import MaskGenerator


def _image(seed: int = 0, size: tuple[int, int] = (150, 130)) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 4) -> None:
        self.items = [(_image(i), i % 2) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


README_AUG = dict(global_crops_scale=(0.25, 1.0), local_crops_scale=(0.05, 0.25), local_crops_number=10)


def test_readme_multicrop_shapes_and_dtype():
    aug = MultiCropAugmentation(**README_AUG)
    _seed_all(0)
    crops = aug(_image())
    assert aug.num_crops == len(crops) == 12
    assert [tuple(c.shape) for c in crops] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 10
    assert all(c.dtype == torch.float32 for c in crops)
    # Normalized with ImageNet statistics: values well outside [0, 1].
    assert min(float(c.min()) for c in crops) < -0.5 and max(float(c.max()) for c in crops) > 1.5


def test_defaults_and_configurable_sizes():
    aug = MultiCropAugmentation()
    assert (aug.global_crops_number, aug.local_crops_number) == (2, 0)  # official argparse defaults
    assert aug.global_crops_scale == (0.14, 1.0) and aug.local_crops_scale == (0.05, 0.4)
    crops = MultiCropAugmentation(global_crops_number=3, local_crops_number=2, global_crop_size=64,
                                  local_crop_size=32)(_image())
    assert [tuple(c.shape) for c in crops] == [(3, 64, 64)] * 3 + [(3, 32, 32)] * 2


def test_deterministic_under_seeds():
    aug = MultiCropAugmentation(global_crop_size=64, local_crop_size=32, local_crops_number=2)
    img = _image()
    _seed_all(3)
    a = aug(img)
    _seed_all(3)
    b = aug(img)
    _seed_all(4)
    c = aug(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_first_global_crop_always_blurs_and_second_can_solarize():
    # Python `random` draws: crop 1 = blur test + radius (p = 1.0 always blurs) = 2 draws. Crop 2 = blur test
    # (+ radius if blurred) + solarization test. Replay with bare random.random() calls to count them.
    one = MultiCropAugmentation(global_crops_number=1, global_crop_size=32)
    for seed in range(10):
        _seed_all(seed)
        one(_image())
        after = random.random()
        random.seed(seed)
        random.random(), random.random()
        assert random.random() == after

    two = MultiCropAugmentation(global_crops_number=2, global_crop_size=32)
    for seed in range(10):
        _seed_all(seed)
        two(_image())
        after = random.random()
        random.seed(seed)
        random.random(), random.random()  # crop 1
        blurred = random.random() <= 0.1
        if blurred:
            random.random()  # radius
        random.random()  # solarization test
        assert random.random() == after


def test_gaussian_blur_probability_semantics():
    img = _image(size=(40, 40))
    random.seed(0)
    out = GaussianBlur(p=0.0)(img)
    assert out is img
    after = random.random()
    random.seed(0)
    random.random()
    assert random.random() == after  # one draw even when not applied

    random.seed(1)
    out = GaussianBlur(p=1.0, radius_min=0.1, radius_max=2.0)(img)
    random.seed(1)
    random.random()
    radius = 0.1 + (2.0 - 0.1) * random.random()  # random.uniform(a, b) = a + (b - a) * random()
    expected = img.filter(ImageFilter.GaussianBlur(radius=radius))
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(img))


def test_solarization_probability_semantics():
    img = _image(size=(40, 40))
    src = np.asarray(img).astype(int)
    random.seed(0)
    assert Solarization(p=0.0)(img) is img
    out = np.asarray(Solarization(p=1.0)(img)).astype(int)
    assert np.array_equal(out, np.where(src < 128, src, 255 - src))
    # Official test is random.random() < p: with p = 0.2 about 20 % of calls solarize.
    random.seed(0)
    sol = Solarization(0.2)
    hits = sum(sol(img) is not img for _ in range(2000))
    assert 0.17 < hits / 2000 < 0.23


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(global_crops_number=0),
        dict(local_crops_number=-1),
        dict(global_crops_scale=(0.5, 0.2)),
        dict(local_crops_scale=(0.0, 0.4)),
        dict(global_crop_size=0),
    ],
)
def test_augmentation_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiCropAugmentation(**kwargs)


def test_blur_and_solarize_reject_bad_p():
    with pytest.raises(ValueError):
        GaussianBlur(p=1.5)
    with pytest.raises(ValueError):
        Solarization(p=-0.1)


def test_dataset_returns_crops_label_and_one_mask_per_crop():
    aug = MultiCropAugmentation(**README_AUG)
    gen = MaskGenerator([0.0, 0.3], [0.0, 0.2])
    ds = MultiCropMaskDataset(_ListDataset(), aug, gen, patch_size=16)
    _seed_all(0)
    crops, label, masks = ds[1]
    assert len(ds) == 4 and label == 1
    assert len(crops) == len(masks) == 12
    assert [m.shape for m in masks] == [(14, 14)] * 2 + [(6, 6)] * 10
    assert all(m.dtype == np.bool_ for m in masks)


def test_dataset_order_is_augment_then_masks():
    # Official ImageFolderMask.__getitem__: transform (all crops) first, then the mask loop over crops.
    aug = MultiCropAugmentation(global_crop_size=64, local_crop_size=32, local_crops_number=2)
    gen = MaskGenerator([0.0, 0.3], [0.0, 0.2])
    base = _ListDataset()
    ds = MultiCropMaskDataset(base, aug, gen, patch_size=8)
    for seed in range(5):
        _seed_all(seed)
        crops, _, masks = ds[0]
        _seed_all(seed)
        ref_crops = aug(base[0][0])
        ref_masks = [gen((c.shape[1] // 8, c.shape[2] // 8)) for c in ref_crops]
        assert all(torch.equal(a, b) for a, b in zip(crops, ref_crops))
        assert all(np.array_equal(a, b) for a, b in zip(masks, ref_masks))


def test_dataset_epoch_gate_and_imagefolder_root_with_collate(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _image(i + (cls == "b") * 10, size=(80, 70)).save(tmp_path / cls / f"{i}.png")
    aug = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, local_crops_number=1)
    ds = MultiCropMaskDataset(str(tmp_path), aug, MaskGenerator(0.5, 0.0, pred_start_epoch=2), patch_size=4)
    assert len(ds) == 4
    ds.set_epoch(1)
    _seed_all(0)
    assert not any(m.any() for m in ds[0][2])
    ds.set_epoch(2)
    assert all(m.any() for m in ds[0][2])

    crops, labels, masks = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)))
    assert [tuple(c.shape) for c in crops] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)]
    assert labels.tolist() == [0, 0, 1, 1]
    assert [tuple(m.shape) for m in masks] == [(4, 8, 8)] * 2 + [(4, 4, 4)]
    assert all(m.dtype == torch.bool for m in masks)
