"""Run the ``billing-tiers`` command in this process, paused at one publish step (for tests).

``python -m tests.hold_runner STEP MARKER -- ARGS...`` runs ``billing-tiers ARGS...`` with
:func:`billing_tiers.store.publish_checkpoint` replaced: the first time the publish reaches STEP it
creates the file MARKER and waits (at most 120 s) until the test removes it, then goes on. The
run holds the store's writer lock and its staging all the while, as a slow run would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import billing_tiers.store
from billing_tiers.cli import app


def main() -> None:
    step, marker, separator, *args = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.hold_runner STEP MARKER -- ARGS..."
    flag = Path(marker)
    paused = False

    def checkpoint(reached: str) -> None:
        nonlocal paused
        if reached != step or paused:
            return
        paused = True
        flag.write_text("paused\n")
        deadline = time.monotonic() + 120
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    billing_tiers.store.publish_checkpoint = checkpoint
    sys.argv = ["billing-tiers", *args]
    app()


if __name__ == "__main__":
    main()
