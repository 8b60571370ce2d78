"""The project's error types: one base for every error a user can cause, so that front doors (the CLI) turn
exactly those into a one-line message and let everything else (a bug) show its traceback.

Each user error also derives from the matching builtin (``ValueError``, ``FileNotFoundError``, ...), so
callers that catch the builtin keep working. Raise a :class:`UserError` (or a subclass) for bad input
(a value, a file, a data set, a recipe, an output location); raise plain builtins for programming errors.
"""

from __future__ import annotations

__all__ = [
    "CorruptCheckpointError",
    "InputNotFoundError",
    "NonFiniteLossError",
    "OutputExistsError",
    "OutputNotWritableError",
    "SauCompressError",
    "UserError",
]


class SauCompressError(Exception):
    """Base of every error sau-compress raises on purpose for the user to act on."""


class UserError(SauCompressError, ValueError):
    """Bad input: the message names the input and what was expected."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A named input (model, data set, recipe, checkpoint) does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """The output folder exists and ``overwrite`` was not given."""


class OutputNotWritableError(UserError, PermissionError):
    """The output location cannot be created or written (the message names it and why)."""


class CorruptCheckpointError(UserError):
    """A checkpoint file or tensor does not hold what its format promises (the message names file and tensor)."""


class NonFiniteLossError(SauCompressError, FloatingPointError, ValueError):
    """A loss or gradient became NaN/inf; the model is left as it was before that step."""
