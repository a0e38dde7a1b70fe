"""Test-time augmentation: each batch is classified as it is and in a few altered views, and the class
probabilities of the views are averaged (softmax, then the mean). A view must be one the model could have been
trained on: `hflip` is refused for the data sets whose training recipe never flips (style 'digits', see
transforms.py: digits are not mirror-symmetric), and `crops` shifts by at most the training pad-crop's padding.

Plain torch on normalised (N, C, H, W) batches: `src.predict` imports no torchvision for it."""

from collections.abc import Callable

import torch

from src.errors import UserError

TTA = ("none", "hflip", "crops")
# the styles of transforms.py whose training transform flips images at random
FLIPPED_IN_TRAINING = ("cifar", "imagenet")

Views = Callable[[torch.Tensor], list[torch.Tensor]]


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch moved by (dy, dx) pixels, the uncovered border filled by reflection: one of the crops of the
    reflect-padded image that the 'cifar' and 'digits' training recipes take."""
    pad = max(abs(dy), abs(dx))
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    height, width = images.shape[-2:]
    return padded[..., pad - dy : pad - dy + height, pad - dx : pad - dx + width]


def tta_views(name: str, style: str, image_size: int) -> Views | None:
    """The views of `tta=<name>` for a data set of augmentation `style` (None for `none`): `hflip`, the image and
    its mirror image; `crops`, the image and four shifts by the training crop's padding (image_size // 8, at
    least 1 pixel) up, down, left and right."""
    if name not in TTA:
        raise UserError(f"tta={name} is unknown: use tta=none, tta=crops or tta=hflip")
    if name == "none":
        return None
    if name == "hflip":
        if style not in FLIPPED_IN_TRAINING:
            raise UserError(
                f"tta=hflip is not valid for this data set: its training recipe ({style!r}) never flips images, "
                "as mirrored images are other images (a mirrored digit is no digit): use tta=crops or tta=none"
            )
        return lambda images: [images, images.flip(-1)]
    step = max(1, image_size // 8)
    shifts = [(-step, 0), (step, 0), (0, -step), (0, step)]
    return lambda images: [images, *(shifted(images, dy, dx) for dy, dx in shifts)]


def mean_probabilities(
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: Views | None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The class probabilities of `images` averaged over their `views` (None: the images alone), each view's
    logits divided by `temperature` before the softmax, in float32."""
    batches = views(images) if views is not None else [images]
    probabilities = [(logits_of(view).float() / temperature).softmax(dim=-1) for view in batches]
    return torch.stack(probabilities).mean(dim=0)
