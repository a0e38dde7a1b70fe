"""Building the learning-rate scheduler a config names (conf/scheduler/), and the schedules torch has no single
class for."""

import inspect
import math
from collections.abc import Callable

from hydra.utils import instantiate
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def build_lr_scheduler(
    schedule_cfg: dict, optimizer: Optimizer, base_lr: float, run_steps: Callable[[], int]
) -> LRScheduler:
    """The scheduler `schedule_cfg` names, driving `optimizer`. Schedules defined over the whole run (OneCycleLR,
    warmup_cosine) take its length, `run_steps()`, as `total_steps`. OneCycleLR's one peak `max_lr` becomes one
    per parameter group, at the group's share of `base_lr`, so the groups keep their ratios (the groups of
    freeze.unfreeze_at_epoch peak at a tenth)."""
    schedule = instantiate(schedule_cfg)
    arguments = inspect.signature(schedule).parameters  # what the schedule's class or function takes
    run_arguments = {}
    if "total_steps" in arguments:
        run_arguments["total_steps"] = run_steps()
    if "max_lr" in arguments:
        peak = schedule_cfg.get("max_lr", base_lr)
        run_arguments["max_lr"] = [peak * group["lr"] / base_lr for group in optimizer.param_groups]
    return schedule(optimizer, **run_arguments)


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float, min_lr_ratio: float
) -> LambdaLR:
    """Linear warm-up from ~0 over `warmup_fraction` of the run, then cosine decay to `min_lr_ratio` x lr. A
    factor on each group's own lr, so groups keep their ratios (the unfreeze groups stay at a tenth)."""
    warmup_steps = max(1, int(warmup_fraction * total_steps))
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 1e-3 + (1 - 1e-3) * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
