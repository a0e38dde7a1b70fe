"""How a command ends on bad input: one `error:` line naming the problem and its fix, exit code 2, and the full
traceback in the run's log file."""

import difflib
import functools
import os
import re
import sys
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf.errors import InterpolationResolutionError

from src.errors import UserError, log_traceback_to_files, user_error_in


def exit_on_user_error(task):
    """Runs an entry point's task; a UserError ends the program with its message and exit code 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except (UserError, InstantiationException, InterpolationResolutionError) as err:
            cause = user_error_in(err)
            if cause is None:
                raise
            log_traceback_to_files(sys.exc_info())
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # the other DDP processes hit the same error
                print(f"error: {ANSI_ESCAPE.sub('', str(cause))}", file=sys.stderr)
            sys.exit(2)

    return wrapper


# colour and bold codes in upstream messages (torch's weights_only refusal): raw escapes in logs and files
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

CONFIG_DIR = Path(__file__).resolve().parents[2] / "conf"


def exit_on_unknown_option(args: list[str] | None = None, config_dir: Path = CONFIG_DIR) -> None:
    """`augment=randaugmen`: one `error:` line with the options of the group, where Hydra prints a paragraph
    (exit 1) that never says which option was meant. Groups of Hydra's own and its plugins (hydra/...) are left
    to Hydra; so is anything its parser rejects, which, like a key that is not in the config, Hydra then reports
    in one line too (src/upstream_fixes/hydra.py, `config_errors_in_one_line`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    from src.runs.guard import tidy_failed
    from src.upstream_fixes.hydra import config_errors_in_one_line

    config_errors_in_one_line(lambda run_dir: tidy_failed(run_dir, user_error=True))

    try:
        overrides = OverridesParser.create().parse_overrides(
            [a for a in (sys.argv[1:] if args is None else args) if a[:1] != "-"]
        )
    except Exception:
        return
    for override in overrides:
        group = override.key_or_group
        folder = config_dir / group
        if override.is_delete() or group.startswith("hydra") or not folder.is_dir():
            continue
        value = override.value()
        if isinstance(value, Glob):  # Hydra matches it against the group's options, at compose time
            continue
        chosen = list(override.sweep_string_iterator()) if override.is_sweep_override() else value
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        for option in chosen if isinstance(chosen, list) else [chosen]:
            if option is not None and str(option) not in options:
                close = difflib.get_close_matches(str(option), options, n=1)
                hint = f" (did you mean {group}={close[0]}?)" if close else ""
                print(f"error: {group}={option}: no such option{hint}; the options are {', '.join(options)}",
                      file=sys.stderr)  # fmt: skip
                sys.exit(2)
