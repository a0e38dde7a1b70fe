"""Tuning before the fit (conf/tune/): Lightning's learning-rate range test on the composed run."""

import json
import logging
import math
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, open_dict

from src.errors import UserError
from src.upstream_fixes.lightning import LearningRateFinderKeepingGroupRatios

log = logging.getLogger(__name__)


def tuned(cfg: DictConfig, model, datamodule, loggers: list, ckpt_path) -> L.LightningModule:
    """tune=lr_find before the fit; with tune.apply=true the model again, built with the suggested optimizer.lr."""
    if cfg.tune.mode != "lr_find":
        raise UserError(f"tune.mode={cfg.tune.mode}: use tune=lr_find or tune=none")
    if ckpt_path or not cfg.train:
        raise UserError(
            "tune=lr_find tests learning rates for a fresh fit: drop ckpt_path / train=false, or tune"
        )
    lr = find_lr(cfg, model, datamodule, loggers)
    if not cfg.tune.apply:
        return model
    if lr is None:
        raise UserError("tune.apply=true, but the lr finder gave no suggestion: raise tune.num_training")
    with open_dict(cfg):
        cfg.optimizer.lr = float(lr)
    if cfg.get("seed") is not None:  # the same initial weights as a run given optimizer.lr=<lr>
        L.seed_everything(cfg.seed, workers=True)
    return instantiate(cfg.module)


def find_lr(
    cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule, loggers: list
) -> float | None:
    """Runs tune=lr_find on `model` (weights restored afterwards) with a Trainer of conf/trainer's settings and no
    callbacks, checkpoints or loggers of its own, for tune.num_training steps; writes lr_find.png and lr_find.json into the run dir, adds the
    plot to the run's TensorBoard logger, and returns the suggested `optimizer.lr` (None when the loss gave none)."""
    tune = cfg.tune
    if tune.schedule not in ("exponential", "linear"):
        raise UserError(f"tune.schedule={tune.schedule}: use exponential or linear")
    if not 0 < tune.min_lr < tune.max_lr:
        raise UserError(f"tune.min_lr={tune.min_lr}, tune.max_lr={tune.max_lr}: need 0 < min_lr < max_lr")
    finder = LearningRateFinderKeepingGroupRatios(
        min_lr=tune.min_lr,
        max_lr=tune.max_lr,
        num_training_steps=tune.num_training,
        mode=tune.schedule,
        early_stop_threshold=tune.early_stop_threshold,
        update_attr=False,
    )
    trainer = instantiate(
        cfg.trainer,
        # the sweep is its num_training steps, over as many epochs as they take
        max_epochs=-1,
        max_steps=tune.num_training,
        callbacks=[finder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, datamodule=datamodule)
    result = finder.optimal_lr
    suggestion = result.suggestion() if result else None
    run_dir = Path(cfg.paths.output_dir)
    figure = result.plot(suggest=suggestion is not None)
    figure.savefig(run_dir / "lr_find.png", dpi=120)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure("tune/lr_find", figure)
    losses = [None if math.isnan(loss) else loss for loss in result.results["loss"]]
    (run_dir / "lr_find.json").write_text(
        json.dumps({"suggested_lr": suggestion, "lr": result.results["lr"], "loss": losses}, indent=1)
    )
    if suggestion is None:
        log.warning(
            "lr finder: no suggestion (too few steps before the loss diverged); see %s",
            run_dir / "lr_find.png",
        )
    else:
        log.info("lr finder: suggested optimizer.lr=%.3g (plot: %s)", suggestion, run_dir / "lr_find.png")
    return suggestion
