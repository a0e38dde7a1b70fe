"""Learning-rate schedules that torch has no single class for, composed from torch's own schedulers."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float, min_lr_ratio: float
) -> SequentialLR:
    """Linear warm-up from ~0 over `warmup_fraction` of the run, then cosine decay to `min_lr_ratio` x lr."""
    warmup_steps = max(1, int(warmup_fraction * total_steps))
    base_lr = optimizer.param_groups[0]["lr"]
    warmup = LinearLR(optimizer, start_factor=1e-3, end_factor=1.0, total_iters=warmup_steps)
    decay = CosineAnnealingLR(
        optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=min_lr_ratio * base_lr
    )
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_steps])
