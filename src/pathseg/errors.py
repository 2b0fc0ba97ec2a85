"""Errors a user can act on.

Everything that is the user's fault (a bad file, a bad config key) raises a subclass of
:class:`PathsegError`; the CLI prints its message as one line and exits with code 2
instead of showing a traceback.
"""

from __future__ import annotations

from pathlib import Path


class PathsegError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class DataError(PathsegError):
    """A data file or folder is unusable. The message always names the path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    @staticmethod
    def raise_first(errors: list[DataError]) -> None:
        """Raise the first of the problems a check collected, counting the others in its
        message (one line for the user, however many files are bad); nothing when empty."""
        if not errors:
            return
        first = errors[0]
        if len(errors) == 1:
            raise first
        raise DataError(
            first.path, f"{first.problem} ({len(errors) - 1} more samples have problems)"
        ) from first


class ConfigError(PathsegError):
    """A configuration key or value is invalid."""
