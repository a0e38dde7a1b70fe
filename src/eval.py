"""Test a checkpoint: python -m src.eval ckpt_path=<run>/checkpoints/<file>.ckpt [data=<option> ...]
[calibrate=temperature] [tta=crops]

calibrate=temperature fits a temperature to the validation split's logits (src/training/calibration.py), writes
the checkpoint with it as <run dir>/calibrated.ckpt (the given file stays as it is) and tests that file;
tta=crops|hflip averages the class probabilities of altered views of each test image (src/data/tta.py)."""

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.data.tta import tta_views
from src.errors import UserError
from src.inference.classifiers import check_threshold
from src.reporting.callback import ReportCallback
from src.reporting.hparams_table import log_hyperparameters
from src.reporting.run_metrics import metrics_to_floats
from src.runs.guard import tidied_on_failure
from src.runs.resume import read_checkpoint
from src.training.calibration import TEMPERATURE_KEY, calibration_scores, fit_temperature
from src.training.module import ClassifierModule, load_checkpoint
from src.training.trainer import build_trainer
from src.upstream_fixes.checkpoint_io import atomic_torch_save

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)

CALIBRATE = ("none", "temperature")
CALIBRATED_CHECKPOINT = "calibrated.ckpt"

# what the model expects of its inputs, and the seed of the split it was trained on (digits' test split depends on it)
KEPT_FROM_CHECKPOINT = ("image_size", "mean", "std", "interpolation", "seed")
# ... and the eval transform's recipe, for the data sets that take one (data=imagefolder, csv: data.style)
KEPT_WHERE_TAKEN = ("style",)
# data sets whose data.num_classes is counted from the data (conf/data): counted again for another folder or manifest
COUNTED_CLASSES = {
    "src.data.imagefolder.ImageFolderDataModule": "${folder_num_classes:${data_dir}}",
    "src.data.manifest.CSVDataModule": "${csv_num_classes:${csv_path},${label_column},${oc.select:label_separator,null}}",
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


def logits_of(trainer: L.Trainer, model: ClassifierModule, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits over a split, without temperature or test-time augmentation, and its labels."""
    temperature, model.temperature, views, model.tta = model.temperature, 1.0, model.tta, None
    try:
        batches = trainer.predict(model, dataloaders=loader)
    finally:
        model.temperature, model.tta = temperature, views
    logits = torch.cat([logits.float().cpu() for logits, _ in batches])
    return logits, torch.cat([labels.cpu() for _, labels in batches])


def calibrate(trainer: L.Trainer, model: ClassifierModule, datamodule, ckpt_path: Path, out: Path) -> dict:
    """Fits the temperature on the validation split, writes the checkpoint with it to `out`/calibrated.ckpt and
    returns the NLL and ECE before and after, on the validation and the test split (without test-time
    augmentation), for summary.json."""
    if trainer.world_size > 1:  # each process would fit its own share of the split
        raise UserError("calibrate=temperature fits on one device: use trainer.devices=1")
    datamodule.setup("fit")
    datamodule.setup("test")
    val_logits, val_labels = logits_of(trainer, model, datamodule.val_dataloader())
    test_logits, test_labels = logits_of(trainer, model, datamodule.test_dataloader())
    temperature = fit_temperature(val_logits, val_labels)
    scores = {"method": "temperature", "temperature": temperature, "val_images": len(val_labels)}
    for split, logits, labels in (("val", val_logits, val_labels), ("test", test_logits, test_labels)):
        for when, t in (("before", 1.0), ("after", temperature)):
            for name, value in calibration_scores(logits, labels, t).items():
                scores[f"{split}_{name}_{when}"] = value
    checkpoint = dict(read_checkpoint(ckpt_path))
    checkpoint[TEMPERATURE_KEY] = temperature  # a plain float: the copy loads with weights_only=True
    scores["checkpoint"] = str(out / CALIBRATED_CHECKPOINT)
    atomic_torch_save(checkpoint, scores["checkpoint"])
    log.info(
        "temperature %.3f fitted on %d validation images; test NLL %.4f -> %.4f, ECE %.2f %% -> %.2f %%; wrote %s",
        temperature, len(val_labels), scores["test_nll_before"], scores["test_nll_after"],
        100 * scores["test_ece_before"], 100 * scores["test_ece_after"], scores["checkpoint"],
    )  # fmt: skip
    return scores


@exit_on_user_error
def evaluate(cfg: DictConfig) -> dict[str, float]:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise UserError(
            "ckpt_path is missing: python -m src.eval ckpt_path=<run dir>/checkpoints/<file>.ckpt"
        )
    if cfg.calibrate not in CALIBRATE:
        raise UserError(f"calibrate={cfg.calibrate} is unknown: use calibrate=none or calibrate=temperature")
    ckpt_path = Path(cfg.ckpt_path)
    model = load_checkpoint(ckpt_path)
    datamodule: L.LightningDataModule = instantiate(data_config(cfg.get("data"), model.hparams.data))
    if datamodule.hparams.num_classes != model.hparams.num_classes:
        raise UserError(
            f"the checkpoint predicts {model.hparams.num_classes} classes but the data set has "
            f"{datamodule.hparams.num_classes}: evaluate on the data set (data=...) or folder it was trained on"
        )
    model.tta = tta_views(cfg.tta, datamodule.style, datamodule.hparams.image_size)
    model.threshold = check_threshold(cfg.get("threshold"))
    if model.multilabel and cfg.calibrate != "none":
        raise UserError(
            "calibrate=temperature fits a softmax's temperature: multi-label checkpoints take none"
        )
    # nothing to save; and the report would take its state for the training run's
    trainer = build_trainer(cfg, SameClassesAsTrained(model.class_names), enable_checkpointing=False)
    if cfg.calibrate == "temperature":
        calibration = calibrate(trainer, model, datamodule, ckpt_path, Path(cfg.paths.output_dir))
        ckpt_path = Path(calibration["checkpoint"])  # what is tested: the temperature as the file keeps it
        for callback in trainer.callbacks:
            if isinstance(callback, ReportCallback):
                callback.calibration = calibration
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
