"""Progress bars for the long steps a person waits on: starting the stack, training a model.

One rich display; a bar per step or training phase. Used by `clickscore demo` and
`clickscore train`. Pure presentation: callers do the work and report into it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class StepBars:
    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._phases: dict[str, TaskID] = {}

    def __enter__(self) -> StepBars:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """One step of unknown length: a spinner, then a tick when the block ends."""
        task = self._progress.add_task(description, total=1)
        yield
        self._progress.update(task, completed=1)

    def advance(self, phase: str, done: int, total: int) -> None:
        """A counted phase (trainer.fit.encoder_training.StepCallback): its bar is made on
        first report."""
        if phase not in self._phases:
            self._phases[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(self._phases[phase], completed=done, total=total)
