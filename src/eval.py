"""Test a checkpoint: python -m src.eval ckpt_path=<run>/checkpoints/<file>.ckpt [data=<option> ...]"""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.errors import UserError
from src.reporting.hparams_table import log_hyperparameters
from src.reporting.run_metrics import metrics_to_floats
from src.runs.guard import tidied_on_failure
from src.training.module import load_checkpoint
from src.training.trainer import build_trainer

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)


# what the model expects of its inputs, and the seed of the split it was trained on (digits' test split depends on it)
KEPT_FROM_CHECKPOINT = ("image_size", "mean", "std", "interpolation", "seed")
# ... and the eval transform's recipe, for the data sets that take one (data=imagefolder, csv: data.style)
KEPT_WHERE_TAKEN = ("style",)
# data sets whose data.num_classes is counted from the data (conf/data): counted again for another folder or manifest
COUNTED_CLASSES = {
    "src.data.imagefolder.ImageFolderDataModule": "${folder_num_classes:${data_dir}}",
    "src.data.manifest.CSVDataModule": "${csv_num_classes:${csv_path},${label_column}}",
}


def data_config(chosen: DictConfig | None, trained: dict) -> DictConfig:
    """The checkpoint's data config, with any data.<key>=... of the command line (data.data_dir=<another folder>);
    with data=<option>, that data set, fed as the model was trained (the keys above from the checkpoint, unless
    given as data.<key>=... on the command line)."""
    if chosen is None:
        return OmegaConf.create(trained)
    if "_target_" not in chosen:  # data.<key>=... without data=<option> (see checkpoint_data_overrides)
        merged = OmegaConf.merge(trained, OmegaConf.to_container(chosen, resolve=True))
        if merged.get("_target_") in COUNTED_CLASSES and "num_classes" not in chosen:
            merged.num_classes = COUNTED_CLASSES[merged._target_]
        return merged
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    chosen = chosen.copy()
    with open_dict(chosen):
        for key in (*KEPT_FROM_CHECKPOINT, *(key for key in KEPT_WHERE_TAKEN if key in chosen)):
            if key in trained and not any(item.lstrip("+").startswith(f"data.{key}=") for item in given):
                chosen[key] = trained[key]
    return chosen


def checkpoint_data_overrides(args: list[str]) -> list[str]:
    """Without data=<option>, data.<key>=... changes the checkpoint's data config, of which the composed config
    has nothing (Hydra would stop at the unknown key): passed to Hydra as an addition, +data.<key>=..."""
    if any(arg.startswith("data=") for arg in args):
        return args
    return [f"+{arg}" if arg.startswith("data.") else arg for arg in args]


class SameClassesAsTrained(L.Callback):
    """Another folder with as many classes under other names (or with one missing) would be scored against the
    wrong labels: stopped before the first batch."""

    def __init__(self, trained: list[str]):
        self.trained = trained

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = list(getattr(trainer.datamodule, "class_names", None) or [])
        if self.trained and found and found != self.trained:
            raise UserError(
                f"the data's classes ({', '.join(found[:10])}) are not the ones the checkpoint was trained on "
                f"({', '.join(self.trained[:10])}): evaluate on data with the same class names"
            )


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError(
            "ckpt_path is missing: python -m src.eval ckpt_path=<run dir>/checkpoints/<file>.ckpt"
        )
    ckpt_path = Path(cfg.ckpt_path)
    model = load_checkpoint(ckpt_path)
    datamodule: L.LightningDataModule = instantiate(data_config(cfg.get("data"), model.hparams.data))
    if datamodule.hparams.num_classes != model.hparams.num_classes:
        raise UserError(
            f"the checkpoint predicts {model.hparams.num_classes} classes but the data set has "
            f"{datamodule.hparams.num_classes}: evaluate on the data set (data=...) or folder it was trained on"
        )
    # nothing to save; and the report would take its state for the training run's
    trainer = build_trainer(cfg, SameClassesAsTrained(model.class_names), enable_checkpointing=False)
    # with ckpt_path, callbacks get their state back too (the report callback: the training curves)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = metrics_to_floats(trainer.callback_metrics)
    log_hyperparameters(trainer, cfg, model, metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        evaluate(cfg)


if __name__ == "__main__":
    run_command(main, rewrite_argv=checkpoint_data_overrides)
