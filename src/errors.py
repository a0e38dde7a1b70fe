"""Errors a user can fix, reported as one clear message instead of a traceback."""

import functools
import sys


class UserError(Exception):
    """Bad input that the user can fix: the message names the problem and the fix."""


class DataNotFoundError(UserError):
    pass


def exit_on_user_error(task):
    """Runs an entry point's task; a UserError ends the program with its message and exit code 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        try:
            return task(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
