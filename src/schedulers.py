"""Learning-rate schedules that torch has no single class for."""

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


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
