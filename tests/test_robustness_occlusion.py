"""PatchDrop: exact drop fractions, fills, salient / non-salient ranking by the model's own attention and by
foreground masks — on real CIFAR-10 and GrabCut images."""
from __future__ import annotations

import pytest
import torch
from robustness_helpers import shared_data_path, tiny_vit_classifier

from robustness import occlusion
from robustness.backgrounds import ForegroundImages, read_image_mask_folder
from robustness.classifier import IMAGENET_MEAN
from robustness.data import ImageListDataset, list_image_folder


def _cifar_batch(n: int = 6) -> dict:
    images = list_image_folder(shared_data_path("cifar10", "test")).subset(per_class=1, limit=n)
    ds = ImageListDataset(images, None, None)
    items = [ds[i] for i in range(len(ds))]
    return {"image": torch.stack([it["image"] for it in items]), "label": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items])}


def test_num_dropped_matches_naseer_levels() -> None:
    # Naseer et al. evaluate.py: i * 196 // 10 patches for i = 0..9
    assert [occlusion.num_dropped(lv, 196) for lv in occlusion.IL_LEVELS] == [i * 196 // 10 for i in range(10)]
    expected = [0, 19, 39, 58, 78, 98, 117, 137, 156, 176]
    assert [occlusion.num_dropped(lv, 196) for lv in occlusion.IL_LEVELS] == expected
    assert occlusion.num_dropped(0.3, 10) == 3  # 0.3 * 10 = 2.9999999999999996 in floating point
    with pytest.raises(ValueError):
        occlusion.num_dropped(1.5, 10)


@pytest.mark.parametrize("size,grid", [(224, (14, 14)), (32, (8, 8)), (30, (7, 7)), (48, (4, 6))])
def test_random_masks_drop_exactly_the_stated_fraction(size: int, grid: tuple[int, int]) -> None:
    n = grid[0] * grid[1]
    previous = None
    for level in occlusion.IL_LEVELS:
        k = occlusion.num_dropped(level, n)
        masks = occlusion.random_patch_masks([11, 12, 13], grid, k)
        assert masks.flatten(1).sum(1).tolist() == [k, k, k]
        pix = occlusion.patch_mask_to_pixels(masks, size, size)
        assert pix.shape == (3, size, size)
        if size % grid[0] == 0 and size % grid[1] == 0:  # equal patches: pixel fraction == patch fraction exactly
            assert (pix.flatten(1).sum(1) * n == k * size * size).all()
        if previous is not None:  # nested across levels (same per-image permutation)
            assert (masks | ~previous).all()
        previous = masks
    a, b = occlusion.random_patch_masks([1, 2], grid, n // 2)
    assert not torch.equal(a, b)  # different images, different patches


def test_patchdrop_fill_on_real_images() -> None:
    batch = _cifar_batch(4)
    clf = tiny_vit_classifier()
    for fill, value in (("black", torch.zeros(3)), ("mean", torch.tensor(IMAGENET_MEAN))):
        edit = occlusion.PatchDrop("random", 0.5, grid=(8, 8), fill=fill, seed=3)
        out, extra = edit(batch["image"], batch, clf)
        drop = occlusion.patch_mask_to_pixels(edit.masks(batch["image"], batch, clf), 32, 32).unsqueeze(1)
        assert torch.allclose(extra["info_loss"], torch.full((4,), 0.5))
        assert torch.equal(out.masked_select(~drop), batch["image"].masked_select(~drop))  # the rest untouched
        dropped = out.permute(0, 2, 3, 1)[drop.squeeze(1)]
        assert dropped.shape[0] == 4 * 32 * 32 // 2
        assert torch.allclose(dropped, value.expand_as(dropped))
        if fill == "mean":  # iBOT's variant: dropped patches are 0 after normalisation
            normed = clf.normalize(out).permute(0, 2, 3, 1)[drop.squeeze(1)]
            assert normed.abs().max() < 1e-6


def test_salient_drop_removes_the_highest_attention_patches() -> None:
    batch = _cifar_batch(6)
    clf = tiny_vit_classifier()
    images = batch["image"]
    attn = clf.patch_attention(images)  # (6, 8, 8): the model's own [CLS] attention, mean over heads
    full = clf.model.backbone.get_last_selfattention(clf.normalize(images))
    assert torch.allclose(attn, full[:, :, 0, 1:].mean(1).reshape(6, 8, 8))
    k = occlusion.num_dropped(0.25, 64)
    cache: dict = {}
    sal = occlusion.PatchDrop("salient", 0.25, grid=(8, 8), attention_cache=cache).masks(images, batch, clf)
    non = occlusion.PatchDrop("non_salient", 0.25, grid=(8, 8), attention_cache=cache).masks(images, batch, clf)
    assert len(cache) == 6  # attention computed once per image, shared by the cells
    flat = attn.flatten(1)
    for i in range(6):
        top = set(torch.topk(flat[i], k).indices.tolist())
        bottom = set(torch.topk(-flat[i], k).indices.tolist())
        assert set(sal[i].flatten().nonzero().flatten().tolist()) == top
        assert set(non[i].flatten().nonzero().flatten().tolist()) == bottom
        assert flat[i][sal[i].flatten()].min() >= flat[i][~sal[i].flatten()].max()
    head = occlusion.PatchDrop("salient", 0.25, grid=(8, 8), head=1).masks(images, batch, clf)
    top_head = torch.topk(full[:, 1, 0, 1:], k).indices
    assert all(set(head[i].flatten().nonzero().flatten().tolist()) == set(top_head[i].tolist()) for i in range(6))
    # a coarser occlusion grid than the patch grid: attention is area-pooled onto it
    coarse = occlusion.PatchDrop("salient", 0.5, grid=(4, 4)).masks(images, batch, clf)
    pooled = torch.nn.functional.avg_pool2d(attn.unsqueeze(1), 2).flatten(1)
    assert all(set(coarse[i].flatten().nonzero().flatten().tolist()) == set(torch.topk(pooled[i], 8).indices.tolist())
               for i in range(6))


def test_mass_threshold_naseer_lambda() -> None:
    scores = torch.tensor([[[0.5, 0.3], [0.15, 0.05]]])
    # top-λ attention mass: λ = 0.5 -> only the 0.5 patch; λ = 0.8 -> 0.5 + 0.3
    assert occlusion.mass_patch_masks(scores, 0.5, salient=True).flatten().tolist() == [True, False, False, False]
    assert occlusion.mass_patch_masks(scores, 0.8, salient=True).flatten().tolist() == [True, True, False, False]
    assert occlusion.mass_patch_masks(scores, 0.8, salient=False).flatten().tolist() == [False, False, True, True]


def test_mask_modes_drop_foreground_patches_on_grabcut() -> None:
    root = shared_data_path("grabcut")
    samples = read_image_mask_folder(root / "images", root / "masks")[:3]
    ds = ForegroundImages(samples, resize=64, crop=64)
    items = [ds[i] for i in range(3)]
    batch = {"image": torch.stack([it["image"] for it in items]), "mask": torch.stack([it["mask"] for it in items]),
             "index": torch.arange(3), "label": torch.zeros(3, dtype=torch.long)}
    clf = tiny_vit_classifier()
    cover = occlusion.mask_patch_scores(batch["mask"], (8, 8)).flatten(1)
    assert ((cover > 0) & (cover < 1)).any() and (cover == 1).any()  # real masks: border patches partly covered
    sal = occlusion.PatchDrop("salient_mask", 0.3, grid=(8, 8)).masks(batch["image"], batch, clf).flatten(1)
    non = occlusion.PatchDrop("non_salient_mask", 0.3, grid=(8, 8)).masks(batch["image"], batch, clf).flatten(1)
    for i in range(3):
        assert int(sal[i].sum()) == int(non[i].sum()) == occlusion.num_dropped(0.3, 64)
        assert cover[i][sal[i]].min() >= cover[i][~sal[i]].max()
        assert cover[i][non[i]].max() <= cover[i][~non[i]].min()
    with pytest.raises(ValueError, match="masks"):
        occlusion.PatchDrop("salient_mask", 0.3, grid=(8, 8)).masks(batch["image"], {"index": batch["index"]}, clf)
