"""Multi-crop augmentation and the mask-producing dataset wrapper (official iBOT semantics).

`MultiCropAugmentation` follows `DataAugmentationiBOT` of bytedance/ibot (main_ibot.py, commit da316d8);
`GaussianBlur` / `Solarization` follow its `utils.py` (they draw from Python's `random`, the torchvision
transforms from torch's RNG). `MultiCropMaskDataset` follows `loader.ImageFolderMask.__getitem__`: the crops
are produced first, then one mask per crop, so all RNG streams advance in the official order.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

from ibot.masking import MaskGenerator

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "GaussianBlur",
    "Solarization",
    "MultiCropAugmentation",
    "MultiCropSpec",
    "MultiCropMaskDataset",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class GaussianBlur:
    """PIL Gaussian blur applied with probability p, radius ~ U(radius_min, radius_max) (Python `random`).

    Uses `random.random() <= p` like the official class, so p=1 always blurs and each call draws once
    (twice when it blurs).
    """

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if not 0.0 <= radius_min <= radius_max:
            raise ValueError(f"need 0 <= radius_min <= radius_max, got {radius_min}, {radius_max}")
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


class Solarization:
    """`ImageOps.solarize` (threshold 128) with probability p; `random.random() < p`, one draw per call."""

    def __init__(self, p: float = 0.2) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"Solarization(p={self.p})"


def _check_scale(scale: Sequence[float], name: str) -> tuple[float, float]:
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {scale!r}")
    return float(scale[0]), float(scale[1])


@dataclass(frozen=True)
class MultiCropSpec:
    """Validated multi-crop geometry shared by the per-image and the batched device pipelines."""

    global_crops_scale: tuple[float, float] = (0.14, 1.0)
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    global_crops_number: int = 2
    local_crops_number: int = 0
    global_crop_size: int = 224
    local_crop_size: int = 96

    def __post_init__(self) -> None:
        if self.global_crops_number < 1:
            raise ValueError(f"global_crops_number must be >= 1, got {self.global_crops_number}")
        if self.local_crops_number < 0:
            raise ValueError(f"local_crops_number must be >= 0, got {self.local_crops_number}")
        if self.global_crop_size <= 0 or self.local_crop_size <= 0:
            raise ValueError(f"crop sizes must be positive, got {self.global_crop_size}, {self.local_crop_size}")
        object.__setattr__(self, "global_crops_scale", _check_scale(self.global_crops_scale, "global_crops_scale"))
        object.__setattr__(self, "local_crops_scale", _check_scale(self.local_crops_scale, "local_crops_scale"))


class MultiCropAugmentation:
    """iBOT / DINO multi-crop: `global_crops_number` crops of `global_crop_size`, then `local_crops_number` locals.

    Crop 0: RRC(global) → flip/jitter/grayscale → blur p=1.0. Crops 1..G-1: ... → blur p=0.1 → solarize p=0.2.
    Locals: RRC(local) → flip/jitter/grayscale → blur p=0.5. All end with ToTensor + ImageNet Normalize.
    Defaults are the official argparse defaults (README ViT-S: 10 locals, scales (0.25, 1) / (0.05, 0.25)).

    `__call__(img: PIL RGB) -> list[Tensor]`: float32 (3, S, S) crops, globals first.
    """

    def __init__(
        self,
        global_crops_scale: Sequence[float] = (0.14, 1.0),
        local_crops_scale: Sequence[float] = (0.05, 0.4),
        global_crops_number: int = 2,
        local_crops_number: int = 0,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
    ) -> None:
        self.spec = MultiCropSpec(global_crops_scale, local_crops_scale, global_crops_number, local_crops_number,
                                  global_crop_size, local_crop_size)
        for name, value in asdict(self.spec).items():
            setattr(self, name, value)

        flip_and_color_jitter = transforms.Compose(
            [
                transforms.RandomHorizontalFlip(p=0.5),
                transforms.RandomApply(
                    [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8
                ),
                transforms.RandomGrayscale(p=0.2),
            ]
        )
        normalize = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

        def crop(size: int, scale: tuple[float, float]) -> transforms.RandomResizedCrop:
            return transforms.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC)

        global_size, global_scale = global_crop_size, self.global_crops_scale
        self.global_transform1 = transforms.Compose(
            [crop(global_size, global_scale), flip_and_color_jitter, GaussianBlur(1.0), normalize]
        )
        self.global_transform2 = transforms.Compose(
            [crop(global_size, global_scale), flip_and_color_jitter, GaussianBlur(0.1), Solarization(0.2), normalize]
        )
        self.local_transform = transforms.Compose(
            [crop(local_crop_size, self.local_crops_scale), flip_and_color_jitter, GaussianBlur(0.5), normalize]
        )

    @property
    def num_crops(self) -> int:
        return self.global_crops_number + self.local_crops_number

    @property
    def crop_sizes(self) -> list[int]:
        """Side of every crop, in output order (globals first)."""
        return [self.global_crop_size] * self.global_crops_number + [self.local_crop_size] * self.local_crops_number

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transform1(img)]
        crops += [self.global_transform2(img) for _ in range(self.global_crops_number - 1)]
        crops += [self.local_transform(img) for _ in range(self.local_crops_number)]
        return crops


class MultiCropMaskDataset(Dataset):
    """(crops, label, masks) samples, masks made in the loader workers (official `ImageFolderMask`).

    Args:
        dataset_or_root: an ImageFolder root directory, or a dataset returning (PIL image, label) *without*
            its own transform.
        augmentation: e.g. `MultiCropAugmentation`; maps a PIL image to a list of (C, h, w) tensors.
        mask_generator: `MaskGenerator`.
        patch_size: mask-grid stride in pixels; a crop of h x w gets an (h // patch_size, w // patch_size)
            mask. The official code passes patch_size * 8 for Swin (prediction at the last stage).

    `__getitem__` returns (crops: list[Tensor (3, S, S)], label, masks: list[np.ndarray bool (S//p, S//p)]),
    one mask per crop; only the global-crop masks are used by training, the local ones exist to keep the
    RNG consumption identical to the official loader. Default collate turns masks into (B, h, w) bool tensors.
    Call `set_epoch(epoch)` before each epoch (non-persistent workers see it) for `pred_start_epoch`.
    """

    def __init__(
        self,
        dataset_or_root: Dataset | str,
        augmentation: Any,
        mask_generator: MaskGenerator,
        patch_size: int,
    ) -> None:
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if isinstance(dataset_or_root, str):
            dataset_or_root = datasets.ImageFolder(dataset_or_root)
        self.dataset = dataset_or_root
        self.augmentation = augmentation
        self.mask_generator = mask_generator
        self.patch_size = patch_size
        self.epoch: int | None = None  # None = never set: no start-epoch check, as in the official loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], Any, list[np.ndarray]]:
        img, label = self.dataset[index]
        # Augment first, then masks: the official ImageFolder.__getitem__ runs the transform before the
        # mask loop, and both draw from Python's `random`.
        crops = self.augmentation(img)
        masks = self.mask_generator.masks_for_crops(crops, self.patch_size, self.epoch)
        return crops, label, masks
