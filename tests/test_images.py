"""The one image reader (``ibot.images.open_rgb``): 16-bit and float images scaled, not clipped; decompression
bombs, truncated and non-image files refused with the file named."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ibot.images import BadImageError, open_rgb


def test_16bit_png_is_scaled_not_clipped(tmp_path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    rgb = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], (ramp >> 8).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # PIL's own convert("RGB") leaves ~99.6 % of it white


def test_float_tiff_is_scaled_by_its_maximum(tmp_path) -> None:
    img = np.linspace(0, 1000, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(img, mode="F").save(tmp_path / "f.tif")
    rgb = np.asarray(open_rgb(tmp_path / "f.tif"))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[16, 0, 0] <= 135


def test_ordinary_images_match_pil(tmp_path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "a.png")), arr)
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "g.png")), np.repeat(arr[..., :1], 3, axis=2))


def test_decompression_bomb_is_named(tmp_path) -> None:
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")  # 400 Mpx in a few kB: PIL's error
    Image.new("1", (10000, 10000)).save(tmp_path / "warn.png")  # 100 Mpx: only a warning from PIL
    assert (tmp_path / "bomb.png").stat().st_size < 200_000
    for name in ("bomb.png", "warn.png"):
        with pytest.raises(BadImageError, match=rf"{name}.*decompression bomb"):
            open_rgb(tmp_path / name)
    Image.new("RGB", (2000, 1000)).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match=r"big\.png' is 2000 x 1000 = 2 Mpx, above the 1 Mpx limit"):
        open_rgb(tmp_path / "big.png", max_pixels=10**6)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_files_are_named(tmp_path, content) -> None:
    path = tmp_path / "bad.jpg"
    if content is None:  # a truncated JPEG
        Image.new("RGB", (64, 64), (200, 10, 10)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(BadImageError, match="bad.jpg"):
        open_rgb(path)
    with pytest.raises(BadImageError, match="does not exist"):
        open_rgb(tmp_path / "missing.jpg")
