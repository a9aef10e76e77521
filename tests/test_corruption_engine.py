"""The batched corruption engine (robustness.corruption_engine) on real photos: every corruption x severity runs on
mixed-size batches; results are independent of batching, chunking, threads and repeated calls; with the reference's
own random draws the engine reproduces imagecorruptions 1.1.2 pixel for pixel (mean |difference| <= 1 grey level,
>= 99 % of values within 2); with its own draws it matches the reference's PSNR / SSIM distribution; and on CUDA it
matches its CPU output (``-m gpu``).

Kept small (images of 64-144 px) so the module runs in well under a minute on two busy cores;
``benchmarks/corruption_fidelity.py`` runs the same comparisons on the full photo set.
"""
from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import shared_data_path
from PIL import Image

from robustness import corruption_engine as ce
from robustness.corruption_engine import _common, _cv, blur, digital
from robustness.corruption_engine.reference import (
    numpy_seed,
    psnr,
    reference_corrupt,
    replay_draws,
    same_draw_stats,
    ssim,
    to_chw,
    to_hwc,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")
ALL = list(ce.CORRUPTIONS)
# (file under ../shared/data, (height, width)): two same-sized images form a batch of two
PHOTOS = (
    ("tiny_coco/train_2017_small/000000005802.jpg", (64, 80)),
    ("camvid/val/0016E5_07959.jpg", (64, 80)),
    ("grabcut/images/106024.jpg", (72, 64)),
    ("ade20k_sample/images/ADE_val_00000001.jpg", (96, 96)),
)


@cache
def photo(relative: str, size: tuple[int, int]) -> np.ndarray:
    """A real photo as uint8 (H, W, 3), resized (bilinear) to ``size``; fails when the shared data is missing."""
    path = shared_data_path(*Path(relative).parts)
    if not path.exists():  # camvid file names differ between copies: take the first val image then
        path = sorted(path.parent.glob("*.jpg"))[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)).copy()


def mixed_batch() -> tuple[list[torch.Tensor], list[str]]:
    images = [to_chw(photo(f, s)) for f, s in PHOTOS]
    return images, [Path(f).stem for f, _ in PHOTOS]


# --------------------------------------------------------------------------------------------- API and batching
def test_names_and_subsets_match_imagecorruptions() -> None:
    from ibot.compat.imagecorruptions import get_corruption_names

    for subset in ("common", "validation", "all", "noise", "blur", "weather", "digital"):
        assert ce.get_corruption_names(subset) == get_corruption_names(subset)
    with pytest.raises(ValueError, match="unknown subset"):
        ce.get_corruption_names("nope")


@pytest.mark.parametrize("name", ALL)
def test_every_severity_runs_on_mixed_sizes(name: str) -> None:
    images, keys = mixed_batch()
    for severity in range(1, 6):
        out = ce.corrupt_images(images, name, severity, keys, seed=3)
        assert len(out) == len(images)
        for img, res in zip(images, out):
            assert res.dtype == torch.uint8 and res.shape == img.shape
            assert (res != img).any(), (name, severity)


@pytest.mark.parametrize("name", ALL)
def test_results_do_not_depend_on_batching(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    img = photo(*PHOTOS[0])
    batch = torch.stack([to_chw(img), to_chw(photo(*PHOTOS[1])), to_chw(img[::-1].copy())])
    keys = ["a", "b", "c"]
    whole = ce.corrupt_batch(batch, name, 4, keys, seed=7)
    assert torch.equal(whole, ce.corrupt_batch(batch, name, 4, keys, seed=7))  # a second call
    singles = torch.cat([ce.corrupt_batch(batch[i:i + 1], name, 4, keys[i:i + 1], seed=7) for i in range(3)])
    assert torch.equal(whole, singles)
    reordered = ce.corrupt_batch(batch[[2, 0, 1]], name, 4, [keys[2], keys[0], keys[1]], seed=7)
    assert torch.equal(whole, reordered[[1, 2, 0]])
    monkeypatch.setattr(ce, "CPU_CHUNK_ELEMENTS", 1)  # one image per chunk, two threads
    assert torch.equal(whole, ce.corrupt_batch(batch, name, 4, keys, seed=7, workers=2))
    if name not in ("defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression",
                    "gaussian_blur", "saturate"):  # the deterministic ones
        assert not torch.equal(whole, ce.corrupt_batch(batch, name, 4, keys, seed=8))


def test_inputs_are_checked() -> None:
    x = torch.zeros(2, 3, 40, 40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ce.corrupt_batch(x.float(), "fog", 1, ["a", "b"])
    with pytest.raises(ValueError, match=">= 32"):
        ce.corrupt_batch(x[..., :31], "fog", 1, ["a", "b"])
    with pytest.raises(ValueError, match="severity"):
        ce.corrupt_batch(x, "fog", 6, ["a", "b"])
    with pytest.raises(ValueError, match="unknown corruption"):
        ce.corrupt_batch(x, "rain", 1, ["a", "b"])
    with pytest.raises(ValueError, match="one key per image"):
        ce.corrupt_batch(x, "fog", 1, ["a"])


# ------------------------------------------------------------------------------------- building blocks vs originals
def test_numpy_arange_replica_and_zoom_plan() -> None:
    for start, stop, step in blur.ZOOM_BLUR:
        assert _common.numpy_arange(start, stop, step) == np.arange(start, stop, step).tolist()
    # scipy.ndimage.zoom writes cval into the last sample when (out - 1) * ((n - 1) / (out - 1)) > n - 1
    from scipy.ndimage import zoom

    for n, factor in ((30, 1.2), (224, 1.12), (101, 1.3)):
        top, crop, out, last_valid = _common.zoom_plan(n, factor)
        signal = np.arange(1.0, crop + 1)
        zoomed = zoom(signal, out / crop, order=1)
        assert len(zoomed) == out and (zoomed[-1] != 0) == last_valid


def test_glass_blur_pixel_loop_is_reproduced_exactly() -> None:
    """The reference's ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` loop on numpy views, against glass_sources."""
    rng = np.random.RandomState(0)
    for delta, (h, w) in ((1, (12, 15)), (2, (13, 11)), (4, (17, 20))):
        x = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        offsets = rng.randint(-delta, delta, size=((h - 2 * delta) * (w - 2 * delta), 2))
        ref, k = x.copy(), 0
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = offsets[k]
                k += 1
                ref[hh, ww], ref[hh + dy, ww + dx] = ref[hh + dy, ww + dx], ref[hh, ww]
        grid = torch.from_numpy(offsets.reshape(h - 2 * delta, w - 2 * delta, 2)[::-1, ::-1].copy())
        src = blur.glass_sources(grid[None, ..., 0], grid[None, ..., 1], h, w, delta)
        out = x.copy()
        out[delta + 1:h - delta + 1, delta + 1:w - delta + 1] = x.reshape(-1, 3)[src[0].numpy()]
        assert np.array_equal(out, ref)


def test_opencv_steps_match_cv2() -> None:
    """spatter's Canny / chamfer distance / blur / equalizeHist / filter2D chain and frost's bicubic resize."""
    rng = np.random.RandomState(1)
    from skimage.filters import gaussian

    liquid = gaussian(0.65 + 0.3 * rng.normal(size=(96, 120)), sigma=2)
    liquid[liquid < 0.68] = 0
    lu8 = (liquid * 255).astype(np.uint8)
    edges = cv2.Canny(lu8, 50, 150)
    assert np.array_equal(_cv.canny(torch.from_numpy(lu8)[None], 50, 150)[0].numpy(), edges > 0)
    dist = cv2.distanceTransform(255 - edges, cv2.DIST_L2, 5)
    mine = _cv.chamfer5_distance(torch.from_numpy(255 - edges)[None])[0].numpy()
    assert np.abs(dist - mine).max() < 1e-4
    ref = cv2.blur(cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)[1], (3, 3)).astype(np.uint8)
    ours = _cv.box3_float(torch.from_numpy(mine).clamp(max=20)[None]).to(torch.uint8)
    assert np.array_equal(ours[0].numpy(), ref)
    eq = cv2.equalizeHist(ref)
    assert np.array_equal(_cv.equalize_hist(torch.from_numpy(ref)[None])[0].numpy(), eq)
    kernel = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    emb = cv2.filter2D(eq, cv2.CV_8U, kernel)
    assert np.array_equal(_cv.filter2d_uint8(torch.from_numpy(eq)[None], torch.from_numpy(kernel))[0].numpy(), emb)
    assert np.array_equal(_cv.box3_uint8(torch.from_numpy(emb)[None])[0].numpy(), cv2.blur(emb, (3, 3)))
    texture = photo(*PHOTOS[2])[..., ::-1].copy()  # any BGR uint8 image
    ref = cv2.resize(texture, (91, 83), interpolation=cv2.INTER_CUBIC)
    ours = _cv.cubic_resize_uint8(to_chw(texture), 83, 91).permute(1, 2, 0).numpy()
    diff = np.abs(ref.astype(int) - ours)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_pixelate_plans_match_pillow() -> None:
    rng = np.random.RandomState(2)
    for h, w in ((32, 33), (57, 101), (123, 77)):
        img = rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)
        for severity in range(1, 6):
            c = digital.PIXELATE[severity - 1]
            pil = Image.fromarray(img).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.NEAREST)
            out = digital.pixelate(to_chw(img)[None], severity)[0]
            assert np.array_equal(to_hwc(out), np.asarray(pil)), (h, w, severity)


# ------------------------------------------------------------------------------------ fidelity: the same draws
SAME_DRAW_PHOTOS = (("tiny_coco/train_2017_small/000000060623.jpg", (128, 128)),
                    ("grabcut/images/124080.jpg", (112, 144)))


@pytest.mark.parametrize("name", ALL)
def test_same_draws_reproduce_the_reference(name: str) -> None:
    for relative, size in SAME_DRAW_PHOTOS:
        img = photo(relative, size)
        for severity in (1, 5):
            seed = numpy_seed(0, name, severity, relative)
            ref = reference_corrupt(img, name, severity, seed)
            draws = replay_draws(img, name, severity, seed)
            out = ce.corrupt_batch(to_chw(img)[None], name, severity, ["x"], draws=draws)
            stats = same_draw_stats(ref, to_hwc(out[0]))
            assert stats.mad <= 1.0 and stats.within2 >= 0.99, (relative, severity, stats)


# ------------------------------------------------------------------------------------ fidelity: the distribution
# Corruptions whose per-image PSNR / SSIM hardly depend on the draw (many independent draws per image), so a few
# photos pin the mean; the full set (frost crops, motion angles, plasma maps, ...) is in the fidelity benchmark.
DISTRIBUTION = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur")


@pytest.mark.parametrize("name", DISTRIBUTION)
def test_own_draws_match_the_reference_distribution(name: str) -> None:
    photos = [photo(f, (96, 96)) for f, _ in PHOTOS]
    repeats = 1 if name == "glass_blur" else 4  # glass blur's reference takes ~0.3 s per call; its spread is small
    for severity in (1, 5):
        ref_p, ref_s, eng_p, eng_s = [], [], [], []
        for r in range(repeats):
            for i, img in enumerate(photos):
                ref = reference_corrupt(img, name, severity, numpy_seed(r, name, severity, str(i)))
                eng = to_hwc(ce.corrupt_batch(to_chw(img)[None], name, severity, [str(i)], seed=r)[0])
                ref_p.append(psnr(img, ref))
                eng_p.append(psnr(img, eng))
                ref_s.append(ssim(img, ref))
                eng_s.append(ssim(img, eng))
        assert abs(np.mean(ref_p) - np.mean(eng_p)) <= 0.5, (severity, ref_p, eng_p)
        assert abs(np.mean(ref_s) - np.mean(eng_s)) <= 0.01, (severity, ref_s, eng_s)


# ------------------------------------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    images, keys = mixed_batch()
    for name in ALL:
        for severity in (1, 3, 5):
            cpu = ce.corrupt_images(images, name, severity, keys, seed=5)
            gpu = ce.corrupt_images(images, name, severity, keys, seed=5, device="cuda")
            for a, b in zip(cpu, gpu):
                assert b.device.type == "cuda"
                stats = same_draw_stats(to_hwc(a), to_hwc(b))
                assert stats.mad <= 1.0 and stats.within2 >= 0.99, (name, severity, stats)


def test_frost_textures_come_from_the_installed_package() -> None:
    spec = importlib.util.find_spec("imagecorruptions")
    assert spec is not None
    from robustness.corruption_engine import weather

    assert weather._frost_dir() == Path(next(iter(spec.submodule_search_locations))) / "frost"
    assert weather._frost_source(0).shape == (3, 600, 900)
