"""Heat-map overlays (src/inference/attention_maps.py) as figures: one image with its map, a grid of them, and the test report's
attention.png (the most confidently wrong test images and a few right ones, each with where the model looked)."""

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from src.inference import attention_maps as maps
from src.reporting.artefacts import displayable, image_grid

# right test images shown after the wrong ones in attention.png
NUM_RIGHT = 4
# the heat map's weight over the image
HEAT_ALPHA = 0.45


def blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] under its (H, W) map in [0, 1]: jet, HEAT_ALPHA opaque."""
    return ((1 - HEAT_ALPHA) * image + HEAT_ALPHA * colormaps["jet"](mask)[..., :3]).clip(0, 1)


def overlay_png(
    image: torch.Tensor, heat: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> bytes:
    """One normalised (C, H, W) image under its (H, W) map as PNG bytes, at the model's input size (the demo page's
    overlay: a picture without a figure around it)."""
    pixels = blend(displayable(image[None], mean, std)[0], heat.numpy())
    out = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def plot_overlays(
    images: torch.Tensor,
    heat: torch.Tensor,
    titles: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
    title: str = "",
    cols: int = 4,
) -> Figure:
    """Normalised (N, C, H, W) images, each under its (N, H, W) map in [0, 1] (jet, half transparent)."""
    fig, axes = image_grid(len(images), cols)
    for ax, image, mask, text in zip(axes.flat, displayable(images, mean, std), heat, titles, strict=False):
        # blended here, one picture per panel: two layers with alpha took matplotlib twice as long to draw
        ax.imshow(blend(image, mask.numpy()), interpolation="nearest")
        ax.set_title(text, fontsize=9)
    if len(images) == 0:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return fig


def keep_right(kept: dict | None, images, targets, preds, confidence) -> dict:
    """The first NUM_RIGHT correctly classified test images (on the CPU), for attention.png."""
    if kept is not None and len(kept["image"]) >= NUM_RIGHT:
        return kept
    right = preds == targets
    new = {
        "image": images[right],
        "target": targets[right],
        "pred": preds[right],
        "confidence": confidence[right],
    }
    new = {key: value[:NUM_RIGHT].detach().cpu() for key, value in new.items()}
    if kept is None:
        return new
    return {key: torch.cat([kept[key], new[key]])[:NUM_RIGHT] for key in kept}


def plot_test_attention(
    model: torch.nn.Module,
    wrong: dict[str, torch.Tensor],
    right: dict[str, torch.Tensor] | None,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    path: Path,
) -> Figure:
    """attention.png: rollout for transformers, Grad-CAM for the others, for the top class of each image."""
    groups = [wrong] + ([right] if right is not None else [])
    images = torch.cat([group["image"] for group in groups])
    method = maps.default_method(model)
    device = next(model.parameters()).device
    heat = maps.heatmaps(model, images.to(device), method) if len(images) else torch.zeros(0)
    titles = [
        f"{'wrong' if t != p else 'right'} - true: {class_names[t]}\npred: {class_names[p]} ({c:.0%})"
        for group in groups
        for t, p, c in zip(
            group["target"].tolist(), group["pred"].tolist(), group["confidence"].tolist(), strict=True
        )
    ]
    name = {"rollout": "attention rollout", "gradcam": "Grad-CAM"}[method]
    return plot_overlays(
        images, heat, titles, mean, std, path, f"Where the model looks ({name}, test images)"
    )
