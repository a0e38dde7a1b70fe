import os
import subprocess
import sys
import textwrap

import pytest

from src.cli.garbage_collector import COMMANDS, started_as_command
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "argv, command",
    [
        (["python", "-m", "src.train", "experiment=quickstart"], True),
        (["python", "-X", "importtime", "-u", "-m", "src.eval", "ckpt_path=x"], True),
        (["python", "-m", "src.compare", "a", "b"], False),  # not one of COMMANDS: never paused
        (["python", "-m", "pytest", "-m", "src.train"], False),  # pytest's own -m is a marker expression
        (["python", "-c", "import src.train"], False),
        (["python", "-m"], False),
        (["python", "script.py", "-m", "src.train"], False),
        (["python", "-W", "ignore", "-msrc.predict", "image.png"], True),
    ],
)
def test_started_as_command_reads_the_interpreter_command_line(argv, command):
    assert started_as_command(argv) is command


def gc_state_script(command_line: list[str], module: str, args: list[str]) -> str:
    """A fresh interpreter that takes `command_line` for its own, imports vitlab, runs `module` as __main__ with
    `args` (--help: nothing is trained) and prints the collector's state before and after."""
    return textwrap.dedent(f"""
        import gc, runpy, sys
        sys.orig_argv[:] = {command_line!r}
        import src
        print("after import src:", gc.isenabled(), gc.get_freeze_count())
        sys.argv = [{module!r}, *{args!r}]
        try:
            runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
        print("after the command:", gc.isenabled(), gc.get_freeze_count())
    """)


def run_script(script: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [line.split(": ")[1].split() for line in result.stdout.splitlines() if line.startswith("after ")]


@pytest.mark.parametrize("module", COMMANDS)
def test_a_command_imports_with_the_collector_paused_then_freezes_what_it_loaded(module):
    before, after = run_script(gc_state_script([sys.executable, "-m", module], module, ["--help"]))
    assert before == ["False", "0"]  # paused from the first vitlab import on, nothing frozen yet
    # collecting again once the command runs, past what it loaded, frozen: src.train 750 000 objects, src.predict
    # 69 000 (it loads torch when a model needs it)
    assert after[0] == "True"
    assert int(after[1]) > 50_000


def test_imported_by_anything_else_the_collector_is_left_alone():
    """pytest, a notebook, a SLURM job (submitit unpickles the task): the collector is never paused or frozen."""
    script = (
        "import gc, src.train, src.predict; print('after import:', gc.isenabled(), gc.get_freeze_count())"
    )
    assert run_script(script) == [["True", "0"]]
