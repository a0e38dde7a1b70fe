"""Stops a fit at the first non-finite training loss (or after `patience` consecutive ones), before a checkpoint,
a validation or a best score can come from the diverged weights.

No sync per step: the loss is checked on the device (a few scalar kernels) and read by the host only on the CPU,
on the steps Lightning logs (it reads the loss then anyway), at each epoch's end, before validation and before
any checkpoint is saved. The error names the first step of the non-finite run, wherever it is noticed."""

import math
from collections.abc import Mapping

import lightning as L
import torch

from src.errors import UserError
from src.upstream_fixes.lightning import logger_writes_this_step


class NonFiniteLossError(UserError):
    pass


class NonFiniteLossGuard(L.Callback):
    def __init__(self, patience: int = 1):
        if not (isinstance(patience, int) and patience >= 1):
            raise UserError(
                f"callbacks.nonfinite_loss.patience={patience} must be a whole number of at least 1"
            )
        self.patience = patience
        self._state: dict[str, torch.Tensor] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float()
        if self._state is None:
            zero = torch.zeros((), device=loss.device)
            self._state = {"streak": zero.long(), "step": zero.long() - 1, "loss": zero, "lr": zero}
        s = self._state
        s["streak"] = torch.where(torch.isfinite(loss), 0, s["streak"] + 1)
        tripped = (s["streak"] >= self.patience) & (s["step"] < 0)
        first = trainer.global_step - self.patience + 1  # optimizer steps are counted from 1 here
        s["step"] = torch.where(tripped, first, s["step"])
        s["loss"] = torch.where(tripped, loss, s["loss"])
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        s["lr"] = torch.where(tripped, max(lrs, default=math.nan), s["lr"])
        if loss.device.type == "cpu" or logger_writes_this_step(trainer):
            self._check(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._check(
            trainer
        )  # every save (best, last, mid-epoch, SLURM's hpc_ckpt): raising here writes nothing

    def _check(self, trainer) -> None:
        if self._state is None or int(self._state["step"]) < 0:
            return
        step, loss, lr = int(self._state["step"]), float(self._state["loss"]), float(self._state["lr"])
        streak = f" and the {self.patience - 1} steps after it" if self.patience > 1 else ""
        raise NonFiniteLossError(
            f"the training loss was {loss} at step {step}{streak} (epoch {trainer.current_epoch}, learning rate "
            f"{lr:.3g}); the run stopped without saving the diverged weights. Usual fixes: a lower optimizer.lr, "
            "a warm-up (scheduler=warmup_cosine), gradient clipping (trainer.gradient_clip_val=1.0), "
            "trainer.precision=32-true instead of 16-mixed; callbacks.nonfinite_loss.patience=<n> tolerates n "
            "non-finite steps in a row (mixed precision skips those)"
        )


class DivergedTrial(RuntimeError):
    """A trial of an Optuna search whose loss became non-finite: raised (not exit 2) so that the sweeper records
    the trial as failed and goes on with the next one."""
