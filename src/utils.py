"""Small glue shared by the entry points: building config groups and logging a run's hyper-parameters."""

from collections.abc import Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None) -> list:
    """Builds every `_target_` entry of a group such as `callbacks` or `logger` (entries can be null)."""
    if not group:
        return []
    return [
        instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node
    ]


def metrics_to_floats(metrics: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable, "params_frozen": total - trainable}


def effective_batch_size(trainer: L.Trainer, batch_size: int) -> int:
    """Images per optimizer step: per device x devices x nodes x accumulated batches."""
    return batch_size * trainer.num_devices * trainer.num_nodes * trainer.accumulate_grad_batches


def log_hyperparameters(
    trainer: L.Trainer, cfg: DictConfig, model: L.LightningModule, metrics: dict[str, float] | None = None
) -> None:
    """The hyper-parameters a person compares runs by (src/reporting/hparams_table.py: ~25, not the whole config, which
    TensorBoard gets as text) go to every logger; with `metrics` (after test), the run's headline numbers
    (src/reporting/run_metrics.py: the values of summary.json and src.compare) are shown beside them (TensorBoard's
    HParams view) as `hp/<name>`: loggers also write these as scalars at step 0, which under their own names
    would add a false first point to the curves."""
    # imported here: they use this module's helpers
    from src.reporting.hparams_table import config_text, curated_hparams, log_to_tensorboard, varied_names
    from src.reporting.run_metrics import headline_metrics

    hparams = curated_hparams(trainer, cfg, model)
    final = {}
    if metrics is not None:
        final = {f"hp/{k}": v for k, v in headline_metrics(_summary(trainer, metrics)).items()}
    once = metrics is None or "train" not in cfg  # src.train calls this twice, src.eval once
    for logger in trainer.loggers:
        if once and isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("config", config_text(cfg))
        if not final:
            logger.log_hyperparams(hparams)
        elif isinstance(logger, TensorBoardLogger):
            log_to_tensorboard(logger, hparams, final, varied_names())
        else:  # only TensorBoard's log_hyperparams takes metrics (the HParams tab); the others log them as metrics
            logger.log_metrics(final, step=trainer.global_step)
            logger.save()


def _summary(trainer: L.Trainer, metrics: dict[str, float]) -> dict:
    """The report callback's summary.json; without that callback, what the trainer's metrics have of it."""
    from src.reporting import ReportCallback

    for callback in trainer.callbacks:
        if isinstance(callback, ReportCallback) and callback.summary:
            return callback.summary
    return {
        "best_val_acc": metrics.get("val/acc_best"),
        "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
    }
