"""The store's atomic publish: a fault at any step leaves old or new table-months, and recovery converges."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.store import Store
from schemas.contract import TABLES
from schemas.manifest import Manifest, TableEntry
from tests.faults import InjectedFault, before_the_commit_point, fail_at
from tests.stores import make_manifest, publish_frames

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


def typed_manifest(run_id: str, tables: dict[str, TableEntry]) -> Manifest:
    return make_manifest("2024-01", run_id, tables=tables)


def snapshot(store: Store) -> dict[str, list[str]]:
    """What a reader scanning each table-month folder sees."""
    return {t: pl.read_parquet(store.month_dir(t, MONTH))["subscriber_id"].to_list() for t in TABLES}


@pytest.mark.parametrize("step", STEPS)
def test_a_fault_at_any_step_then_recovery_gives_old_or_new_never_a_mix(tmp_path: Path, step: str) -> None:
    store = Store(tmp_path)
    publish_frames(store, MONTH, "run-1", tables(1), manifest("run-1"))
    old = snapshot(store)
    with pytest.raises(InjectedFault), fail_at(step):
        publish_frames(store, MONTH, "run-2", tables(2), manifest("run-2"))
    for table in TABLES:  # whatever the step, every visible table-month is whole: one run's parts
        assert pl.read_parquet(store.month_dir(table, MONTH))["subscriber_id"].to_list() in (
            [f"{table}-1"],
            [f"{table}-2"],
        )
    committed = not before_the_commit_point(step)
    if not committed:
        assert snapshot(store) == old
        assert store.manifest(MONTH).run_id == "run-1"
    store.recover()
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").iterdir())
    expected = snapshot_of(2) if committed else old
    assert snapshot(store) == expected
    assert [s.problem for s in store_status(store)] == [None]
    assert store.manifest(MONTH).run_id == ("run-2" if committed else "run-1")


def snapshot_of(version: int) -> dict[str, list[str]]:
    return {t: [f"{t}-{version}"] for t in TABLES}


def test_read_table_refuses_a_file_that_does_not_match_its_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    publish_frames(store, MONTH, "run-1", tables(1), manifest("run-1"))
    (part,) = store.month_dir("state", MONTH).iterdir()
    pl.DataFrame({"subscriber_id": ["tampered"]}).write_parquet(part)
    named = f"month 2024-01: state part {part} does not match its manifest checksum; repair it with " + (
        "`billing-tiers backfill --from 2024-01`"
    )
    with pytest.raises(PipelineError) as refused:
        store.read_table("state", MONTH)
    assert str(refused.value) == named
    with pytest.raises(PipelineError) as refused:
        store.scan_table("state", MONTH)  # the lazy reader checks every part before it scans
    assert str(refused.value) == named
    (status,) = store_status(store)
    assert status.problem == f"incomplete: state part {part} does not match its manifest checksum"
    assert status.damaged_file == part


def test_staging_lives_outside_every_table_folder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(InjectedFault), fail_at("before_journal"):
        publish_frames(store, MONTH, "run-1", tables(1), manifest("run-1"))
    for table in TABLES:
        assert not store.table_dir(table).exists()
    assert store_status(store) == []


def parted(version: int, parts: int) -> dict[str, list[pl.DataFrame]]:
    return {t: [pl.DataFrame({"subscriber_id": [f"{t}-{version}-{b}"]}) for b in range(parts)] for t in TABLES}


def publish_parts(store: Store, run_id: str, frames: dict[str, list[pl.DataFrame]]) -> None:
    """Stage several bucket parts per table, as a run does, then commit."""
    from billing_tiers.store import part_name, run_tag, write_part

    entries = {}
    for table, parts in frames.items():
        written = [
            write_part(frame, store.staged_table_dir(run_id, table) / part_name(bucket, run_tag(run_id)))
            for bucket, frame in enumerate(parts)
        ]
        entries[table] = TableEntry(rows=len(parts), parts=written)
    store.commit(MONTH, run_id, typed_manifest(run_id, entries))


@pytest.mark.parametrize("step", STEPS)
def test_a_table_month_of_several_parts_is_never_seen_mixed(tmp_path: Path, step: str) -> None:
    store = Store(tmp_path)
    publish_parts(store, "run-1", parted(1, 3))
    with pytest.raises(InjectedFault), fail_at(step):
        publish_parts(store, "run-2", parted(2, 4))
    for table in TABLES:  # a reader listing the folder sees one run's parts, all of them
        seen = sorted(pl.read_parquet(store.month_dir(table, MONTH))["subscriber_id"].to_list())
        assert seen in ([f"{table}-1-{b}" for b in range(3)], [f"{table}-2-{b}" for b in range(4)]), seen
    store.recover()
    committed = not before_the_commit_point(step)
    expected = 4 if committed else 3
    assert all(len(list(store.month_dir(t, MONTH).iterdir())) == expected for t in TABLES)
    assert [s.problem for s in store_status(store)] == [None]
    assert len(store.read_table("tier_assignments", MONTH)) == expected


def test_a_swap_exchanges_whole_folders(tmp_path: Path) -> None:
    from billing_tiers.store import swap_in

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b.parquet").write_text("new")
    swap_in(tmp_path / "new", tmp_path / "final")  # nothing published yet: a plain rename
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["b.parquet"]
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / "c.parquet").write_text("newer")
    swap_in(tmp_path / "newer", tmp_path / "final")
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["c.parquet"]
    assert [p.name for p in (tmp_path / "newer").iterdir()] == ["b.parquet"]  # the old folder, to remove


def test_the_publish_passes_every_step_in_order_and_a_fault_comes_at_the_chosen_occurrence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STEPS (which the fault tests run through) is exactly what the seam reports, in order; a month
    published a second time faults at the second occurrence, the first publish untouched."""
    import billing_tiers.store

    reached: list[str] = []
    with monkeypatch.context() as patch:
        patch.setattr(billing_tiers.store, "publish_checkpoint", reached.append)
        publish_parts(Store(tmp_path), "run-1", parted(1, 2))
    assert reached == STEPS
    store = Store(tmp_path / "second")
    with pytest.raises(InjectedFault, match="after_journal"), fail_at("after_journal", occurrence=2):
        publish_frames(store, MONTH, "run-1", tables(1), manifest("run-1"))
        assert store.manifest(MONTH).run_id == "run-1"
        publish_frames(store, MONTH, "run-2", tables(2), manifest("run-2"))
    store.recover()
    assert snapshot(store) == snapshot_of(2)
