"""The hyper-parameters a person compares runs by, as every logger receives them (TensorBoard's HParams table,
hparams.yaml): about 25 flat `group/key` names with their real types, instead of the ~100 keys of the whole
config (that stays in the run's .hydra/ and goes to TensorBoard as text):

- the option chosen in each config group (`model: vit`, `optimizer: adamw`, ...);
- the values the command line set (Hydra's overrides: a sweep's varied keys) and the chosen experiment file set;
- a fixed list: image size, effective batch size, epochs, lr, weight decay, label smoothing, seed, parameters."""

import json
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summary

from src.reporting.callback import ReportCallback
from src.reporting.run_metrics import headline_metrics, parameter_counts
from src.training.optimizers import effective_batch_size

# config groups whose option is a hyper-parameter, where the config has them (augment, mixup, ema and distill
# exist only in some versions of conf/)
CHOSEN_GROUPS = (
    "experiment",
    "model",
    "data",
    "freeze",
    "optimizer",
    "scheduler",
    "augment",
    "mixup",
    "ema",
    "distill",
)
# config keys that are plumbing, not something runs differ by: left out of the overrides and experiment values
PLUMBING = ("hydra", "paths", "callbacks", "logger", "task_name", "tags", "defaults")
# always sent: name -> key in the train config (or, for src.eval, in the checkpoint's module hyper-parameters)
FIXED = {
    "data/image_size": "data.image_size",
    "trainer/max_epochs": "trainer.max_epochs",
    "optimizer/lr": "optimizer.lr",
    "optimizer/weight_decay": "optimizer.weight_decay",
    "module/label_smoothing": "module.label_smoothing",
    "seed": "seed",
}


def curated_hparams(trainer: L.Trainer, cfg: DictConfig, model: L.LightningModule) -> dict:
    """Flat {name: bool | int | float | str}: group choices, then the fixed list, then the set values."""
    # src.eval's config has no module/optimizer/data: the checkpoint's module hyper-parameters have them
    module = OmegaConf.create({"module": dict(model.hparams), **dict(model.hparams)})
    # src.eval has no model group: the report callback has the training run's options from the checkpoint
    trained = next((c.choices for c in trainer.callbacks if isinstance(c, ReportCallback)), {})
    hparams = {**trained, **_choices(), **_ema(cfg)}
    for name, key in FIXED.items():
        hparams[name] = _select(cfg, key, module)
    if (
        "train" not in cfg
    ):  # src.eval: its trainer's max_epochs says nothing of how the checkpoint was trained
        del hparams["trainer/max_epochs"]
    batch_size = _select(cfg, "data.batch_size", module)
    if batch_size is not None:  # per device; the optimizer sees the batches of all of them
        hparams["data/effective_batch_size"] = effective_batch_size(trainer, batch_size)
    hparams |= {f"model/{name}": count for name, count in parameter_counts(model).items()}
    if cfg.get(
        "tags"
    ):  # one string: every logger (MLflow, W&B, CSV) takes it, and TensorBoard can filter on it
        hparams["tags"] = ",".join(map(str, cfg.tags))
    for key in _set_keys(cfg):
        hparams.setdefault(key.replace(".", "/"), _select(cfg, key, module))
    return {name: _loggable(value) for name, value in hparams.items() if value is not None}


def varied_names() -> set[str]:
    """The names of the hyper-parameters this run's Hydra sweep varies: its sweep overrides
    (`optimizer.lr=1e-3,3e-3`, kept in the sweep dir's multirun.yaml) and its sweeper's search space
    (`hydra.sweeper.params`, e.g. Optuna's)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return set()
    hydra_cfg = HydraConfig.get()
    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    sweep_config = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    if sweep_config.is_file():
        overrides = _parse(OmegaConf.load(sweep_config).hydra.overrides.task)
        keys |= {override.key_or_group for override in overrides if override.is_sweep_override()}
    return {key.replace(".", "/") for key in keys}


@rank_zero_only  # the other DDP ranks' loggers have no file writer
def log_to_tensorboard(
    logger: TensorBoardLogger, hparams: dict, metrics: dict[str, float], varied: set[str]
) -> None:
    """What Lightning's TensorBoardLogger.log_hyperparams(hparams, metrics) writes (2.6), except that the experiment
    summary marks the hyper-parameters a sweep varies (HParamInfo.differs, which torch's hparams() leaves unset):
    TensorBoard's HParams view shows those first, and only the first 5 columns until more are ticked."""
    logger.log_hyperparams(hparams)  # hparams.yaml
    logger.log_metrics(metrics)
    experiment, session_start, session_end = hparams_summary(hparams, metrics)
    content = experiment.value[0].metadata.plugin_data
    plugin_data = HParamsPluginData.FromString(content.content)
    for info in plugin_data.experiment.hparam_infos:
        info.differs = info.name in varied
    content.content = plugin_data.SerializeToString()
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, session_start, session_end):
        writer.add_summary(summary)
    # the trainer closed the logger's writer at the end of test, and the writes above opened a new one: closed
    # here, it writes its events now, not when the process exits (which can be too soon: the last job of a sweep
    # lost its HParams row)
    logger.finalize("success")
    # Lightning writes hparams.yaml once (TensorBoardLogger.save skips an existing file, 2.6): src.eval logs
    # after its trainer.test, which wrote it empty
    save_hparams_to_yaml(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE, logger.hparams)


def config_text(cfg: DictConfig) -> str:
    """The whole resolved config as a markdown code block (TensorBoard's text dashboard renders markdown)."""
    yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return "\n".join("    " + line for line in yaml.splitlines())


def _choices() -> dict[str, str]:
    """The CHOSEN_GROUPS' options, and those of the other groups the command line chose (`trainer=ddp`)."""
    if not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    given = [override.key_or_group for override in _parse(hydra_cfg.overrides.task)]
    groups = [*CHOSEN_GROUPS, *(g for g in given if g in choices and not g.startswith("hydra"))]
    return {
        group: _loggable(choices[group]) for group in dict.fromkeys(groups) if choices.get(group) is not None
    }


def _ema(cfg: DictConfig) -> dict:
    """EMA is a callback (Lightning's EMAWeightAveraging) rather than a config group: its decay, when present."""
    for name, node in (cfg.get("callbacks") or {}).items():
        if isinstance(node, DictConfig) and ("ema" in name.lower() or "EMA" in str(node.get("_target_", ""))):
            return {"ema/decay": node.get("decay", 0.999)}  # 0.999: EMAWeightAveraging's default
    return {}


def _set_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys the command line (Hydra's overrides, e.g. a sweep's `optimizer.lr=1e-3,3e-3` job value) or the
    chosen experiment file set, except plumbing; group choices (`model=vgg19`) are in _choices already."""
    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    keys = []
    for override in _parse(hydra_cfg.overrides.task):
        if not override.is_delete() and override.key_or_group not in hydra_cfg.runtime.choices:
            keys.append(override.key_or_group)
    experiment = hydra_cfg.runtime.choices.get("experiment")
    for source in hydra_cfg.runtime.config_sources if experiment else []:
        path = Path(str(source.path)) / "experiment" / f"{experiment}.yaml"
        if source.schema == "file" and path.is_file():
            set_there = OmegaConf.to_container(OmegaConf.load(path))
            keys += [key for top, value in set_there.items() for key in _leaf_keys(top, value)]
            break
    return [key for key in dict.fromkeys(keys) if key.split(".")[0] not in PLUMBING]


def _leaf_keys(key: str, value) -> list[str]:
    """`key` itself, or the keys of the values below it that `value` (an experiment file's node) sets."""
    if isinstance(value, dict):
        return [leaf for sub, subvalue in value.items() for leaf in _leaf_keys(f"{key}.{sub}", subvalue)]
    return [key]


def _parse(overrides) -> list:
    return OverridesParser.create().parse_overrides(list(overrides))


def _select(cfg: DictConfig, key: str, module: DictConfig):
    value = OmegaConf.select(cfg, key, default=None)
    return OmegaConf.select(module, key, default=None) if value is None else value


def _loggable(value):
    """TensorBoard's HParams take bool, number or string: a list or a whole node becomes its JSON text."""
    if isinstance(value, DictConfig | ListConfig):
        return json.dumps(OmegaConf.to_container(value, resolve=True))
    return value


def log_hyperparameters(
    trainer: L.Trainer, cfg: DictConfig, model: L.LightningModule, metrics: dict[str, float] | None = None
) -> None:
    """The hyper-parameters a person compares runs by (`curated_hparams`: ~25, not the whole config, which
    TensorBoard gets as text) go to every logger; with `metrics` (after test), the run's headline numbers
    (src/reporting/run_metrics.py: the values of summary.json and src.compare) are shown beside them (TensorBoard's
    HParams view) as `hp/<name>`: loggers also write these as scalars at step 0, which under their own names
    would add a false first point to the curves."""
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
    for callback in trainer.callbacks:
        if isinstance(callback, ReportCallback) and callback.summary:
            return callback.summary
    return {
        "best_val_acc": metrics.get("val/acc_best"),
        "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
    }
