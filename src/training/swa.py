"""Stochastic weight averaging (callbacks=[default,swa]): Lightning's `StochasticWeightAveraging`, with its
settings checked as one `error:` line, the layers' learning-rate ratios kept, and the average saved and tested.

Lightning adds the weights to an equal-weight average at the start of each epoch from `swa_epoch_start` on (so the
weights after the epochs swa_epoch_start-1 ... max_epochs-1, 1-based), replaces the run's scheduler by torch's
`SWALR` in those epochs, and puts the average into the model when training ends; a model with BatchNorm gets one
more epoch without optimizer steps that recomputes its statistics for the average. Checkpoints written during the
fit hold the raw weights (and the average in the callback's state, so a resumed fit continues it); vitlab saves the
average as `checkpoints/swa.ckpt`, which the test after training, src.eval, src.predict and src.export take.
"""

from pathlib import Path

from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

from src.errors import UserError


class SWA(StochasticWeightAveraging):
    """`swa_lrs`: the lr of the SWA epochs for the classifier's parameter group; the other groups (layer decay,
    frozen groups) keep their ratio to it. `swa_epoch_start`: an epoch (1-based int) or a share of max_epochs."""

    def __init__(
        self,
        swa_lrs: float,
        swa_epoch_start: int | float = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: str = "cos",
        filename: str = "swa",
    ):
        # here: Lightning's own checks raise exceptions the command would show as a traceback
        if isinstance(swa_lrs, bool) or not isinstance(swa_lrs, int | float) or swa_lrs <= 0:
            raise UserError(f"callbacks.swa.swa_lrs={swa_lrs} must be a positive learning rate, e.g. 1e-3")
        start_ok = (
            swa_epoch_start >= 1 if isinstance(swa_epoch_start, int) else 0 < swa_epoch_start <= 1
        ) and not isinstance(swa_epoch_start, bool)
        if not start_ok:
            raise UserError(
                f"callbacks.swa.swa_epoch_start={swa_epoch_start} must be an epoch >= 1 (1-based) or a share of "
                "trainer.max_epochs in (0, 1], e.g. 0.8"
            )
        if (
            annealing_strategy not in ("cos", "linear")
            or not isinstance(annealing_epochs, int)
            or annealing_epochs < 0
        ):
            raise UserError(
                f"callbacks.swa.annealing_strategy={annealing_strategy} annealing_epochs={annealing_epochs}: "
                "use cos or linear over an epoch count >= 0"
            )
        super().__init__(
            swa_lrs=float(swa_lrs),
            swa_epoch_start=swa_epoch_start,
            annealing_epochs=annealing_epochs,
            annealing_strategy=annealing_strategy,
        )
        self.filename = filename
        self.checkpoint_path: str | None = None  # swa.ckpt once written

    def setup(self, trainer, pl_module, stage: str) -> None:
        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise UserError(
                "callbacks=[default,swa] needs the whole model in each process: not with trainer=fsdp"
            )
        if any(isinstance(callback, EMAWeightAveraging) for callback in trainer.callbacks):
            raise UserError("callbacks ema and swa both replace the weights by an average: use one of them")
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise UserError(
                f"callbacks=[default,swa] averages over epochs: set trainer.max_epochs (it is {trainer.max_epochs})"
            )
        super().on_fit_start(trainer, pl_module)
        if self.swa_start > self.swa_end:
            raise UserError(
                f"callbacks.swa.swa_epoch_start={self._swa_epoch_start} is after the last epoch "
                f"(trainer.max_epochs={trainer.max_epochs}): nothing would be averaged"
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._initialized and isinstance(self._swa_lrs, float):
            # SWALR gives every group the same lr: scale it per group as the run's lr ratios are
            groups = trainer.optimizers[0].param_groups
            initial = [group.get("initial_lr", group["lr"]) for group in groups]
            top = max(initial)
            self._swa_lrs = [self._swa_lrs * lr / top if top > 0 else self._swa_lrs for lr in initial]
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self._initialized and self._in_final_state(trainer):
            folder = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else None
            folder = folder or Path(trainer.default_root_dir) / "checkpoints"
            self.checkpoint_path = str(folder / f"{self.filename}.ckpt")
            trainer.save_checkpoint(self.checkpoint_path)

    def _in_final_state(self, trainer) -> bool:
        """Whether the model holds the final average (BatchNorm statistics included) after Lightning's hook."""
        return trainer.current_epoch - 1 in (self.swa_end, self.swa_end + 1)


def averaged_checkpoint(trainer) -> str | None:
    """The checkpoint of the SWA average this fit wrote, if any: the one to test."""
    return next(
        (c.checkpoint_path for c in trainer.callbacks if isinstance(c, SWA) and c.checkpoint_path), None
    )
