"""A trained model's input pipeline as plain facts (image size, mean/std, interpolation, augmentation style,
native size, centre crop, and for timm models where each came from), which checkpoints and exported models carry,
and the eval transforms built from them: torchvision's (what tests and training use) and a NumPy/Pillow one for
exported models, which needs neither torch nor torchvision.

Imports only NumPy and Pillow: `src.predict` on an .onnx file stays free of torch."""

from collections.abc import Callable

import numpy as np
from PIL import Image

FACT_KEYS = ("image_size", "mean", "std", "interpolation", "style", "native_size", "crop_pct", "channels")


def preprocessing_facts(datamodule) -> dict:
    """The facts of an src.data ImageDataModule's eval transform, as plain values."""
    h = datamodule.hparams
    return {
        "image_size": int(h.image_size),
        "mean": [float(v) for v in h.mean],
        "std": [float(v) for v in h.std],
        "interpolation": str(h.interpolation),
        "style": datamodule.style,
        "native_size": datamodule.native_size,
        "crop_pct": float(h.get("crop_pct", 0.875)),
        "channels": int(h.get("channels", 3)),
        # model (its pretrained weights' data config) or config, per setting; absent for a model without one
        **({"from": dict(h.preprocessing_from)} if h.get("preprocessing_from") else {}),
    }


def torch_eval_transform(facts: dict):
    """The data set's eval transform (src.data.transforms), preceded for small fixed-size data sets (CIFAR,
    digits) by bringing any photo to their native size first (shorter side, then a centre crop), as the
    training images were. Images come as RGB; a grey model's (channels 1) are converted as PIL reads grey."""
    from torchvision.transforms import v2

    from src.data.transforms import build_transforms

    f = facts
    transform = build_transforms(
        f["style"],
        f["image_size"],
        f["mean"],
        f["std"],
        False,
        f["native_size"],
        f["interpolation"],
        crop_pct=f.get("crop_pct", 0.875),  # absent from checkpoints before it was a setting
    )
    if f["native_size"]:
        size = f["native_size"]
        transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), transform])
    channels = f.get("channels", 3)  # absent from checkpoints before it was a setting: RGB
    if channels != 3:  # grey; N channels (data=digits) repeat it
        repeat = [] if channels == 1 else [v2.Lambda(lambda x: x.expand(channels, -1, -1))]
        transform = v2.Compose([v2.Grayscale(1), transform, *repeat])
    return transform


_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def _resize_short_side(image: Image.Image, size: int, resample) -> Image.Image:
    # torchvision's rule: the shorter side becomes `size`, the longer one int(size * long / short)
    w, h = image.size
    if w <= h:
        return image.resize((size, int(size * h / w)), resample)
    return image.resize((int(size * w / h), size), resample)


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's anchor
    return image.crop((left, top, left + size, top + size))


def numpy_eval_transform(facts: dict) -> Callable[[Image.Image], np.ndarray]:
    """torch_eval_transform with Pillow and NumPy: image -> normalised float32 (C, H, W), C the model's
    channels (an RGB image is converted to grey with PIL's mode "L" for a model of other than 3 channels, and
    repeated in each of N: data=digits gives its grey digits any number of channels). Resizing is
    Pillow's antialiased filter, which torchvision's antialiased tensor resize reproduces to within about one
    grey level, so probabilities agree to about 1e-3 and the ranking of classes as a rule."""
    f = facts
    resample = _PIL_FILTERS.get(f["interpolation"])
    if resample is None:
        raise ValueError(f"interpolation {f['interpolation']!r} is not one of {sorted(_PIL_FILTERS)}")
    size, native, crop_pct = f["image_size"], f["native_size"], f.get("crop_pct", 0.875)
    mean = np.asarray(f["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(f["std"], dtype=np.float32).reshape(-1, 1, 1)

    channels = f.get("channels", 3)
    mode = "RGB" if channels == 3 else "L"

    def transform(image: Image.Image) -> np.ndarray:
        if image.mode != mode:
            image = image.convert(mode)
        if native:
            image = _center_crop(_resize_short_side(image, native, Image.Resampling.BILINEAR), native)
        if f["style"] == "imagenet":
            image = _center_crop(_resize_short_side(image, int(round(size / crop_pct)), resample), size)
        elif native != size:
            image = image.resize((size, size), resample)
        pixels = np.atleast_3d(np.asarray(image, dtype=np.float32)).transpose(2, 0, 1) / 255.0
        if len(pixels) != channels:
            pixels = np.repeat(pixels, channels, axis=0)
        return (pixels - mean) / std

    return transform
