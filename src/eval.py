"""Test a checkpoint: python -m src.eval ckpt_path=<run>/checkpoints/<file>.ckpt [data=<option> ...]"""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.errors import UserError, exit_on_user_error
from src.module import ClassifierModule
from src.utils import instantiate_group, log_hyperparameters, metrics_to_floats

log = logging.getLogger(__name__)


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict[str, float]:
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise UserError(
            f"checkpoint not found: {ckpt_path}. Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt"
        )
    model = ClassifierModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    data_cfg = cfg.get("data") or model.hparams.data
    datamodule: L.LightningDataModule = instantiate(data_cfg)
    if datamodule.hparams.num_classes != model.hparams.num_classes:
        raise UserError(
            f"the checkpoint predicts {model.hparams.num_classes} classes but the data set has "
            f"{datamodule.hparams.num_classes}: pick the data=... it was trained on"
        )
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")),
        logger=instantiate_group(cfg.get("logger")),
    )
    # with ckpt_path, callbacks get their state back too (the report callback: the training curves)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = metrics_to_floats(trainer.callback_metrics)
    log_hyperparameters(trainer, cfg, model, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
