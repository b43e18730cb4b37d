"""Run safety: faults at every step, kill -9 of a real backfill, random crash sequences.

Whatever happens, published months stay readable, and rerunning the same command ends in exactly
the tables an uninterrupted run gives. The faulted runs split each month into several buckets
(several part files per table-month) while the clean reference store uses one, so convergence also
shows that the bucket count never changes a row.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.store import Store
from flows import bucket, monthly, run_month
from schemas.contract import TABLES
from tests.billing_tiers.test_store import STEPS
from tests.extract_factory import write_history
from tests.faults import InjectedFault, fail_at
from tests.stores import assert_same_store, contents, new_store

MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
BUCKETS = 3

pytestmark = pytest.mark.usefixtures("prefect_harness")


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
def test_a_fault_at_any_step_keeps_the_store_readable_and_a_rerun_converges(
    step: str, extracts: Path, clean_store: Path, three_months: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(three_months, store)
    before = contents(store)
    with monkeypatch.context() as patch, contextlib.ExitStack() as faults:
        if step == "after_validation":

            def fail(*_: object) -> None:
                raise InjectedFault("injected fault after validation")

            patch.setattr(bucket, "validate_tables", fail)
        else:
            faults.enter_context(fail_at(step))
        with pytest.raises(InjectedFault):
            monthly.backfill_tiers(start=MONTHS[3], extracts=str(extracts), store=str(store), buckets=BUCKETS)
    assert_readable(store)
    for table, frame in before.items():  # every previously published month is untouched
        now = contents(store)[table].filter(pl.col("billing_month") <= MONTHS[2])
        assert now.equals(frame), table
    monthly.backfill_tiers(start=MONTHS[3], extracts=str(extracts), store=str(store), buckets=BUCKETS)
    assert_same_store(store, clean_store)


def test_a_refused_run_changes_no_published_file(extracts: Path, clean_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    with pytest.raises(PipelineError):
        monthly.monthly_tiers(month="2024-02", extracts=str(extracts), store=str(store))
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    assert {p: v for p, v in after.items() if not p.name.startswith(".lock")} == {
        p: v for p, v in stamp.items() if not p.name.startswith(".lock")
    }


def test_a_backfill_that_dies_half_way_marks_later_months_stale(
    extracts: Path, clean_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    store = tmp_path / "store"
    shutil.copytree(clean_store, store)
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
    problems = {s.month.strftime("%Y-%m"): s.problem for s in store_status(Store(store))}
    assert problems["2024-02"] is None and problems["2024-03"] is None
    assert problems["2024-04"] is not None and problems["2024-04"].startswith("stale")
    assert problems["2024-05"] is not None and problems["2024-05"].startswith("stale")
    with pytest.raises(PipelineError, match="backfill --from 2024-04"):
        monthly.monthly_tiers(month="2024-05", extracts=str(extracts), store=str(store))
    monthly.backfill_tiers(start=MONTHS[3], extracts=str(extracts), store=str(store))
    assert_same_store(store, clean_store)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    crashes=st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(MONTHS) - 1), st.sampled_from(STEPS)),
        min_size=1,
        max_size=3,
    )
)
def test_random_runs_crashes_and_reruns_end_in_the_clean_store(
    crashes: list[tuple[int, str]], extracts: Path, clean_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = new_store(tmp_path_factory.mktemp("random"))
    for start, step in crashes:
        try:
            latest = [s.month for s in store_status(Store(store))]
            first = MONTHS[min(start, len(latest))]
            with fail_at(step):
                monthly.backfill_tiers(start=first, extracts=str(extracts), store=str(store), buckets=BUCKETS)
        except (InjectedFault, PipelineError):
            pass
        assert_readable(store)
    statuses = store_status(Store(store))
    first_bad = next((s.month for s in statuses if not s.healthy), None)
    resume = first_bad.strftime("%Y-%m") if first_bad else MONTHS[len(statuses)] if len(statuses) < 5 else None
    if resume is not None:
        monthly.backfill_tiers(start=resume, extracts=str(extracts), store=str(store))
    assert_same_store(store, clean_store)


def _cli(store: Path, extracts: Path, api_url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.Popen(
        [sys.executable, "-m", "billing_tiers.cli", *args, "--extracts", str(extracts), "--store", str(store)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


@pytest.mark.parametrize("delay", [1.0, 3.5, 6.0])
def test_kill_9_of_a_real_backfill_then_rerun_gives_identical_tables(
    delay: float, extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())
    store = new_store(tmp_path / "store")
    process = _cli(store, extracts, api_url, "backfill", "--from", MONTHS[0], "--buckets", str(BUCKETS))
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert_readable(store)
    rerun = _cli(store, extracts, api_url, "backfill", "--from", MONTHS[0], "--buckets", "2")
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert_same_store(store, clean_store)


def _wait_for(predicate: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 120.0) -> bool:
    """Poll until ``predicate`` holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the moment to kill never came")


@pytest.mark.parametrize(
    "moment",
    ["parts_staged", "journal_written", "later_month_committed"],
)
def test_kill_9_at_a_chosen_publish_moment_with_several_buckets(
    moment: str, extracts: Path, clean_store: Path, tmp_path: Path
) -> None:
    """Kill a real backfill while bucket parts are staged, just after the commit point, or half-way
    through the swaps; readers then see whole table-months and a rerun converges."""
    from prefect.settings import PREFECT_API_URL

    store = new_store(tmp_path / "store")
    staging = store / "_staging"

    def reached() -> bool:
        match moment:
            case "parts_staged":
                return any(staging.glob("*/tables/card_issuance/part-00001-*.parquet"))
            case "journal_written":
                return any(staging.glob("*/journal.json"))
            case _:
                return any((store / "tier_assignments").glob("billing_month=2024-02/part-*")) and any(
                    staging.glob("*/journal.json")
                )

    process = _cli(store, extracts, str(PREFECT_API_URL.value()), "backfill", "--from", MONTHS[0], "--buckets", "3")
    killed = _wait_for(reached, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert killed, "the backfill ended before the moment came"
    assert_readable(store)
    for table in TABLES:  # every visible table-month holds the parts of one run only
        for month_dir in (store / table).glob("billing_month=*"):
            tags = {p.name.split("-")[2] for p in month_dir.glob("part-*.parquet")}
            assert len(tags) <= 1, (table, month_dir.name, tags)
    rerun = _cli(store, extracts, str(PREFECT_API_URL.value()), "backfill", "--from", MONTHS[0])
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert_same_store(store, clean_store)
