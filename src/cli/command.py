"""The one tail of every command's `if __name__ == "__main__":` block."""

import sys
from collections.abc import Callable

from src.cli.exits import exit_on_unknown_option
from src.cli.garbage_collector import freeze_imports


def run_command(
    main: Callable[[], object],
    rewrite_argv: Callable[[list[str]], list[str]] | None = None,
    hydra_options: bool = True,
) -> None:
    """Runs a command's `main` as `python -m src.<command>` does: what the command imported leaves the garbage
    collector's walks (src/cli/garbage_collector.py); with `hydra_options`, a config-group option that conf/ does
    not have ends the command with one `error:` line before Hydra starts; `rewrite_argv` then adjusts the
    command line (src.eval adds the checkpoint's data options)."""
    freeze_imports()
    if hydra_options:
        exit_on_unknown_option()
    if rewrite_argv is not None:
        sys.argv = rewrite_argv(sys.argv)
    main()
