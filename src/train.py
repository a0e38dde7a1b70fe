"""Train (then test on the best checkpoint): python -m src.train [group=option ...] [key=value ...]"""

import logging

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.errors import exit_on_user_error
from src.utils import instantiate_group, log_hyperparameters, metrics_to_floats

log = logging.getLogger(__name__)


@exit_on_user_error
def train(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.module)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")),
    )
    log_hyperparameters(trainer, cfg, model)

    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = metrics_to_floats(trainer.callback_metrics)

    if cfg.test:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning("No best checkpoint was saved; testing the current weights.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        log.info("Best checkpoint: %s", best)
        metrics |= metrics_to_floats(trainer.callback_metrics)
        log_hyperparameters(trainer, cfg, model, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # the value a sweeper (Optuna) optimises
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
