"""Stores for tests: made on purpose, as `billing-tiers init` makes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from billing_tiers.store import Store
from rulebook import Rulebook
from schemas.manifest import MANIFEST_FORMAT_VERSION, Manifest, TableEntry


def new_store(path: Path) -> Path:
    """Initialise a store at ``path`` (a new or empty folder) and return the path."""
    Store(path).initialise()
    return path


def publish_months(
    store: Path,
    extracts: Path,
    months: list[str],
    *,
    rulebook: Rulebook | None = None,
    override_guards: bool = False,
    buckets: int | None = None,
) -> None:
    """Publish ``months`` in order with no Prefect (the run path itself), the default rulebook unless
    one is given."""
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
            rulebook=rulebook or load_rulebook(),
            rulebook_path=None,
            override_guards=override_guards,
            buckets=buckets,
        )
        build_on = month


def make_manifest(month: str, run_id: str, **fields: Any) -> Manifest:
    """A manifest with every required field for a test store (``tables`` empty unless given);
    ``fields`` override any of them, e.g. ``built_from={"month": "2024-01", "run_id": "a1"}``."""
    base: dict[str, Any] = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "billing_month": month,
        "run_id": run_id,
        "created_at": "2026-01-01T00:00:00+00:00",
        "built_from": {"month": None, "run_id": None},
        "buckets": 1,
        "rulebook": {"path": "(test)", "sha256": "0" * 64},
        "summary": [],
        "tables": {},
    }
    return Manifest.model_validate({**base, **fields})


def publish_frames(
    store: Store,
    month: dt.date,
    run_id: str,
    tables: Mapping[str, pl.DataFrame],
    manifest: Mapping[str, Any],
) -> Manifest:
    """Publish whole frames as one-part table-months through the store's own commit; a run stages
    its bucket parts itself and then commits (``flows/run_month.py``). ``manifest`` holds the fields
    to set (``billing_month``, ``run_id`` and ``built_from`` at least); returns the manifest."""
    from billing_tiers.store import part_name, run_tag, write_part

    entries = {}
    for table, frame in tables.items():
        part = write_part(frame, store.staged_table_dir(run_id, table) / part_name(0, run_tag(run_id)))
        entries[table] = TableEntry(rows=frame.height, parts=[part])
    fields = {key: value for key, value in manifest.items() if key not in ("billing_month", "run_id")}
    typed = make_manifest(manifest["billing_month"], manifest["run_id"], **fields)
    return store.commit(month, run_id, typed.model_copy(update={"tables": entries}))
