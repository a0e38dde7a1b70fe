"""timm backbones by name (any architecture timm lists, and the CNN trunks of keras_cnn.py), with weights from
timm's hub or a local file, a choice of classifier head, and the input each model's pretrained weights expect."""

import difflib
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
from huggingface_hub import constants, try_to_load_from_cache
from timm.data import resolve_data_config
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


def check_model_name(name: str, key: str) -> None:
    """A UserError naming the closest of timm's model names when `name` (config key `key`) is none of them."""
    if timm.is_model(name):
        return
    architecture = name.split(".")[0]  # a pretrained tag after the dot (vit_small_patch14_dinov2.lvd142m)
    names = timm.list_models()
    near = difflib.get_close_matches(architecture, names, n=5, cutoff=0.6)
    near += [n for n in timm.list_models(f"*{architecture}*")[:5] if n not in near]
    hint = f"; close matches: {', '.join(near)}" if near else ""
    raise UserError(
        f"{key}={name!r} is no timm model{hint} (timm.list_models('*<part>*') lists them by pattern)"
    )


def create_timm_model(
    model_name: str,
    pretrained: bool = False,
    weights_path: str | None = None,
    setting: str = "model",
    name_key: str = "name",
    **kwargs,
):
    """`timm.create_model` with weights from `weights_path` (a .safetensors/.pth/.bin file such as the hub's
    model.safetensors, for machines without internet), else from timm's hub when `pretrained`. `setting`: the
    config group that errors name (model, or distill for a teacher), `name_key` its key of the name.
    timm adapts either to the model: resized position embeddings, a new classifier for other class counts."""
    check_model_name(model_name, "distill.teacher" if setting == "distill" else f"{setting}.{name_key}")
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


# arguments the config always passes, which models without a fixed input size do not take
_INPUT_SIZE_ARGUMENTS = {"img_size"}
# config keys of the arguments named after other settings
_ARGUMENT_KEYS = {"img_size": "data.image_size", "in_chans": "data.channels"}


INPUT_KEYS = ("image_size", "interpolation", "mean", "std", "crop_pct")


def pretrained_input(name: str) -> dict:
    """The input `name`'s pretrained weights expect (timm's data config): image_size, interpolation, mean, std,
    crop_pct (the share of the resized image that the evaluation's centre crop keeps)."""
    check_model_name(name, "model.name")
    config = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    return {
        "image_size": int(config["input_size"][-1]),
        "interpolation": config["interpolation"],
        "mean": [float(v) for v in config["mean"]],
        "std": [float(v) for v in config["std"]],
        "crop_pct": float(config["crop_pct"]),
    }


def timm_model(
    name: str,
    num_classes: int,
    img_size: int | None = None,
    pretrained: bool = False,
    weights_path: str | None = None,
    head: str = "linear",
    drop_path_rate: float | None = None,
    patch_size: int | None = None,
    grad_checkpointing: bool = False,
    in_chans: int = 3,
) -> nn.Module:
    """Any model timm lists, by `name`, classifying `num_classes`. The arguments only some families take are
    passed when set (None: the family's own): `img_size` to models built for one input size (ViT, Swin, EVA:
    others take any size, and timm's error says they take no img_size), `drop_path_rate`, `patch_size`.
    Any other problem building it is the user's (one line naming the model).
    `head`: 'linear' (timm's) or 'keras_mlp' (the CIFAR-10 notebook's 256-256 MLP on the classifier's input). A
    distilled DeiT keeps both of its heads and returns their average (timm's behaviour unless
    `distilled_training` is set), so the label trains both heads through the average, and eval averages too.
    `grad_checkpointing`: timm's activation checkpointing (less memory, a second forward per step).
    `in_chans`: the images' channels; timm adapts pretrained weights' first layer (summed for 1, repeated for N)."""
    if head not in ("linear", "keras_mlp"):
        raise ValueError(f"head={head!r} is not a head; use 'linear' or 'keras_mlp'")
    optional = {"img_size": img_size, "drop_path_rate": drop_path_rate, "patch_size": patch_size}
    if (
        in_chans != 3
    ):  # timm's default: a model that takes no in_chans fails only where the images are not RGB
        optional["in_chans"] = in_chans
    kwargs = {key: value for key, value in optional.items() if value is not None}
    while True:
        try:
            model = create_timm_model(name, pretrained, weights_path, num_classes=num_classes, **kwargs)
            break
        except TypeError as err:  # the model class's own word on which arguments it takes
            taken = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(err))
            if not taken or taken[2] not in kwargs:
                raise UserError(
                    f"model.name={name}: timm cannot build it ({type(err).__name__}: {err})"
                ) from None
            if taken[2] in _INPUT_SIZE_ARGUMENTS:
                del kwargs[taken[2]]
                continue
            key = _ARGUMENT_KEYS.get(taken[2], f"model.{taken[2]}")
            fix = (
                "it takes RGB images only: data.channels=3"
                if key == "data.channels"
                else "leave it out (null)"
            )
            raise UserError(
                f"{key}={kwargs[taken[2]]}: {name} ({taken[1]}) takes no {taken[2]}; {fix}"
            ) from None
        except (ValueError, AssertionError, RuntimeError, KeyError, NotImplementedError) as err:
            settings = ", ".join(f"{_ARGUMENT_KEYS.get(k, 'model.' + k)}={v}" for k, v in kwargs.items())
            raise UserError(
                f"model.name={name} cannot be built as a classifier of {num_classes} classes"
                f"{' with ' + settings if settings else ''} ({type(err).__name__}: {str(err).strip()[:200]})"
            ) from None
    if not hasattr(model, "get_classifier") or getattr(model, "num_classes", None) != num_classes:
        raise UserError(
            f"model.name={name} builds no classifier of {num_classes} classes (no image classifier)"
        )
    if grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AssertionError, AttributeError, NotImplementedError):  # timm asserts where a family has none
            raise UserError(
                f"model.grad_checkpointing=true: {name} ({type(model).__name__}) has no gradient checkpointing "
                "in timm; set model.grad_checkpointing=false"
            ) from None
    if head == "keras_mlp":
        # timm names its classifiers: 'head', 'head.fc', or ('head', 'head_dist') for a distilled DeiT
        classifiers = model.pretrained_cfg["classifier"]
        for classifier in [classifiers] if isinstance(classifiers, str) else classifiers:
            parent, _, leaf = classifier.rpartition(".")
            in_features = model.get_submodule(classifier).in_features
            setattr(model.get_submodule(parent), leaf, keras_mlp_head(in_features, num_classes))
    return model


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
    """timm_model as the checkpoints of earlier vitlab versions name it (a ViT or DeiT, `model_name`)."""
    return timm_model(
        model_name,
        num_classes,
        img_size,
        pretrained,
        weights_path,
        head,
        drop_path_rate,
        patch_size,
    )
