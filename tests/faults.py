"""Fault injection for tests, through the publish seam :func:`billing_tiers.store.publish_checkpoint`.

Production code knows nothing of faults: it calls ``publish_checkpoint(step)`` at each publish step
(``staged:<table>``, ``before_journal``, ``after_journal``, ``moved:<table>``, ``before_manifest``,
``after_manifest``), which does nothing. :func:`fail_at` replaces it for the duration of a ``with``
block by one that raises :class:`InjectedFault` the n-th time a chosen step is reached;
``tests/pause_runner.py`` replaces it in a real CLI process by one that stops there to be killed.
:func:`flip_bytes` damages a file in place, as a bad disk or a careless copy would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import billing_tiers.store

STEPS_BEFORE_THE_COMMIT_POINT = ("staged:", "before_journal")
"""Steps (or step prefixes) reached before the journal is written: a fault there leaves the month as
it was; at or after ``after_journal`` recovery rolls the publish forward to the new month."""


class InjectedFault(RuntimeError):
    """Raised by fault injection in tests; never by the pipeline itself."""


def before_the_commit_point(step: str) -> bool:
    """True for a publish step before the journal is written (the month stays as it was)."""
    return step.startswith(STEPS_BEFORE_THE_COMMIT_POINT)


@contextlib.contextmanager
def fail_at(step: str, *, occurrence: int = 1) -> Iterator[None]:
    """Raise :class:`InjectedFault` at publish ``step`` the ``occurrence``-th time it is reached in
    this block. Each step is reached once per month published (``staged:``/``moved:<table>`` once per
    table of a month), so ``occurrence=2`` faults the second month a backfill publishes; the
    recovery a run starts with passes through ``moved:<table>``, ``before_manifest`` and
    ``after_manifest`` too when it finishes an interrupted publish, and those count."""
    if occurrence < 1:
        raise ValueError("occurrence counts from 1")
    seen = 0

    def checkpoint(reached: str) -> None:
        nonlocal seen
        if reached == step:
            seen += 1
            if seen == occurrence:
                raise InjectedFault(f"injected fault at {step} (occurrence {occurrence})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(billing_tiers.store, "publish_checkpoint", checkpoint)
        yield


def flip_bytes(path: Path) -> Path:
    """Invert 8 bytes in the middle of ``path`` (its size stays the same); returns ``path``."""
    data = bytearray(path.read_bytes())
    for index in range(len(data) // 2, len(data) // 2 + 8):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))
    return path
