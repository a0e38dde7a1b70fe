"""Freezing a backbone up to a named layer (Keras style): name → module resolution (Keras aliases included),
frozen BatchNorm kept in eval mode, and unfreezing at an epoch (the callback and the optimizer's groups for it)."""

import difflib
from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from src.errors import UserError
from src.upstream_fixes.timm import param_groups_weight_decay


def block_names(model: nn.Module) -> list[str]:
    """The model's repeated blocks, in order: ViT `blocks.{i}`, or the list a backbone states (keras_cnn.py)."""
    if hasattr(model, "block_names"):
        return list(model.block_names)
    return [f"blocks.{i}" for i in range(len(getattr(model, "blocks", ())))]


def timm_blocks(model: nn.Module) -> tuple[list[str], list[list[str]]]:
    """A timm model's stem and blocks as parameter names, by timm's coarse grouping (`group_matcher`: ResNet's
    layer1..4, ConvNeXt's and Swin's stages, ViT's blocks); the groups that hold the classifier are not blocks."""
    from timm.models import (
        group_parameters,
    )  # imported when used: timm loads all its models (upstream_fixes/timm.py)

    groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    classifier = {
        f"{head}.{name}"
        for head in head_names(model)
        for name, _ in model.get_submodule(head).named_parameters()
    }
    return groups[0], [group for group in groups[1:] if classifier.isdisjoint(group)]


def head_names(model: nn.Module) -> list[str]:
    """The classifier modules: the model's `classifier_names` where it states them (hf_models.py), else timm's
    pretrained config names them ('head', 'head_dist'); ours are `head`."""
    if hasattr(model, "classifier_names"):
        return list(model.classifier_names)
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
    return [classifiers] if isinstance(classifiers, str) else list(classifiers)


def resolve(model: nn.Module, layer: str) -> str:
    """The module name for `layer`: a module name (`blocks.11`, `features.28`) or a Keras alias (`block5_conv1`)."""
    aliases = getattr(model, "keras_names", {})
    modules = [name for name, _ in model.named_modules() if name]
    name = aliases.get(layer, layer)
    if name not in modules:
        near = difflib.get_close_matches(layer, [*aliases, *modules], n=8, cutoff=0.5)
        hint = f"; names near it: {', '.join(near)}" if near else ""
        raise UserError(f"freeze.layer={layer!r} is not a layer of {type(model).__name__}{hint}")
    return name


def _freeze_before(model: nn.Module, name: str) -> None:
    """Freezes every parameter that comes before module `name` and trains the rest.
    Module order is definition order, which for these models is the order of the forward pass."""
    frozen = True
    for module_name, module in model.named_modules():
        if module_name == name:
            frozen = False
        for param in module.parameters(recurse=False):
            param.requires_grad = not frozen


def apply_freezing(
    model: nn.Module, mode: str, layer: str | None = None, num_blocks: int | None = None
) -> None:
    """`mode`: 'none' (train all), 'head_only' (freeze all but the classifier), 'until' (freeze every parameter
    before `layer`), 'first_n_blocks' (freeze the stem and the first `num_blocks` blocks; 0 freezes nothing).
    A timm model's blocks are timm's coarse groups (timm_blocks), so stages for CNNs and Swin, blocks for ViTs."""
    if mode == "none":
        _freeze_before(model, "")  # the root module comes first: nothing is before it
    elif mode == "head_only":
        head = head_names(model)[0]
        if head not in dict(model.named_modules()):  # else every parameter would freeze, the head's too
            raise UserError(f"freeze.mode=head_only: {type(model).__name__} has no classifier named {head!r}")
        _freeze_before(model, head)
    elif mode == "until":
        _freeze_before(model, resolve(model, layer))
    elif mode == "first_n_blocks" and hasattr(model, "group_matcher") and not hasattr(model, "block_names"):
        stem, blocks = timm_blocks(model)
        _check_num_blocks(model, num_blocks, len(blocks))
        frozen = set(stem).union(*blocks[:num_blocks]) if num_blocks else set()
        for name, param in model.named_parameters():
            param.requires_grad = name not in frozen
    elif mode == "first_n_blocks":
        blocks = block_names(model)
        _check_num_blocks(model, num_blocks, len(blocks))
        # before block n; 0: nothing (a full fine-tune); all blocks: everything but the classifier (= head_only)
        first_trained = blocks[num_blocks] if num_blocks < len(blocks) else head_names(model)[0]
        _freeze_before(model, first_trained if num_blocks else "")
    else:
        raise UserError(f"freeze.mode={mode!r}; use none, head_only, until or first_n_blocks")


def _check_num_blocks(model: nn.Module, num_blocks: int, count: int) -> None:
    if not 0 <= num_blocks <= count:
        raise UserError(f"freeze.num_blocks={num_blocks}: {type(model).__name__} has {count} blocks")


def frozen_batchnorm_to_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen normalise with their running statistics and stop
    updating them, as Keras does for non-trainable BatchNormalization layers."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def optimizer_param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    with_frozen_at_a_tenth: bool,
    layer_decay: float | None = None,
) -> list[dict]:
    """The optimizer's parameter groups for `model`'s trainable parameters: with and without weight decay (none
    on biases, norms and embeddings: timm's rule, honouring `model.no_weight_decay()`).

    `layer_decay` (optimizer.layer_decay): one such pair per layer, the layer of depth d out of L at
    layer_decay^(L - d) x `lr` (src/training/optimizers.py). That factor goes into each group's own `lr`, which
    vitlab's schedules scale, so the layers keep their ratios through the run.

    `with_frozen_at_a_tenth` (freeze.unfreeze_at_epoch): the frozen parameters join from the start too, as the
    same groups at a tenth of their `lr`. The scheduler then drives them like the others, and unfreezing them later
    needs no new groups (which torch's schedulers and checkpoints could not take); while frozen they get no
    gradients, and the optimizer skips them."""
    no_decay_names = getattr(model, "no_weight_decay", set)()

    def grouped() -> list[dict]:
        if layer_decay is None:
            return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=no_decay_names)
        from src.training.optimizers import layer_decay_param_groups

        groups = layer_decay_param_groups(model, weight_decay, layer_decay, no_decay_names)
        return [{k: v for k, v in g.items() if k != "lr_scale"} | {"lr": lr * g["lr_scale"]} for g in groups]

    if not with_frozen_at_a_tenth:
        return grouped()
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    with _all_trainable(model):  # timm's helpers group trainable parameters only
        groups = grouped()
    trainable = [{**g, "params": [p for p in g["params"] if id(p) not in frozen]} for g in groups]
    frozen_at_a_tenth = [
        {**g, "params": [p for p in g["params"] if id(p) in frozen], "lr": g.get("lr", lr) / 10}
        for g in groups
    ]
    return [group for group in trainable + frozen_at_a_tenth if group["params"]]


@contextmanager
def _all_trainable(model: nn.Module):
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


class UnfreezeAtEpoch(Callback):
    """Makes the whole backbone trainable from `epoch` (0-based) on. Its frozen parameters are in the optimizer
    from the start (optimizer_param_groups, with_frozen_at_a_tenth), so unfreezing only switches their gradients
    on, and a run resumed at any point gets the same optimizer and schedule back."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            raise UserError(
                f"freeze.unfreeze_at_epoch={self.epoch} does not work with {trainer.world_size} processes: DDP "
                "synchronises only the parameters that were trainable when training started, so the unfrozen "
                "backbone would train apart on each process. Fine-tune on one device, or freeze a fixed part "
                "(freeze=until / first_n_blocks without unfreeze_at_epoch)"
            )

    def on_train_start(self, trainer, pl_module) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a fit resumed mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        backbone = pl_module.backbone
        if trainer.current_epoch >= self.epoch and not all(p.requires_grad for p in backbone.parameters()):
            backbone.requires_grad_(True)
            pl_module.train()  # BatchNorm layers that were frozen leave eval mode
