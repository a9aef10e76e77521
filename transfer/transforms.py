"""Image pipelines of the three protocols (all end in ImageNet normalisation, as the pretraining did).

* evaluation (k-NN features, linear / fine-tune test): ``Resize(img_size / 0.875, bicubic) + CenterCrop(img_size)``
  — 256 → 224 as DINO/iBOT/DeiT; a 32-px CIFAR image is upsampled;
* linear-probe training (DINO ``eval_linear``): ``RandomResizedCrop(img_size) + RandomHorizontalFlip``;
* fine-tuning training (DeiT): timm's ``create_transform`` — RandomResizedCrop (bicubic), flip, RandAugment,
  colour jitter, random erasing.
"""
from __future__ import annotations

from typing import Any, Callable

from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from ibot.augment import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["eval_transform", "linear_train_transform", "finetune_train_transform", "posterize_keep_zero_bits"]

CROP_PCT = 0.875  # 224 / 256


def _normalize() -> list[Callable]:
    return [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def eval_transform(img_size: int) -> transforms.Compose:
    """PIL image -> (3, img_size, img_size) float tensor."""
    return transforms.Compose([
        transforms.Resize(int(round(img_size / CROP_PCT)), interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        *_normalize(),
    ])


def linear_train_transform(img_size: int) -> transforms.Compose:
    """PIL image -> (3, img_size, img_size); DINO linear-probe augmentation (bilinear, as DINO's defaults)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size),
        transforms.RandomHorizontalFlip(),
        *_normalize(),
    ])


def posterize_keep_zero_bits(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's ``posterize`` op, also for ``bits_to_keep = 0``.

    RandAugment ``inc1`` maps magnitude 10 to "keep 0 bits" (reachable with m9 + mstd 0.5: about 2 % of draws).
    Pillow used to clear every bit (a black image) there; Pillow 13 raises ``ValueError: bits must be between
    or equal to 1 and 8``, which would kill a fine-tuning run at a random step. This restores the old result.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit cleared = zeros
    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(tf: Any) -> None:
    for t in getattr(tf, "transforms", []):
        for op in getattr(t, "ops", []):  # timm RandAugment / AutoAugment ops
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize_keep_zero_bits


def finetune_train_transform(img_size: int, aug: dict[str, Any]) -> Callable:
    """PIL image -> (3, img_size, img_size); the DeiT training pipeline built by timm from the recipe's ``aug``."""
    tf = create_transform(
        input_size=img_size,
        is_training=True,
        color_jitter=aug["color_jitter"],
        auto_augment=aug["auto_augment"],
        interpolation=aug["interpolation"],
        re_prob=aug["reprob"],
        re_mode=aug["remode"],
        re_count=aug["recount"],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    _fix_posterize(tf)
    return tf
