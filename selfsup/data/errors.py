"""Errors raised by :mod:`selfsup.data`.

Every message is one line that names the problem and the fix, so a user
can act on it without reading a traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """A dataset could not be loaded or used as asked (bad format, bad values, too small)."""


class DataPathError(DataError, FileNotFoundError):
    """The dataset path does not exist (catchable as ``FileNotFoundError`` or ``DataError``)."""


class DataWarning(UserWarning):
    """The data loaded, with a caveat (e.g. unreadable images skipped); the message says how to change it."""
