"""Checks of what a run is about to use, each failing with one line that names the key, its value and what is
allowed: the values users set most (before Lightning or torch meet them), callbacks that need a logger, and the
metric a sweep optimises."""

import inspect
import logging
import math
import re
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

log = logging.getLogger(__name__)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def whole_at_least(low: int) -> tuple[Callable, str]:
    return (lambda v: _whole(v) and v >= low), f"a whole number of at least {low}"


def fraction(upper_open: bool = True) -> tuple[Callable, str]:
    if upper_open:
        return (lambda v: _number(v) and 0 <= v < 1), "a number in [0, 1)"
    return (lambda v: _number(v) and 0 <= v <= 1), "a number in [0, 1]"


RATE = (lambda v: v is None or (_number(v) and 0 <= v < 1)), "a number in [0, 1) (or null)"
POSITIVE = (lambda v: _number(v) and v > 0), "a number above 0"
NON_NEGATIVE = (lambda v: _number(v) and v >= 0), "a number of at least 0"
OPTIONAL_NON_NEGATIVE = (lambda v: v is None or (_number(v) and v >= 0)), "null or a number of at least 0"
EPOCHS = (lambda v: _whole(v) and (v >= 1 or v == -1)), "a whole number of at least 1 (or -1: no limit)"
OPTIONAL_WHOLE_0 = (lambda v: v is None or (_whole(v) and v >= 0)), "null or a whole number of at least 0"
OPTIONAL_WHOLE_1 = (lambda v: v is None or (_whole(v) and v >= 1)), "null or a whole number of at least 1"

# key -> (test, what is allowed); keys a config does not have are skipped
RULES: dict[str, tuple[Callable, str]] = {
    "trainer.max_epochs": EPOCHS,
    "trainer.min_epochs": whole_at_least(0),
    "trainer.accumulate_grad_batches": whole_at_least(1),
    "trainer.log_every_n_steps": whole_at_least(1),
    "trainer.check_val_every_n_epoch": OPTIONAL_WHOLE_1,
    "trainer.gradient_clip_val": OPTIONAL_NON_NEGATIVE,
    "trainer.num_nodes": whole_at_least(1),
    "data.batch_size": whole_at_least(1),
    "data.num_workers": whole_at_least(0),
    "data.image_size": whole_at_least(1),
    "data.channels": whole_at_least(1),
    # a count, or (data=imagefolder/csv) a fraction of the images
    "data.val_size": (
        (lambda v: _number(v) and (0 < v < 1 or (_whole(v) and v >= 1))),
        "a fraction in (0, 1) or a whole number of at least 1",
    ),
    "data.num_classes": whole_at_least(2),
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": fraction(),
    "optimizer.lr_scale": ((lambda v: v in ("none", "linear", "sqrt")), "none, linear or sqrt"),
    "optimizer.lr_base_size": whole_at_least(1),
    "module.label_smoothing": fraction(),
    "model.depth": whole_at_least(1),
    "model.num_heads": whole_at_least(1),
    "model.embed_dim": whole_at_least(1),
    "model.mlp_dim": whole_at_least(1),
    "model.patch_size": OPTIONAL_WHOLE_1,  # null: the timm model's own
    "freeze.num_blocks": whole_at_least(0),
    "freeze.unfreeze_at_epoch": OPTIONAL_WHOLE_0,
    "seed": ((lambda v: v is None or _whole(v)), "null or a whole number"),
}
# every dropout / drop-path rate of a model config (model.dropout, model.drop_path, model.attn_dropout, ...)
RATE_WORDS = ("dropout", "drop_path", "drop_rate")


def check_values(cfg: DictConfig) -> None:
    """Raises a UserError for the first value outside its allowed range (see RULES), or that its model does not
    take (check_model_settings)."""
    for key, (test, allowed) in RULES.items():
        _check(cfg, key, test, allowed)
    for key in cfg.get("model") or {}:
        if any(word in str(key) for word in RATE_WORDS):
            _check(cfg, f"model.{key}", *RATE)
    check_channels(cfg)
    check_model_settings(cfg)


def check_channels(cfg: DictConfig) -> None:
    """data.channels against what the data set can read, its mean/std (one value per channel) and the model
    (a config whose model has no in_chans takes RGB images only)."""
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    channels = data.get("channels", 3)
    if "_target_" in data:
        from hydra.utils import get_class

        counts = get_class(data._target_).channel_counts
        if counts is not None and channels not in counts:
            readable = " or ".join(map(str, counts))
            raise UserError(
                f"data.channels={channels}: this data set's images are read with {readable} channel(s) "
                f"(1: grey, 3: RGB); use data.channels={counts[-1]}"
            )
    if channels != 3 and model and "in_chans" not in model:
        name = model.get("model_name") or model.get("name") or model.get("_target_")
        raise UserError(
            f"data.channels={channels}: model {name} takes RGB images only; use data.channels=3, or a timm model "
            "(model=timm model.name=...) or model=vit, which take any number"
        )
    for key in ("mean", "std"):
        if key in data and len(data[key]) != channels:
            raise UserError(
                f"data.{key}={list(data[key])} has {len(data[key])} value(s) for data.channels={channels}: "
                f"give one per channel (or leave data.{key} to the data set or model, which follow data.channels)"
            )


def check_model_settings(cfg: DictConfig) -> None:
    """The model's settings in config keys, before the model meets them: the models' own ValueErrors name their
    arguments (img_size, where the config says data.image_size, which model.img_size interpolates)."""
    model = cfg.get("model") or {}
    target = model.get("_target_")
    if target == "src.models.vit.VisionTransformer":
        _check_scratch_vit(model)
    elif target == "src.models.keras_cnn.KerasCNN":
        _check_keras_cnn(model)
    elif target in (
        "src.models.timm_models.vision_transformer",
        "src.models.timm_models.timm_model",
    ) and model.get("head", "linear") not in (
        "linear",
        "keras_mlp",
    ):
        raise UserError(f"model.head={model.head!r} is not a head; use 'linear' or 'keras_mlp'")


def _check_scratch_vit(model: DictConfig) -> None:
    from src.models.vit import VisionTransformer

    defaults = {name: p.default for name, p in inspect.signature(VisionTransformer).parameters.items()}
    setting = lambda name: model.get(name, defaults[name])  # noqa: E731
    if setting("pool") not in ("cls", "mean", "seq"):
        raise UserError(f"model.pool={setting('pool')!r} is not a pooling: use model.pool=cls, mean or seq")
    if setting("tokenizer") not in ("patch", "conv"):
        raise UserError(
            f"model.tokenizer={setting('tokenizer')!r} is unknown: use model.tokenizer=patch or conv"
        )
    if setting("tokenizer") == "conv" and (setting("conv_kernel") < 1 or setting("conv_layers") < 1):
        raise UserError(
            f"model.conv_kernel={setting('conv_kernel')} / model.conv_layers={setting('conv_layers')}: both "
            "must be at least 1"
        )
    if setting("tokenizer") == "patch" and setting("img_size") % setting("patch_size"):
        raise UserError(  # model.img_size is ${data.image_size}
            f"data.image_size={setting('img_size')} is not a multiple of model.patch_size="
            f"{setting('patch_size')}: change one of them"
        )
    if setting("embed_dim") % setting("num_heads"):
        raise UserError(
            f"model.embed_dim={setting('embed_dim')} is not divisible by model.num_heads="
            f"{setting('num_heads')}: change one of them"
        )
    _check_fewer_tokens(model, setting)


def _check_fewer_tokens(model: DictConfig, setting: Callable) -> None:
    """TokenLearner and downsampling against the network: the model's own check (block_widths), on the token map
    the tokenizer makes, its words put in config keys."""
    from src.models.token_learner import block_widths
    from src.models.vit import ConvTokenizer

    if setting("tokenizer") == "patch":
        side = setting("img_size") // setting("patch_size")
    else:  # the convolutions' arithmetic decides: a tiny tokenizer tells
        tokenizer = ConvTokenizer(setting("img_size"), setting("in_chans"), 8, setting("conv_kernel"),
                                  setting("conv_layers"), setting("conv_pool"))  # fmt: skip
        side = math.isqrt(tokenizer.num_patches)
    try:
        block_widths(setting("depth"), side, setting("embed_dim"), setting("num_heads"),
                     setting("token_learner"), setting("downsample"))  # fmt: skip
    except ValueError as err:  # its arguments are the model group's keys
        words = re.sub(
            r"\b(token_learner\.\w+|downsample|depth|num_heads)(?==| entry)", r"model.\1", str(err)
        )
        raise UserError(words) from None


def _check_keras_cnn(model: DictConfig) -> None:
    import timm

    name, size = model.model_name, model.img_size  # model.img_size is ${data.image_size}
    if size < 32:  # five halvings (VGG's pools, DenseNet's stem and transitions) need 32 px
        raise UserError(f"data.image_size={size}: {name} needs at least 32 px (data.image_size=32)")
    # a name timm does not know is left to timm's own error
    if name in timm.list_models() and name not in timm.list_models(module=["vgg", "densenet"]):
        raise UserError(f"model.model_name={name!r}: KerasCNN knows timm's VGG and DenseNet models")
    if model.get("head", "keras_mlp") not in ("keras_mlp", "linear"):
        raise UserError(f"model.head={model.head!r} is not a head; use 'keras_mlp' or 'linear'")


def _check(cfg: DictConfig, key: str, test: Callable, allowed: str) -> None:
    if OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False) == "<absent>":
        return
    value = OmegaConf.select(cfg, key)
    if not test(value):
        raise UserError(f"{key}={value!r} is not allowed: it must be {allowed}")


def needing_no_logger(callbacks: list, loggers: list) -> list:
    """The callbacks minus those that need a logger, when there is none (logger=none), with a note for each."""
    if loggers:
        return callbacks
    kept = []
    for callback in callbacks:
        if isinstance(callback, LearningRateMonitor):
            log.info("logger=none: %s has nothing to write to and is left out", type(callback).__name__)
        else:
            kept.append(callback)
    return kept


def optimized_value(metrics: dict[str, float], name: str | None) -> float | None:
    """The value a sweeper optimises: the best epoch's `name` (by the checkpoint callback), else the last one.
    In a sweep a missing metric is an error that names it and the metrics there are."""
    value = metrics.get(f"{name}_best", metrics.get(name)) if name else None
    sweeping = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if value is None and name and sweeping:
        raise UserError(
            f"optimized_metric={name} was not logged by this run; logged: {', '.join(sorted(metrics)) or 'none'}. "
            f"Set optimized_metric to one of them"
        )
    return value


def optuna_sweep() -> bool:
    """Whether this job is a trial of the Optuna sweeper (which records a raised exception as a failed trial)."""
    if not HydraConfig.initialized():
        return False
    sweeper = HydraConfig.get().get("sweeper") or {}
    return "optuna" in str(sweeper.get("_target_", "")).lower()
