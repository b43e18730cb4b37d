"""The store's atomic publish: a fault at any step leaves old or new table-months, and recovery converges."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.history import store_status
from billing_tiers.store import InjectedFault, Store
from schemas.contract import TABLES

MONTH = dt.date(2024, 1, 1)
STEPS = [
    *[f"staged:{t}" for t in TABLES],
    "before_journal",
    "after_journal",
    *[f"moved:{t}" for t in TABLES],
    "before_manifest",
    "after_manifest",
]


def tables(version: int) -> dict[str, pl.DataFrame]:
    return {table: pl.DataFrame({"subscriber_id": [f"{table}-{version}"]}) for table in TABLES}


def manifest(run_id: str) -> dict[str, object]:
    return {"billing_month": "2024-01", "run_id": run_id, "built_from": {"month": None, "run_id": None}}


def snapshot(store: Store) -> dict[str, list[str]]:
    """What a reader scanning each table-month folder sees."""
    return {t: pl.read_parquet(store.month_dir(t, MONTH))["subscriber_id"].to_list() for t in TABLES}


@pytest.mark.parametrize("step", STEPS)
def test_a_fault_at_any_step_then_recovery_gives_old_or_new_never_a_mix(tmp_path: Path, step: str) -> None:
    store = Store(tmp_path)
    store.publish(MONTH, "run-1", tables(1), manifest("run-1"))
    old = snapshot(store)
    with pytest.raises(InjectedFault):
        store.publish(MONTH, "run-2", tables(2), manifest("run-2"), fail_at=step)
    for table in TABLES:  # whatever the step, every visible table-month is whole: one run's parts
        assert pl.read_parquet(store.month_dir(table, MONTH))["subscriber_id"].to_list() in (
            [f"{table}-1"],
            [f"{table}-2"],
        )
    committed = STEPS.index(step) > STEPS.index("before_journal")
    if not committed:
        assert snapshot(store) == old
        assert store.read_manifest(MONTH)["run_id"] == "run-1"  # type: ignore[index]
    store.recover()
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())
    expected = snapshot_of(2) if committed else old
    assert snapshot(store) == expected
    assert [s.problem for s in store_status(store)] == [None]
    assert store.read_manifest(MONTH)["run_id"] == ("run-2" if committed else "run-1")  # type: ignore[index]


def snapshot_of(version: int) -> dict[str, list[str]]:
    return {t: [f"{t}-{version}"] for t in TABLES}


def test_read_table_refuses_a_file_that_does_not_match_its_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.publish(MONTH, "run-1", tables(1), manifest("run-1"))
    (part,) = store.month_dir("state", MONTH).iterdir()
    pl.DataFrame({"subscriber_id": ["tampered"]}).write_parquet(part)
    with pytest.raises(Exception, match="state does not match its manifest"):
        store.read_table("state", MONTH)
    assert store_status(store)[0].problem == "incomplete: state file does not match the manifest checksum"


def test_staging_lives_outside_every_table_folder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(InjectedFault):
        store.publish(MONTH, "run-1", tables(1), manifest("run-1"), fail_at="before_journal")
    for table in TABLES:
        assert not store.table_dir(table).exists()
    assert store_status(store) == []
