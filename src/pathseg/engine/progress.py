"""Progress display: a rich bar in a terminal, plain periodic lines in logs and CI."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepProgress:
    """Shows step, loss and ETA. Plain lines (every ``line_every`` steps) when stdout is not a terminal."""

    def __init__(
        self,
        total: int,
        start: int = 0,
        description: str = "train",
        enabled: bool = True,
        line_every: int = 50,
    ) -> None:
        self.total, self.start, self.enabled, self.line_every = total, start, enabled, line_every
        self.console = Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self.started = time.perf_counter()
        self.description = description
        self.bar: Progress | None = None
        if self.interactive:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.bar.add_task(description, total=total, completed=start, status="")
            self.bar.start()

    def update(self, step: int, status: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, status=status)
            return
        if step % self.line_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            done = step - self.start
            eta = elapsed / done * (self.total - step) if done else 0.0
            print(
                f"[{self.description}] step {step}/{self.total} {status} elapsed {_format_seconds(elapsed)} "
                f"ETA {_format_seconds(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
