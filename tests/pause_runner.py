"""Run the billing-tiers CLI in this process and stop it at a chosen publish step, to be killed there.

    python -m tests.pause_runner --pause-at STEP [--occurrence N] --marker FILE -- <billing-tiers args>

It replaces the publish seam :func:`billing_tiers.store.publish_checkpoint` so that the
``occurrence``-th time the publish reaches ``STEP`` (``staged:<table>``, ``before_journal``,
``after_journal``, ``moved:<table>``, ``before_manifest``, ``after_manifest``; each once per month
published, so ``--occurrence 2`` is the second month of a backfill on a store with no interrupted
publish to finish first, see ``tests/faults.py``) it writes ``FILE`` atomically
(``STEP OCCURRENCE PID``) and then blocks, publishing nothing more, until it is killed. The kill
tests start it in a new session, wait for the marker and ``kill -9`` the process group: the kill
lands exactly at that step, whatever the machine's speed. Only a test starts this; if no test kills
it, it gives up after ``--give-up`` seconds (exit 3) rather than stay behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import billing_tiers.store


def write_marker(marker: Path, text: str) -> None:
    """Write the marker whole or not at all: a reader never finds it half-written."""
    temporary = marker.with_name(f".{marker.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, marker)


def pause_at(target: str, occurrence: int, marker: Path, give_up: float) -> None:
    """Replace the publish seam: the ``occurrence``-th ``target`` step writes ``marker`` and blocks."""
    seen = 0

    def checkpoint(step: str) -> None:
        nonlocal seen
        if step != target:
            return
        seen += 1
        if seen != occurrence:
            return
        write_marker(marker, f"{step} {occurrence} {os.getpid()}\n")
        threading.Event().wait(give_up)  # never set: the test kills this process here
        print(f"pause_runner: nobody killed the run at {step} in {give_up:.0f} s", file=sys.stderr)
        os._exit(3)

    billing_tiers.store.publish_checkpoint = checkpoint


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        raise SystemExit("usage: python -m tests.pause_runner --pause-at STEP --marker FILE -- <billing-tiers args>")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m tests.pause_runner")
    parser.add_argument("--pause-at", required=True, help="the publish step to stop at")
    parser.add_argument("--occurrence", type=int, default=1, help="stop the n-th time the step is reached")
    parser.add_argument("--marker", type=Path, required=True, help="file written when the run has stopped")
    parser.add_argument("--give-up", type=float, default=600.0, help="exit 3 if not killed within this time")
    options = parser.parse_args(argv[:split])
    if options.occurrence < 1:
        parser.error("--occurrence counts from 1")
    pause_at(options.pause_at, options.occurrence, options.marker, options.give_up)

    from billing_tiers.cli import app

    app(args=argv[split + 1 :], prog_name="billing-tiers")
    return 0  # typer exits itself; reached only if it returns


if __name__ == "__main__":
    sys.exit(main())
