"""Errors a user can fix, reported as one clear message instead of a traceback."""

import logging


class UserError(Exception):
    """Bad input that the user can fix: the message names the problem and the fix."""


class DataNotFoundError(UserError):
    pass


def log_traceback_to_files(exc_info) -> None:
    """The full traceback into the run's log file(s) only: the screen shows one line, a bug report needs more."""
    record = logging.LogRecord("src", logging.ERROR, __file__, 0, "the run failed:", None, exc_info)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
