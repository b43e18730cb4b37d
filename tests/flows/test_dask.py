"""The buckets on a real Dask cluster, through the real command line.

Two ways: an existing cluster (``--dask-address``: a scheduler and two workers started here with
the ``dask`` command, as an operator would) and a local cluster the run starts for itself
(``--dask-workers 2``). Either must publish, row for row, the tables of a run in one process, with
every bucket evaluated in a Dask worker process, and leave no process behind.

Where a bucket ran is read from Prefect's own log lines: every process started here logs task runs
with its process id (a Prefect logging override in its environment), so a bucket evaluated in the
flow's process instead of a worker fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from flows.monthly import backfill_tiers
from schemas.contract import TABLES
from tests.processes import free_port, group_members, stop_group, wait_until_gone
from tests.stores import new_store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "extracts"
MONTHS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06"]
BUCKETS = 3
TASK_RUN_FORMAT = "%(asctime)s.%(msecs)03d | %(levelname)-7s | Task run %(task_run_name)r pid %(process)d - %(message)s"
TASK_LINE = re.compile(r"Task run '(evaluate-\d{4}-\d{2}-b\d{3})' pid (\d+) - Finished in state Completed")
CLI_TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


# ----------------------------------------------------------------------------------- processes
def _env(api_url: str | None = None) -> dict[str, str]:
    """The environment of every process started here: the project importable, Prefect offline,
    task-run log lines with the process id; PREFECT_API_URL only where given (the flow's command:
    the Dask task runner hands the workers the flow's settings)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_LOGGING_FORMATTERS_STANDARD_TASK_RUN_FMT": TASK_RUN_FORMAT,
    }
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _dask(*args: str) -> list[str]:
    """The ``dask`` command of this environment (the script beside the interpreter, else its module)."""
    script = Path(sys.executable).with_name("dask")
    if script.exists():
        return [str(script), *args]
    module = {"scheduler": "distributed.cli.dask_scheduler", "worker": "distributed.cli.dask_worker"}[args[0]]
    return [sys.executable, "-m", module, *args[1:]]


@dataclass(frozen=True)
class CliRun:
    pid: int
    returncode: int
    stdout: str
    stderr: str
    left_behind: list[int]
    """Processes of the command's process group still alive a few seconds after it exited."""


def _backfill(store: Path, api_url: str, *args: str) -> CliRun:
    """``billing-tiers backfill`` on the sample as a subprocess leading its own process group."""
    return _billing_tiers(api_url, "backfill", "--extracts", str(SAMPLE), "--store", str(store), *args)


def _billing_tiers(api_url: str, *args: str) -> CliRun:
    """A ``billing-tiers`` command as a subprocess leading its own process group."""
    process = subprocess.Popen(
        [sys.executable, "-m", "billing_tiers.cli", *args],
        cwd=REPO,
        env=_env(api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop_group(process, grace=20, settle=10)
        raise
    left = wait_until_gone(process.pid, 10)
    if left:  # fail the test, but leave nothing running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return CliRun(process.pid, process.returncode, stdout, stderr, left)


def _buckets_ran(log: str) -> list[tuple[str, int]]:
    """(task run name, process id) of every bucket task that completed, from Prefect's log lines."""
    return sorted((name, int(pid)) for name, pid in TASK_LINE.findall(log))


def _expected_task_runs(months: list[str]) -> list[str]:
    return sorted(f"evaluate-{month}-b{bucket:03d}" for month in months for bucket in range(BUCKETS))


# -------------------------------------------------------------------------------------- tables
def contents(store: Path, last_month: str | None = None) -> dict[str, pl.DataFrame]:
    """Every published table of a store, sorted on all columns (through ``last_month`` if given)."""
    found = {}
    for table in TABLES:
        frame = pl.read_parquet(store / table, hive_partitioning=True)
        if last_month:
            frame = frame.filter(pl.col("billing_month") <= last_month)
        found[table] = frame.sort(pl.all())
    return found


def assert_same_tables(store: Path, reference: Path, last_month: str) -> None:
    mine, theirs = contents(store), contents(reference, last_month)
    assert mine.keys() == theirs.keys() == set(TABLES)
    for table in TABLES:
        assert theirs[table].height > 0 or table == "at_risk", table  # no re-rating falls in the first months
        assert mine[table].equals(theirs[table]), table


@pytest.fixture(scope="module")
def in_process_store(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the same months in this process, one bucket a month, no Dask."""
    store = new_store(tmp_path_factory.mktemp("in-process"))
    backfill_tiers(start=MONTHS[0], end=MONTHS[-1], extracts=str(SAMPLE), store=str(store), buckets=1)
    return store


@pytest.fixture
def api_url(prefect_harness: None) -> str:
    """The test harness's Prefect server, for the commands run as subprocesses."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


# ---------------------------------------------------------------------------------- the cluster
@dataclass(frozen=True)
class Cluster:
    address: str
    worker_logs: tuple[Path, ...]
    worker_pids: frozenset[int]
    """Process ids of the worker processes (the children of the workers' nannies)."""


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A scheduler and two one-thread workers on 127.0.0.1, started with the ``dask`` command.

    Each leads its own process group and is stopped through it, workers first. Should this
    process die without its teardown, the scheduler stops after 10 idle minutes and the workers a
    minute after losing it."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, command: list[str]) -> Path:
        log = logs / f"{name}.log"
        with log.open("wb") as output:
            processes[name] = subprocess.Popen(
                command, cwd=REPO, env=_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        return log

    def logs_text() -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(logs.glob("*.log")))

    try:
        start(
            "scheduler",
            # No dashboard, and the HTTP server the scheduler still runs on a free local port, not :8787.
            _dask(
                *("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                *("--dashboard-address", "127.0.0.1:0", "--idle-timeout", "600"),
            ),
        )
        worker_logs = tuple(
            start(
                f"worker-{n}",
                _dask(
                    *("worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"),
                    *("--name", f"worker-{n}", "--local-directory", str(tmp_path / f"worker-{n}")),
                    *("--death-timeout", "60"),
                ),
            )
            for n in (1, 2)
        )
        try:
            with Client(address, timeout=60) as client:
                client.wait_for_workers(2, timeout=60)
                worker_pids = frozenset(client.run(os.getpid).values())
        except Exception as error:
            pytest.fail(f"the Dask cluster did not start: {error!r}\n{logs_text()}")
        assert len(worker_pids) == 2
        yield Cluster(address, worker_logs, worker_pids)
    finally:
        for process in reversed(processes.values()):  # the workers, then the scheduler
            stop_group(process, grace=20, settle=10)
    left = {name: members for name, process in processes.items() if (members := group_members(process.pid))}
    assert not left, f"Dask processes left behind: {left}"


# ----------------------------------------------------------------------------------------- tests
def test_buckets_run_on_an_existing_dask_cluster_and_publish_the_in_process_tables(
    dask_cluster: Cluster, in_process_store: Path, api_url: str, tmp_path: Path
) -> None:
    store = new_store(tmp_path / "store")
    run = _backfill(
        store,
        api_url,
        *("--from", MONTHS[0], "--to", MONTHS[-1], "--buckets", str(BUCKETS)),
        *("--dask-address", dask_cluster.address),
    )
    assert run.returncode == 0, run.stderr
    assert not run.left_behind
    assert_same_tables(store, in_process_store, MONTHS[-1])

    worker_logs = "\n".join(log.read_text() for log in dask_cluster.worker_logs)
    ran = _buckets_ran(worker_logs)
    assert [name for name, _ in ran] == _expected_task_runs(MONTHS), worker_logs[-3000:]
    assert {pid for _, pid in ran} <= dask_cluster.worker_pids
    assert "Task run 'evaluate-" not in run.stderr  # not one bucket in the flow's process
    # The workers had no PREFECT_API_URL: they used the flow's server, not temporary ones of their own.
    assert "Starting temporary server" not in worker_logs


def test_a_local_cluster_started_by_the_run_publishes_the_in_process_tables_and_stops(
    in_process_store: Path, api_url: str, tmp_path: Path
) -> None:
    months = MONTHS[:3]
    store = new_store(tmp_path / "store")
    run = _backfill(
        store, api_url, *("--from", months[0], "--to", months[-1], "--buckets", str(BUCKETS), "--dask-workers", "2")
    )
    assert run.returncode == 0, run.stderr
    assert not run.left_behind, f"processes of the run still alive after it exited: {run.left_behind}"
    assert_same_tables(store, in_process_store, months[-1])

    assert "Creating a new Dask cluster" in run.stderr
    ran = _buckets_ran(run.stderr)  # the local workers write to the command's stderr
    assert [name for name, _ in ran] == _expected_task_runs(months), run.stderr[-3000:]
    pids = {pid for _, pid in ran}
    assert run.pid not in pids
    assert 1 <= len(pids) <= 2
    assert "Starting temporary server" not in run.stderr
    # The local cluster's HTTP server took a free local port, not :8787 (nor warned that it was taken).
    assert ":8787" not in run.stderr and "Port 8787" not in run.stderr


# ------------------------------------------------------------------ a cluster that never answers
@pytest.fixture
def scheduler_without_workers(tmp_path: Path) -> Iterator[str]:
    """A ``dask scheduler`` on 127.0.0.1 with no worker (as after a restart nobody rejoined); its
    address. Stopped through its process group."""
    port = free_port()
    log = tmp_path / "scheduler.log"
    with log.open("wb") as output:
        scheduler = subprocess.Popen(
            _dask(
                *("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
                *("--dashboard-address", "127.0.0.1:0", "--idle-timeout", "600"),
            ),
            cwd=REPO, env=_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    address = f"tcp://127.0.0.1:{port}"
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            assert client.scheduler_info()["workers"] == {}
        yield address
    finally:
        stop_group(scheduler, grace=20, settle=10)
    assert not group_members(scheduler.pid), f"the scheduler was left behind\n{log.read_text()[-3000:]}"


def _small_store(tmp_path: Path) -> tuple[Path, Path]:
    from tests.extract_factory import write_history

    extracts = tmp_path / "extracts"
    write_history(extracts, ["2024-01", "2024-02"])
    return extracts, new_store(tmp_path / "store")


def _error_line(run: CliRun) -> str:
    """The command's one error line (Prefect's own progress lines on stderr aside)."""
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    return errors[0]


def _store_is_free(api_url: str, store: Path, extracts: Path) -> None:
    """Nothing published, no lock held, nothing interrupted: ``status`` is clean and ``check``
    (which takes the store's writer lock) runs."""
    assert not (store / ".lock.owner").exists()
    assert not (store / "manifests").exists() or not any((store / "manifests").iterdir())
    status = _billing_tiers(api_url, "status", "--store", str(store), "--extracts", str(extracts), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["months"] == [] and report["interrupted_publishes"] == [], report
    check = _billing_tiers(api_url, "check", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store))
    assert check.returncode == 0, check.stderr[-3000:]
    assert "check 2024-01: run would publish" in check.stdout


def test_a_scheduler_with_no_worker_fails_the_run_in_one_line_and_frees_the_store(
    scheduler_without_workers: str, api_url: str, tmp_path: Path
) -> None:
    extracts, store = _small_store(tmp_path)
    run = _billing_tiers(
        api_url,
        *("run", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store), "--buckets", "2"),
        *("--dask-address", scheduler_without_workers, "--dask-timeout", "5"),
    )  # without the bound this waits for ever: CLI_TIMEOUT stops the test
    assert run.returncode == 2, run.stderr[-3000:]
    assert not run.left_behind
    line = _error_line(run)
    assert line.startswith(f"error: no Dask worker answered at {scheduler_without_workers}: "), line
    assert "none joined within 5 s" in line and "--dask-timeout" in line, line
    _store_is_free(api_url, store, extracts)


def test_an_address_where_no_scheduler_listens_fails_in_one_line_naming_it(api_url: str, tmp_path: Path) -> None:
    extracts, store = _small_store(tmp_path)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    run = _billing_tiers(
        api_url,
        *("backfill", "--from", "2024-01", "--extracts", str(extracts), "--store", str(store)),
        *("--dask-address", nowhere, "--dask-timeout", "3"),
    )
    assert run.returncode == 2, run.stderr[-3000:]
    line = _error_line(run)
    expected = f"error: no Dask worker answered at {nowhere}: the scheduler did not answer within 3 s"
    assert line.startswith(expected), line
    _store_is_free(api_url, store, extracts)
