"""Errors raised for bad input, bad files and misuse.

Every error that a user can cause derives from :class:`StreamnormError`, so a
pipeline can catch one class. The subclasses also derive from the matching
built-in (``ValueError``, ``TypeError``...) so that code written against those
keeps working.
"""

from __future__ import annotations

__all__ = [
    "StreamnormError",
    "LayoutError",
    "DTypeError",
    "NonFiniteError",
    "IncompatibleStatsError",
    "StatsFileError",
    "SplitNameError",
    "MaskError",
]


class StreamnormError(Exception):
    """Base of every error streamnorm raises for bad input or bad files."""


class LayoutError(StreamnormError, ValueError):
    """A layout string is malformed or does not match a batch."""


class DTypeError(StreamnormError, TypeError):
    """A batch has a dtype that cannot be reduced, or that changed mid-stream."""


class NonFiniteError(StreamnormError, ValueError):
    """A NaN or infinity was met under ``nan_policy="raise"``."""


class IncompatibleStatsError(StreamnormError, ValueError):
    """Two statistics or accumulators cannot be merged (layout, features, dtype)."""


class StatsFileError(StreamnormError, OSError):
    """A stored statistics file is missing, unreadable, malformed or too new."""


class SplitNameError(StreamnormError, ValueError):
    """A split name is not of the form ``[A-Za-z0-9][A-Za-z0-9._-]*``."""


class MaskError(StreamnormError, ValueError):
    """A mask that is not bool or does not broadcast to its batch."""
