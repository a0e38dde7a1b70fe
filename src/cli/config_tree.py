"""The run's config as a tree: the main groups printed at the start of a run, every key saved with the run."""

import copy
from pathlib import Path

import rich
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

# what a reader checks first; the rest (callbacks, paths, module, ...) is in the saved file and .hydra/config.yaml
PRINTED = ("data", "model", "freeze", "optimizer", "scheduler", "trainer", "logger")


def config_tree(cfg: DictConfig, fields: tuple[str, ...] | None = None) -> rich.tree.Tree:
    tree = rich.tree.Tree(f"config · task {cfg.get('task_name')} · tags {list(cfg.get('tags') or [])}")
    for field in fields or tuple(cfg.keys()):
        value = cfg.get(field)
        text = (
            OmegaConf.to_yaml(value, resolve=True).rstrip() if isinstance(value, DictConfig) else str(value)
        )
        tree.add(field).add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    return tree


@rank_zero_only
def show_config(cfg: DictConfig, output_dir: str | Path | None) -> None:
    """Prints the main groups (print_config=true); writes every key to <run dir>/config_tree.log."""
    if cfg.get("print_config", True):
        rich.print(config_tree(cfg, tuple(f for f in PRINTED if f in cfg)))
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with open(Path(output_dir) / "config_tree.log", "w") as file:
            rich.print(config_tree(cfg), file=file)


def task_config(cfg: DictConfig) -> DictConfig:
    """`cfg` as Hydra hands it to a task: without Hydra's own section, which a config composed with
    `compose(..., return_hydra_config=True)` holds (lightning-hydra-template's test fixtures) and which does not
    resolve outside a Hydra run (`hydra.job.num`)."""
    if "hydra" not in cfg:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
