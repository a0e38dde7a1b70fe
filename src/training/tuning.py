"""Tuning before the fit (conf/tune/): Lightning's learning-rate range test and batch-size finder on the composed
run."""

import json
import logging
import math
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, open_dict

from src.errors import UserError
from src.training.optimizers import effective_batch_size, scaled_lr
from src.upstream_fixes.lightning import LearningRateFinderKeepingGroupRatios

log = logging.getLogger(__name__)


def tuned(cfg: DictConfig, model, datamodule, loggers: list, ckpt_path) -> L.LightningModule:
    """tune=lr_find or tune=batch_size before the fit; with tune.apply=true the model again, built with the
    suggested optimizer.lr or data.batch_size (the DataModule then has that batch size too)."""
    mode = cfg.tune.mode
    if mode not in ("lr_find", "batch_size"):
        raise UserError(f"tune.mode={mode}: use tune=lr_find, tune=batch_size or tune=none")
    if ckpt_path or not cfg.train:
        raise UserError(f"tune={mode} tunes a fresh fit: drop ckpt_path / train=false, or use tune=none")
    if mode == "batch_size":
        batch_size = find_batch_size(cfg, model, datamodule)
        if not cfg.tune.apply:
            datamodule.hparams.batch_size = cfg.data.batch_size  # the finder leaves its last size there
            return model
        with open_dict(cfg):
            cfg.data.batch_size = batch_size
    else:
        lr = find_lr(cfg, model, datamodule, loggers)
        if not cfg.tune.apply:
            return model
        if lr is None:
            raise UserError("tune.apply=true, but the lr finder gave no suggestion: raise tune.num_training")
        with open_dict(cfg):
            cfg.optimizer.lr = float(lr)
            cfg.optimizer.lr_scale = "none"  # the suggestion is the lr of this run's batch already
    if cfg.get("seed") is not None:  # the same initial weights as a run given the override
        L.seed_everything(cfg.seed, workers=True)
    return instantiate(cfg.module)


def find_batch_size(cfg: DictConfig, model: L.LightningModule, datamodule: L.LightningDataModule) -> int:
    """Runs tune=batch_size: Lightning's batch-size finder (`Tuner.scale_batch_size`) on `model` (weights restored
    afterwards) with a Trainer of conf/trainer's settings and no callbacks, checkpoints or loggers of its own. Each
    trial trains tune.steps_per_trial steps at one batch size, from tune.init_val up, doubling (tune.search=power)
    until a step runs out of memory or tune.max_trials trials ran; binsearch then bisects between the last size that
    fitted and the first that did not, less 5 %. Logs the size (and the lr that optimizer.lr_scale gives it) as the
    overrides to use, and returns it."""
    tune = cfg.tune
    if tune.search not in ("power", "binsearch"):
        raise UserError(f"tune.search={tune.search}: use power or binsearch")
    for key in ("init_val", "max_trials", "steps_per_trial"):
        if not (isinstance(tune[key], int) and tune[key] >= 1):
            raise UserError(f"tune.{key}={tune[key]}: use a whole number of at least 1")
    # where Lightning's finder looks for the size (lightning.pytorch.utilities.parsing.lightning_hasattr): the
    # model, which has none here, and the DataModule's attributes or hparams
    if not (hasattr(datamodule, "batch_size") or "batch_size" in getattr(datamodule, "hparams", {})):
        raise UserError(
            f"tune=batch_size changes the DataModule's batch_size, which {type(datamodule).__name__} does not "
            "have (as attribute or hparams): give it one that its train_dataloader reads, or use tune=none"
        )
    trainer = instantiate(
        cfg.trainer,
        callbacks=[],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    if trainer.fast_dev_run:  # Lightning's finder skips the search then
        raise UserError(
            "tune=batch_size does not run with trainer.fast_dev_run (debug=fdr): drop one of them"
        )
    if isinstance(trainer.strategy, ParallelStrategy):
        raise UserError(
            "tune=batch_size runs on one device (Lightning's finder does not run distributed): use the default "
            "trainer; the size it finds is the per-device data.batch_size of trainer=ddp"
        )
    found = Tuner(trainer).scale_batch_size(
        model,
        datamodule=datamodule,
        mode=tune.search,
        init_val=tune.init_val,
        max_trials=tune.max_trials,
        steps_per_trial=tune.steps_per_trial,
    )
    lr_line = ""
    if cfg.optimizer.get("lr_scale", "none") != "none":
        batch = effective_batch_size(trainer, found)
        lr = scaled_lr(cfg.optimizer.lr, cfg.optimizer.lr_scale, cfg.optimizer.lr_base_size, batch)
        lr_line = f"; optimizer.lr_scale={cfg.optimizer.lr_scale} gives it lr {lr:.4g} on one device"
    log.info(
        "batch-size finder: data.batch_size=%d is the largest batch tried that fits (tune.search=%s, at most %d "
        "trials from %d)%s",
        found, tune.search, tune.max_trials, tune.init_val, lr_line,
    )  # fmt: skip
    return found


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
        # the suggestion is the lr of this run's batch: scaled again, it would be another
        unscaled = " optimizer.lr_scale=none" if cfg.optimizer.get("lr_scale", "none") != "none" else ""
        log.info(
            "lr finder: suggested optimizer.lr=%.3g%s (plot: %s)",
            suggestion,
            unscaled,
            run_dir / "lr_find.png",
        )
    return suggestion
