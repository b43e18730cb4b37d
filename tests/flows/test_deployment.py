"""The deployed entry points (``flows/scheduled.py``, ``prefect.yaml``).

Fast tests, no Prefect server: empty paths refused at once, the default month in a time zone, a
month that has not closed yet refused (with an injected ``today``, never the wall clock), the
catch-up plan of a store that is behind, one look for an extract, the backfill run's name and the
deploy-time check of ``BILLING_TIERS_HOME``. "At once" is shown by what did not happen (no
extract wait was entered, the store was not touched), not by timing.

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

import flows.scheduled
from billing_tiers.errors import PipelineError
from flows.deploy_steps import home_problem, require_deploy_environment
from flows.scheduled import (
    backfill_deployment_tiers,
    closed_month,
    months_to_run,
    parse_today,
    require_closed,
    scheduled_tiers,
    target_month,
    wait_for_extract,
)
from tests.processes import free_port, group_members, stop_group, wait_until_gone

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "extracts"
PREFECT = str(Path(sys.executable).with_name("prefect"))
RUN_TIMEOUT = 120.0
SERVER_START_TIMEOUT = 300.0  # only stops a hang: a cold server on a busy 2-core machine takes minutes


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
@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The extract waits the scheduled run enters, recorded instead of waited."""
    entered: list[tuple[str, str]] = []

    def record(extracts: str, month: dt.date, retries: int, delay_seconds: int) -> None:
        entered.append((extracts, f"{month:%Y-%m}"))
        raise PipelineError(f"month {month:%Y-%m}: (test) the wait was entered")

    monkeypatch.setattr(flows.scheduled, "_await_extract", record)
    return entered


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
@pytest.mark.parametrize("parameter", ["extracts", "store"])
def test_an_empty_path_is_refused_at_once_in_one_line_naming_the_parameter(
    parameter: str, blank: str, tmp_path: Path, waits: list[tuple[str, str]]
) -> None:
    paths = {"extracts": str(SAMPLE), "store": str(tmp_path / "store"), parameter: blank}
    # Before anything else: a bad month or time zone, or an impossible wait, would be reported later.
    with pytest.raises(PipelineError) as scheduled:
        scheduled_tiers.fn(**paths, month="2026-13", timezone="Mars/Olympus", extract_wait_retries=-1)
    with pytest.raises(PipelineError) as backfill:
        backfill_deployment_tiers.fn(start="not a month", **paths)
    assert waits == []
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


def test_an_uninitialised_store_is_refused_before_any_wait(tmp_path: Path, waits: list[tuple[str, str]]) -> None:
    with pytest.raises(PipelineError, match="billing-tiers init"):
        scheduled_tiers.fn(
            extracts=str(SAMPLE),
            store=str(tmp_path / "typo"),
            month="2030-01",
            extract_wait_seconds=3600,
            today="2030-02-05",
        )
    assert waits == []
    assert not (tmp_path / "typo").exists()


def test_a_missing_extracts_folder_is_refused_at_once_not_waited_for(
    tmp_path: Path, waits: list[tuple[str, str]]
) -> None:
    with pytest.raises(PipelineError, match=r"month 2024-03: the extracts folder .*nowhere does not exist"):
        scheduled_tiers.fn(extracts=str(tmp_path / "nowhere"), store=str(tmp_path), month="2024-03", today="2024-04-05")
    assert waits == []


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


# ------------------------------------------------------------------- fast: a month not closed yet
@pytest.mark.parametrize(
    ("month", "today", "closed"),
    [
        ("2026-04", "2026-03-15", False),  # next month
        ("2026-03", "2026-03-15", False),  # the month under way
        ("2026-03", "2026-03-31", False),  # its last day: not over yet
        ("2026-03", "2026-04-01", True),  # the day after
        ("2026-02", "2026-03-15", True),  # the month that closed before today
        ("2025-12", "2026-01-05", True),  # across a year
        ("2030-01", "2026-03-15", False),
    ],
)
def test_only_a_month_that_has_closed_in_the_time_zone_may_run(month: str, today: str, closed: bool) -> None:
    if closed:
        require_closed(m(month), "Asia/Shanghai", dt.date.fromisoformat(today))
    else:
        with pytest.raises(PipelineError, match=rf"^month {month} has not closed yet in Asia/Shanghai "):
            require_closed(m(month), "Asia/Shanghai", dt.date.fromisoformat(today))


def test_a_scheduled_run_for_a_month_not_closed_yet_is_refused_at_once_in_one_line(
    tmp_path: Path, waits: list[tuple[str, str]]
) -> None:
    store = tmp_path / "store"
    with pytest.raises(PipelineError) as error:
        scheduled_tiers.fn(extracts=str(SAMPLE), store=str(store), month="2026-04", today="2026-03-15")
    assert str(error.value) == (
        "month 2026-04 has not closed yet in Asia/Shanghai (today is 2026-03-15 there): the scheduled run "
        "publishes closed months only, the latest being 2026-02; run 2026-04 on or after 2026-05-01"
    )
    assert waits == []  # without the check it would wait 24 hours for the extract, holding the slot
    assert not store.exists()


def test_today_in_the_time_zone_decides_not_the_machine_clock(waits: list[tuple[str, str]], tmp_path: Path) -> None:
    # 2026-03-31 17:30 UTC is 2026-04-01 in Shanghai: March has closed there, not in UTC.
    now = dt.datetime(2026, 3, 31, 17, 30, tzinfo=dt.UTC)
    require_closed(m("2026-03"), "Asia/Shanghai", flows.scheduled.today_in("Asia/Shanghai", now=now))
    with pytest.raises(PipelineError, match="month 2026-03 has not closed yet in UTC"):
        require_closed(m("2026-03"), "UTC", flows.scheduled.today_in("UTC", now=now))
    # An injected today also names the default month.
    assert target_month(None, "Asia/Shanghai", dt.date(2026, 4, 5)) == m("2026-03")
    # A closed month goes on to wait for its extract.
    from tests.stores import new_store

    with pytest.raises(PipelineError, match=r"\(test\) the wait was entered"):
        scheduled_tiers.fn(
            extracts=str(SAMPLE), store=str(new_store(tmp_path / "s")), month="2026-04", today="2026-05-01"
        )
    assert waits == [(str(SAMPLE), "2026-04")]


def test_a_bad_today_is_one_line_naming_the_parameter() -> None:
    assert parse_today(None) is None and parse_today(" ") is None
    assert parse_today("2026-03-15") == dt.date(2026, 3, 15)
    with pytest.raises(PipelineError, match=r"^parameter 'today': '2026-3-15' is not a date YYYY-MM-DD$"):
        parse_today("2026-3-15")


# ----------------------------------------------------------------------- fast: run names, deploy check
@pytest.mark.parametrize(
    ("parameters", "name"),
    [
        ({"start": "2024-03", "end": "2024-06"}, "backfill-2024-03-to-2024-06"),
        ({"start": "2024-03", "end": None}, "backfill-2024-03-to-latest"),
        ({"start": "2024-03", "end": " "}, "backfill-2024-03-to-latest"),
        ({"start": "2024-03"}, "backfill-2024-03-to-latest"),
    ],
)
def test_the_backfill_run_is_named_by_its_range(
    parameters: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flows.scheduled.flow_run, "get_parameters", lambda: parameters)
    assert flows.scheduled._backfill_run_name() == name


@pytest.mark.parametrize(
    ("home", "problem"),
    [
        (None, "BILLING_TIERS_HOME is not set: "),
        ("", "BILLING_TIERS_HOME is not set: "),
        ("  ", "BILLING_TIERS_HOME is not set: "),
        ("billing-tiers", "BILLING_TIERS_HOME='billing-tiers' is not an absolute path: "),
        (str(REPO), None),
    ],
)
def test_the_deploy_step_refuses_an_unusable_billing_tiers_home(
    home: str | None, problem: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environ = {} if home is None else {"BILLING_TIERS_HOME": home}
    found = home_problem(environ)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem) and "nothing was deployed" in found
    monkeypatch.delenv("BILLING_TIERS_HOME", raising=False)
    if home is not None:
        monkeypatch.setenv("BILLING_TIERS_HOME", home)
    if problem is None:
        assert require_deploy_environment() == {}
        assert capsys.readouterr().err == ""
    else:
        with pytest.raises(SystemExit) as exit_:
            require_deploy_environment()
        assert exit_.value.code == 2
        assert capsys.readouterr().err == f"error: {found}\n"


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
        deadline = time.monotonic() + SERVER_START_TIMEOUT
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
    assert backfill["name"] == "backfill-2024-01-to-2024-03"
    assert deployed.published() == ["2024-01", "2024-02", "2024-03"]
    for month, run_id in first.items():
        assert deployed.manifest(month)["run_id"] != run_id, month
    assert deployed.manifest("2024-03")["built_from"]["month"] == "2024-02"


@pytest.mark.slow
def test_a_late_extract_is_looked_for_again_then_the_run_fails_naming_the_month(deployed: Deployed) -> None:
    late = deployed.run(
        "scheduled-tiers/monthly",
        {"month": "2030-01", "today": "2030-02-05", "extract_wait_retries": 2, "extract_wait_seconds": 1},
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
    assert deployed.task_runs(failed["id"]) == []  # at once: not even one look for the extract
    assert deployed.children(failed["id"]) == []  # no monthly or backfill flow either
    assert deployed.published() == published  # nothing published


@pytest.mark.slow
def test_a_deployed_run_for_a_month_not_closed_yet_is_refused_at_once_in_one_line(deployed: Deployed) -> None:
    # month=2026-04 asked for in March 2026 (today injected: the wall clock plays no part).
    refused = deployed.run("scheduled-tiers/monthly", {"month": "2026-04", "today": "2026-03-15"})
    assert refused["state"]["type"] == "FAILED", _message(refused)
    assert refused["name"] == "scheduled-2026-04"
    assert _message(refused).endswith(
        "PipelineError: month 2026-04 has not closed yet in Asia/Shanghai (today is 2026-03-15 there): the "
        "scheduled run publishes closed months only, the latest being 2026-02; run 2026-04 on or after 2026-05-01"
    )
    assert deployed.task_runs(refused["id"]) == []  # no wait for the extract held the concurrency slot
    assert "2026-04" not in deployed.published()


@pytest.mark.slow
def test_a_backfill_run_without_end_is_named_to_latest(deployed: Deployed) -> None:
    failed = deployed.run("backfill-deployment-tiers/backfill", {"start": "2099-01"})  # no such extract: fails
    assert failed["name"] == "backfill-2099-01-to-latest"
    assert failed["state"]["type"] == "FAILED" and "2099-01" in _message(failed)


@pytest.mark.slow
@pytest.mark.parametrize("home", [None, " ", "relative/billing-tiers"])
def test_deploy_without_a_usable_billing_tiers_home_stops_in_one_line_and_deploys_nothing(
    deployed: Deployed, home: str | None
) -> None:
    before = {
        name: deployed.api("GET", f"/deployments/name/{name}")
        for name in ("scheduled-tiers/monthly", "backfill-deployment-tiers/backfill")
    }
    env = {key: value for key, value in deployed.env.items() if key != "BILLING_TIERS_HOME"}
    if home is not None:
        env["BILLING_TIERS_HOME"] = home
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, f"{done.stdout}\n{done.stderr}"
    assert done.stderr.splitlines() == [f"error: {home_problem(env)}"], done.stderr
    assert "BILLING_TIERS_HOME" in done.stderr and "Traceback" not in done.stdout + done.stderr
    for name, deployment in before.items():  # untouched: still the module's deployments, same update time
        now = deployed.api("GET", f"/deployments/name/{name}")
        assert now["updated"] == deployment["updated"], name
        assert now["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}], (
            name
        )
