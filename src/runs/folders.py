"""Where a training run writes: a resumed fit continues in its checkpoint's run dir (the `resume_dir` and
`config_subdir` resolvers of conf/hydra/train.yaml, registered by src/cli/resolvers.py)."""

import os
from datetime import datetime
from pathlib import Path

import torch

from src.errors import UserError
from src.runs.guard import hold_lock
from src.runs.resume import UNREADABLE, check_resume


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


def resume_dir(ckpt_path: str | None, task_dir: str, fresh_dir: str, *configs) -> str:
    """The run dir of the checkpoint to resume (`<run dir>/checkpoints/<file>.ckpt`), else a fresh one: also when
    the checkpoint does not fit `configs` (model, data, freeze, optimizer) or its run is being written, so that
    nothing is written into that run dir before src.train reports it (src/runs/resume.py)."""
    try:
        checkpoint = find_checkpoint(ckpt_path, task_dir)
        if checkpoint is None or checkpoint.parent.name != "checkpoints":
            return fresh_dir
        if configs:
            check_resume(checkpoint, *configs)
    except UserError:  # src.train reports it; the run dir is decided before it runs
        return fresh_dir
    return str(checkpoint.parent.parent)


def config_subdir(run_dir: str, ckpt_path: str | None = None) -> str | None:
    """`.hydra`, unless the run dir has a config already: then `.hydra/resumed_<time>` for a resumed run, and a
    UserError for a fresh one (`hydra.run.dir=<a run>` without ckpt_path), before anything is written there; so
    is a run dir whose lock another process holds. Takes the run dir's lock (src/runs/guard.py).
    None (no copy) on ranks > 0 that srun or torchrun started: they share rank 0's run dir."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) > 0:
        return None
    has_config = (Path(run_dir) / ".hydra" / "config.yaml").is_file()
    if has_config and ckpt_path is None and not _requeued(Path(run_dir)):
        raise UserError(_holds_a_run(Path(run_dir)))
    # before Hydra writes: of two resumes started together, the second writes nothing into the first one's run
    hold_lock(run_dir)
    return f".hydra/resumed_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}" if has_config else ".hydra"


def requeued_checkpoint(run_dir: Path) -> Path | None:
    """What a requeued SLURM job resumes: of its hpc checkpoints (saved on SLURM's signal) and its
    checkpoints/last.ckpt, the one with the most training steps (on a tie the hpc checkpoint, as Lightning
    picks). A job whose node was lost got no signal: Lightning alone would start it afresh, over its own
    checkpoints. None outside a requeued job, or where it saved nothing."""
    if int(os.environ.get("SLURM_RESTART_COUNT", 0)) == 0:
        return None
    saved = [*sorted(run_dir.glob("hpc_ckpt_*.ckpt")), run_dir / "checkpoints" / "last.ckpt"]
    steps = {path: _global_step(path) for path in saved if path.is_file()}
    return max(steps, key=steps.get, default=None)


def _global_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except (*UNREADABLE, TypeError):  # read_checkpoint names what is wrong with it, if it is chosen
        return -1


def _requeued(run_dir: Path) -> bool:
    """A SLURM job requeued into its run dir: Lightning resumes its hpc checkpoint by itself."""
    return any(run_dir.glob("hpc_ckpt_*.ckpt")) or int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0


def _holds_a_run(run_dir: Path) -> str:
    last = run_dir / "checkpoints" / "last.ckpt"
    fixes = [f"resume it with ckpt_path={last}"] if last.is_file() else []
    fixes.append("train into a new folder (another hydra.run.dir, or none: a new one is made)")
    return (
        f"{run_dir} holds a run already (.hydra/config.yaml): a fresh run would overwrite its checkpoints and "
        f"report; {', or '.join(fixes)}"
    )
