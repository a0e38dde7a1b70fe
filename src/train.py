"""Train (then test on the best checkpoint): python -m src.train [group=option ...] [key=value ...]"""

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from src.cli.checks import check_values, optimized_value, optuna_sweep
from src.cli.command import run_command
from src.cli.config_tree import show_config, task_config
from src.cli.exits import exit_on_user_error
from src.cli.model_input import report_model_input
from src.cli.resolvers import register_resolvers
from src.errors import UserError
from src.inference.classifiers import check_threshold
from src.reporting.hparams_table import log_hyperparameters
from src.reporting.out_of_fold import write_out_of_fold
from src.reporting.run_metrics import metrics_to_floats
from src.runs.folders import find_checkpoint, requeued_checkpoint
from src.runs.guard import guarded_run
from src.runs.resume import check_resume
from src.training.multilabel import settle_task
from src.training.nonfinite import DivergedTrial, NonFiniteLossError
from src.training.swa import averaged_checkpoint
from src.training.trainer import build_trainer
from src.training.tuning import tuned
from src.upstream_fixes.hydra import failed_job_recorded, one_job

# before Hydra composes the config (on import: the DDP ranks and SLURM jobs import this module again)
register_resolvers()

log = logging.getLogger(__name__)


@exit_on_user_error
def train(cfg: DictConfig) -> dict[str, float]:
    cfg = task_config(cfg)  # called from Python with a config that holds its `hydra` section
    if cfg.get("ckpt_path") and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} in a sweep (-m) would make every job resume the same checkpoint: "
            "resume runs one at a time (python -m src.train ckpt_path=...), or resume an Optuna study "
            "through its storage (hydra.sweeper.storage=sqlite:///...)"
        )
    check_values(cfg)
    ckpt_path = find_checkpoint(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name)
    ckpt_path = ckpt_path or requeued_checkpoint(Path(cfg.paths.output_dir))
    if ckpt_path:  # as the run dir's resolver did; the lock of our own run dir is held by guarded_run
        other_run = ckpt_path.parent.parent.resolve() != Path(cfg.paths.output_dir).resolve()
        check_resume(ckpt_path, cfg.model, cfg.data, cfg.freeze, cfg.optimizer, run_dir_free=other_run)
    if cfg.get("ckpt_path") and not cfg.train:
        raise UserError(
            f"train=false with ckpt_path={cfg.ckpt_path} would test the checkpoint inside its training run's "
            f"folder: test it with python -m src.eval ckpt_path={ckpt_path or '<file>'} (a folder of its own)"
        )
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    elif cfg.get("ckpt_path") == "last":
        log.info("No last.ckpt of task %r in %s: starting fresh", cfg.task_name, cfg.paths.log_dir)
    show_config(cfg, cfg.paths.get("output_dir"))
    report_model_input(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    settle_task(cfg, datamodule.task, type(datamodule).__name__)
    model: L.LightningModule = instantiate(cfg.module)
    model.threshold = check_threshold(cfg.get("threshold"))
    trainer = build_trainer(cfg)
    if cfg.get("tune") and cfg.tune.mode != "none":
        model = tuned(cfg, model, datamodule, trainer.loggers, ckpt_path)
    log_hyperparameters(trainer, cfg, model)

    if cfg.train:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except NonFiniteLossError as err:
            if not optuna_sweep():
                raise
            # an exception (not exit 2) fails the trial, and the search goes on (hparams_search: max_failure_rate)
            log.error("error: %s. Optuna records this trial as failed", err)
            raise DivergedTrial(str(err)) from None
    metrics = metrics_to_floats(trainer.callback_metrics)
    checkpoint = trainer.checkpoint_callback
    if checkpoint and checkpoint.monitor and checkpoint.best_model_score is not None:  # for a sweeper
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    searched = cfg.get("optimized_metric")
    if optuna_sweep() and checkpoint and checkpoint.best_model_path and searched != checkpoint.monitor:
        # the trial's value is the searched metric of the checkpoint the run keeps (the quickstart keeps the
        # lowest val/loss, the search maximises val/acc), not of the last epoch: one validation pass measures it
        (validated,) = trainer.validate(model, datamodule=datamodule, ckpt_path="best", verbose=False)
        if searched in validated:
            metrics[f"{searched}_best"] = validated[searched]

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = averaged_checkpoint(trainer) or best  # callbacks=[default,swa]: the average is what the run made
    if cfg.test:
        if not best:
            log.warning("No best checkpoint was saved; testing the current weights.")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)
        log.info("Best checkpoint: %s", best)
        metrics |= metrics_to_floats(trainer.callback_metrics)
        log_hyperparameters(trainer, cfg, model, metrics)
    if cfg.train and cfg.data.get(
        "folds"
    ):  # the best checkpoint's predictions of the fold it never trained on
        write_out_of_fold(trainer, model, datamodule, best or None, Path(cfg.paths.output_dir))
    optimized_value(
        metrics, cfg.get("optimized_metric")
    )  # in a sweep: a metric that was not logged is an error
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with failed_job_recorded(), one_job(), guarded_run(HydraConfig.get().runtime.output_dir):
        metrics = train(cfg)
    # the value a sweeper (Optuna) optimises: the best epoch's (by the checkpoint callback), else the last one
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    run_command(main)
