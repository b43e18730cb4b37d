"""Stores for tests: made on purpose, as `billing-tiers init` makes them."""

from __future__ import annotations

from pathlib import Path

from billing_tiers.store import Store


def new_store(path: Path) -> Path:
    """Initialise a store at ``path`` (a new or empty folder) and return the path."""
    Store(path).initialise()
    return path


def publish_months(store: Path, extracts: Path, months: list[str]) -> None:
    """Publish ``months`` in order with the default rulebook and no Prefect (the run path itself)."""
    import datetime as dt

    from flows.run_month import run_month
    from rulebook import load_rulebook

    build_on = None
    for label in months:
        month = dt.date.fromisoformat(f"{label}-01")
        run_month(
            store=Store(store),
            extracts=extracts,
            month=month,
            build_on=build_on,
            rulebook=load_rulebook(),
            rulebook_path=None,
            override_guards=False,
        )
        build_on = month
