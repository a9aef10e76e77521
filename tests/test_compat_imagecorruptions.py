"""Tests for ibot.compat.imagecorruptions (imagecorruptions 1.1.2 on numpy 2 / skimage >= 0.20).

Expected values never come from the shim itself: they are either recomputed here
from 1.1.2's published formulas with scipy/numpy directly, or are hashes recorded by
running the *unmodified* imagecorruptions 1.1.2 on its original stack (numpy 1.26.4,
scikit-image 0.19.3, scipy 1.11.4, Python 3.10).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import skimage.filters
from PIL import Image
from scipy import ndimage as ndi

from ibot.compat import imagecorruptions as icc

ALL_NAMES = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression", "speckle_noise",
    "gaussian_blur", "spatter", "saturate",
]  # fmt: skip

# Constants copied from imagecorruptions 1.1.2 corruptions.py.
GAUSSIAN_BLUR_SIGMA = [1, 2, 3, 4, 6]
GLASS_BLUR = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)]  # sigma, max_delta, iterations
FOG = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)]  # strength, wibble decay

# Warnings 1.1.2's own imports emit on this stack when imported without the shim.
quiet_import = pytest.mark.filterwarnings(
    "ignore:pkg_resources is deprecated:UserWarning",
    "ignore:.*scipy.ndimage.interpolation.*:DeprecationWarning",
)


def _pattern_image(h: int, w: int) -> np.ndarray:
    """Deterministic (H, W, 3) uint8 test pattern, identical on every numpy version."""
    i, j, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((i * 7 + j * 13 + c * 101 + (i * j) % 17 * 5) % 256).astype(np.uint8)


RGB = _pattern_image(36, 40)  # (36, 40, 3)
GRAY = _pattern_image(33, 35)[..., 1]  # (33, 35)


def _sha16(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _seeded(name: str, image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    np.random.seed(seed)
    return icc.corrupt(image, name, severity)


# Recorded with the unmodified imagecorruptions 1.1.2 on numpy 1.26.4 / scikit-image
# 0.19.3 / scipy 1.11.4: sha256(out.tobytes())[:16] of
# corrupt(image, corruption_name=name, severity=s) after np.random.seed(1000 + s).
ORIGINAL_STACK_SHA = {
    "gaussian_blur": {
        "rgb": ["97429ee1976afee3", "c3ca3106fbd058e8", "a364494b40412ee3", "9ed2af2e8086e08b", "ace6024b31123199"],
        "gray": ["e1d66f7daee9ea95", "6400f49ee01e4cca", "283616c372c8522e", "7f807c43c59f1e38", "03dbe1b70678329d"],
    },
    "glass_blur": {
        "rgb": ["962863686eeec790", "233abdab087d838c", "b81382f817d00f1b", "7b5d81a4dbbff73e", "006b366a68595d8e"],
        "gray": ["fae48f938e4230e4", "19655cd478ca1ba6", "38484006fbac327e", "8551356676163603", "23c06909a98055de"],
    },
    "fog": {
        "rgb": ["cc7a40558976eaba", "653bdb3f0fbd21ca", "4f6fe932f4075d4f", "92bbbe60ec7c2d10", "575ebae5efe9db81"],
        "gray": ["349429c5da3f7938", "9330a8d56db99727", "bd723022ca3b0d9d", "f1f2b993ea74143a", "d5f00d21a7228d89"],
    },
    "frost": {
        "rgb": ["4551c52d7fed0183", "cc628014b6709180", "7233de246332fe97", "034bfcf2a0667ce8", "8c8ec028eb75220f"],
        "gray": ["3647045404466a61", "a5b8b3aa1f839e1e", "753f69387f76921f", "f15554225a2d4393", "f9724bdadaff6645"],
    },
}  # fmt: skip


# --------------------------------------------------------------------------- #
# Independent re-implementations of the three repaired corruptions (1.1.2 formulas)
# --------------------------------------------------------------------------- #
def _gaussian_019_multichannel(x: np.ndarray, sigma: float) -> np.ndarray:
    """skimage 0.19 ``gaussian(x, sigma, multichannel=True)`` for float64 ``x`` (H, W, 3).

    multichannel=True meant channel_axis=-1: sigma on both spatial axes, 0 on the
    channel axis; img_as_float leaves float64 input unchanged (preserve_range is moot);
    defaults mode='nearest', cval=0, truncate=4.0.
    """
    assert x.dtype == np.float64 and x.ndim == 3
    return ndi.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="nearest", cval=0, truncate=4.0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    # 1.1.2's corrupt() replicates 2-D / 1-channel input to 3 channels first.
    return np.stack((image,) * 3, axis=-1) if image.ndim == 2 else image


def _gaussian_blur_reference(image: np.ndarray, severity: int) -> np.ndarray:
    x = _as_rgb(image) / 255.0
    return np.uint8(np.clip(_gaussian_019_multichannel(x, GAUSSIAN_BLUR_SIGMA[severity - 1]), 0, 1) * 255)


def _glass_blur_reference(image: np.ndarray, severity: int) -> np.ndarray:
    """1.1.2 glass_blur: blur, local pixel 'swaps' (global np.random), blur, clip."""
    sigma, max_delta, iterations = GLASS_BLUR[severity - 1]
    x = np.uint8(_gaussian_019_multichannel(_as_rgb(image) / 255.0, sigma) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):
        for row in range(h - max_delta, max_delta, -1):
            for col in range(w - max_delta, max_delta, -1):
                dx, dy = np.random.randint(-max_delta, max_delta, size=(2,))
                # 1.1.2 writes `x[h, w], x[h', w'] = x[h', w'], x[h, w]`; both right-hand
                # items are *views*, so the second store writes back the pixel the first
                # one just copied: the net effect is a copy, not a swap.
                x[row, col] = x[row + dy, col + dx]
    return np.uint8(np.clip(_gaussian_019_multichannel(x / 255.0, sigma), 0, 1) * 255)


def _plasma_fractal_reference(mapsize: int, wibbledecay: float) -> np.ndarray:
    """Diamond-square height map in float64 (what np.float_ meant), values in [0, 1].

    Same random-draw order as 1.1.2: per level one uniform draw for the square
    centres, then one for the top-edge and one for the left-edge diamond points.
    """
    hmap = np.zeros((mapsize, mapsize), dtype=np.float64)
    step, wibble = mapsize, 100.0

    def noisy_mean(sum_of_four: np.ndarray) -> np.ndarray:
        return sum_of_four / 4 + wibble * np.random.uniform(-wibble, wibble, sum_of_four.shape)

    while step >= 2:
        half = step // 2
        corners = hmap[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)  # 4 corners, wrapping around
        hmap[half::step, half::step] = noisy_mean(square)

        centres = hmap[half::step, half::step]
        corners = hmap[0::step, 0::step]
        top = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1, axis=1))
        hmap[0::step, half::step] = noisy_mean(top)
        left = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1, axis=0))
        hmap[half::step, 0::step] = noisy_mean(left)

        step = half
        wibble /= wibbledecay
    hmap -= hmap.min()
    return hmap / hmap.max()


def _fog_reference(image: np.ndarray, severity: int) -> np.ndarray:
    strength, decay = FOG[severity - 1]
    rgb = _as_rgb(image)
    h, w = rgb.shape[:2]
    mapsize = 1 << (max(h, w, 3) - 1).bit_length()  # next power of two >= longest side
    x = rgb / 255.0
    max_val = x.max()
    x = x + strength * _plasma_fractal_reference(mapsize, decay)[:h, :w, np.newaxis]
    return np.uint8(np.clip(x * max_val / (max_val + strength), 0, 1) * 255)


REFERENCES = {
    "gaussian_blur": _gaussian_blur_reference,
    "glass_blur": _glass_blur_reference,
    "fog": _fog_reference,
}


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def corruptions() -> types.ModuleType:
    icc.install()
    return sys.modules["imagecorruptions.corruptions"]


@pytest.fixture(scope="module")
def pristine() -> Iterator[types.ModuleType]:
    """A fresh, never-patched copy of the installed 1.1.2 corruptions.py.

    Loaded under a private module name so the shared, patched module is untouched.
    Only its import-time dependencies are stubbed if this stack lacks them.
    """
    spec = importlib.util.find_spec("imagecorruptions")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "corruptions.py"
    file_spec = importlib.util.spec_from_file_location("_pristine_ic_corruptions", path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1.1.2's deprecated imports; not under test here
        if importlib.util.find_spec("pkg_resources") is None:
            stub = types.ModuleType("pkg_resources")
            stub.resource_filename = lambda *a: ""  # type: ignore[attr-defined]
            mp.setitem(sys.modules, "pkg_resources", stub)
        file_spec.loader.exec_module(module)
    yield module


def _purge_imagecorruptions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the imported imagecorruptions package (monkeypatch restores it afterwards)."""
    for name in [n for n in sys.modules if n == "imagecorruptions" or n.startswith("imagecorruptions.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture()
def purged_imagecorruptions(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    _purge_imagecorruptions(monkeypatch)
    return monkeypatch


# --------------------------------------------------------------------------- #
# 1. The unpatched code is broken on this stack (so every fix below is needed)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("gaussian_blur", TypeError, "unexpected keyword argument 'multichannel'"),
        ("glass_blur", TypeError, "unexpected keyword argument 'multichannel'"),
        ("fog", AttributeError, "np.float_` was removed in the NumPy 2.0 release"),
    ],
)
def test_unpatched_corruption_fails_on_current_stack(
    pristine: types.ModuleType, name: str, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        getattr(pristine, name)(Image.fromarray(RGB), 1)


@pytest.mark.parametrize(
    ("blocked", "corruption"),
    [("pkg_resources", "frost"), ("scipy.ndimage.interpolation", "elastic_transform")],
)
@quiet_import
def test_import_without_removed_module_uses_temporary_stand_in(
    monkeypatch: pytest.MonkeyPatch, blocked: str, corruption: str
) -> None:
    """setuptools >= 82 has no pkg_resources; SciPy 2 drops ndimage.interpolation."""
    reference = _seeded(corruption, RGB, 3, seed=7)  # with the real module available
    _purge_imagecorruptions(monkeypatch)
    monkeypatch.setitem(sys.modules, blocked, None)  # makes `import <blocked>` raise ImportError

    with pytest.raises(ImportError):
        importlib.import_module("imagecorruptions")  # the unfixed import path
    assert "imagecorruptions" not in sys.modules

    module = icc.install()
    assert sys.modules[blocked] is None, "stand-in must be gone from sys.modules again"
    np.random.seed(7)
    out = module.corrupt(RGB, severity=3, corruption_name=corruption)
    np.testing.assert_array_equal(out, reference)


@quiet_import
def test_frost_without_pkg_resources_matches_original_stack(
    purged_imagecorruptions: pytest.MonkeyPatch,
) -> None:
    purged_imagecorruptions.setitem(sys.modules, "pkg_resources", None)
    module = icc.install()
    for severity in range(1, 6):
        np.random.seed(1000 + severity)
        out = module.corrupt(RGB, severity=severity, corruption_name="frost")
        assert _sha16(out) == ORIGINAL_STACK_SHA["frost"]["rgb"][severity - 1]


def test_resource_filename_stand_in_finds_bundled_frost_images(corruptions: types.ModuleType) -> None:
    paths = [
        icc._resource_filename("imagecorruptions.corruptions", f"./frost/frost{i}.{ext}")
        for i, ext in [(1, "png"), (2, "png"), (3, "png"), (4, "jpg"), (5, "jpg"), (6, "jpg")]
    ]
    assert all(os.path.isfile(p) for p in paths), paths
    assert Path(paths[0]).resolve().parent.parent == Path(corruptions.__file__ or "").resolve().parent


def test_stand_ins_are_removed_after_the_block() -> None:
    name = "ibot_compat_test_no_such_module"
    factory = lambda: types.ModuleType(name)  # noqa: E731
    with icc._stand_ins_for_missing({name: factory, "numpy": factory}) as stood_in:
        assert stood_in == [name]  # importable modules are left alone
        assert isinstance(sys.modules[name], types.ModuleType)
        assert sys.modules["numpy"] is np
    assert name not in sys.modules


# --------------------------------------------------------------------------- #
# 2. The individual repairs
# --------------------------------------------------------------------------- #
def test_gaussian_wrapper_maps_multichannel_to_channel_axis(corruptions: types.ModuleType) -> None:
    x = RGB / 255.0
    np.testing.assert_array_equal(
        corruptions.gaussian(x, sigma=2, multichannel=True),
        skimage.filters.gaussian(x, sigma=2, channel_axis=-1),
    )
    # 2-D calls without the keyword (spatter, elastic_transform) pass straight through.
    np.testing.assert_array_equal(
        corruptions.gaussian(x[..., 0], 1.5, mode="reflect", truncate=3),
        skimage.filters.gaussian(x[..., 0], 1.5, mode="reflect", truncate=3),
    )
    with pytest.raises(TypeError, match="only multichannel=True"):
        corruptions.gaussian(x, sigma=2, multichannel=False)
    with pytest.raises(TypeError, match="not both"):
        corruptions.gaussian(x, sigma=2, multichannel=True, channel_axis=0)
    # The wrapped original is today's skimage function, which rejects the keyword.
    with pytest.raises(TypeError, match="multichannel"):
        corruptions.gaussian.__wrapped__(x, sigma=2, multichannel=True)


def test_numpy_view_adds_float_alias_without_touching_numpy(corruptions: types.ModuleType) -> None:
    assert corruptions.np.float_ is np.float64
    assert corruptions.np.random is np.random and corruptions.np.ndarray is np.ndarray
    assert "float_" in dir(corruptions.np)
    assert not hasattr(np, "float_"), "the global numpy module must not be patched"
    with pytest.raises(AttributeError):
        corruptions.np.no_such_numpy_attribute  # noqa: B018


def test_install_is_idempotent(corruptions: types.ModuleType) -> None:
    gaussian, np_view = corruptions.gaussian, corruptions.np
    assert icc.install() is icc.install() is sys.modules["imagecorruptions"]
    assert corruptions.gaussian is gaussian and corruptions.np is np_view
    assert corruptions.gaussian.__wrapped__ is skimage.filters.gaussian  # wrapped once


@quiet_import
def test_freshly_imported_package_is_repaired(purged_imagecorruptions: pytest.MonkeyPatch) -> None:
    module = icc.install()
    assert module is not None and module is icc.install()
    np.random.seed(1001)
    out = module.corrupt(RGB, severity=1, corruption_name="fog")  # would raise unpatched
    assert _sha16(out) == ORIGINAL_STACK_SHA["fog"]["rgb"][0]


def test_third_party_style_import_works_after_install() -> None:
    icc.install()
    from imagecorruptions import corrupt  # what mmdet's Corrupt transform does

    np.random.seed(0)
    out = corrupt(RGB, corruption_name="glass_blur", severity=1)
    assert out.dtype == np.uint8 and out.shape == RGB.shape


# --------------------------------------------------------------------------- #
# 3. Golden values: independent re-computation and original-stack hashes
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("image_kind", ["rgb", "gray"])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_repaired_corruption_matches_independent_reference(name: str, severity: int, image_kind: str) -> None:
    image = RGB if image_kind == "rgb" else GRAY
    seed = 1000 + severity
    np.random.seed(seed)
    expected = REFERENCES[name](image, severity)
    got = _seeded(name, image, severity, seed)
    assert got.shape == image.shape[:2] + (3,)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("image_kind", ["rgb", "gray"])
@pytest.mark.parametrize("name", sorted(ORIGINAL_STACK_SHA))
def test_repaired_corruption_matches_original_stack(name: str, image_kind: str) -> None:
    image = RGB if image_kind == "rgb" else GRAY
    got = [_sha16(_seeded(name, image, s, seed=1000 + s)) for s in range(1, 6)]
    assert got == ORIGINAL_STACK_SHA[name][image_kind]


def test_fog_fractal_reference_is_float64_plasma(corruptions: types.ModuleType) -> None:
    # plasma_fractal's np.float_ buffer now resolves to float64 - same numbers as the
    # hand-written float64 diamond-square above for the same seed.
    np.random.seed(3)
    got = corruptions.plasma_fractal(mapsize=64, wibbledecay=1.7)
    np.random.seed(3)
    expected = _plasma_fractal_reference(64, 1.7)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected)
    assert got.min() == 0.0 and got.max() == 1.0


# --------------------------------------------------------------------------- #
# 4. Every corruption x severity on 224x224 RGB, 32x32 RGB and a 2-D grayscale image
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def sweep_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    return {
        "rgb224": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "rgb32": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "gray48x40": rng.integers(0, 256, (48, 40), dtype=np.uint8),
    }


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_corruption_runs_at_every_severity(name: str, sweep_images: dict[str, np.ndarray]) -> None:
    for label, image in sweep_images.items():
        for severity in range(1, 6):
            np.random.seed(severity)
            out = icc.corrupt(image, name, severity)
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8, (label, severity)
            # 1.1.2 returns grayscale input replicated to 3 channels.
            assert out.shape == image.shape[:2] + (3,), (label, severity, out.shape)


def test_single_channel_input_comes_back_with_three_channels() -> None:
    out = _seeded("gaussian_blur", GRAY[..., np.newaxis], 2, seed=0)
    np.testing.assert_array_equal(out, _gaussian_blur_reference(GRAY, 2))


# --------------------------------------------------------------------------- #
# 5. Determinism
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n != "impulse_noise"])
def test_same_seed_gives_same_output(name: str) -> None:
    image = _pattern_image(32, 32)
    np.testing.assert_array_equal(_seeded(name, image, 3, seed=11), _seeded(name, image, 3, seed=11))


def test_impulse_noise_ignores_numpy_global_seed() -> None:
    # skimage's random_noise draws from a fresh np.random.default_rng() (already so in
    # 0.19.3 under 1.1.2), so np.random.seed cannot make impulse_noise reproducible.
    image = np.full((40, 40, 3), 128, np.uint8)
    assert not np.array_equal(
        _seeded("impulse_noise", image, 3, seed=0), _seeded("impulse_noise", image, 3, seed=0)
    )


# --------------------------------------------------------------------------- #
# 6. Public API and input validation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("subset", "expected"),
    [
        ("all", ALL_NAMES),
        ("common", ALL_NAMES[:15]),
        ("validation", ALL_NAMES[15:]),
        ("noise", ALL_NAMES[0:3]),
        ("blur", ALL_NAMES[3:7]),
        ("weather", ALL_NAMES[7:11]),
        ("digital", ALL_NAMES[11:15]),
    ],
)
def test_get_corruption_names(subset: str, expected: list[str]) -> None:
    assert icc.get_corruption_names(subset) == expected


def test_get_corruption_names_default_and_bad_subset() -> None:
    assert icc.get_corruption_names() == ALL_NAMES[:15]
    with pytest.raises(ValueError, match="'digital'"):
        icc.get_corruption_names("everything")


@pytest.mark.parametrize(
    ("image", "name", "severity", "error", "match"),
    [
        (RGB, "gausian_noise", 1, ValueError, r"unknown corruption 'gausian_noise'.*'saturate'"),
        (RGB, None, 1, ValueError, "unknown corruption None"),
        (RGB, "fog", 0, ValueError, r"severity must be in 1\.\.5"),
        (RGB, "fog", 6, ValueError, r"severity must be in 1\.\.5"),
        (RGB, "fog", 2.0, TypeError, "severity must be an int"),
        (RGB, "fog", True, TypeError, "severity must be an int"),
        (RGB.astype(np.float32), "fog", 1, TypeError, "dtype uint8"),
        (RGB.tolist(), "fog", 1, TypeError, "numpy.ndarray"),
        (RGB[np.newaxis], "fog", 1, ValueError, r"\(H, W\) or \(H, W, C\)"),
        (np.zeros((40, 40, 4), np.uint8), "fog", 1, ValueError, "1 or 3 channels"),
        (np.zeros((31, 40, 3), np.uint8), "fog", 1, ValueError, ">= 32"),
    ],
)
def test_corrupt_rejects_bad_input(
    image: object, name: object, severity: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        icc.corrupt(image, name, severity)  # type: ignore[arg-type]


def test_corrupt_accepts_numpy_integer_severity() -> None:
    np.testing.assert_array_equal(
        _seeded("contrast", RGB, np.int64(2), seed=0), _seeded("contrast", RGB, 2, seed=0)  # type: ignore[arg-type]
    )
