"""TokenLearner's spatial maps as a PNG grid: for one image, where each learned token looks.

    python -m src.token_maps outputs/tokenlearner_digits/runs/<run>/checkpoints/<best>.ckpt image.png --out maps.png

The image goes through the checkpoint's own eval transforms (as src.predict feeds it); the grid shows the input,
then the S softmax maps of the first TokenLearner (each a distribution over the H x W patch positions),
upsampled to the image size and scaled to their own maximum.
"""

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.errors import UserError
from src.inference.classifiers import eval_transform
from src.inference.files import load_image
from src.training.module import load_checkpoint


@torch.no_grad()
def token_maps(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, S, side, side) maps of the backbone's first TokenLearner for a batch of images."""
    if not getattr(backbone, "token_learner", None):
        raise UserError("this model has no TokenLearner: train one with model.token_learner.num_tokens=S")
    key = min(backbone.token_learner, key=int)
    learner, seen = backbone.token_learner[key], {}
    hook = learner.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    try:
        backbone.eval()(images)
    finally:
        hook.remove()
    maps = learner.maps(seen["x"])
    side = math.isqrt(maps.shape[-1])
    return maps.view(*maps.shape[:2], side, side)


def grid(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The (normalised) image and its S maps as one row of (S + 1) tiles at the image's size."""
    size = image.shape[-2:]
    maps = F.interpolate(maps[:, None], size=size, mode="nearest")
    maps = (maps / maps.amax(dim=(2, 3), keepdim=True)).expand(-1, 3, -1, -1)
    shown = (image - image.amin()) / (image.amax() - image.amin() + 1e-8)
    return torch.cat([shown[None], maps])


@exit_on_user_error
def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--out", type=Path, default=Path("token_maps.png"))
    args = parser.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    picture = load_image(args.image)
    if picture is None:
        raise UserError(f"{args.image}: not a readable image")
    image = eval_transform(model)(picture)
    maps = token_maps(model.backbone, image[None])[0]
    if args.out.exists():  # nothing a user made is overwritten
        raise UserError(f"{args.out} exists: pass another --out")
    save_image(grid(image, maps), args.out, nrow=len(maps) + 1, padding=1)
    print(f"{len(maps)} token maps of {args.image} -> {args.out}")
    return args.out


if __name__ == "__main__":
    run_command(main, hydra_options=False)
