"""The bounded waits on a Dask cluster (``flows/dask_cluster.py``) while buckets run, on a real
scheduler and worker started with the ``dask`` command (no Prefect): a cluster that loses every
worker, or its scheduler, mid-run ends the wait in one line; a slow bucket with a worker there is
not cut short. The command-line cases (no worker at all, no scheduler) are in ``test_dask.py``.

A bucket here is ``time.sleep``; each wait runs in a thread whose result is awaited with a generous
timeout that only stops a hang (no test asserts on the wall clock)."""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from billing_tiers.errors import PipelineError
from flows.dask_cluster import DASK_TIMEOUT_SECONDS, check_timeout, wait_for_buckets
from tests.flows.test_dask import REPO, _dask, _env
from tests.processes import free_port, group_members, stop_group

HANG = 180.0  # only stops a hang

pytestmark = pytest.mark.slow


class Cluster:
    """A scheduler and one worker, each leading its own process group, and a client."""

    def __init__(self, logs: Path) -> None:
        from distributed import Client

        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        port = self.address.rsplit(":", 1)[1]
        self._start(
            "scheduler",
            *("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"),
            *("--dashboard-address", "127.0.0.1:0", "--idle-timeout", "600"),
        )
        self._start(
            "worker",
            *("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"),
            *("--local-directory", str(logs / "worker"), "--death-timeout", "60"),
        )
        # Not the default client, like the Prefect task runner's (``set_as_default=False``).
        self.client = Client(self.address, timeout=10, set_as_default=False)
        self.client.wait_for_workers(1, timeout=60)

    def _start(self, name: str, *args: str) -> None:
        with (self.logs / f"{name}.log").open("wb") as output:
            self.processes[name] = subprocess.Popen(
                _dask(*args), cwd=REPO, env=_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill(self, name: str) -> None:
        """Stop one member (its nanny and worker process together, for the worker) at once."""
        stop_group(self.processes[name], grace=0, settle=0)

    def close(self) -> None:
        self.client.close(timeout=5)
        for process in reversed(self.processes.values()):
            stop_group(process, grace=10, settle=5)
        left = {name: members for name, process in self.processes.items() if (members := group_members(process.pid))}
        assert not left, f"Dask processes left behind: {left}"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "worker").mkdir()
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.close()


def _in_thread(call: Callable[[], Any]) -> Any:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=HANG)


def _running(cluster: Cluster) -> None:
    """Wait until the worker has taken the buckets."""
    deadline = time.monotonic() + HANG
    while not any(cluster.client.processing().values()):
        assert time.monotonic() < deadline, "the worker never took the bucket"
        time.sleep(0.2)


def test_every_worker_gone_mid_run_ends_the_wait_in_one_line(cluster: Cluster) -> None:
    futures = [cluster.client.submit(time.sleep, 600, pure=False) for _ in range(2)]
    _running(cluster)
    cluster.kill("worker")
    with pytest.raises(PipelineError) as error:
        _in_thread(lambda: wait_for_buckets(cluster.client, futures, timeout=3, poll=0.5))
    message = str(error.value)
    assert message == (
        f"no Dask worker answered at {cluster.address}: 2 of 2 buckets are unfinished, the scheduler has no worker "
        f"and none joined within 3 s; start one (`dask worker {cluster.address}`) or give a longer --dask-timeout"
    )


def test_a_scheduler_lost_mid_run_ends_the_wait_in_one_line(cluster: Cluster) -> None:
    futures = [cluster.client.submit(time.sleep, 600, pure=False)]
    _running(cluster)
    cluster.kill("scheduler")
    with pytest.raises(PipelineError) as error:
        _in_thread(lambda: wait_for_buckets(cluster.client, futures, timeout=3, poll=0.5, where="tcp://sched:8786"))
    message = str(error.value)
    assert message.startswith("no Dask worker answered at tcp://sched:8786: "), message
    assert "the connection to the scheduler was lost" in message and "\n" not in message


def test_a_slow_bucket_with_a_worker_there_is_not_cut_short(cluster: Cluster) -> None:
    futures = [cluster.client.submit(time.sleep, 3, pure=False), cluster.client.submit(sum, [1, 2])]
    _in_thread(lambda: wait_for_buckets(cluster.client, futures, timeout=1, poll=0.2))
    assert [future.result() for future in futures] == [None, 3]


def test_a_failed_bucket_is_left_for_its_result_to_raise(cluster: Cluster) -> None:
    future = cluster.client.submit(int, "not a number")
    _in_thread(lambda: wait_for_buckets(cluster.client, [future], timeout=5, poll=0.5))
    with pytest.raises(ValueError, match="not a number"):
        future.result()


def test_the_timeout_default_and_refusals() -> None:
    assert check_timeout(None) == DASK_TIMEOUT_SECONDS
    assert 60 <= DASK_TIMEOUT_SECONDS <= 120
    assert check_timeout(5) == 5.0
    for bad in (0, -1):
        with pytest.raises(PipelineError, match=r"^--dask-timeout .*greater than 0"):
            check_timeout(bad)
