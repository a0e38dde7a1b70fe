"""Freezing a backbone up to a named layer (Keras style): name → module resolution (Keras aliases included),
frozen BatchNorm kept in eval mode, and unfreezing at an epoch through Lightning's BaseFinetuning."""

import difflib

from lightning.pytorch.callbacks import BaseFinetuning
from timm.optim import param_groups_weight_decay
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from src.errors import UserError


def block_names(model: nn.Module) -> list[str]:
    """The model's repeated blocks, in order: ViT `blocks.{i}`, or the list a backbone states (keras_cnn.py)."""
    if hasattr(model, "block_names"):
        return list(model.block_names)
    return [f"blocks.{i}" for i in range(len(getattr(model, "blocks", ())))]


def head_names(model: nn.Module) -> list[str]:
    """The classifier modules: timm's pretrained config names them ('head', 'head_dist'); ours are `head`."""
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
    before `layer`), 'first_n_blocks' (freeze everything before block `num_blocks`: the stem and the first
    `num_blocks` blocks)."""
    if mode == "none":
        _freeze_before(model, "")  # the root module comes first: nothing is before it
    elif mode == "head_only":
        _freeze_before(model, head_names(model)[0])
    elif mode == "until":
        _freeze_before(model, resolve(model, layer))
    elif mode == "first_n_blocks":
        blocks = block_names(model)
        if not 0 <= num_blocks <= len(blocks):
            raise UserError(
                f"freeze.num_blocks={num_blocks}: {type(model).__name__} has {len(blocks)} blocks"
            )
        # before block n; with all blocks, everything but the classifier (= head_only)
        _freeze_before(model, blocks[num_blocks] if num_blocks < len(blocks) else head_names(model)[0])
    else:
        raise UserError(f"freeze.mode={mode!r}; use none, head_only, until or first_n_blocks")


def frozen_batchnorm_to_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen normalise with their running statistics and stop
    updating them, as Keras does for non-trainable BatchNormalization layers."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


class UnfreezeAtEpoch(BaseFinetuning):
    """Makes the whole backbone trainable at `epoch`; the newly trainable parameters join the optimizer as
    new groups (with and without weight decay) at a tenth of the current learning rate (BaseFinetuning's rule;
    the groups are restored when a run resumes from a checkpoint). From then on the scheduler drives them
    like the other groups."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def freeze_before_training(self, pl_module) -> None:
        pass  # the module froze its backbone when it was built

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        # `>=` and the filter: a run resumed after `epoch` has its group back (BaseFinetuning restores it)
        frozen = [p for p in pl_module.backbone.parameters() if not p.requires_grad]
        if epoch < self.epoch or not frozen:
            return
        for param in frozen:
            param.requires_grad = True
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        # the optimizer's defaults (betas, ...) plus the scheduler's per-group keys (initial_lr, ...), and timm's
        # weight-decay rule (none on norms, biases, embeddings) as configure_optimizers applies it
        first = optimizer.param_groups[0]
        scheduler_keys = {k: v for k, v in first.items() if k not in optimizer.defaults and k != "params"}
        weight_decay = pl_module.hparams.optimizer.get("weight_decay", 0.0)
        no_decay = getattr(pl_module.backbone, "no_weight_decay", set)()
        for group in param_groups_weight_decay(
            pl_module.backbone, weight_decay, no_weight_decay_list=no_decay
        ):
            new = [p for p in group["params"] if id(p) not in in_optimizer]
            if new:
                optimizer.add_param_group({**scheduler_keys, **group, "params": new, "lr": first["lr"] / 10})
        pl_module.train()  # BatchNorm layers that were frozen leave eval mode
