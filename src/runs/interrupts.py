"""A training run stopped by a signal: SIGTERM (what schedulers, containers and `timeout` send) or Ctrl-C
(SIGINT). src.train then exits with 128 + the signal's number (143, 130), keeps its run dir, marks it with an
`INTERRUPTED` file and says how to resume; on SIGTERM during a fit, `checkpoints/last.ckpt` is saved first, at
the end of the batch under way.

What Lightning 2.6 does by itself: during a Trainer call, SIGTERM is noted and the loop raises `SIGTERMException`
at the end of the batch, a SystemExit with no code (exit 0); Ctrl-C ends in `sys.exit(1)`
(lightning/pytorch/trainer/call.py, `_call_and_handle_interrupt`), which reads like a user error. Outside a
Trainer call (data scan, report), SIGTERM would end the process at once: `sigterm_raises` makes it an exception
there, and leaves it to Lightning during Trainer calls. A run stopped by a full disk is kept and marked the same
way (src/runs/guard.py)."""

import shlex
import signal
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.runs.marks import INTERRUPTED


class Terminated(SIGTERMException):
    """SIGTERM outside a Trainer call: as Lightning's SIGTERMException, so that both are handled alike."""


def _raise_terminated(signum, frame) -> None:
    # Lightning's own handler, installed during Trainer calls, calls this one too: it stops at a batch's end
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        raise Terminated()


@contextmanager
def sigterm_raises():
    """SIGTERM raises `Terminated` where no Trainer call handles it (the handler before is restored after)."""
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def stopping_signal(failure: BaseException) -> signal.Signals | None:
    """SIGTERM or SIGINT when `failure` is how a run stopped by that signal ends, else None."""
    if isinstance(failure, SIGTERMException):
        return signal.SIGTERM
    # Lightning's sys.exit(1) after Ctrl-C is raised while it handles the KeyboardInterrupt
    if isinstance(failure, KeyboardInterrupt) or (
        isinstance(failure, SystemExit) and isinstance(failure.__context__, KeyboardInterrupt)
    ):
        return signal.SIGINT
    return None


class LastCheckpoint(ModelCheckpoint):
    """conf/callbacks/last_checkpoint.yaml's ModelCheckpoint (`checkpoints/last.ckpt` after every epoch), which
    with `save_on_exception: true` also saves it when SIGTERM stops a fit, at the end of a whole batch. Not on
    other exceptions: a diverged loss or a bug would replace the last good epoch's weights; nor on Ctrl-C, which
    can land in the middle of an optimizer step."""

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            super().on_exception(trainer, pl_module, exception)


def _resume_command(checkpoint: Path) -> str:
    """The command line that continues this run: its own options, `ckpt_path=` the checkpoint."""
    options = [arg for arg in sys.argv[1:] if not arg.startswith(("ckpt_path=", "hydra.mode="))]
    return shlex.join(["python", "-m", "src.train", *options, f"ckpt_path={checkpoint}"])


def mark_interrupted(run_dir: Path, why: str) -> str:
    """Writes `<run dir>/INTERRUPTED`: why the run stopped (`stopped by SIGTERM`) and how to resume it; returns
    that line, for the screen."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        how = f"resume it with: {_resume_command(checkpoint)}"
    else:
        how = "it saved no checkpoint yet: start it again (or pass hydra.run.dir=<a new folder>)"
    line = f"{why}. {run_dir} is kept; {how}"
    try:
        (run_dir / INTERRUPTED).write_text(f"{datetime.now():%Y-%m-%d %H:%M:%S} {line}\n")
    except OSError as err:  # a full disk, say: the screen still says it
        line += f" (could not write {run_dir / INTERRUPTED}: {err.strerror})"
    else:
        line = line.replace(" is kept;", f" is kept (marked {INTERRUPTED});")
    return line


def unmark(run_dir: Path) -> None:
    """A run that finished is no longer interrupted (a resume that completed it)."""
    (run_dir / INTERRUPTED).unlink(missing_ok=True)


def exit_code(signum: signal.Signals) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (143 for SIGTERM, 130 for Ctrl-C)."""
    return 128 + int(signum)
