"""The deployed entry points (``flows/scheduled.py``, ``prefect.yaml``).

Fast tests, no Prefect server: empty paths refused at once, the default month in a time zone, the
catch-up plan of a store that is behind, and one look for an extract.

Slow tests, as an operator would do it: a real ``prefect server start`` on 127.0.0.1, the process
work pool, ``prefect --no-prompt deploy --all`` from the repository with the ``BILLING_TIERS_*``
variables, a ``prefect worker start`` (started in another folder: the deployment's pull step must
take the runs to the repository), and runs triggered with ``prefect deployment run``. Every process
started here leads its own process group and is stopped through it; so are the flow-run processes
the worker starts, which must all be gone at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import flows.scheduled as scheduled_module
from billing_tiers.errors import PipelineError
from flows.scheduled import (
    backfill_deployment_tiers,
    closed_month,
    months_to_run,
    scheduled_tiers,
    target_month,
    wait_for_extract,
)
from tests.processes import free_port, group_members, stop_group, wait_until_gone

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "extracts"
PREFECT = str(Path(sys.executable).with_name("prefect"))
RUN_TIMEOUT = 120.0


def m(label: str) -> dt.date:
    year, month = label.split("-")
    return dt.date(int(year), int(month), 1)


def months(first: str, last: str) -> list[dt.date]:
    found, month = [], m(first)
    while month <= m(last):
        found.append(month)
        month = dt.date(month.year + month.month // 12, month.month % 12 + 1, 1)
    return found


# ------------------------------------------------------------------------------ fast: parameters
@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
@pytest.mark.parametrize("parameter", ["extracts", "store"])
def test_an_empty_path_is_refused_at_once_in_one_line_naming_the_parameter(
    parameter: str, blank: str, tmp_path: Path
) -> None:
    paths = {"extracts": str(SAMPLE), "store": str(tmp_path / "store"), parameter: blank}
    # Before anything else: a bad month or time zone, or an impossible wait, would be reported instead.
    with pytest.raises(PipelineError) as scheduled:
        scheduled_tiers.fn(**paths, month="2026-13", timezone="Mars/Olympus", extract_wait_retries=-1)
    with pytest.raises(PipelineError) as backfill:
        backfill_deployment_tiers.fn(start="not a month", **paths)
    for error in (scheduled.value, backfill.value):
        message = str(error)
        assert message.startswith(f"parameter '{parameter}' is empty"), message
        assert "\n" not in message
    assert not (tmp_path / "store").exists()


def test_an_empty_rulebook_is_refused_but_an_unset_one_is_the_default(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="parameter 'rulebook' is empty"):
        scheduled_tiers.fn(extracts=str(SAMPLE), store=str(tmp_path), rulebook=" ")
    with pytest.raises(PipelineError, match="parameter 'rulebook' is empty"):
        backfill_deployment_tiers.fn(start="2024-01", extracts=str(SAMPLE), store=str(tmp_path), rulebook="")


@pytest.fixture
def extract_waits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The months the flow started to wait for; a wait fails the test at once instead of sleeping."""
    waited: list[str] = []

    def no_wait(extracts: str, month: dt.date, retries: int, delay_seconds: int) -> None:
        waited.append(str(month))
        raise AssertionError(f"the run started waiting for the extract of {month} ({retries} x {delay_seconds} s)")

    monkeypatch.setattr(scheduled_module, "_await_extract", no_wait)
    return waited


def test_an_uninitialised_store_is_refused_before_any_wait(tmp_path: Path, extract_waits: list[str]) -> None:
    # 2030-01 has no extract: a wait before the store check would look for it for a day
    with pytest.raises(PipelineError, match="billing-tiers init"):
        scheduled_tiers.fn(
            extracts=str(SAMPLE), store=str(tmp_path / "typo"), month="2030-01", extract_wait_seconds=3600
        )
    assert extract_waits == []
    assert not (tmp_path / "typo").exists()


def test_a_missing_extracts_folder_is_refused_at_once_not_waited_for(tmp_path: Path, extract_waits: list[str]) -> None:
    with pytest.raises(PipelineError, match=r"month 2024-03: the extracts folder .*nowhere does not exist"):
        scheduled_tiers.fn(extracts=str(tmp_path / "nowhere"), store=str(tmp_path), month="2024-03")
    assert extract_waits == []


# --------------------------------------------------------------------------- fast: the default month
@pytest.mark.parametrize(
    ("now", "timezone", "expected"),
    [
        # 17:30 UTC on 31 March is already 1 April in Shanghai: March has closed there, not in UTC.
        (dt.datetime(2026, 3, 31, 17, 30, tzinfo=dt.UTC), "Asia/Shanghai", "2026-03"),
        (dt.datetime(2026, 3, 31, 17, 30, tzinfo=dt.UTC), "UTC", "2026-02"),
        # The schedule's own moment: day 5, 06:00 Shanghai.
        (dt.datetime(2026, 4, 4, 22, 0, tzinfo=dt.UTC), "Asia/Shanghai", "2026-03"),
        # Across a year.
        (dt.datetime(2025, 12, 31, 16, 0, tzinfo=dt.UTC), "Asia/Shanghai", "2025-12"),
        (dt.datetime(2026, 1, 15, 0, 0, tzinfo=dt.UTC), "America/New_York", "2025-12"),
    ],
)
def test_the_default_month_is_the_month_that_closed_before_today_in_the_time_zone(
    now: dt.datetime, timezone: str, expected: str
) -> None:
    assert closed_month(timezone, now) == m(expected)


def test_a_given_month_wins_and_a_blank_one_is_the_default() -> None:
    assert target_month("2024-03", "Asia/Shanghai") == m("2024-03")
    assert target_month(None, "Asia/Shanghai") == closed_month("Asia/Shanghai")
    assert target_month(" ", "UTC") == closed_month("UTC")
    with pytest.raises(PipelineError, match="2024-3"):
        target_month("2024-3", "UTC")


def test_an_unknown_time_zone_is_one_line_naming_it() -> None:
    with pytest.raises(PipelineError, match=r"parameter 'timezone': 'Asia/Shangai' is not a known time zone"):
        closed_month("Asia/Shangai")


# ---------------------------------------------------------------------------- fast: catching up
SAMPLE_MONTHS = months("2024-01", "2026-03")


@pytest.mark.parametrize(
    ("latest", "target", "expected"),
    [
        ("2024-02", "2024-03", ["2024-03"]),  # the next month
        ("2024-03", "2024-03", ["2024-03"]),  # a rerun of the latest
        ("2024-05", "2024-03", ["2024-03"]),  # earlier: monthly_tiers refuses it, naming the backfill
        ("2024-01", "2024-04", ["2024-02", "2024-03", "2024-04"]),  # behind: catch up in order
        ("2025-11", "2026-03", ["2025-12", "2026-01", "2026-02", "2026-03"]),  # across a year
        (None, "2024-01", ["2024-01"]),  # an empty store and the first extract month
        (None, "2024-03", ["2024-01", "2024-02", "2024-03"]),  # an empty store: built from the first extract
        (None, "2023-11", ["2023-11"]),  # nothing older: the target alone (its own run says what is missing)
    ],
)
def test_months_to_run(latest: str | None, target: str, expected: list[str]) -> None:
    planned = months_to_run(m(latest) if latest else None, m(target), SAMPLE_MONTHS)
    assert planned == [m(label) for label in expected]


def test_the_target_itself_need_not_be_among_the_extracts_yet() -> None:
    assert months_to_run(m("2026-01"), m("2026-04"), SAMPLE_MONTHS) == months("2026-02", "2026-04")


@pytest.mark.parametrize("latest", ["2024-01", None])
def test_a_catch_up_over_a_month_without_extract_fails_naming_that_month(latest: str | None) -> None:
    extracts = [month for month in SAMPLE_MONTHS if month != m("2024-03")]
    with pytest.raises(PipelineError, match=r"^month 2024-03 has no extract: ") as error:
        months_to_run(m(latest) if latest else None, m("2024-05"), extracts)
    assert "2024-05" in str(error.value)


# ---------------------------------------------------------------------------- fast: one extract look
def test_one_look_for_the_extract_names_the_month_until_a_parquet_file_is_there(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"^month 2024-03: no extract folder .*billing_month=2024-03$"):
        wait_for_extract.fn(str(tmp_path), "2024-03", 2, 1)
    folder = tmp_path / "billing_month=2024-03"
    folder.mkdir()
    (folder / "_SUCCESS").touch()
    with pytest.raises(PipelineError, match=r"^month 2024-03: no Parquet file in "):
        wait_for_extract.fn(str(tmp_path), "2024-03", 2, 1)
    sample_file = next((SAMPLE / "billing_month=2024-03").glob("*.parquet"))
    (folder / "part-0.parquet").write_bytes(sample_file.read_bytes())
    assert wait_for_extract.fn(str(tmp_path), "2024-03", 2, 1) == 1


# ============================================================== slow: a real server, worker, deployments
@dataclass
class Deployed:
    """A Prefect server, the process pool, both deployments and a worker, for this module."""

    api_url: str
    env: dict[str, str]
    store: Path
    logs: Path
    flow_run_groups: set[int] = field(default_factory=set)

    def prefect(self, *args: str, timeout: float = 60) -> str:
        """A ``prefect`` command from the repository; its output, or a failure showing it."""
        done = subprocess.run([PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def run(self, deployment: str, params: dict[str, Any]) -> dict[str, Any]:
        """``prefect deployment run`` with these parameters; the flow run once it has finished."""
        output = self.prefect("deployment", "run", deployment, "--params", json.dumps(params))
        found = re.search(r"UUID: ([0-9a-f-]{36})", output)
        assert found, output
        return self.wait(found.group(1))

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.api_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait(self, flow_run_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            flow_run = self.api("GET", f"/flow_runs/{flow_run_id}")
            if flow_run.get("infrastructure_pid"):
                pid = int(str(flow_run["infrastructure_pid"]).rsplit(":", 1)[-1])
                try:  # the process group it leads (the worker starts it in a new session)
                    self.flow_run_groups.add(os.getpgid(pid))
                except ProcessLookupError:  # already gone: its group would still be its pid
                    self.flow_run_groups.add(pid)
            state = flow_run.get("state") or {}
            if state.get("type") in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return dict(flow_run)
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {flow_run_id} not finished after {RUN_TIMEOUT} s: {state}\n{self.log_tail()}")
            time.sleep(0.5)

    def children(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Flow runs started inside ``flow_run_id`` (subflows)."""
        runs = self.api("POST", "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}})
        return list(runs)

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        return list(self.api("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}}))

    def published(self) -> list[str]:
        return sorted(
            path.parent.name.removeprefix("billing_month=")
            for path in (self.store / "manifests").glob("billing_month=*/manifest.json")
        )

    def manifest(self, month: str) -> dict[str, Any]:
        path = self.store / "manifests" / f"billing_month={month}" / "manifest.json"
        return dict(json.loads(path.read_text()))

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in sorted(self.logs.glob("*.log")))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """From nothing to a running schedule, with the README's commands."""
    root = tmp_path_factory.mktemp("deployment")
    home, logs, worker_dir, store = root / "prefect-home", root / "logs", root / "worker-cwd", root / "store"
    for folder in (home, logs, worker_dir):
        folder.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        # What `prefect deploy` writes into the deployments (a relative extracts folder: it only
        # resolves if the pull step took the run to the repository).
        "BILLING_TIERS_HOME": str(REPO),
        "BILLING_TIERS_EXTRACTS": "data/sample/extracts",
        "BILLING_TIERS_STORE": str(store),
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    deployed = Deployed(api_url=api_url, env=env, store=store, logs=logs)

    def start(name: str, command: list[str], cwd: Path) -> None:
        with (logs / f"{name}.log").open("wb") as output:
            processes[name] = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    try:
        start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], root)
        deadline = time.monotonic() + 90
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    break
            if processes["server"].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not start\n{deployed.log_tail()}")
            time.sleep(0.5)

        deployed.prefect("work-pool", "create", "billing-tiers", "--type", "process")
        subprocess.run(
            [sys.executable, "-m", "billing_tiers.cli", "init", "--store", str(store)], env=env, check=True, cwd=REPO
        )
        output = deployed.prefect("--no-prompt", "deploy", "--all")
        assert "'scheduled-tiers/monthly' successfully created" in output, output
        assert "'backfill-deployment-tiers/backfill' successfully created" in output, output
        start("worker", [PREFECT, "worker", "start", "--pool", "billing-tiers"], worker_dir)
        yield deployed
    finally:
        for name, process in reversed(processes.items()):  # the worker first: it reports to the server
            stop_group(process, grace=10 if name == "worker" else 20, settle=2)
    left = {name: members for name, process in processes.items() if (members := group_members(process.pid))}
    assert not left, f"Prefect processes left behind: {left}"
    assert deployed.flow_run_groups, "no flow-run process was seen"
    running = {group: left for group in deployed.flow_run_groups if (left := wait_until_gone(group, 10))}
    assert not running, f"flow-run processes left behind: {running}"


def _message(flow_run: dict[str, Any]) -> str:
    return str((flow_run.get("state") or {}).get("message"))


@pytest.mark.slow
def test_the_deployments_as_written_in_prefect_yaml(deployed: Deployed) -> None:
    monthly = deployed.api("GET", "/deployments/name/scheduled-tiers/monthly")
    assert monthly["entrypoint"] == "flows/scheduled.py:scheduled_tiers"
    assert monthly["work_pool_name"] == "billing-tiers"
    assert [s["schedule"]["cron"] for s in monthly["schedules"]] == ["0 6 5 * *"]
    assert [s["schedule"]["timezone"] for s in monthly["schedules"]] == ["Asia/Shanghai"]
    assert monthly["global_concurrency_limit"]["limit"] == 1
    assert monthly["parameters"] == {"extracts": "data/sample/extracts", "store": str(deployed.store)}
    assert monthly["parameter_openapi_schema"]["required"] == ["extracts", "store"]
    assert monthly["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    backfill = deployed.api("GET", "/deployments/name/backfill-deployment-tiers/backfill")
    assert backfill["entrypoint"] == "flows/scheduled.py:backfill_deployment_tiers"
    assert backfill["schedules"] == []
    assert backfill["global_concurrency_limit"]["limit"] == 1
    assert set(backfill["parameter_openapi_schema"]["required"]) == {"start", "extracts", "store"}


@pytest.mark.slow
def test_the_scheduled_run_catches_up_an_empty_store_then_a_backfill_run_republishes(deployed: Deployed) -> None:
    # The scheduled deployment for 2024-02 on an empty store: 2024-01 is built first, in order.
    scheduled = deployed.run("scheduled-tiers/monthly", {"month": "2024-02"})
    assert scheduled["state"]["type"] == "COMPLETED", f"{_message(scheduled)}\n{deployed.log_tail()}"
    assert scheduled["name"] == "scheduled-2024-02"
    assert [run["name"] for run in deployed.children(scheduled["id"])] == ["backfill-2024-01-to-2024-02"]
    waits = [run for run in deployed.task_runs(scheduled["id"]) if run["name"].startswith("wait-for-extract")]
    assert [(run["name"], run["run_count"]) for run in waits] == [("wait-for-extract-2024-02", 1)]
    assert deployed.published() == ["2024-01", "2024-02"]
    first = {month: deployed.manifest(month)["run_id"] for month in deployed.published()}

    # A correction through the backfill deployment: 2024-01 and 2024-02 again, and 2024-03.
    backfill = deployed.run("backfill-deployment-tiers/backfill", {"start": "2024-01", "end": "2024-03"})
    assert backfill["state"]["type"] == "COMPLETED", f"{_message(backfill)}\n{deployed.log_tail()}"
    assert backfill["name"] == "backfill-from-2024-01"
    assert deployed.published() == ["2024-01", "2024-02", "2024-03"]
    for month, run_id in first.items():
        assert deployed.manifest(month)["run_id"] != run_id, month
    assert deployed.manifest("2024-03")["built_from"]["month"] == "2024-02"


@pytest.mark.slow
def test_a_late_extract_is_looked_for_again_then_the_run_fails_naming_the_month(deployed: Deployed) -> None:
    late = deployed.run(
        "scheduled-tiers/monthly", {"month": "2030-01", "extract_wait_retries": 2, "extract_wait_seconds": 1}
    )
    assert late["state"]["type"] == "FAILED", _message(late)
    assert late["name"] == "scheduled-2030-01"
    message = _message(late)
    assert "month 2030-01: no extract folder" in message and "gave up after 3 checks 1 s apart" in message, message
    (wait,) = deployed.task_runs(late["id"])
    assert wait["name"] == "wait-for-extract-2030-01"
    assert wait["run_count"] == 3
    assert "2030-01" not in deployed.published()


@pytest.mark.slow
@pytest.mark.parametrize("parameter", ["store", "extracts"])
def test_a_deployed_run_with_an_empty_path_fails_at_once_in_one_line(deployed: Deployed, parameter: str) -> None:
    # What an unset BILLING_TIERS_* variable deploys.
    published = deployed.published()
    failed = deployed.run("scheduled-tiers/monthly", {parameter: ""})
    assert failed["state"]["type"] == "FAILED"
    assert _message(failed).endswith(
        f"PipelineError: parameter '{parameter}' is empty: give the {parameter} path "
        f"(prefect.yaml takes it from $BILLING_TIERS_{parameter.upper()} at deploy time)"
    )
    # refused before anything ran: no extract wait (a task), no monthly or backfill flow, nothing published
    assert deployed.task_runs(failed["id"]) == []
    assert deployed.children(failed["id"]) == []
    assert deployed.published() == published
