"""Workarounds of Hydra 1.3.8 behaviour, and of Lightning's DDP launcher inside a Hydra sweep (see the index in
src/upstream_fixes/__init__.py): each says what upstream does, the issue, and what tells that it can go."""

import difflib
import errno
import os
import re
import sys
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError

from src.errors import user_error_in
from src.upstream_fixes.disk_space import disk_full_message


def start_folder() -> str:
    """The `${cwd:}` resolver (src/cli/resolvers.py): the folder a command was started from, conf/paths' root.

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
    down: `pytest tests/training/test_scale_out.py -m 'slow or not slow' -k 'sweep_of_ddp or ranks_of_a'` passes without
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


# in a sweep's folder: one line per job that failed (its number, reason and overrides)
FAILED_JOBS = "failed_jobs.txt"


class SweepJobFailed(Exception):
    """A sweep job's failure, as an exception Hydra's launcher records (and goes on to the next job from)."""

    def __init__(self, record: Path):
        super().__init__(f"a job of the sweep failed: {record}")
        self.record = record

    def summary(self) -> tuple[str, int]:
        """The end of the sweep in one line, and its exit code: 2 when every failure was bad input, else 1."""
        failures = [line.partition(" (overrides: ")[0] for line in self.record.read_text().splitlines()]
        shown = "; ".join(failures[:3]) + ("; ..." if len(failures) > 3 else "")
        line = f"{len(failures)} job(s) of the sweep failed: {shown} (all in {self.record})"
        return line, 2 if all(": bad input: " in failure for failure in failures) else 1


@contextmanager
def failed_job_recorded():
    """A job of a sweep (-m) that fails is recorded in `<sweep dir>/failed_jobs.txt` and ends as an exception,
    so that the sweep goes on to its other jobs; a signal (exit 128 + n) still stops the whole sweep.

    Hydra 1.3.8's launchers record a job's Exception and go on, but a SystemExit, which vitlab's one-line user
    errors and Lightning's Ctrl-C end in, stops the sweep there and leaves no trace of it in the sweep's folder
    (hydra/core/utils.py, `run_job`, catches Exception only). After the last job, the basic sweeper raises the
    first failed job's exception (`JobReturn.return_value`): `config_errors_in_one_line` reports it as one line.

    Remove when: Hydra records a job that ends in SystemExit and goes on (then keep the one-line summary)."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        yield
        return
    try:
        yield
    except Exception as err:  # its traceback is in the job's log (src/runs/guard.py)
        reason = f"crash: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        raise SweepJobFailed(_record_failure(hydra_cfg, reason)) from err
    except SystemExit as exit_:
        if exit_.code in (0, None) or (isinstance(exit_.code, int) and exit_.code >= 128):
            raise
        cause = user_error_in(exit_.__context__) or exit_.__context__
        raise SweepJobFailed(_record_failure(hydra_cfg, f"bad input: {cause}")) from None


# the failed_jobs.txt this process wrote last: where the end of a sweep whose jobs ran in-process finds them
_recorded: dict[str, Path | None] = {"file": None}


def _record_failure(hydra_cfg: DictConfig, reason: str) -> Path:
    record = Path(hydra_cfg.runtime.output_dir).parent / FAILED_JOBS
    with open(record, "a") as file:
        file.write(f"job {hydra_cfg.job.num}: {reason} (overrides: {' '.join(hydra_cfg.overrides.task)})\n")
    _recorded["file"] = record
    return record


def config_errors_in_one_line(remove_unused_run_dir: Callable[[Path], None]) -> None:
    """A command line Hydra cannot apply to the config, reported as one `error:` line with its fix, exit 2.

    Hydra 1.3.8 prints such an error (`trainer.max_epoch=3`, `trainer.enable_progress_bar=false`: no such key;
    `experiment=` of a file that is missing; an override it cannot parse) in four to six lines ending in "Set the
    environment variable HYDRA_FULL_ERROR=1 for a complete stack trace", and exits 1: hydra/_internal/utils.py,
    `run_and_report`, which `_run_app` looks up as a module global and which has no hook for an app's own
    messages. So it is wrapped, and `one_line_report` turns into one line: a ConfigCompositionException or
    OverrideParseException; a UserError that a resolver of the hydra config raises (src/runs/folders.py `config_subdir`:
    a fresh run into a folder that holds a run, or one whose lock another process holds); the end of a sweep
    with failed jobs (`failed_job_recorded`); and an OSError of Hydra's own writes (a read-only or full outputs
    folder, after which `remove_unused_run_dir` removes what Hydra wrote into the run dir). Every other error,
    and all of them under HYDRA_FULL_ERROR=1, are Hydra's to report as before. Installed by src/cli/exits.py
    `exit_on_unknown_option`, which every Hydra command calls before `main()` (src/cli/command.py).

    Remove when: the pinned Hydra lets an app report composition errors itself (then tests/cli/test_train_cli.py's
    test of a key that is not in the config tells what to move)."""
    import hydra._internal.utils as hydra_utils

    report = hydra_utils.run_and_report
    if getattr(report, "in_one_line", False):
        return

    def run_and_report(func):
        def run():
            try:
                return func()
            except Exception as err:
                reported = (
                    None
                    if os.environ.get("HYDRA_FULL_ERROR") == "1"
                    else one_line_report(err, remove_unused_run_dir)
                )
                if reported is None:
                    raise
                line, code = reported
                print(f"error: {line}", file=sys.stderr)
                sys.exit(code)

        return report(run)

    run_and_report.in_one_line = True
    hydra_utils.run_and_report = run_and_report


def one_line_report(err: Exception, remove_unused_run_dir: Callable[[Path], None]) -> tuple[str, int] | None:
    """The `error:` line and exit code for an error Hydra would report in a paragraph or a traceback; None for
    one that Hydra reports as before."""
    if isinstance(err, ConfigCompositionException | OverrideParseException):
        return config_error_line(err), 2
    if isinstance(err, SweepJobFailed):  # after the last job of a sweep (failed_job_recorded)
        return err.summary()
    if isinstance(
        err, InterpolationResolutionError
    ):  # a resolver of the hydra config refused (src/runs/folders.py)
        cause = user_error_in(err)
        return (str(cause), 2) if cause is not None else None
    if isinstance(err, ValueError) and str(err) == "No trials are completed yet." and _recorded["file"]:
        line, code = SweepJobFailed(_recorded["file"]).summary()  # Optuna's sweeper asked for the best trial
        return f"no trial of the Optuna search completed; {line}", code
    if isinstance(err, OSError) and not _raised_in_vitlab(err):  # Hydra's own writes: read-only, full, ...
        run_dir = _hydra_job_dir(err)
        line = unwritable_line(err, run_dir)
        if run_dir:  # what Hydra wrote before it failed (.hydra/, an empty log), if that is all
            remove_unused_run_dir(Path(run_dir))
        return line, 2
    return None


def _raised_in_vitlab(err: BaseException) -> bool:
    """Whether vitlab's code (the `src` package, but for this wrapper) is on the traceback: a job's own error,
    which its log has already."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {os.path.abspath(frame.filename) for frame in traceback.extract_tb(err.__traceback__)}
    return any(file.startswith(package + os.sep) for file in files - {os.path.abspath(__file__)})


def _hydra_job_dir(err: BaseException) -> str | None:
    """The run dir Hydra's `run_job` was setting up when `err` was raised (its local `output_dir`), if it was."""
    frame = err.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "run_job" and "output_dir" in frame.tb_frame.f_locals:
            return str(frame.tb_frame.f_locals["output_dir"])
        frame = frame.tb_next
    return None


def unwritable_line(err: OSError, run_dir: str | None) -> str:
    """What Hydra could not write, and where to write instead."""
    if err.errno == errno.ENOSPC:
        return disk_full_message(err.filename or run_dir or os.getcwd())
    return (
        f"cannot write {err.filename or 'the run folder'}: {err.strerror}. Pass paths.log_dir=<a folder you can "
        "write to> (or hydra.run.dir=...)"
    )


def config_error_line(err: Exception) -> str:
    """`trainer.max_epoch: no such key in the config (did you mean trainer.max_epochs?); to add it, use
    +trainer.max_epoch=3`; an override it cannot parse named with the parser's reason; any other message with its
    lines (and its cause's first) joined by "; "."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    cause = err.__cause__
    if isinstance(err, OverrideParseException):
        reason = lines[1] if lines[0].startswith("Error parsing override") and len(lines) > 1 else lines[0]
        prefix = "LexerNoViableAltException: "
        if reason.startswith(prefix):  # its next line has a caret under the character
            character = err.override[str(err).splitlines()[1].index("^") - len(prefix)]
            reason = f"the character {character!r}: quote a value that has one"
        grammar = re.search(r"https://\S+", str(err))
        return f"{err.override}: not an override Hydra can parse ({reason})" + (
            f"; the grammar: {grammar[0]}" if grammar else ""
        )
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and cause.full_key and len(lines) == 2:
        parent = cause.full_key.rpartition(".")[0]
        keys = [str(key) for key in cause.parent_node] if isinstance(cause.parent_node, DictConfig) else []
        close = difflib.get_close_matches(str(cause.key), keys, n=1, cutoff=0.8)
        hint = f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else ""
        fix = lines[1].removeprefix("To append to your config use ")
        return f"{cause.full_key}: no such key in the config{hint}; to add it, use {fix}"
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(lines)
