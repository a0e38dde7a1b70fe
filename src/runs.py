"""Where a training run writes: a resumed fit continues in its checkpoint's run dir, and the DDP ranks that
Lightning starts itself re-run exactly this job (not the whole sweep) in this job's folder."""

import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf, read_write

from src.errors import UserError
from src.resume import check_resume


def find_checkpoint(ckpt_path: str | None, task_dir: str | Path) -> Path | None:
    """The checkpoint `ckpt_path` names: a file, or `last` = the newest `last.ckpt` of any run of the task
    (None when there is none). A named file that does not exist is the user's error."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = Path(task_dir).glob("**/checkpoints/last.ckpt")
        return max(found, key=lambda path: path.stat().st_mtime, default=None)
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(
            f"checkpoint not found: {path}. Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt, "
            "ckpt_path=last (the newest last.ckpt of this task), or ckpt_path=null to start fresh"
        )
    return path.resolve()


def _resume_dir(ckpt_path: str | None, task_dir: str, fresh_dir: str, *configs) -> str:
    """The run dir of the checkpoint to resume (`<run dir>/checkpoints/<file>.ckpt`), else a fresh one: also when
    the checkpoint does not fit `configs` (model, data, freeze, optimizer) or its run is being written, so that
    nothing is written into that run dir before src.train reports it (src/resume.py)."""
    try:
        checkpoint = find_checkpoint(ckpt_path, task_dir)
        if checkpoint is None or checkpoint.parent.name != "checkpoints":
            return fresh_dir
        if configs:
            check_resume(checkpoint, *configs)
    except UserError:  # src.train reports it; the run dir is decided before it runs
        return fresh_dir
    return str(checkpoint.parent.parent)


def _config_subdir(run_dir: str) -> str | None:
    """`.hydra`, unless the run dir has a config already (a resumed run): then `.hydra/resumed_<time>`.
    None (no copy) on ranks > 0 that srun or torchrun started: they share rank 0's run dir."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) > 0:
        return None
    if (Path(run_dir) / ".hydra" / "config.yaml").is_file():
        return f".hydra/resumed_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}"
    return ".hydra"


# cached: every look at hydra.run.dir in this process sees the same folder, even once checkpoints are written
OmegaConf.register_new_resolver("resume_dir", _resume_dir, use_cache=True, replace=True)
OmegaConf.register_new_resolver("config_subdir", _config_subdir, use_cache=True, replace=True)


CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def config_flags(argv: list[str]) -> list[str]:
    """The options of a command line that choose the config (`-cn train_big`, `--config-dir=extra`, ...)."""
    flags, args = [], iter(argv)
    for arg in args:
        if arg in CONFIG_FLAGS:
            flags += [arg, next(args, "")]
        elif arg.startswith(tuple(f"{flag}=" for flag in CONFIG_FLAGS)):
            flags.append(arg)
    return flags


@contextmanager
def one_job():
    """Runs one job of a sweep as if it were alone, for Lightning's DDP launcher. The launcher starts ranks > 0
    by re-running `sys.argv` plus `hydra.run.dir=<HydraConfig's run.dir>`: in a sweep (`-m`, or a config that
    sets hydra.mode=MULTIRUN such as hparams_search) that would start the whole sweep again, in another folder,
    so they get this job's overrides, a single-run mode and the job's folder. And it leaves its process group
    and environment (LOCAL_RANK, WORLD_SIZE, ...) behind, which the next job would take for its own."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *config_flags(sys.argv[1:]), *hydra_cfg.overrides.task, "hydra.mode=RUN"]
        with read_write(hydra_cfg.run):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    environ = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
