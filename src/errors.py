"""Errors a user can fix, reported as one clear message instead of a traceback."""

import logging


class UserError(Exception):
    """Bad input that the user can fix: the message names the problem and the fix."""


class DataNotFoundError(UserError):
    pass


def user_error_in(err: BaseException) -> UserError | None:
    """The UserError that `err` is or wraps: hydra.utils.instantiate wraps what a constructor raises (a model's
    UserError, say), OmegaConf what a resolver raises (data.num_classes of a folder that has no classes; as
    context, not cause)."""
    cause = err
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__ or cause.__context__
    return cause


def log_traceback_to_files(exc_info) -> None:
    """The full traceback into the run's log file(s) only: the screen shows one line, a bug report needs more."""
    record = logging.LogRecord("src", logging.ERROR, __file__, 0, "the run failed:", None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
