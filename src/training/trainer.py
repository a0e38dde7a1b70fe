"""The one place a Trainer is built from a run's config: src.train, src.eval, src.bench (through `bench_trainer`:
without validation or checkpoints) and the tests that build a config's Trainer all come here."""

import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import ParallelStrategy
from omegaconf import DictConfig

from src.cli.checks import needing_no_logger
from src.errors import UserError
from src.runs.world_size import WorldSizeCheck
from src.training.config_groups import instantiate_group
from src.training.loggers import instantiate_loggers
from src.upstream_fixes.lightning import RequeueAtBatchEnd


def uses_fsdp(trainer: DictConfig) -> bool:
    strategy = trainer.get("strategy")
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", "")).endswith("FSDPStrategy")
    return str(strategy).startswith("fsdp")


def build_trainer(cfg: DictConfig, *callbacks: L.Callback, **settings) -> L.Trainer:
    """conf/trainer with the run's `callbacks` and `logger` groups (a callback that needs a logger is left out
    when there is none), the entry point's own `callbacks` and the upstream workarounds (src/upstream_fixes/);
    `settings` override conf/trainer's keys."""
    loggers = instantiate_loggers(cfg.get("logger"))
    configured = needing_no_logger(instantiate_group(cfg.get("callbacks")), loggers)
    built = {"callbacks": [*configured, *callbacks, WorldSizeCheck(), RequeueAtBatchEnd()], "logger": loggers}
    if (cfg.get("data") or {}).get("sampler") == "repeated":
        # timm's RepeatAugSampler shards the training images by itself (data/base.py): Lightning would wrap it in its
        # DistributedSamplerWrapper and shard each rank's share again. The val and test loaders shard themselves
        built["use_distributed_sampler"] = False
    try:
        trainer = instantiate(cfg.trainer, **(built | settings))
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError) and uses_fsdp(cfg.trainer):
            # Lightning's FSDPStrategy refuses any accelerator but CUDA
            raise UserError(
                f"trainer=fsdp needs GPUs (Lightning's FSDPStrategy runs on CUDA only), and this run has "
                f"trainer.accelerator={cfg.trainer.get('accelerator')}: on CPU, use trainer=ddp"
            ) from err
        # Lightning's own check of the trainer settings (no GPU for accelerator=gpu, more devices than there are)
        if not isinstance(err.__cause__, MisconfigurationException):
            raise
        chosen = ", ".join(f"trainer.{key}={cfg.trainer.get(key)}" for key in ("accelerator", "devices"))
        raise UserError(
            f"{chosen}: {str(err.__cause__).rstrip('.!')}. Pick what this machine has (trainer.accelerator=auto uses it)"
        ) from err
    distributed = isinstance(trainer.strategy, ParallelStrategy)
    if cfg.trainer.get("sync_batchnorm") and distributed and isinstance(trainer.accelerator, CPUAccelerator):
        # torch's SyncBatchNorm refuses CPU tensors in training ("expected input tensor to be on GPU or XPU"), on any
        # number of DDP ranks: the fit would stop at its first batch
        raise UserError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm runs on CUDA or XPU only): on CPU, set "
            "trainer.sync_batchnorm=false (each rank then keeps its own BatchNorm statistics)"
        )
    return trainer
