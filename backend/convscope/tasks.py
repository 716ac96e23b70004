"""The one progress / cancellation protocol every long operation speaks.

A long operation (occlusion, an analysis, a scan, a study, a feature visualisation)
takes an optional `task: Task`. Between two units of work it calls
`task.report(done, total)` and `checkpoint(task, done, total)`; the latter raises
`Cancelled` when `task.should_stop()` answers true. The API's job manager
implements `Task` once (`convscope.api.jobs.Job`), and `ConsoleTask` implements it
once for every CLI command (a tqdm bar on stderr). Nothing here imports torch or
the web stack.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Task(Protocol):
    """What a long operation may ask of whoever runs it."""

    def report(self, done: int, total: int) -> None:
        """`done` of `total` units are finished (monotonic in `done`)."""

    def should_stop(self) -> bool:
        """True once the caller wants the operation to stop at the next checkpoint."""


class Cancelled(Exception):
    """Raised by a long operation that stopped because its task asked it to."""

    def __init__(self, done: int = 0, total: int = 0, what: str = "operation") -> None:
        super().__init__(f"{what} cancelled after {done} of {total} steps")
        self.done = done
        self.total = total


class NullTask:
    """No progress shown, never stops: the default when a caller passes no task."""

    def report(self, done: int, total: int) -> None:
        return None

    def should_stop(self) -> bool:
        return False


NULL_TASK = NullTask()


class CallbackTask:
    """A `Task` from two plain callables (either may be None)."""

    def __init__(
        self,
        progress: Callable[[int, int], Any] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._progress = progress
        self._should_stop = should_stop

    def report(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(done, total)

    def should_stop(self) -> bool:
        return bool(self._should_stop()) if self._should_stop is not None else False


def as_task(task: Task | None) -> Task:
    """`task`, or the null task when None."""
    return NULL_TASK if task is None else task


def checkpoint(task: Task | None, done: int, total: int, what: str = "operation") -> None:
    """Report progress, then raise `Cancelled` if the task asks to stop."""
    task = as_task(task)
    task.report(done, total)
    if task.should_stop():
        raise Cancelled(done, total, what)


class ConsoleTask:
    """The CLI's `Task`: a tqdm progress bar on stderr (hidden when not a terminal).

    Use as a context manager; Ctrl-C is not turned into `should_stop()` here (the
    CLI lets KeyboardInterrupt end the process). `show=True` draws the bar even when
    stderr is no terminal, `show=False` never draws it."""

    def __init__(self, desc: str, unit: str = "step", total: int | None = None, show: bool | None = None) -> None:
        self.desc = desc
        self.unit = unit
        self.total = total
        self.show = show
        self.done = 0
        self._bar: Any = None

    def __enter__(self) -> ConsoleTask:
        from tqdm import tqdm

        disable = None if self.show is None else not self.show
        self._bar = tqdm(
            total=self.total,
            unit=self.unit,
            desc=self.desc,
            file=sys.stderr,
            delay=1.0,
            disable=disable,
            dynamic_ncols=True,
        )
        return self

    def report(self, done: int, total: int) -> None:
        self.done, self.total = done, total or self.total
        if self._bar is None:
            return
        if done < self._bar.n:  # a new round (the next run of an ablation): start the bar again
            self._bar.reset(total=total or self._bar.total)
        elif total and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()
        self._bar.update(max(0, done - self._bar.n))

    def should_stop(self) -> bool:
        return False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
