"""Run ``imagecorruptions`` 1.1.2 (ImageNet-C corruptions) on numpy 2 / scikit-image >= 0.20.

The PyPI release 1.1.2 was written against numpy 1.x / scikit-image <= 0.19 and
breaks on the current stack in three places:

* ``glass_blur`` and ``gaussian_blur`` call
  ``skimage.filters.gaussian(..., multichannel=True)``; scikit-image >= 0.20 only
  knows ``channel_axis`` -> ``TypeError: gaussian() got an unexpected keyword
  argument 'multichannel'``.
* ``fog`` (via ``plasma_fractal``) allocates with ``np.float_`` -> numpy 2 raises
  ``AttributeError: `np.float_` was removed in the NumPy 2.0 release.``
* ``import imagecorruptions`` runs ``from pkg_resources import resource_filename``
  (used to locate the bundled frost images); setuptools >= 82 no longer ships
  ``pkg_resources`` -> ``ModuleNotFoundError`` at import time.  The same module also
  imports ``map_coordinates`` from ``scipy.ndimage.interpolation``, a namespace SciPy
  deprecates and plans to remove in 2.0; it is handled the same way.

:func:`install` repairs the *installed* package in place by rebinding names in the
``imagecorruptions.corruptions`` namespace only (no file in site-packages is edited,
the global ``numpy`` module is not touched), so third-party callers such as mmdet's
``Corrupt`` transform (``from imagecorruptions import corrupt``) work too.  Every fix
reproduces what 1.1.2 computed on its original stack (numpy 1.x, scikit-image 0.19);
all other corruption code runs unchanged.

:func:`corrupt` and :func:`get_corruption_names` are validated front doors that call
``install()`` first.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["corrupt", "get_corruption_names", "install"]

_PACKAGE: Final = "imagecorruptions"
_CORRUPTIONS_MODULE: Final = "imagecorruptions.corruptions"
_PATCHED_FLAG: Final = "_ibot_compat_patched"

SUBSETS: Final[tuple[str, ...]] = (
    "common", "validation", "all", "noise", "blur", "weather", "digital",
)
MIN_SIDE: Final = 32  # 1.1.2's corrupt() refuses smaller images

# numpy-2 removals that corruptions.py 1.1.2 still uses.  A grep of the installed
# file for np.float_/np.float/np.int/np.bool/np.complex_/np.object finds only
# ``np.float_`` (in plasma_fractal, hence fog); np.float_ was an alias of float64.
_REMOVED_NUMPY_ALIASES: Final[Mapping[str, Any]] = types.MappingProxyType(
    {"float_": np.float64}
)

# Known import-time noise from 1.1.2's own imports; nothing a caller can act on.
_IMPORT_WARNINGS: Final = (
    (UserWarning, r"pkg_resources is deprecated as an API"),
    (DeprecationWarning, r".*`scipy\.ndimage\.interpolation` namespace is deprecated"),
)

_lock = threading.RLock()
_MISSING: Final = object()


# --------------------------------------------------------------------------- #
# numpy: a per-module namespace with the removed aliases put back
# --------------------------------------------------------------------------- #
class _NumpyWithRemovedAliases(types.ModuleType):
    """Read-through view of ``numpy`` that also answers names numpy 2 removed.

    Installed as ``imagecorruptions.corruptions.np`` only, so ``np.float_`` resolves
    there while the real ``numpy`` module (and every other user of it) is untouched.
    """

    def __init__(self, base: types.ModuleType, aliases: Mapping[str, Any]) -> None:
        super().__init__(base.__name__, base.__doc__)
        self._ibot_base = base
        self._ibot_aliases = dict(aliases)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails, i.e. for everything of numpy's.
        base = self.__dict__["_ibot_base"]
        try:
            return getattr(base, name)
        except AttributeError:
            aliases = self.__dict__["_ibot_aliases"]
            if name in aliases:
                return aliases[name]
            raise

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._ibot_base)) | set(self._ibot_aliases))

    def __repr__(self) -> str:
        return f"<numpy view with aliases {sorted(self._ibot_aliases)} for imagecorruptions>"


# --------------------------------------------------------------------------- #
# scikit-image: accept the 0.19-era ``multichannel=True`` keyword
# --------------------------------------------------------------------------- #
def _multichannel_gaussian(gaussian: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap ``skimage.filters.gaussian`` so ``multichannel=True`` means ``channel_axis=-1``.

    In scikit-image 0.19, ``multichannel=True`` was deprecated sugar for
    ``channel_axis=-1``: a scalar sigma is applied to each spatial axis and 0 to the
    last (channel) axis.  That is exactly what ``channel_axis=-1`` does today, so the
    mapping reproduces 0.19's numbers.  1.1.2 only ever passes ``True``; anything else
    is refused rather than guessed.
    """

    @functools.wraps(gaussian)
    def wrapper(image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
        if "multichannel" not in kwargs:
            return gaussian(image, *args, **kwargs)
        multichannel = kwargs.pop("multichannel")
        if multichannel is not True:
            raise TypeError(
                "ibot.compat.imagecorruptions: only multichannel=True (as used by "
                f"imagecorruptions 1.1.2) is supported, got multichannel={multichannel!r}"
            )
        if kwargs.get("channel_axis") is not None:
            raise TypeError("pass either multichannel or channel_axis, not both")
        kwargs["channel_axis"] = -1
        return gaussian(image, *args, **kwargs)

    wrapper._ibot_compat_multichannel = True  # type: ignore[attr-defined]
    return wrapper


def _accepts_multichannel(func: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature: assume new API
        return False
    return "multichannel" in params


# --------------------------------------------------------------------------- #
# Import-time stand-ins for modules that newer setuptools / SciPy no longer have
# --------------------------------------------------------------------------- #
def _resource_filename(package_or_requirement: str, resource_name: str) -> str:
    """Minimal ``pkg_resources.resource_filename`` for an importable module name.

    Mirrors pkg_resources' file-system provider: the directory holding the module's
    file, joined with the '/'-separated resource path.  1.1.2 calls it as
    ``resource_filename('imagecorruptions.corruptions', './frost/frost1.png')``.
    """
    module = sys.modules.get(package_or_requirement)
    if module is None:
        module = importlib.import_module(package_or_requirement)
    module_file = getattr(module, "__file__", None)
    if not module_file:
        raise FileNotFoundError(f"{package_or_requirement!r} has no file location")
    return os.path.join(os.path.dirname(module_file), *resource_name.split("/"))


def _pkg_resources_stand_in() -> types.ModuleType:
    module = types.ModuleType(
        "pkg_resources", "Temporary stand-in (resource_filename only) from ibot.compat."
    )
    module.resource_filename = _resource_filename  # type: ignore[attr-defined]
    return module


def _ndimage_interpolation_stand_in() -> types.ModuleType:
    from scipy import ndimage

    module = types.ModuleType(
        "scipy.ndimage.interpolation", "Temporary stand-in from ibot.compat."
    )
    module.map_coordinates = ndimage.map_coordinates  # type: ignore[attr-defined]
    return module


_STAND_INS: Final[Mapping[str, Callable[[], types.ModuleType]]] = types.MappingProxyType(
    {
        "pkg_resources": _pkg_resources_stand_in,
        "scipy.ndimage.interpolation": _ndimage_interpolation_stand_in,
    }
)


@contextlib.contextmanager
def _quiet_known_import_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for category, message in _IMPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _stand_ins_for_missing(
    factories: Mapping[str, Callable[[], types.ModuleType]],
) -> Iterator[list[str]]:
    """Put stand-ins into ``sys.modules`` for the names that cannot be imported.

    Only for the duration of the ``with`` block: afterwards ``sys.modules`` holds
    exactly what it held before (a deliberate ``None`` blocker included), so nobody
    else ever sees the stand-ins.  Yields the names that were stood in for.
    """
    saved: dict[str, object] = {}
    try:
        for name, factory in factories.items():
            if _importable(name):
                continue
            saved[name] = sys.modules.get(name, _MISSING)
            sys.modules[name] = factory()
        yield list(saved)
    finally:
        for name, previous in saved.items():
            if previous is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous  # type: ignore[assignment]


def _import_package() -> types.ModuleType:
    with _quiet_known_import_warnings():
        if _CORRUPTIONS_MODULE in sys.modules and _PACKAGE in sys.modules:
            return sys.modules[_PACKAGE]
        with _stand_ins_for_missing(_STAND_INS):
            return importlib.import_module(_PACKAGE)


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #
def install() -> types.ModuleType:
    """Import and repair the installed ``imagecorruptions`` package in place.

    Idempotent and thread-safe; a module that was reloaded (fresh namespace) is
    repaired again.  Returns the ``imagecorruptions`` package module, whose
    ``corrupt(image, severity, corruption_name)`` then works for every corruption.
    """
    with _lock:
        package = _import_package()
        corruptions = sys.modules[_CORRUPTIONS_MODULE]
        if getattr(corruptions, _PATCHED_FLAG, False):
            return package

        # Rebind names in the module namespace only: the corruption functions look
        # these globals up at call time, so no function object needs replacing.
        gaussian = corruptions.gaussian
        if not getattr(gaussian, "_ibot_compat_multichannel", False) and not (
            _accepts_multichannel(gaussian)
        ):
            corruptions.gaussian = _multichannel_gaussian(gaussian)
        if not isinstance(corruptions.np, _NumpyWithRemovedAliases):
            corruptions.np = _NumpyWithRemovedAliases(corruptions.np, _REMOVED_NUMPY_ALIASES)
        setattr(corruptions, _PATCHED_FLAG, True)
        return package


def get_corruption_names(subset: str = "common") -> list[str]:
    """Names of the corruptions in ``subset``, in imagecorruptions' canonical order.

    ``subset`` is one of ``common`` (15 ImageNet-C test corruptions), ``validation``
    (4), ``all`` (19), ``noise`` / ``blur`` / ``weather`` / ``digital`` (4 groups of
    the common ones; ``noise`` has 3).
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; expected one of {list(SUBSETS)}")
    return list(install().get_corruption_names(subset))


def corrupt(image: np.ndarray, corruption_name: str, severity: int) -> npt.NDArray[np.uint8]:
    """Apply one ImageNet-C corruption exactly as imagecorruptions 1.1.2 does.

    Args:
        image: uint8 array, ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` (RGB), with
            ``H, W >= 32``.
        corruption_name: one of ``get_corruption_names('all')``.
        severity: integer in ``1..5``.

    Returns:
        uint8 array of shape ``(H, W, 3)``.  As in 1.1.2, grayscale and single-channel
        inputs are replicated to 3 channels before corrupting and come back as
        3-channel images (identical channels for most corruptions; ``frost`` and
        ``spatter`` add colour).

    Randomness comes from numpy's global legacy RNG (``np.random.seed``), except
    ``impulse_noise``, which scikit-image's ``random_noise`` draws from its own fresh
    ``np.random.default_rng()`` and is therefore not reproducible via a seed.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must have dtype uint8, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C); got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] not in (1, 3):
        raise ValueError(f"image must have 1 or 3 channels; got shape {image.shape}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"image height and width must be >= {MIN_SIDE}; got shape {image.shape}"
        )
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, np.integer)):
        raise TypeError(f"severity must be an int in 1..5, got {severity!r}")
    if not 1 <= int(severity) <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    names = get_corruption_names("all")
    if not isinstance(corruption_name, str) or corruption_name not in names:
        raise ValueError(f"unknown corruption {corruption_name!r}; valid names: {names}")

    package = install()
    out = package.corrupt(image, severity=int(severity), corruption_name=corruption_name)
    return np.asarray(out, dtype=np.uint8)
