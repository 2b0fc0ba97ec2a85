"""The ``pathseg`` command line. Each command parses its options into a config and calls one function.

Every error caused by input (a bad file, folder or config key) is printed as one line and the
command exits with status 2; anything else is a bug and keeps its traceback.

Commands live in the modules of this package, one per method or job; each has
``register(app)`` and is listed once in ``COMMAND_MODULES``. Command modules import torch and
the methods inside their command functions, so ``pathseg --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable

import typer

from pathseg.cli.common import print_error, print_warning
from pathseg.errors import PathsegError

# The one registration list: pathseg.cli.<name>.register(app) adds that module's commands.
COMMAND_MODULES = ("train", "pretrain", "data", "weak", "demo", "ambiguous", "nuclei")

app = typer.Typer(
    help="Label-efficient segmentation of histopathology images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands(target: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(target)


_register_commands(app)


def _one_line_warnings(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing pathseg's own warning classes (a JPEG mask's
    ``LossyMaskWarning``) as one ``warning:`` line, without the source line Python prints under
    it; other warnings go to ``fallback`` (the usual form)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if category.__module__.startswith("pathseg."):
            print_warning(message)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def main() -> None:
    """Console entry point: ``pathseg``."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            app()
        except PathsegError as err:
            print_error(err)
            sys.exit(2)
