"""Store health: each kind of damage names its file and the command that repairs it; later months are
stale; a live run is reported as running, and only a dead run's staging as interrupted."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.health import store_health, store_status
from billing_tiers.store import Store
from tests.extract_factory import row, write_extract
from tests.faults import flip_bytes
from tests.stores import publish_frames

MONTHS = ("2024-01", "2024-02", "2024-03")
MARCH = dt.date(2024, 3, 1)


def publish(store: Store, month: str, run_id: str, built_from: str | None, built_run: str | None) -> None:
    frames = {
        table: pl.DataFrame({"subscriber_id": [f"{month}-{bucket}"]})
        for table, bucket in (("tier_assignments", 0), ("state", 0), ("card_issuance", 0))
    }
    publish_frames(
        store,
        dt.date.fromisoformat(f"{month}-01"),
        run_id,
        frames,
        {"billing_month": month, "run_id": run_id, "built_from": {"month": built_from, "run_id": built_run}},
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    the_store = Store(tmp_path / "store")
    the_store.initialise()
    publish(the_store, "2024-01", "a1", None, None)
    publish(the_store, "2024-02", "a2", "2024-01", "a1")
    publish(the_store, "2024-03", "a3", "2024-02", "a2")
    return the_store


def part(store: Store, table: str, month: dt.date = dt.date(2024, 2, 1)) -> Path:
    (found,) = store.month_dir(table, month).glob("*.parquet")
    return found


def without_tables(path: Path) -> None:
    manifest = json.loads(path.read_text())
    del manifest["tables"]
    path.write_text(json.dumps(manifest))


DAMAGE: dict[str, tuple[Callable[[Store], Path], str]] = {
    "flipped bytes": (
        lambda s: flip_bytes(part(s, "tier_assignments")),
        "incomplete: tier_assignments part {file} does not match its manifest checksum",
    ),
    "deleted part": (
        lambda s: (p := part(s, "card_issuance"), p.unlink())[0],
        "incomplete: card_issuance part {file} is missing",
    ),
    "unlisted file": (
        lambda s: (p := part(s, "state").with_name("stray.parquet"), p.write_bytes(b"x"))[0],
        "incomplete: state folder holds {file}, which the manifest does not list",
    ),
    "garbage manifest": (
        lambda s: (p := s.manifest_file(dt.date(2024, 2, 1)), p.write_text("garbage {"))[0],
        "incomplete: manifest {file} is damaged (not JSON: Expecting value: line 1 column 1 (char 0))",
    ),
    "manifest without tables": (
        lambda s: (p := s.manifest_file(dt.date(2024, 2, 1)), without_tables(p))[0],
        "incomplete: manifest {file} is damaged (no field tables)",
    ),
    "manifest removed": (
        lambda s: (p := s.manifest_file(dt.date(2024, 2, 1)), p.unlink())[0],
        "incomplete: tables without a manifest ({file} is missing)",
    ),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_each_damage_names_its_file_and_the_backfill_that_repairs_it(store: Store, kind: str) -> None:
    damage, problem = DAMAGE[kind]
    file = damage(store)
    statuses = {s.month.strftime("%Y-%m"): s for s in store_status(store)}
    assert statuses["2024-01"].healthy
    assert statuses["2024-02"].problem == problem.format(file=file)
    assert statuses["2024-02"].damaged_file == file
    assert statuses["2024-03"].problem == "stale: built on 2024-02, which is not healthy"
    health = store_health(store, store.root / "no-extracts")
    assert health.needs_attention  # status --check exits 3
    assert health.repair_from == dt.date(2024, 2, 1)
    report = health.as_json()
    assert report["repair"] == "billing-tiers backfill --from 2024-02"
    assert [m["repair"] for m in report["months"]] == [None, *["billing-tiers backfill --from 2024-02"] * 2]
    assert report["months"][1]["damaged_file"] == str(file)
    notes = health.notes(store, store.root / "no-extracts")
    assert f"2024-02: {problem.format(file=file)}" in notes
    assert "repair: billing-tiers backfill --from 2024-02 (recomputes 2024-02 and every later month)" in notes


def test_a_healthy_store_needs_nothing(store: Store) -> None:
    health = store_health(store, store.root / "no-extracts")
    assert [s.problem for s in health.months] == [None, None, None]
    assert not health.needs_attention and health.repair_from is None and health.running is None
    assert health.notes(store, store.root / "no-extracts") == []


def _holder(store: Store, command: str) -> subprocess.Popen[bytes]:
    """A process holding the store's writer lock as ``command`` and staging a run, until killed."""
    code = (
        "import sys, time; from pathlib import Path; from billing_tiers.store import Store\n"
        "store = Store(Path(sys.argv[1]))\n"
        "with store.writer_lock(sys.argv[2]):\n"
        "    (store.staging_dir('run-x') / 'tables').mkdir(parents=True)\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store.root), command], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    return holder


def test_a_live_run_is_running_not_interrupted_and_its_months_are_work_in_progress(
    store: Store, tmp_path: Path
) -> None:
    extracts = tmp_path / "x"
    for month in (*MONTHS, "2024-04"):
        write_extract(extracts, month, [row("a")])
    holder = _holder(store, "run --month 2024-04")
    try:
        health = store_health(store, extracts)
        assert health.running is not None and health.running.owner.pid == holder.pid
        assert health.running.owner.command == "run --month 2024-04" and health.running.staging == ["run-x"]
        assert health.interrupted == []
        assert health.behind == [dt.date(2024, 4, 1)]
        assert not health.needs_attention  # the month behind is the one the run is publishing
        notes = health.notes(store, extracts)
        assert any(line.startswith(f"running: pid {holder.pid}, run --month 2024-04, since ") for line in notes)
        assert not any("interrupted" in line for line in notes)
        assert health.as_json()["running"]["command"] == "run --month 2024-04"
        # past its commit point the run swaps its month in: shown as publishing, not as damage
        journal = {"month": "2024-03", "run_id": "run-x", "manifest": {}}
        (store.staging_dir("run-x") / "journal.json").write_text(json.dumps(journal))
        store.manifest_file(MARCH).unlink()
        health = store_health(store, extracts)
        assert health.publishing == [MARCH] and health.month_rows()[2]["status"] == "publishing"
        assert "2024-03: publishing (the running run is swapping it in)" in health.notes(store, extracts)
        publish(store, "2024-03", "a3", "2024-02", "a2")
        flip_bytes(part(store, "state", MARCH))  # damage the run does not replace still needs attention
        assert store_health(store, extracts).needs_attention
    finally:
        holder.kill()
        holder.wait()
    # the owner died: its staging is an interrupted publish, and the month is behind again
    health = store_health(store, extracts)
    assert health.running is None and health.interrupted == ["run-x"]
    assert health.needs_attention
    assert any(line.startswith("interrupted publishes") for line in health.notes(store, extracts))


def test_a_backfill_in_progress_covers_the_months_it_replaces(store: Store, tmp_path: Path) -> None:
    flip_bytes(part(store, "tier_assignments"))  # 2024-02 damaged, 2024-03 stale
    holder = _holder(store, "backfill --from 2024-02")
    try:
        health = store_health(store, tmp_path / "none")
        assert [s.healthy for s in health.months] == [True, False, False]
        assert not health.needs_attention and health.repair_from is None
        assert "(the running run is replacing it)" in health.notes(store, tmp_path / "none")[0]
    finally:
        holder.kill()
        holder.wait()
    assert store_health(store, tmp_path / "none").repair_from == dt.date(2024, 2, 1)


def test_a_lock_owner_file_left_by_a_dead_process_is_not_a_running_run(store: Store) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    store.lock_owner_file.write_text(f"pid {int(dead.stdout)}, run --month 2024-04, since 2026-01-01 00:00:00Z\n")
    owner = store.lock_owner()
    assert owner is not None and owner.pid == int(dead.stdout) and owner.command == "run --month 2024-04"
    assert not owner.alive()
    assert store_health(store, store.root / "none").running is None
    store.lock_owner_file.write_text(f"pid {os.getpid()}, backfill --from 2024-01, since 2026-01-01 00:00:00Z\n")
    assert store_health(store, store.root / "none").running is not None
