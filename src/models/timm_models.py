"""timm backbones by name (ViT, DeiT, and the CNN trunks of keras_cnn.py), with weights from timm's hub or a
local file, and a choice of classifier head."""

import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
from huggingface_hub import constants, try_to_load_from_cache
from torch import nn

from src.errors import UserError
from src.models.heads import keras_mlp_head

# timm asks the hub for these files, in this order
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_unreachable(model_name: str) -> str | None:
    """Why timm's hub cannot deliver `model_name`'s weights (None when they are cached or the hub answers):
    checked up front because huggingface_hub retries an unreachable host for ~50 s before it gives up."""
    hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    if not hub_id:  # weights hosted elsewhere: timm handles those
        return None
    if any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in _HUB_FILES):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and they are not in the local cache"
    host = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=3).close()
    except OSError as err:
        return f"{host.hostname} cannot be reached ({err})"
    return None


def create_timm_model(
    model_name: str,
    pretrained: bool = False,
    weights_path: str | None = None,
    setting: str = "model",
    **kwargs,
):
    """`timm.create_model` with weights from `weights_path` (a .safetensors/.pth/.bin file such as the hub's
    model.safetensors, for machines without internet), else from timm's hub when `pretrained`. `setting`: the
    config group that errors name (model, or distill for a teacher).
    timm adapts either to the model: resized position embeddings, a new classifier for other class counts."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(
                f"{setting}.weights_path={weights_path} is not a file; give a .safetensors/.pth/.bin file"
            )
        try:
            return timm.create_model(
                model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as err:  # a text file, another model's
            raise UserError(
                f"{setting}.weights_path={weights_path} holds no weights of {model_name} ({type(err).__name__}: "
                f"{str(err).strip()[:200]}); give its .safetensors/.pth/.bin file"
            ) from None
    problem = _hub_unreachable(model_name) if pretrained else None
    if problem is None:
        try:
            return timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except OSError as err:  # what huggingface_hub raises when a download fails
            problem = str(err)
    hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    raise UserError(
        f"{setting}.pretrained=true cannot get the weights of {model_name} from timm's hub: {problem}. Run once "
        f"online (they are then cached in {constants.HF_HUB_CACHE}), or copy "
        f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors to this machine and pass "
        f"{setting}.weights_path=<that file> (or {setting}.pretrained=false to train from scratch)."
    )


def vision_transformer(
    model_name: str,
    img_size: int,
    num_classes: int,
    pretrained: bool = False,
    weights_path: str | None = None,
    head: str = "linear",
    drop_path_rate: float = 0.0,
    patch_size: int | None = None,
) -> nn.Module:
    """A timm ViT/DeiT at `img_size`. `head`: 'linear' (timm's) or 'keras_mlp' (the CIFAR-10 notebook's 256-256 MLP on the
    class token). A distilled DeiT keeps both of its heads and returns their average (timm's behaviour unless
    `distilled_training` is set), so the label trains both heads through the average, and eval averages too.
    `patch_size`: another patch side than the model name's (timm resamples pretrained patch embeddings), e.g. 4
    for a DeiT on 16 px digits."""
    extra = {} if patch_size is None else {"patch_size": patch_size}
    model = create_timm_model(
        model_name,
        pretrained,
        weights_path,
        img_size=img_size,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **extra,
    )
    if head == "keras_mlp":
        # timm names its classifiers: 'head', or ('head', 'head_dist') for a distilled DeiT
        classifiers = model.pretrained_cfg["classifier"]
        for name in [classifiers] if isinstance(classifiers, str) else classifiers:
            setattr(model, name, keras_mlp_head(model.num_features, num_classes))
    elif head != "linear":
        raise ValueError(f"head={head!r} is not a head; use 'linear' or 'keras_mlp'")
    return model
