"""Average a run's best checkpoints: python -m src.average run_dir=<run dir> k=3

Writes <run dir>/checkpoints/average_top<k>.ckpt, the mean of the weights of the k checkpoints with the best
monitored metric (the run must have kept them: callbacks.model_checkpoint.save_top_k=k), which src.eval,
src.predict and src.export take. The work: src/runs/averaging.py."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.cli.command import run_command
from src.cli.exits import exit_on_user_error
from src.errors import UserError
from src.runs.averaging import average_top_k
from src.runs.guard import tidied_on_failure

log = logging.getLogger(__name__)


@exit_on_user_error
def average(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run_dir"):
        raise UserError("run_dir is missing: python -m src.average run_dir=<run dir> k=3")
    out = average_top_k(cfg.run_dir, cfg.k)
    log.info("Averaged checkpoint: %s (test it: python -m src.eval ckpt_path=%s)", out, out)


@hydra.main(version_base="1.3", config_path="../conf", config_name="average")
def main(cfg: DictConfig) -> None:
    with tidied_on_failure(HydraConfig.get().runtime.output_dir):
        average(cfg)


if __name__ == "__main__":
    run_command(main)
