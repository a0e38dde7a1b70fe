"""The optimizer's side of training recipes: the lr scaled with the global batch, layer-wise learning-rate decay over
timm's layer order, and any optimizer timm registers, by name (conf/optimizer/timm.yaml)."""

import difflib
import inspect
import math
from collections.abc import Collection

from torch import nn

from src.errors import UserError

# optimizer.lr_scale: how the lr follows the global batch (timm's train.py, --lr-base-scale)
LR_SCALES = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}


def effective_batch_size(trainer, batch_size: int) -> int:
    """Images per optimizer step (the global batch): data.batch_size per device x devices x nodes x accumulated
    batches."""
    return batch_size * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches


def scaled_lr(lr: float, lr_scale: str, lr_base_size: int, global_batch: int) -> float:
    """timm's rule (train.py: --lr-base, --lr-base-size, --lr-base-scale): with lr_scale=linear, `lr` is the lr of a
    global batch of `lr_base_size` images, and a global batch of B trains at lr x B / lr_base_size (Goyal et al.
    2017); sqrt: lr x sqrt(B / lr_base_size), the rule timm picks for the adaptive optimizers; none: `lr` as it is."""
    return lr * LR_SCALES[lr_scale](global_batch / lr_base_size)


def layer_decay_param_groups(
    model: nn.Module, weight_decay: float, layer_decay: float, no_weight_decay_list: Collection[str] = ()
) -> list[dict]:
    """timm.optim.param_groups_layer_decay (BEiT's rule): the layer of depth d out of L (stem 0, blocks in forward
    order, the head L) learns at decay^(L - d) x lr, with weight decay as timm's rule has it. Each group carries
    that factor as `lr_scale`, which only timm's schedulers apply: the caller turns it into the group's `lr`.
    timm's models state their layer order (`group_matcher`); without it timm would lump all parameters into one
    layer with a warning, so that is an error here."""
    if not 0 < layer_decay <= 1:
        raise UserError(f"optimizer.layer_decay={layer_decay}: use a factor in (0, 1], e.g. 0.65, or null")
    if not hasattr(model, "group_matcher"):
        raise UserError(
            f"optimizer.layer_decay={layer_decay} needs the layer order of timm's models (group_matcher), which "
            f"{type(model).__name__} does not state: fine-tune a timm model (model=vit_timm, model=deit, ...) or "
            "set optimizer.layer_decay=null"
        )
    from timm.optim import param_groups_layer_decay

    return param_groups_layer_decay(
        model, weight_decay, no_weight_decay_list=no_weight_decay_list, layer_decay=layer_decay
    )


def timm_optimizer(
    params: list[dict],
    opt: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: list[float] | None = None,
    eps: float | None = None,
    fused: bool | None = None,
):
    """timm.optim.create_optimizer_v2 named `opt` (`lamb`, `lion`, `adopt`, `lookahead_adamw`, ...) over `params`,
    the groups of src.training.freezing.optimizer_param_groups: their own weight decay (none on norms, biases and
    embeddings) and lr (layer decay, frozen groups) stand; `weight_decay` and `lr` are the defaults of groups that
    set none. `fused`: torch's fused kernel, for the optimizers whose class has one (timm's adam, adamw, sgd,
    adagrad are torch's)."""
    from timm.optim import create_optimizer_v2, get_optimizer_class, list_optimizers

    known = list_optimizers()
    # timm reads a lookahead_ prefix as a wrapper of the named optimizer
    *wrapper, name = opt.lower().split("_")
    if name not in known or wrapper not in ([], ["lookahead"]):
        near = difflib.get_close_matches(opt.lower(), known, n=6, cutoff=0.5)
        hint = f"; names near it: {', '.join(near)}" if near else ""
        raise UserError(
            f"optimizer.opt={opt!r} is no optimizer timm registers{hint} (lookahead_<name> wraps one; "
            "python -c 'import timm.optim; print(timm.optim.list_optimizers())' lists them)"
        )
    try:  # apex's and bitsandbytes' optimizers need their package and CUDA (timm asserts it)
        opt_class = get_optimizer_class(name, bind_defaults=False)
    except (ImportError, RuntimeError, AssertionError) as error:
        raise UserError(f"optimizer.opt={opt!r}: {error}") from None
    if getattr(opt_class, "__name__", "") == "Adahessian":
        raise UserError(
            "optimizer.opt='adahessian' needs the loss's second derivatives (backward with create_graph), "
            "which the training step does not build: choose another optimizer"
        )
    extra = {"betas": tuple(betas)} if betas is not None else {}
    if eps is not None:
        extra["eps"] = eps
    if fused and "fused" in inspect.signature(opt_class).parameters:
        extra["fused"] = True
    return create_optimizer_v2(params, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **extra)
