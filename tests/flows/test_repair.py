"""A damaged store is repaired by the command that status names (SPEC 8), through the command line.

A store of five months in three buckets is damaged in one of five ways (flipped bytes in a
tier_assignments part, a deleted card_issuance part, a corrupt state part, manifest.json replaced by
garbage, a manifest without ``tables``); ``status`` names the damaged file and ``backfill --from``
that month, ``status --check`` exits 3, every reader refuses with one line naming month, table and
file, and the backfill it names leaves every table, ``changes`` included, equal to a clean store's.
A damaged state is named by the month that reads it as its own month and file, not the month run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from billing_tiers.months import parse_month
from billing_tiers.store import Store
from flows import monthly
from schemas.contract import CHANGES, STORE_TABLES
from tests.extract_factory import write_history
from tests.faults import flip_bytes
from tests.stores import assert_same_store, new_store

MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
BUCKETS = 3
DAMAGED = "2024-03"
SUBSCRIBER = "13800000001"

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("extracts")
    write_history(folder, MONTHS)
    return folder


@pytest.fixture(scope="module")
def clean_store(extracts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = new_store(tmp_path_factory.mktemp("clean") / "store")
    monthly.backfill_tiers(start=MONTHS[0], extracts=str(extracts), store=str(store), buckets=BUCKETS)
    return store


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process, against the tests' Prefect server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "billing_tiers.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def one_part(store: Path, table: str, month: str = DAMAGED, bucket: int = 1) -> Path:
    (found,) = (store / table / f"billing_month={month}").glob(f"part-{bucket:05d}-*.parquet")
    return found


def manifest_path(store: Path, month: str = DAMAGED) -> Path:
    return store / "manifests" / f"billing_month={month}" / "manifest.json"


def drop_tables(path: Path) -> Path:
    manifest = json.loads(path.read_text())
    del manifest["tables"]
    path.write_text(json.dumps(manifest))
    return path


def garbage(path: Path) -> Path:
    path.write_text("this is not json {")
    return path


DAMAGE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "flipped bytes in a tier_assignments part": (
        lambda s: flip_bytes(one_part(s, "tier_assignments")),
        "tier_assignments part {file} does not match its manifest checksum",
    ),
    "a deleted card_issuance part": (
        lambda s: (p := one_part(s, "card_issuance"), p.unlink())[0],
        "card_issuance part {file} is missing",
    ),
    "a corrupt state part": (
        lambda s: flip_bytes(one_part(s, "state")),
        "state part {file} does not match its manifest checksum",
    ),
    "manifest.json replaced by garbage": (
        lambda s: garbage(manifest_path(s)),
        "manifest {file} is damaged (not JSON: Expecting value: line 1 column 1 (char 0))",
    ),
    "a manifest without tables": (
        lambda s: drop_tables(manifest_path(s)),
        "manifest {file} is damaged (no field tables)",
    ),
}
READERS_OF = {
    "flipped bytes in a tier_assignments part": {"explain", "history", "report", "simulate"},
    "a deleted card_issuance part": {"history", "report", "simulate"},
    "a corrupt state part": {"explain", "report"},  # the report checks every part of its month
    "manifest.json replaced by garbage": {"explain", "history", "report", "simulate"},
    "a manifest without tables": {"explain", "history", "report", "simulate"},
}
"""The readers that read (or check) the damaged file and must refuse."""
UNREADABLE_PREVIOUS = {"flipped bytes in a tier_assignments part", "manifest.json replaced by garbage",
                       "a manifest without tables"}  # fmt: skip
"""Damage that makes the version being replaced unreadable (its tier rows are what changes compares)."""


@pytest.mark.parametrize("kind", DAMAGE)
def test_status_names_the_damage_readers_refuse_and_the_backfill_status_names_repairs_it(
    kind: str, extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    damage, problem = DAMAGE[kind]
    file = damage(store)
    described = problem.format(file=file)
    where = ["--store", str(store), "--extracts", str(extracts)]

    code, output = invoke("status", *where)
    assert code == 0
    lines = output.splitlines()
    assert f"{DAMAGED}: incomplete: {described}" in lines
    assert "2024-04: stale: built on 2024-03, which is not healthy" in lines
    assert f"repair: billing-tiers backfill --from {DAMAGED} (recomputes {DAMAGED} and every later month)" in lines
    code, _ = invoke("status", *where, "--check")
    assert code == 3
    code, output = invoke("status", *where, "--json")
    report = json.loads(output)
    assert report["repair"] == f"billing-tiers backfill --from {DAMAGED}"
    assert report["months"][2]["damaged_file"] == str(file)

    # every reader that reads the damaged file refuses with one line naming month, table and file
    reading = {
        "explain": ["explain", "--month", DAMAGED, "--subscriber", SUBSCRIBER, "--store", str(store)],
        "history": ["history", "--subscriber", SUBSCRIBER, "--store", str(store)],
        "report": ["report", "--month", DAMAGED, "--store", str(store), "--out", str(tmp_path / "r.html")],
        "simulate": ["simulate", "--month", DAMAGED, "--rulebook", str(default_rulebook()), *where],
    }
    for name, command in reading.items():
        code, output = invoke(*command)
        if name not in READERS_OF[kind]:  # this reader reads no damaged file: its figures are right
            assert code == 0, (name, output)
            continue
        assert code == 2, (name, output)
        (line,) = [line for line in output.splitlines() if line.strip()]
        assert line.startswith(f"error: month {DAMAGED}: "), (name, line)
        assert str(file) in line and f"backfill --from {DAMAGED}" in line, (name, line)

    result = cli("backfill", "--from", DAMAGED, *where, "--buckets", str(BUCKETS))
    assert result.returncode == 0, result.stderr
    assert_same_store(store, clean_store)
    code, _ = invoke("status", *where, "--check")
    assert code == 0
    repaired = Store(store).manifest(parse_month(DAMAGED))
    if kind in UNREADABLE_PREVIOUS:  # the rerun did not read the damaged version: no changes, and why
        assert repaired.previous_version_unreadable is not None and str(file) in repaired.previous_version_unreadable
        assert repaired.changes_by_program == {}
    else:  # the version replaced was readable: changes compare with it (the same inputs: none)
        assert repaired.previous_version_unreadable is None
        assert repaired.changes_by_program == {} and repaired.replaced_run_id is not None
    assert repaired.tables["changes"].rows == 0


def default_rulebook() -> Path:
    from rulebook import default_rulebook_path

    return default_rulebook_path()


def test_a_corrupt_previous_state_names_its_own_month_file_and_repair(
    extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    shutil.rmtree(store / "manifests" / "billing_month=2024-05")  # 2024-05 is next to run
    for table in STORE_TABLES:
        shutil.rmtree(store / table / "billing_month=2024-05", ignore_errors=True)
    state = flip_bytes(one_part(store, "state", "2024-04"))
    where = ["--store", str(store), "--extracts", str(extracts)]
    expected = (
        f"error: month 2024-04: state part {state} does not match its manifest checksum; "
        "repair it with `billing-tiers backfill --from 2024-04`"
    )
    for command in (["run", "--month", "2024-05"], ["backfill", "--from", "2024-05"]):
        result = cli(*command, *where)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr.splitlines(), result.stderr
        assert "month 2024-05" not in result.stderr
    result = cli("backfill", "--from", "2024-04", *where, "--buckets", "2")
    assert result.returncode == 0, result.stderr
    assert_same_store(store, clean_store)


def test_every_month_has_changes_and_every_reader_works_on_a_never_corrected_store(
    extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    the_store = Store(clean_store)
    for label in MONTHS:
        month = parse_month(label)
        assert (clean_store / "changes" / f"billing_month={label}").is_dir()
        assert len(the_store.manifest(month).tables["changes"].parts) == BUCKETS
        changes = the_store.read_table("changes", month)
        assert changes.height == 0 and changes.schema == CHANGES.schema
        assert the_store.manifest(month).changes_by_program is None  # nothing was replaced
    # a store published before every month had changes/ (its manifests list none) reads the same
    old = tmp_path / "old"
    shutil.copytree(clean_store, old)
    shutil.rmtree(old / "changes")
    for path in (old / "manifests").glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        del manifest["tables"]["changes"], manifest["format_version"]
        path.write_text(json.dumps(manifest))
    for store in (clean_store, old):
        assert Store(store).read_table("changes", parse_month(MONTHS[-1])).schema == CHANGES.schema
        for command in (
            ["explain", "--month", "2024-05", "--subscriber", SUBSCRIBER, "--store", str(store)],
            ["history", "--subscriber", SUBSCRIBER, "--store", str(store)],
            ["report", "--month", "2024-05", "--store", str(store), "--out", str(tmp_path / "r.html")],
            ["simulate", "--month", "2024-05", "--rulebook", str(default_rulebook()),
             "--store", str(store), "--extracts", str(extracts)],
        ):  # fmt: skip
            code, output = invoke(*command)
            assert code == 0, (command, output)
        code, _ = invoke("status", "--store", str(store), "--extracts", str(extracts), "--check")
        assert code == 0


def test_history_reads_only_listed_parts_with_their_checksums(clean_store: Path, tmp_path: Path) -> None:
    """A tampered part that still decodes (a value changed) is refused, not shown; a stray file in a
    month folder that no manifest lists is never read."""
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    code, before = invoke("history", "--subscriber", SUBSCRIBER, "--store", str(store))
    assert code == 0
    stray = store / "tier_assignments" / "billing_month=2024-02" / "part-00009-stray.parquet"
    frame = pl.read_parquet(next((store / "tier_assignments" / "billing_month=2024-02").glob("part-*")))
    frame.with_columns(pl.lit("stray").alias("action")).write_parquet(stray)
    code, output = invoke("history", "--subscriber", SUBSCRIBER, "--store", str(store))
    assert code == 0 and output == before
    stray.unlink()
    tiers = store / "tier_assignments" / "billing_month=2024-03"
    for part in tiers.glob("part-*.parquet"):
        rows = pl.read_parquet(part)
        rows.with_columns(pl.col("avg_billed_6m") * 11).write_parquet(part)
    code, output = invoke("history", "--subscriber", SUBSCRIBER, "--store", str(store))
    assert code == 2
    (line,) = output.splitlines()
    assert (
        line.startswith("error: month 2024-03: tier_assignments part ")
        and "does not match its manifest checksum" in line
    )


def test_status_during_a_healthy_run_shows_it_running_and_check_passes(extracts: Path, tmp_path: Path) -> None:
    """A backfill paused in the middle of publishing its second month: status shows the run (pid,
    command, since), not an interrupted publish, and --check does not fail because of it."""
    from prefect.settings import PREFECT_API_URL

    store = new_store(tmp_path / "store")
    marker = tmp_path / "paused"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    command = ["backfill", "--from", MONTHS[0], "--store", str(store), "--extracts", str(extracts)]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hold_runner", "moved:state", str(marker), "--", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the run never reached its publish"
            time.sleep(0.05)
        where = ["--store", str(store), "--extracts", str(extracts)]
        code, output = invoke("status", *where)
        assert code == 0
        assert f"running: pid {process.pid}, backfill --from 2024-01 --to latest, since " in output
        assert "interrupted" not in output
        code, _ = invoke("status", *where, "--check")
        assert code == 0
        running = json.loads(invoke("status", *where, "--json")[1])
        assert running["running"]["pid"] == process.pid and running["interrupted_publishes"] == []
    finally:
        marker.unlink(missing_ok=True)
        _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    code, _ = invoke("status", "--store", str(store), "--extracts", str(extracts), "--check")
    assert code == 0
