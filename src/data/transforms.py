"""Train-time augmentation and deterministic eval transforms (torchvision v2), per data-set style."""

import torch
from torchvision.transforms import v2

from src.data.augment import erasing_transform, policy_transform


def build_transforms(
    style: str,
    image_size: int,
    mean,
    std,
    train: bool,
    native_size: int | None = None,
    interpolation: str = "bilinear",
    augment: dict | None = None,
    crop_pct: float = 0.875,
    crop_padding: int | None = None,
) -> v2.Compose:
    """`style` names the recipe: 'cifar' (pad-crop + flip), 'digits' (pad-crop, no flip: digits are not
    mirror-symmetric), 'imagenet' (random-resized crop + flip, for photos like Flowers102).
    Images of `native_size` are resized to `image_size` first, with `interpolation` ('bilinear', 'bicubic': what
    a pretrained backbone was trained with). `augment` (conf/augment/, see augment.py) adds a policy
    (RandAugment, AutoAugment, TrivialAugment) after the style's crop/flip and random erasing after normalisation,
    to training transforms only. Eval transforms never augment; 'imagenet' ones keep the centre `crop_pct` of the
    image (timm's data config gives each pretrained model's). `crop_padding`: the 'cifar'/'digits' crop's
    padding (None: image_size // 8, at least 1; 0: no crop)."""
    resize = {"interpolation": v2.InterpolationMode(interpolation), "antialias": True}
    if style == "imagenet":
        if train:
            geometric = [v2.RandomResizedCrop(image_size, **resize), v2.RandomHorizontalFlip()]
        else:  # short side to size/crop_pct, then a centre crop, as timm and torchvision evaluate
            geometric = [v2.Resize(int(round(image_size / crop_pct)), **resize), v2.CenterCrop(image_size)]
    elif style in ("cifar", "digits"):
        geometric = [] if native_size == image_size else [v2.Resize((image_size, image_size), **resize)]
        padding = max(1, image_size // 8) if crop_padding is None else crop_padding
        if train and padding:
            geometric.append(v2.RandomCrop(image_size, padding=padding, padding_mode="reflect"))
            if style == "cifar":
                geometric.append(v2.RandomHorizontalFlip())
    else:
        raise ValueError(f"unknown augmentation style {style!r}; expected 'cifar', 'digits' or 'imagenet'")
    policy, erasing = [], []
    if train and augment:
        policy, erasing = policy_transform(augment, image_size, mean), erasing_transform(augment)
    return v2.Compose(
        [
            v2.ToImage(),
            *geometric,
            *policy,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
            *erasing,
        ]
    )
