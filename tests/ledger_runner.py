"""Real processes writing the override ledger, for the tests of its crash safety and concurrency.

``python -m tests.ledger_runner pause STEP MARKER ARGS...`` runs ``billing-tiers ARGS...`` with the
ledger seam :func:`billing_tiers.overrides.ledger_checkpoint` replaced by one that, at ``STEP``
(``written``, ``renamed`` or ``durable``), writes ``MARKER`` and sleeps, to be killed there.

``python -m tests.ledger_runner adds STORE BARRIER BY SUBSCRIBER...`` waits for the file ``BARRIER``
(so that several processes, imports done, start together), then requests one block override per
subscriber, each as its own batch, and prints the id or ``refused: <message>`` per line. The seam
sleeps a little between the temporary file and its rename, so that the processes contend for the lock.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import billing_tiers.overrides


def pause(step: str, marker: Path, args: list[str]) -> None:
    def checkpoint(reached: str) -> None:
        if reached == step:
            marker.write_text(reached)
            time.sleep(600)

    billing_tiers.overrides.ledger_checkpoint = checkpoint
    from billing_tiers.cli import app

    app(args)


def adds(store: Path, barrier: Path, by: str, subscribers: list[str]) -> None:
    from billing_tiers.errors import PipelineError
    from billing_tiers.overrides import OverrideRequest, add_overrides
    from billing_tiers.store import Store

    billing_tiers.overrides.ledger_checkpoint = lambda step: time.sleep(0.02) if step == "written" else None
    read_ledger = billing_tiers.overrides.read_ledger
    read_ledger(Store(store))  # import everything the writer needs before the start
    while not barrier.exists():
        time.sleep(0.01)
    for subscriber in subscribers:
        request = OverrideRequest("unicom_vip", subscriber, "block", None, "2024-01", None, "fraud check")
        try:
            print(add_overrides(Store(store), [request], by)[0], flush=True)
        except PipelineError as exc:
            print(f"refused: {exc}", flush=True)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "pause":
        pause(rest[0], Path(rest[1]), rest[2:])
    elif mode == "adds":
        adds(Path(rest[0]), Path(rest[1]), rest[2], rest[3:])
    else:
        raise SystemExit(f"unknown mode {mode}")
