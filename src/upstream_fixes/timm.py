"""timm 1.0.31: its rule for weight decay, without importing timm; a config.json of `save_for_hf` that
transformers loads.

`from timm.<anything> import ...` first runs timm/__init__.py, which imports every model family (timm.models)
and, through timm.data -> timm.utils.summary, wandb when it is installed (an optional import since timm PR #550):
1.3 s of the start-up of every run that needs only this rule (the scratch ViT: docs/history/benchmarks.md). Runs with a
timm model, Mixup, RandAugment or a teacher import timm where they use it."""

import json
from collections.abc import Collection
from fnmatch import fnmatch
from pathlib import Path

from torch import nn


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay_list: Collection[str] = ()
) -> list[dict]:
    """timm.optim.param_groups_weight_decay (timm/optim/_param_groups.py) with its defaults: the trainable
    parameters in a group without weight decay (1-d ones: norms, biases; names ending in `.bias`; names matching
    a pattern of `no_weight_decay_list`: embeddings, tokens) and a group with it; every parameter in the first
    when `weight_decay` is 0. tests/training/test_freezing.py checks the groups against timm's on each model family."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        excluded = (
            param.ndim <= 1 or name.endswith(".bias") or any(fnmatch(name, p) for p in no_weight_decay_list)
        )
        (no_decay if not weight_decay or excluded else decay).append(param)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


def drop_duplicate_num_classes(config_path: Path) -> None:
    """Removes `num_classes` from the `model_args` that timm 1.0.31's `save_for_hf` records in config.json:
    transformers 5.25's TimmWrapperForImageClassification passes `model_args` and `num_classes=config.num_labels`
    to timm.create_model, a TypeError ("got multiple values for keyword argument 'num_classes'") for every folder
    timm writes. timm takes the class count from the config's top-level `num_classes` as well."""
    config = json.loads(config_path.read_text())
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
