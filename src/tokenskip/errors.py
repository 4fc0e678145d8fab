"""The project's error classes: every *expected* failure derives from :class:`TokenskipError`.

The command line turns these (and ``ValueError``/``OSError``/``ImportError``, the standard kinds of bad
input, missing files and missing packages) into one line on stderr with exit status 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class TokenskipError(Exception):
    """Base of every failure the user can fix (bad input, missing file, missing optional package)."""


class MissingDependencyError(TokenskipError, ImportError):
    """An optional package a chosen feature needs is not installed; the message says what to install."""


class GradingError(TokenskipError, RuntimeError):
    """The grading worker (math-verify in a child process) could not start or answer."""
