"""Progress of a multi-month command: a bar with month i of N and the time left in a terminal,
one plain line per month otherwise (logs, CI, cron).

The CLI opens a :func:`months` context around a backfill; the flow, running in the same process,
calls :func:`month_done` after each published month. Without an open context it does nothing, so
flows started by a Prefect worker are unaffected.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class _Tracker:
    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    bar: Progress | None = None
    task: Any = None


_current: _Tracker | None = None


@contextlib.contextmanager
def months(total: int) -> Iterator[None]:
    """Report progress over ``total`` months until the context ends."""
    global _current
    console = Console(stderr=True)
    tracker = _Tracker(total=total)
    if sys.stderr.isatty() and total > 1:
        tracker.bar = Progress(
            TextColumn("[bold]backfill"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("months"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        tracker.task = tracker.bar.add_task("", total=total)
        tracker.bar.start()
    _current = tracker
    try:
        yield
    finally:
        _current = None
        if tracker.bar is not None:
            tracker.bar.stop()


def month_done(label: str) -> None:
    """One more month is published."""
    tracker = _current
    if tracker is None:
        return
    tracker.done += 1
    elapsed = time.monotonic() - tracker.started
    if tracker.bar is not None:
        tracker.bar.update(tracker.task, advance=1, description=label)
        return
    left = elapsed / tracker.done * (tracker.total - tracker.done)
    print(
        f"backfill: month {tracker.done} of {tracker.total} ({label}) published; "
        f"{elapsed:.0f} s elapsed, about {left:.0f} s left",
        file=sys.stderr,
        flush=True,
    )
