"""Stores for tests: made on purpose, as `billing-tiers init` makes them."""

from __future__ import annotations

from pathlib import Path

from billing_tiers.store import Store


def new_store(path: Path) -> Path:
    """Initialise a store at ``path`` (a new or empty folder) and return the path."""
    Store(path).initialise()
    return path
