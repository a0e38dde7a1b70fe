"""The one place a Trainer is built from a run's config: src.train, src.eval, src.bench (through `bench_trainer`:
without validation or checkpoints) and the tests that build a config's Trainer all come here."""

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.cli.checks import needing_no_logger
from src.training.config_groups import instantiate_group
from src.training.loggers import instantiate_loggers
from src.upstream_fixes.lightning import RequeueAtBatchEnd


def build_trainer(cfg: DictConfig, *callbacks: L.Callback, **settings) -> L.Trainer:
    """conf/trainer with the run's `callbacks` and `logger` groups (a callback that needs a logger is left out
    when there is none), the entry point's own `callbacks` and the upstream workarounds (src/upstream_fixes/);
    `settings` override conf/trainer's keys."""
    loggers = instantiate_loggers(cfg.get("logger"))
    configured = needing_no_logger(instantiate_group(cfg.get("callbacks")), loggers)
    built = {"callbacks": [*configured, *callbacks, RequeueAtBatchEnd()], "logger": loggers}
    return instantiate(cfg.trainer, **(built | settings))
