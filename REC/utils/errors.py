"""The one error policy of every command.

``UserError`` and its subclasses (``ConfigError``, ``DataError``, ``CheckpointError``, ``DamagedFileError``, ...)
mean that something the user gave is wrong: a config key, a data file, a run directory, a checkpoint, a command-
line value. Their message names it and what was expected, so a command prints it as one line, ``error: ...``, and
exits with status 2. Any other exception is a bug (in PixelRec or in a library) and keeps its traceback: a command
that caught ``ValueError`` at its top would print a numpy shape error as a tidy line that blames the input.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user gave is wrong; the message says what and what was expected."""

