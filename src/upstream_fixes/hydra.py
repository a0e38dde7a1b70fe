"""Workarounds of Hydra 1.3.8 behaviour, and of Lightning's DDP launcher inside a Hydra sweep (see the index in
src/upstream_fixes/__init__.py): each says what upstream does, the issue, and what tells that it can go."""

import os
import sys
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write


def start_folder() -> str:
    """The `${cwd:}` resolver (src/resolvers.py): the folder a command was started from, conf/paths' root.

    Not Hydra's own `${hydra:runtime.cwd}`: in a sweep (-m) Hydra resolves `hydra.sweep.dir` (below
    paths.log_dir) before it sets the HydraConfig that `${hydra:...}` reads (hydra/_internal/core_plugins/
    basic_launcher.py, `launch`, in 1.3.8), so a config built on it fails there.

    Remove when: `python -m src.train -m seed=1,2 paths.root_dir='${hydra:runtime.cwd}'` runs with the pinned
    Hydra; then conf/paths/default.yaml can say that instead."""
    return os.getcwd()


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
    """Runs one job of a sweep as if it were alone, for Lightning's DDP launcher.

    Lightning 2.6.6 starts ranks > 0 by re-running `sys.argv` plus `hydra.run.dir=<HydraConfig's run.dir>`
    (lightning/fabric/strategies/launchers/subprocess_script.py, `_hydra_subprocess_cmd`): in a sweep (`-m`, or a
    config that sets hydra.mode=MULTIRUN such as hparams_search) that starts the whole sweep again, in another
    folder (Lightning issue #11300, open; PR #18175, open). So the ranks get this job's overrides, a single-run
    mode and the job's folder. And Lightning leaves its process group and environment (LOCAL_RANK, WORLD_SIZE,
    ...) behind, which the next job of the sweep would take for its own: both are cleared when the job ends.

    Remove when: the pinned Lightning starts a sweep job's ranks as that one job and tears its process group
    down: `pytest tests/test_scale_out.py -m 'slow or not slow' -k 'sweep_of_ddp or ranks_of_a'` passes without
    it."""
    import torch  # here: src.predict resolves `${cwd:}` (start_folder) without loading torch

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
