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


class ConfigError(PathsegError):
    """A configuration key or value is invalid."""
