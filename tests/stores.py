"""Stores for tests: made on purpose, as `billing-tiers init` makes them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from billing_tiers.store import Store
from rulebook import Rulebook
from schemas.contract import CHANGES
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


def contents(store: Path) -> dict[str, pl.DataFrame]:
    """Every table of a store as its manifests list it, every month, checksums verified, with
    ``billing_month``; sorted, so two stores compare whatever their bucket counts."""
    from billing_tiers.months import month_label

    the_store = Store(store)
    found: dict[str, list[pl.DataFrame]] = {}
    for month in the_store.manifest_months():
        manifest = the_store.manifest(month)
        for table in sorted({*manifest.tables, CHANGES.name}):  # every month has changes, maybe empty
            frame = the_store.read_table(table, month, manifest)
            found.setdefault(table, []).append(frame.with_columns(pl.lit(month_label(month)).alias("billing_month")))
    return {table: pl.concat(frames, how="diagonal_relaxed").sort(pl.all()) for table, frames in found.items()}


def assert_same_store(store: Path, reference: Path) -> None:
    """``store`` publishes exactly the rows of ``reference`` in every table (``changes`` included), and
    every month of it is healthy."""
    from billing_tiers.health import store_status

    mine, theirs = contents(store), contents(reference)
    assert mine.keys() == theirs.keys()
    for table in theirs:
        assert mine[table].equals(theirs[table]), table
    assert [s.problem for s in store_status(Store(store))] == [None] * len(Store(reference).manifest_months())
