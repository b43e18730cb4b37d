"""The command line's :class:`~billing_tiers.service.RunListener`: notices on stderr, and the progress
of a multi-month command: a bar with month i of N and the time left in a terminal, one plain line per
month otherwise (logs, CI, cron).

The estimate counts from the start of the first month, not from the command's start, so Prefect's
start-up does not inflate it.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from billing_tiers import display
from billing_tiers.months import month_label


class ConsoleListener:
    """Reports a session to the person or script that started the command."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.started: float | None = None
        self.bar: Progress | None = None
        self.task: Any = None

    def notice(self, message: str) -> None:
        display.line(display.literal(message), stderr=True)

    def month_started(self, month: dt.date, index: int, total: int) -> None:
        if self.started is None:
            self.started = time.monotonic()
            if sys.stderr.isatty() and total > 1:
                self.bar = Progress(
                    TextColumn(self.command),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("months"),
                    TimeElapsedColumn(),
                    TextColumn("left"),
                    TimeRemainingColumn(),
                    TextColumn("{task.description}"),
                    console=display.err(),
                    transient=False,
                )
                self.task = self.bar.add_task(month_label(month), total=total)
                self.bar.start()

    def month_done(self, manifest: dict[str, Any], index: int, total: int) -> None:
        label = manifest["billing_month"]
        done = index + 1
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=label)
            if done == total:
                self.close()
            return
        if total <= 1:
            return
        elapsed = time.monotonic() - (self.started or time.monotonic())
        left = elapsed / done * (total - done)
        display.line(
            f"{self.command}: month {done} of {total} ({label}) published; {elapsed:.0f} s elapsed, "
            f"about {left:.0f} s left",
            stderr=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
