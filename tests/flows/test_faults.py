"""Run safety: faults at every step, kill -9 of a real backfill, random crash sequences.

Faults and kills are placed by the run's own progress, never by the clock: in process through the
publish seam ``billing_tiers.store.publish_checkpoint`` (``tests/faults.py``), and in a real
``billing-tiers backfill`` process stopped at a chosen publish step of a chosen month
(``tests/pause_runner.py``) and then killed with SIGKILL.

What they show: every visible table-month holds one run's parts and reads; the faulted month is,
table by table, wholly its old version or wholly its new one (never a mix, never other rows), and
once recovered (what the next writer does first) wholly the version the step implies: the old one
before the commit point (the journal), the new one from it on; the months before it are untouched
or as an uninterrupted run makes them; and rerunning the same command ends in exactly the tables an
uninterrupted run gives. The faulted runs split each month into several buckets (several part files
per table-month) while the clean reference store uses one, so convergence also shows that the
bucket count never changes a row.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.store import Store
from flows import bucket, monthly, run_month
from schemas.contract import TABLES
from tests.billing_tiers.test_store import STEPS
from tests.extract_factory import write_history
from tests.faults import InjectedFault, before_the_commit_point, fail_at
from tests.processes import wait_until_gone
from tests.stores import assert_same_store, contents, new_store

MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
BUCKETS = 3
REPO = Path(__file__).resolve().parents[2]
HANG = 300.0
"""Seconds after which a subprocess is taken to hang: it only stops a hang, it places nothing."""

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def _no_html_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in these tests skip drawing the last month's HTML report (about 2 s of charts per
    backfill, tested in tests/billing_tiers/test_report.py): it is written after the publish, and
    these tests are about the store. The Prefect markdown artifact is still made."""
    real = monthly._report

    def report(*args: Any, html: bool, **kwargs: Any) -> None:
        real(*args, html=False, **kwargs)

    monkeypatch.setattr(monthly, "_report", report)


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("extracts")
    write_history(folder, MONTHS)
    return folder


@pytest.fixture(scope="module")
def clean_store(extracts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = new_store(tmp_path_factory.mktemp("clean"))
    monthly.backfill_tiers(start=MONTHS[0], extracts=str(extracts), store=str(store))
    return store


def assert_readable(store: Path) -> None:
    for table in TABLES:
        for path in (store / table).glob("billing_month=*/*.parquet"):
            pl.read_parquet(path)


View = Mapping[str, pl.DataFrame | None]
"""What a reader listing each table's month folder finds (as Polars or DuckDB over the hive folders
do, manifest or not): None when the folder holds no part file, else the rows of every part, sorted
so that two stores compare whatever their bucket counts."""

ABSENT: View = dict.fromkeys(TABLES)


def month_view(store: Path, month: str) -> View:
    view: dict[str, pl.DataFrame | None] = {}
    for table in TABLES:
        parts = sorted((store / table / f"billing_month={month}").glob("*.parquet"))
        view[table] = pl.concat([pl.read_parquet(part) for part in parts]).sort(pl.all()) if parts else None
    return view


def _same(seen: pl.DataFrame | None, version: pl.DataFrame | None) -> bool:
    if seen is None or version is None:
        return seen is version
    return seen.equals(version)


def versions_seen(store: Path, month: str, old: View, new: View) -> dict[str, str]:
    """For each table of ``month``: "old" or "new" when readers find wholly that version, "either"
    when the two versions are the same rows; fails on a table that is neither (a mix of two runs'
    parts, a part missing, other rows)."""
    seen = month_view(store, month)
    found = {}
    for table in TABLES:
        matches = [name for name, version in (("old", old[table]), ("new", new[table])) if _same(seen[table], version)]
        assert matches, f"{table} {month}: readers find neither the old nor the new version"
        found[table] = matches[0] if len(matches) == 1 else "either"
    return found


def assert_one_run_per_table_month(store: Path) -> None:
    """Every visible table-month holds the parts of one run only (part names carry the run's tag)."""
    for table in TABLES:
        for month_dir in (store / table).glob("billing_month=*"):
            tags = {p.name.split("-")[2] for p in month_dir.glob("part-*.parquet")}
            assert len(tags) <= 1, (table, month_dir.name, tags)


def recovered_copy(store: Path, where: Path) -> Path:
    """A copy of ``store`` after the recovery the next writer runs first; ``store`` itself is left
    as the fault left it, for the rerun to recover on its own."""
    shutil.copytree(store, where)
    copy = Store(where)
    with copy.writer_lock("test recovery"):
        copy.recover()
    assert not copy.pending_publishes()
    return where


def seen_before_recovery(step: str) -> dict[str, str]:
    """Which version of each table readers find right after a fault at publish ``step``, before
    any recovery: the tables swapped in so far are new (the swaps follow TABLES, see STEPS), the
    others old; before the first swap every table is old, after the last every table is new."""
    if step.startswith("moved:"):
        last = TABLES.index(step.removeprefix("moved:"))
        return {table: "new" if index <= last else "old" for index, table in enumerate(TABLES)}
    swapped = step in ("before_manifest", "after_manifest")
    return dict.fromkeys(TABLES, "new" if swapped else "old")


def published_months(store: Path) -> list[str]:
    """Months the store lists, all of them healthy."""
    statuses = store_status(Store(store))
    assert all(s.healthy for s in statuses), [(s.month, s.problem) for s in statuses]
    return [s.month.strftime("%Y-%m") for s in statuses]


@pytest.fixture(scope="module")
def three_months(extracts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = new_store(tmp_path_factory.mktemp("three"))
    monthly.backfill_tiers(start=MONTHS[0], end=MONTHS[2], extracts=str(extracts), store=str(store), buckets=BUCKETS)
    return store


# Every publish step is faulted in tests/billing_tiers/test_store.py without Prefect; here one step
# of each kind runs through the real flow: before the commit point, after it, and around the manifest.
FLOW_STEPS = [
    "after_validation",
    "staged:card_issuance",
    "after_journal",
    "moved:state",
    "before_manifest",
    "after_manifest",
]


@pytest.mark.parametrize("step", FLOW_STEPS)
def test_a_fault_at_any_step_leaves_the_month_old_or_new_and_a_rerun_converges(
    step: str, extracts: Path, clean_store: Path, three_months: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill of 2024-04 on three published months fails at ``step``: each table of 2024-04 is
    wholly absent (its old version) or wholly the new one, as far as the swaps got; recovered, the
    month is absent before the commit point and wholly new from it on; the rerun converges."""
    store = tmp_path / "store"
    shutil.copytree(three_months, store)
    month = MONTHS[3]
    before = contents(store)
    new = month_view(clean_store, month)
    assert all(new[table] is not None for table in TABLES)  # absent and new are told apart
    with monkeypatch.context() as patch, contextlib.ExitStack() as faults:
        if step == "after_validation":

            def fail(*_: object) -> None:
                raise InjectedFault("injected fault after validation")

            patch.setattr(bucket, "validate_tables", fail)
        else:
            faults.enter_context(fail_at(step))
        with pytest.raises(InjectedFault):
            monthly.backfill_tiers(start=month, extracts=str(extracts), store=str(store), buckets=BUCKETS)
    assert_readable(store)
    assert_one_run_per_table_month(store)
    for table, frame in before.items():  # every previously published month is untouched
        now = contents(store)[table].filter(pl.col("billing_month") <= MONTHS[2])
        assert now.equals(frame), table
    assert versions_seen(store, month, ABSENT, new) == seen_before_recovery(step)
    committed = step != "after_validation" and not before_the_commit_point(step)
    recovered = recovered_copy(store, tmp_path / "recovered")
    assert versions_seen(recovered, month, ABSENT, new) == dict.fromkeys(TABLES, "new" if committed else "old")
    assert published_months(recovered) == MONTHS[: 4 if committed else 3]
    monthly.backfill_tiers(start=month, extracts=str(extracts), store=str(store), buckets=BUCKETS)
    assert_same_store(store, clean_store)


def test_a_refused_run_changes_no_published_file(extracts: Path, clean_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError):
        monthly.monthly_tiers(month="2024-02", extracts=str(extracts), store=str(store))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    assert {p: v for p, v in after.items() if not p.name.startswith(".lock")} == {
        p: v for p, v in stamp.items() if not p.name.startswith(".lock")
    }


def month_files(store: Path, month: str) -> dict[str, bytes]:
    """Every published file of ``month`` (each table's folder, the manifest), by path in the store."""
    return {
        str(path.relative_to(store)): path.read_bytes()
        for folder in sorted(store.glob(f"*/billing_month={month}"))
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def test_a_backfill_that_dies_half_way_marks_later_months_stale(
    extracts: Path, clean_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backfill from 2024-02 dies evaluating 2024-04: 2024-02 and 2024-03 are republished whole,
    2024-04 (the faulted month) and 2024-05 keep every file of their old version, byte for byte,
    and are flagged stale; the rerun the message names converges."""
    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    untouched = {month: month_files(store, month) for month in MONTHS[3:]}
    assert all(untouched.values())
    real_evaluate = bucket.evaluate_bucket
    calls = {"n": 0}

    def dies_in_the_third_month(job: bucket.BucketJob) -> bucket.BucketResult:
        calls["n"] += 1
        if calls["n"] == 2 * BUCKETS + 2:  # the second bucket of the third month
            raise InjectedFault("died")
        return real_evaluate(job)

    with monkeypatch.context() as patch:
        patch.setattr(run_month, "evaluate_bucket", dies_in_the_third_month)
        with pytest.raises(InjectedFault):
            monthly.backfill_tiers(start=MONTHS[1], extracts=str(extracts), store=str(store), buckets=BUCKETS)
    assert_readable(store)
    assert_one_run_per_table_month(store)
    for month in MONTHS[:3]:  # republished by the dead backfill, or before it: rows as in the clean store
        clean = month_view(clean_store, month)
        assert set(versions_seen(store, month, clean, clean).values()) == {"either"}, month
    assert {month: month_files(store, month) for month in MONTHS[3:]} == untouched
    problems = {s.month.strftime("%Y-%m"): s.problem for s in store_status(Store(store))}
    assert problems["2024-02"] is None and problems["2024-03"] is None
    assert problems["2024-04"] is not None and problems["2024-04"].startswith("stale")
    assert problems["2024-05"] is not None and problems["2024-05"].startswith("stale")
    with pytest.raises(PipelineError, match="backfill --from 2024-04"):
        monthly.monthly_tiers(month="2024-05", extracts=str(extracts), store=str(store))
    monthly.backfill_tiers(start=MONTHS[3], extracts=str(extracts), store=str(store))
    assert_same_store(store, clean_store)


def pending_recovery(store: Path) -> tuple[str | None, list[str]]:
    """The month of a publish that passed its commit point and did not finish (its journal is still
    staged), with the publish steps the next writer's recovery passes through to finish it."""
    for journal in sorted((store / "_staging").glob("*/journal.json")):
        record = json.loads(journal.read_text(encoding="utf-8"))
        return record["month"], [
            *(f"moved:{t}" for t in record["manifest"]["tables"]),
            "before_manifest",
            "after_manifest",
        ]
    return None, []


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Always tried: the second backfill dies in the recovery of the month the first one left half swapped.
@example(crashes=[(0, 2, "moved:at_risk"), (2, 1, "moved:quarantine")])
@given(
    crashes=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(MONTHS) - 1),
            st.integers(min_value=1, max_value=2),
            st.sampled_from(STEPS),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_runs_crashes_and_reruns_end_in_the_clean_store(
    crashes: list[tuple[int, int, str]],
    extracts: Path,
    clean_store: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Backfills from a random month, each dying the first or second time it reaches a random publish
    step, then a rerun from the first month that needs one. A backfill first finishes a publish the
    previous crash left past its commit point, passing through the same steps, so a fault may also
    land in that recovery. Each backfill starts where an operator may start one (no later than the
    first stale month), so the only error is the injected fault. After each crash the months it
    republished are the clean store's, the faulted month is, table by table, wholly its old or its
    new version, and once recovered wholly the one the step implies."""
    store = new_store(tmp_path_factory.mktemp("random"))
    settled = store  # the store as the next writer sees it, once it has recovered
    for start, occurrence, step in crashes:
        statuses = store_status(Store(settled))
        first = min([start, len(statuses), *(i for i, s in enumerate(statuses) if not s.healthy)])
        recovering, recovery_steps = pending_recovery(store)
        in_recovery = int(step in recovery_steps)  # times the step comes before the backfill's own months
        if recovering is not None and occurrence <= in_recovery:  # the fault lands in the recovery
            faulted, republished, hits = recovering, [], occurrence
            old = month_view(store, recovering)  # as the previous crash left it, part new, part old
        else:
            index = min(first + occurrence - in_recovery, len(MONTHS)) - 1
            faulted, republished, hits = MONTHS[index], MONTHS[first:index], in_recovery + index - first + 1
            old = month_view(settled, faulted)
        new = month_view(clean_store, faulted)
        with pytest.raises(InjectedFault), fail_at(step, occurrence=hits):
            monthly.backfill_tiers(start=MONTHS[first], extracts=str(extracts), store=str(store), buckets=BUCKETS)
        assert_readable(store)
        assert_one_run_per_table_month(store)
        for month in republished:
            clean = month_view(clean_store, month)
            assert set(versions_seen(store, month, clean, clean).values()) == {"either"}, month
        seen = versions_seen(store, faulted, old, new)
        assert all(
            found in (expected, "either")
            for found, expected in zip(seen.values(), seen_before_recovery(step).values(), strict=True)
        ), (step, seen)
        settled = recovered_copy(store, tmp_path_factory.mktemp("recovered") / "store")
        implied = "old" if before_the_commit_point(step) else "new"
        recovered = versions_seen(settled, faulted, old, new)
        assert set(recovered.values()) <= {implied, "either"}, (step, recovered)
    statuses = store_status(Store(store))
    first_bad = next((s.month for s in statuses if not s.healthy), None)
    resume = (
        first_bad.strftime("%Y-%m") if first_bad else MONTHS[len(statuses)] if len(statuses) < len(MONTHS) else None
    )
    if resume is not None:
        monthly.backfill_tiers(start=resume, extracts=str(extracts), store=str(store))
    assert_same_store(store, clean_store)


def _start(command: list[str], api_url: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` from the repository in a new session (its own process group), output to ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PREFECT_API_URL": api_url},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _kill_group(process: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the process group ``process`` leads; returns its members still alive 10 s later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    return wait_until_gone(process.pid, 10)


def _killed_at(step: str, occurrence: int, store: Path, extracts: Path, api_url: str, workdir: Path) -> None:
    """A real ``billing-tiers backfill`` of every month in ``BUCKETS`` buckets, stopped at the
    ``occurrence``-th publish ``step`` (tests/pause_runner.py) and killed there with SIGKILL."""
    marker, log = workdir / "paused-at", workdir / "killed-run.log"
    command = [
        *(sys.executable, "-m", "tests.pause_runner", "--pause-at", step, "--occurrence", str(occurrence)),
        *("--marker", str(marker), "--give-up", str(HANG), "--"),
        *("backfill", "--from", MONTHS[0], "--buckets", str(BUCKETS)),
        *("--extracts", str(extracts), "--store", str(store)),
    ]
    process = _start(command, api_url, log)
    try:
        deadline = time.monotonic() + HANG
        while not marker.exists():  # the run is blocked at the step once the marker exists
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before {step}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"the run never reached {step}:\n{_tail(log)}"
            time.sleep(0.01)
    finally:
        left = _kill_group(process)
    assert not left, f"processes left behind: {left}"
    assert process.returncode == -signal.SIGKILL
    assert marker.read_text().split()[:2] == [step, str(occurrence)]


KILLS = [
    pytest.param("staged:card_issuance", MONTHS[0], id="staged-parts-month-1"),
    pytest.param("after_journal", MONTHS[0], id="commit-point-month-1"),
    pytest.param("moved:tier_assignments", MONTHS[1], id="half-swapped-month-2"),
    pytest.param("before_manifest", MONTHS[2], id="swapped-no-manifest-month-3"),
    pytest.param("after_manifest", MONTHS[-1], id="manifest-written-last-month"),
]


@pytest.mark.parametrize(("step", "month"), KILLS)
def test_kill_9_at_a_chosen_publish_step_then_rerun_gives_identical_tables(
    step: str, month: str, extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    """``kill -9`` of a real 3-bucket backfill at ``step`` of ``month``'s publish. Right after the
    kill, readers find whole table-months of one run each, the earlier months as the clean store
    has them, the killed month's tables wholly absent or wholly new as far as the swaps got, and
    nothing later. Recovered, the month is absent (killed before the commit point) or wholly new
    (at or after it). Rerunning the backfill, with another bucket count, gives the clean store."""
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())
    store = new_store(tmp_path / "store")
    index = MONTHS.index(month)
    new = month_view(clean_store, month)
    assert all(new[table] is not None for table in TABLES)  # absent and new are told apart
    _killed_at(step, index + 1, store, extracts, api_url, tmp_path)  # each step comes once per month

    assert_readable(store)
    assert_one_run_per_table_month(store)
    for earlier in MONTHS[:index]:
        clean = month_view(clean_store, earlier)
        assert set(versions_seen(store, earlier, ABSENT, clean).values()) == {"new"}, earlier
    assert versions_seen(store, month, ABSENT, new) == seen_before_recovery(step)
    for later in MONTHS[index + 1 :]:
        assert all(found is None for found in month_view(store, later).values()), later

    recovered = recovered_copy(store, tmp_path / "recovered")
    committed = not before_the_commit_point(step)
    assert versions_seen(recovered, month, ABSENT, new) == dict.fromkeys(TABLES, "new" if committed else "old")
    assert published_months(recovered) == MONTHS[: index + 1 if committed else index]

    # The same backfill again, on the store as the kill left it, here in-process: the session code
    # the command line runs (lock, recovery, plan, months), without a second process start.
    monthly.backfill_tiers(start=MONTHS[0], extracts=str(extracts), store=str(store), buckets=2)
    assert_same_store(store, clean_store)
