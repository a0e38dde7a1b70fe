"""Errors a user can fix, reported as one clear message instead of a traceback."""

import functools
import os
import sys

from hydra.errors import InstantiationException


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
        except (UserError, InstantiationException) as err:
            # hydra.utils.instantiate wraps what a constructor raises (a model's UserError, say): unwrap it
            cause = err
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__
            if cause is None:
                raise
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # the other DDP processes hit the same error
                print(f"error: {cause}", file=sys.stderr)
            sys.exit(2)

    return wrapper
