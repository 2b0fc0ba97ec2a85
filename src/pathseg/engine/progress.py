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
    """Shows step, loss and ETA. Plain lines (every ``line_every`` steps) when stdout is not a terminal.

    With a time budget (``budget_s``) the ETA is the budget left, not a step-count estimate: the run
    ends when the budget is spent, whatever ``total`` (then only an upper bound) says.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        description: str = "train",
        enabled: bool = True,
        line_every: int = 50,
        budget_s: float | None = None,
        spent_s: float = 0.0,
        unit: str = "step",
    ) -> None:
        self.total, self.start, self.enabled, self.line_every = total, start, enabled, line_every
        self.budget_s = budget_s
        self.console = Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self.started = time.perf_counter()
        self.description = description
        self.unit = unit  # what is counted: "step", "tile", ...
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
            if budget_s is None:
                self.task = self.bar.add_task(description, total=total, completed=start, status="")
            else:  # the bar measures the budget in seconds; the step goes into the status text
                self.task = self.bar.add_task(
                    description + " (budget, s)", total=round(budget_s), completed=round(spent_s), status=""
                )
            self.bar.start()

    def update(self, step: int, status: str, spent_s: float | None = None) -> None:
        if not self.enabled:
            return
        budgeted = self.budget_s is not None and spent_s is not None
        if self.bar is not None:
            if budgeted:
                self.bar.update(
                    self.task,
                    completed=min(round(spent_s), round(self.budget_s)),
                    status=f"step {step} {status}",
                )
            else:
                self.bar.update(self.task, completed=step, status=status)
            return
        if step % self.line_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self.started
            if budgeted:
                eta, of = self.budget_s - spent_s, ""
            else:
                done = step - self.start
                eta, of = (elapsed / done * (self.total - step) if done else 0.0), f"/{self.total}"
            print(
                f"[{self.description}] {self.unit} {step}{of} {status} elapsed {_format_seconds(elapsed)} "
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
