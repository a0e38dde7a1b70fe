"""Write a data set as WebDataset shards: python -m src.shards data=<option> ... out=<new folder>

Every split of the data set (its files' own bytes, its splits and class names) goes into `<split>-000000.tar`, ...
and shards.json, which `data=shards data.path=<out>` trains on. The work: src/data/shards.py."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.data.shards import write_shards
from src.errors import UserError
from src.runs.guard import tidied_on_failure

register_resolvers()

log = logging.getLogger(__name__)


@exit_on_user_error
def shards(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "out"):
        raise UserError("out is missing: python -m src.shards data=<option> ... out=<new folder>")
    manifest = write_shards(instantiate(cfg.data), cfg.out, cfg.samples_per_shard)
    log.info(
        "Shards: %s (train on them: python -m src.train data=shards data.path=%s)", manifest, manifest.parent
    )


@hydra.main(version_base="1.3", config_path="../conf", config_name="shards")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        shards(cfg)


if __name__ == "__main__":
    run_command(main)
