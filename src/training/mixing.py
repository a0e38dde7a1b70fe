"""Mixup / CutMix on a training batch, on its device (conf/mixup/): timm's `Mixup`.

Label smoothing is folded into the soft targets (timm's `mixup_target`), so the training loss is the soft-target
cross-entropy (torch's cross-entropy with probability targets: timm's `SoftTargetCrossEntropy`); validation and
test keep hard labels and the module's plain cross-entropy. `train/acc` under Mixup is the accuracy against each
mixed image's dominant label (the larger share of its soft target).
"""

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from src.errors import UserError

MODES = ("batch", "pair", "elem")


class BatchMixup(Mixup):
    """timm's Mixup that takes any batch size: it mixes image i with image n-1-i, so it needs an even batch; of an
    odd batch (the last one of an epoch, or a rank's share under DDP) the last image keeps its own label (with
    label smoothing) and is not mixed. `off_epoch`: mixing stops from this epoch on (CCT's recipe: 175 of 300)."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        label_smoothing: float = 0.1,
        off_epoch: int | None = None,
    ):
        for name, value in (
            ("prob", prob),
            ("switch_prob", switch_prob),
            ("label_smoothing", label_smoothing),
        ):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"mixup.{name}={value} is a probability: give a value in [0, 1]")
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha == cutmix_alpha == 0:
            raise UserError(
                f"mixup.mixup_alpha={mixup_alpha}, mixup.cutmix_alpha={cutmix_alpha}: Beta parameters must be "
                ">= 0 and one of them > 0 (turn mixing off with mixup=none)"
            )
        if mode not in MODES:
            raise UserError(f"mixup.mode={mode} is unknown: use one of {', '.join(MODES)}")
        super().__init__(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=prob,
            switch_prob=switch_prob,
            mode=mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.off_epoch = off_epoch

    def set_epoch(self, epoch: int) -> None:
        # timm's own switch: disabled, every target is the smoothed one-hot label (timm's train.py does the same)
        self.mixup_enabled = self.off_epoch is None or epoch < self.off_epoch

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets of shape batch x classes); `images` are mixed in place."""
        even = len(images) - len(images) % 2
        if even == len(images):
            return super().__call__(images, labels)
        rest = mixup_target(labels[even:], self.num_classes, 1.0, self.label_smoothing)
        if even == 0:
            return images, rest
        mixed, targets = super().__call__(images[:even], labels[:even])
        return torch.cat([mixed, images[even:]]), torch.cat([targets, rest])
