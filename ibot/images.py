"""The one image reader of the suite: any file PIL reads -> an 8-bit RGB image, or an error that names the file.

What it handles that a bare ``Image.open(path).convert("RGB")`` gets wrong:

* **16-bit and float images** (``I;16`` PNGs, ``I`` / ``F`` TIFFs): PIL's ``convert("RGB")`` clips the values at 255
  (a 16-bit photo becomes 99 % white); here they are scaled to 8 bits (16-bit: ``v >> 8``; 32-bit integer / float:
  by the image's own maximum when it exceeds 255).
* **Decompression bombs** (huge dimensions in a tiny file): PIL raises ``DecompressionBombError`` or warns; here
  both are a :class:`BadImageError` naming the file and its size, before any pixel is decoded.
* **Unreadable files** (truncated, not an image, missing): a :class:`BadImageError` (an ``OSError``) naming the file;
  callers that skip bad files catch that one type.
* Palette / transparent / CMYK / grey images: converted to RGB (transparency composited on black, as PIL does).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_PIXELS", "BadImageError", "open_rgb"]

#: Largest image accepted (pixels): PIL's own bomb threshold is 2 x ``Image.MAX_IMAGE_PIXELS`` (~179 Mpx);
#: the largest images of the suite's data sets (iNaturalist, COCO) are below 25 Mpx.
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


class BadImageError(OSError):
    """An image file that cannot be used; the message names the file and the reason."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """High bit-depth single-channel modes -> ``L``, scaled rather than clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16)
        return Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    arr = np.asarray(img, dtype=np.float64)  # modes I (int32) and F (float32)
    top = float(arr.max()) if arr.size else 0.0
    if top > 255.0:
        arr = arr * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def open_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB image (fully loaded; the file is closed).

    Raises:
        BadImageError: missing, unreadable, truncated, not an image, or larger than ``max_pixels``.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImageError(f"image {path!r} is {w} x {h} = {w * h / 1e6:.0f} Mpx, above the "
                                        f"{max_pixels / 1e6:.0f} Mpx limit (a decompression bomb or a wrong file); "
                                        "remove it or downscale it")
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                    return _to_8bit(im).convert("RGB")
                if im.mode == "P" and "transparency" in im.info:
                    im = im.convert("RGBA")
                return im.convert("RGB")
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"image {path!r} was refused as a decompression bomb ({exc}); remove it") from exc
    except FileNotFoundError as exc:
        raise BadImageError(f"image {path!r} does not exist; check the data folder (or the list naming it)") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"cannot read image {path!r}: {type(exc).__name__}: {exc}; replace the file or remove it "
                            "from the data folder") from exc
