"""Progress bars for long work (corpus writing, feature building, epochs, trials).

One helper so every command shows progress the same way, on stderr, and stays quiet when asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_stderr = Console(stderr=True)


class ProgressHandle:
    """``handle(n)`` advances the bar; ``handle.describe(text)`` changes its label."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar, self._task = bar, task

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)


@contextlib.contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True) -> Iterator[ProgressHandle]:
    """Yield a ``ProgressHandle``; renders a bar on stderr while the block runs."""
    if not enabled:
        yield ProgressHandle()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=_stderr, transient=False) as bar:
        yield ProgressHandle(bar, bar.add_task(description, total=total))
