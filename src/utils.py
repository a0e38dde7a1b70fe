"""Small glue shared by the entry points: building config groups and logging a run's hyper-parameters."""

from collections.abc import Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


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
    """The resolved config plus parameter counts (`model/params_*`) go to every logger; with `metrics`, the
    test metrics and best validation score are shown beside them (TensorBoard's HParams tab) as `hp/<name>`:
    loggers also write these as scalars at step 0, which under their own names would add a false first point
    to the curves."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if "module" in hparams:  # it repeats model/optimizer/scheduler/data: keep only its own settings
        repeated = ("backbone", "optimizer", "scheduler", "data")
        hparams["module"] = {key: value for key, value in hparams["module"].items() if key not in repeated}
    hparams["model"] = {**hparams.get("model", model.hparams.backbone), **parameter_counts(model)}
    if hparams.get("data"):  # batch_size is per device; the optimizer sees the batches of all of them
        hparams["data"]["effective_batch_size"] = effective_batch_size(trainer, hparams["data"]["batch_size"])
    final = {f"hp/{k}": v for k, v in (metrics or {}).items() if k.startswith("test/") or k.endswith("_best")}
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams, final) if final else logger.log_hyperparams(hparams)
