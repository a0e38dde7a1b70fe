"""What a training run does around its work: it holds a lock on its run dir (a second process resuming the same
run is refused), and when it fails, a run dir it left without anything useful (no checkpoint, no summary.json) is
removed after a user error (the `error:` line says all) and renamed `<name>_failed` after a crash (its `.log` keeps
the traceback). A run stopped by SIGTERM or Ctrl-C is no failure: its dir is kept and marked (src/runs/interrupts.py)."""

import fcntl
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from src.errors import UserError, log_traceback_to_files
from src.upstream_fixes.disk_space import DiskFullError, disk_full_message, no_space

LOCK_FILE = ".lock"
# what Hydra and a run's first moments put into a run dir: such a folder holds nothing of value
BOOKKEEPING = {".hydra", LOCK_FILE, "tensorboard"}


def _rank() -> int:
    return max(int(os.environ.get(name, 0)) for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def _holder(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def run_dir_in_use(run_dir: str | Path) -> str | None:
    """Who holds the run dir's lock ('pid 123 on host'), or None when no process does."""
    lock_path = Path(run_dir) / LOCK_FILE
    if not lock_path.is_file():
        return None
    with open(lock_path) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return _holder(lock_path)
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


# the run dirs whose lock this process holds, and the open lock file that holds each
_held: dict[Path, object] = {}


def hold_lock(run_dir: str | Path) -> None:
    """Takes the flock on <run dir>/.lock now, for the rest of the run (src/runs/folders.py `config_subdir` calls it
    before Hydra writes the config copy, so that a second process resuming the same run at the same moment is
    refused before it writes anything there). The kernel drops it when the process dies, even by kill -9."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    lock_path = run_dir / LOCK_FILE
    file = open(lock_path, "a+")  # noqa: SIM115 (open for the run's life: closing it drops the lock)
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.close()
        raise UserError(
            f"{run_dir} is being written by {_holder(lock_path)}: wait for it to end (or stop it) before "
            "resuming this run"
        ) from None
    file.truncate(0)
    file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    file.flush()
    _held[run_dir] = file


@contextmanager
def locked(run_dir: Path):
    """The run dir's lock (hold_lock) for the run's life, released at its end."""
    hold_lock(run_dir)
    try:
        yield
    finally:
        file = _held.pop(Path(run_dir).resolve())
        fcntl.flock(file, fcntl.LOCK_UN)
        file.close()


def _nothing_useful(run_dir: Path) -> bool:
    if any(run_dir.rglob("*.ckpt")) or (run_dir / "summary.json").exists():
        return False
    return all(entry.name in BOOKKEEPING or entry.suffix == ".log" for entry in run_dir.iterdir())


def tidy_failed(run_dir: Path, user_error: bool) -> None:
    if not run_dir.is_dir() or not _nothing_useful(run_dir):
        return
    if user_error:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    # an earlier failed run into the same folder (a fixed hydra.run.dir) may have taken `_failed`
    names = (f"{run_dir.name}_failed", *(f"{run_dir.name}_failed_{n}" for n in range(2, 1000)))
    target = next((run_dir.with_name(name) for name in names if not run_dir.with_name(name).exists()), None)
    try:
        if target is not None:
            run_dir.rename(target)
    except OSError:  # the run's own error is what the user needs to see; the folder stays as it is
        pass


def _disk_full(failure: BaseException, run_dir: Path) -> str:
    """The DiskFullError's message (a checkpoint save: it knows the size), else the run dir's file system."""
    cause = failure
    while cause is not None and not isinstance(cause, DiskFullError):
        cause = cause.__cause__ or cause.__context__
    return f"stopped: {cause or disk_full_message(run_dir)}"


@contextmanager
def guarded_run(run_dir: str | Path):
    """Rank 0 of a run: the lock, the full traceback of any failure in the run's .log, a failed run's dir tidied
    as the module says, and a run stopped by a signal (exit 128 + its number) or a full disk (exit 2) kept and
    marked (src/runs/interrupts.py).
    Other ranks share rank 0's dir and leave all of this to it."""
    # here: it loads Lightning, which this module's other users (src.predict, src.compare) do without
    from src.runs.interrupts import exit_code, mark_interrupted, sigterm_raises, stopping_signal, unmark

    if _rank() > 0:
        yield
        return
    run_dir = Path(run_dir)
    try:
        with locked(run_dir), sigterm_raises():
            yield
    except BaseException as failure:
        signum = stopping_signal(failure)
        if signum is not None:  # not a failure of the run: nothing is tidied away
            log_traceback_to_files(sys.exc_info())
            print(f"error: {mark_interrupted(run_dir, f'stopped by {signum.name}')}", file=sys.stderr)
            sys.exit(exit_code(signum))
        if no_space(failure):  # the run's results so far (log, TensorBoard, checkpoints) are kept
            log_traceback_to_files(sys.exc_info())
            print(f"error: {mark_interrupted(run_dir, _disk_full(failure, run_dir))}", file=sys.stderr)
            sys.exit(2)
        if isinstance(failure, SystemExit):  # exit_on_user_error has reported a user error (and logged it)
            if failure.code not in (0, None):
                tidy_failed(run_dir, user_error=True)
            raise
        log_traceback_to_files(sys.exc_info())
        tidy_failed(run_dir, user_error=isinstance(failure, UserError))
        raise
    unmark(run_dir)


@contextmanager
def tidied_on_failure(run_dir: str | Path):
    """For src.eval, src.predict, src.export and src.explain: a failure leaves no folder that holds only Hydra's
    bookkeeping and the log (removed after a user error; renamed `_failed` after a crash, its log keeping the
    traceback). Light: src.predict imports no Lightning."""
    if _rank() > 0:
        yield
        return
    try:
        yield
    except BaseException as failure:
        if isinstance(failure, KeyboardInterrupt) or (
            isinstance(failure, SystemExit) and failure.code in (0, None)
        ):
            raise
        if not isinstance(failure, SystemExit):
            log_traceback_to_files(sys.exc_info())
        tidy_failed(Path(run_dir), user_error=isinstance(failure, SystemExit | UserError))
        raise
