"""Python's cyclic garbage collector kept off the objects a command imports: seconds of every run's start and exit.

Importing Lightning (and through it torchmetrics, torchvision, torch._dynamo, scipy.signal) leaves about 750 000
objects that live as long as the process, and CPython 3.11 walks all of them in every full collection: about seven
while a quickstart run imports (0.9 s), one or more while it trains, and again as the interpreter shuts down
(1.3 s with Lightning loaded, 0.45 s with torch alone). So a command pauses the collector while its modules load
(`pause_for_imports`, from src/__init__.py) and then moves everything loaded into the permanent generation
(`freeze_imports`, first thing in `run_command`, the tail of every command: src/cli/command.py), which no
collection walks again: gc.disable early, gc.freeze, gc.enable is the sequence the `gc` module's documentation
gives for forked servers.
Objects made later (the model, the Trainer, the data) are collected as always; what is frozen is modules, classes
and functions, which are never garbage before exit. Imported any other way (pytest, a notebook, a SLURM job),
nothing changes.

Measured: the quickstart benchmark, `python -m src.bench.quickstart` (docs/speed.md, "Start-up: the garbage collector pause")."""

import gc
import sys

# the commands whose `__main__` block is run_command (tests/cli/test_garbage_collector.py)
COMMANDS = (
    "src.train",
    "src.eval",
    "src.predict",
    "src.export",
    "src.explain",
    "src.token_maps",
    "src.serve",
    "src.demo",
)


def started_as_command(argv: list[str]) -> bool:
    """Whether the interpreter was started as `python [options] -m <one of COMMANDS> ...` (DDP ranks too)."""
    args = iter(argv[1:])
    for arg in args:
        if arg.startswith("-m"):
            return (arg[2:] or next(args, None)) in COMMANDS
        if arg in ("-X", "-W", "--check-hash-based-pycs"):  # the interpreter's options that take a value
            next(args, None)
        elif not arg.startswith("-") or arg.startswith("-c") or arg == "-":  # a script, -c code or stdin
            return False
    return False


def pause_for_imports() -> None:
    if started_as_command(sys.orig_argv):
        gc.disable()


def freeze_imports() -> None:
    """Ends pause_for_imports: what is loaded now goes into the permanent generation, and collection resumes."""
    gc.freeze()
    gc.enable()
