"""An exponential moving average of the weights (callbacks=[default,ema]): Lightning's `EMAWeightAveraging`, with
its decay checked and with tests of a saved checkpoint evaluating the average it holds.

Lightning swaps the average in for validation (so val/acc, the best checkpoint's choice and early stopping see
it), saves it as the checkpoint's `state_dict` (the raw weights go to `current_model_state`, so src.eval and
src.predict load the average), puts it into the model when training ends, and restores both on resume.
"""

from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from src.errors import UserError


class EMA(EMAWeightAveraging):
    """`decay` in [0, 1): the average moves by (1 - decay) of the distance to the weights each update. About
    1 / (1 - decay) steps dominate it: 0.999 for runs of tens of thousands of steps, 0.99 for a few thousand."""

    def __init__(self, decay: float = 0.999, **kwargs):
        super().__init__(decay=decay, **kwargs)
        self.decay = decay

    def setup(self, trainer, pl_module, stage: str) -> None:
        # here, not in __init__: Hydra would wrap the error of a constructor in its own
        if not 0.0 <= self.decay < 1.0:
            raise UserError(
                f"callbacks.ema.decay={self.decay} must be in [0, 1) (1 would never move the average): "
                "try 0.999, or 0.99 for runs of a few thousand steps"
            )
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Lightning 2.6.6 restores the raw weights (`current_model_state`) whenever a fit has built the average,
        # so trainer.test(ckpt_path=best) after fit would test the raw weights: only a resumed fit needs them
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
