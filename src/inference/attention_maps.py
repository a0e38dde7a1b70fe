"""Where a classifier looks: attention rollout for transformers, Grad-CAM for every model, as (B, H, W) maps in
[0, 1] at the input's size. Generic over nn.Modules: attention layers are found by timm's convention (a module
with a `fused_attn` flag whose `attn_drop` sees the attention probabilities), token maps by their shape."""

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from src.errors import UserError
from src.models.token_learner import FlexibleDownsample, TokenLearner

METHODS = ("rollout", "gradcam")


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """Self-attention modules, in order: timm's Attention, src.models.vit.Attention, and any module that
    follows their convention (`fused_attn` flag, `attn_drop` applied to the probabilities)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn") and isinstance(m.attn_drop, nn.Module)]


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While inside: every attention layer computes its probabilities explicitly (the same output as the fused
    kernel) and they are appended to the yielded list, (B, heads, N, N) per layer and forward. Afterwards the
    model is as it was: fused kernels, no hooks."""
    layers = attention_layers(model)
    captured: list[torch.Tensor] = []
    fused = [layer.fused_attn for layer in layers]
    handles = [
        layer.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out)) for layer in layers
    ]
    try:
        for layer in layers:
            layer.fused_attn = False
        yield captured
    finally:
        for layer, flag in zip(layers, fused, strict=True):
            layer.fused_attn = flag
        for handle in handles:
            handle.remove()


def rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): each layer's heads averaged, the identity added for the
    residual connection, rows renormalised to 1, then the product over layers (last layer on the left).
    (B, heads, N, N) per layer -> (B, N, N): how much each token at the output draws on each input token."""
    result = None
    for attention in attentions:
        fused = attention.float().mean(dim=1)
        fused = fused + torch.eye(fused.shape[-1], device=fused.device)
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused if result is None else fused @ result
    return result


def split_tokens(num_tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a sequence of `num_tokens` = prefix + side**2 tokens, with fewer prefix
    tokens (class, distillation) than 2 * side + 1: 65 -> (1, 8), 66 -> (2, 8) for a distilled DeiT, 64 -> (0, 8)."""
    side = math.isqrt(num_tokens)
    return num_tokens - side * side, side


def rollout_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) rollout maps: the class token's row over the patch grid (the mean row without a class token)."""
    if changes_tokens(model):
        raise UserError(
            "method=rollout needs the same tokens in every block (TokenLearner/downsampling change "
            "them): use method=gradcam"
        )
    if not attention_layers(model):
        raise UserError(
            f"method=rollout needs attention layers, and {type(model).__name__} has none: use method=gradcam"
        )
    with torch.no_grad(), unfused_attention(model) as attentions:
        model(images)
    joint = rollout(attentions)
    prefix, side = split_tokens(joint.shape[-1])
    rows = joint[:, 0] if prefix else joint.mean(dim=1)
    grid = rows[:, prefix:].reshape(-1, 1, side, side)
    return _to_unit(F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0])


def _to_unit(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(1, 2), keepdim=True)
    return (maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)


def _outputs(model: nn.Module, images: torch.Tensor) -> list[tuple[str, nn.Module, torch.Size]]:
    """(name, module, output shape) of every module, in the order their forward passes end."""
    seen, handles = [], []
    for name, module in model.named_modules():
        handles.append(
            module.register_forward_hook(
                lambda m, _i, out, name=name: (
                    seen.append((name, m, out.shape)) if isinstance(out, torch.Tensor) else None
                )
            )
        )
    try:
        with torch.no_grad():
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return seen


def gradcam_layer(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, int | None]:
    """Grad-CAM's target layer and, for transformers, the number of prefix tokens to drop: the last block's
    `norm1` for token sequences (the grad-cam package's recipe for ViTs), else the last feature map of at least
    2x2 cells (small inputs shrink the last block's map to 1x1, where Grad-CAM cannot place anything): of the
    stages a timm model lists (`feature_info`: ResNet's layers, ConvNeXt's and Swin's stages), else of any
    module."""
    outputs = _outputs(model, images)
    tokens = [(m, shape) for name, m, shape in outputs if name.endswith("norm1") and len(shape) == 3]
    if tokens:
        module, shape = tokens[-1]
        return module, split_tokens(shape[1])[0]
    timm_model = next(
        (m for m in model.modules() if isinstance(getattr(m, "feature_info", None), list)), None
    )
    stages = (
        {id(timm_model.get_submodule(f["module"])) for f in timm_model.feature_info} if timm_model else set()
    )
    height, width = (1, 2) if _channels_last_maps(model) else (-2, -1)
    maps = [m for _, m, shape in outputs if len(shape) == 4 and shape[height] * shape[width] >= 4]
    if not maps:
        raise UserError(f"{type(model).__name__} has no feature map of 2x2 cells or more for Grad-CAM")
    return ([m for m in maps if id(m) in stages] or maps)[-1], None


def _channels_last_maps(model: nn.Module) -> bool:
    """Whether the model's feature maps are (B, H, W, C): timm's Swin-like models say so (`output_fmt`)."""
    return any(str(getattr(m, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC") for m in model.modules())


def gradcam_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) Grad-CAM maps for each image's top class, through the grad-cam package."""
    from pytorch_grad_cam import GradCAM  # imports opencv: only when asked for

    layer, prefix = gradcam_layer(model, images)

    def tokens_to_grid(
        tokens: torch.Tensor,
    ) -> torch.Tensor:  # (B, prefix + side**2, C) -> (B, C, side, side)
        side = math.isqrt(tokens.shape[1] - prefix)
        return tokens[:, prefix:].reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)

    if prefix is not None:
        reshape = tokens_to_grid
    elif _channels_last_maps(model):
        reshape = lambda maps: maps.permute(0, 3, 1, 2)  # noqa: E731
    else:
        reshape = None
    # gradients with respect to the input only: the weights' .grad (and requires_grad) stay as they were
    trainable = [p for p in model.parameters() if p.requires_grad]
    training = model.training
    model.requires_grad_(False)
    try:
        with torch.inference_mode(False), torch.enable_grad(), GradCAM(model, [layer], reshape) as cam:
            inputs = (
                images.detach().clone().requires_grad_(True)
            )  # a normal tensor, also under inference mode
            maps = cam(inputs, targets=None)
    finally:
        for param in trainable:
            param.requires_grad_(True)
        model.train(training)  # GradCAM puts the model in eval mode
    return torch.from_numpy(maps)


def heatmaps(model: nn.Module, images: torch.Tensor, method: str) -> torch.Tensor:
    if method not in METHODS:
        raise UserError(f"method={method} is not a method: use method=rollout or method=gradcam")
    return (rollout_maps if method == "rollout" else gradcam_maps)(model, images).cpu()


def changes_tokens(model: nn.Module) -> bool:
    """TokenLearner or flexible downsampling change the token count between blocks: rollout cannot chain them."""
    return any(isinstance(m, (TokenLearner, FlexibleDownsample)) for m in model.modules())


def default_method(model: nn.Module) -> str:
    """rollout for transformers, Grad-CAM for the others (and for ViTs whose blocks see different tokens)."""
    return "rollout" if attention_layers(model) and not changes_tokens(model) else "gradcam"
