"""Building the `logger` group: the optional clients (MLflow, W&B) are checked before anything is built, so a
missing one ends the run with one line naming the extra that installs it."""

import importlib.util
import os
from pathlib import Path

from lightning.pytorch import loggers
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig

from src.errors import UserError
from src.training.config_groups import instantiate_group

# logger class -> (the module it imports, the pyproject extra that installs it)
OPTIONAL_CLIENTS = {
    "src.training.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
}


class MLFlowLogger(loggers.MLFlowLogger):
    """Lightning's MLFlowLogger, with hyper-parameter names joined by '.' instead of '/': MLflow's file store keeps
    each parameter as a file named by its key, so `data` (the option chosen) and `data/image_size` cannot both
    exist ("Not a directory")."""

    def log_hyperparams(self, params) -> None:
        super().log_hyperparams({str(key).replace("/", "."): value for key, value in dict(params).items()})


def instantiate_loggers(group: DictConfig | None) -> list:
    for name, node in (group or {}).items():
        module, extra = OPTIONAL_CLIENTS.get(node.get("_target_") if node else None, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise UserError(
                f"logger {name} needs the {module} package, which is not installed: "
                f"pip install -e '.[{extra}]' (or pick another logger, e.g. logger=csv)"
            )
        if str(node.get("tracking_uri", "")).startswith("file:"):
            # MLflow >= 3.7 refuses its file store unless asked ("maintenance mode"); its SQLite store needs
            # SQLAlchemy 2, which the pinned optuna 2.10 (hydra-optuna-sweeper) cannot use. A server URI is unaffected.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return instantiate_group(group)


def mlflow_tags(tags: list[str] | None) -> dict[str, str]:
    """MLflow tags are key/value pairs: each of the run's `tags` becomes a key (search: tags.<name> = 'true')."""
    return {str(tag): "true" for tag in tags or []}


def log_report_files(logger: Logger, folder: Path, names: list[str]) -> None:
    """The test report's files (tables, confusion matrix, curves) to loggers that keep files: MLflow as the run's
    artifacts under report/, W&B as images (TensorBoard gets them from the report callback itself)."""
    files = [folder / name for name in names if (folder / name).is_file()]
    if isinstance(logger, loggers.MLFlowLogger):
        for file in files:
            logger.experiment.log_artifact(logger.run_id, str(file), artifact_path="report")
    elif isinstance(logger, WandbLogger) and (images := [f for f in files if f.suffix == ".png"]):
        logger.log_image("test/report", [str(f) for f in images], caption=[f.stem for f in images])
