"""Bounded waits on a Dask cluster, so a run never waits forever while it holds the store's lock.

Left alone, Dask waits for ever: a scheduler with no worker (started without one, or restarted and
not rejoined) accepts the buckets and never runs them, and so does a scheduler whose workers all
died mid-run. Here:

- :func:`connect`, before the first bucket is submitted: the scheduler must answer within the
  timeout (``distributed.Client(address, timeout=...)``) and at least one worker must be there or
  join within it (``client.wait_for_workers``);
- :func:`wait_for_buckets`, while the buckets run: every ``poll`` seconds, if some are unfinished,
  at least one worker must still be there or join within the timeout; a lost scheduler (its
  futures are cancelled at once) stops the wait too.

Each failure is one :class:`~billing_tiers.errors.PipelineError` line saying that no Dask worker
answered at the scheduler's address. A bucket that merely takes long while workers are there is
never cut short. The timeout is ``--dask-timeout`` (default :data:`DASK_TIMEOUT_SECONDS`); it is
carried to the flow as the Dask client's own ``timeout`` (``DaskTaskRunner.client_kwargs``).

This module imports no Dask or Prefect at import time: the command line reads the default here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from billing_tiers.errors import PipelineError

DASK_TIMEOUT_SECONDS = 90.0
"""How long a run waits for a Dask scheduler to answer, or for a worker to be there, before failing."""

POLL_SECONDS = 5.0
"""How often a run waiting for its buckets checks that the cluster still has a worker."""


def check_timeout(timeout: float | None) -> float:
    """``timeout`` in seconds (None: the default); not positive is a one-line refusal."""
    if timeout is None:
        return DASK_TIMEOUT_SECONDS
    if not timeout > 0:
        raise PipelineError(f"--dask-timeout {timeout:g}: give a number of seconds greater than 0")
    return float(timeout)


def is_dask_runner(runner: Any) -> bool:
    """Whether ``runner`` is a ``prefect_dask.DaskTaskRunner`` (never true if it was not imported)."""
    import sys

    module = sys.modules.get("prefect_dask.task_runners")
    return module is not None and isinstance(runner, module.DaskTaskRunner)


def runner_timeout(runner: Any) -> float:
    """The timeout a Dask task runner was made with (its client's ``timeout``)."""
    return float((runner.client_kwargs or {}).get("timeout") or DASK_TIMEOUT_SECONDS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _no_worker(where: str, why: str) -> PipelineError:
    return PipelineError(f"no Dask worker answered at {where}: {why}")


def connect(runner: Any) -> Any:
    """The Dask client of ``runner`` (a DaskTaskRunner, started), once at least one worker is there.

    Raises a one-line PipelineError when the scheduler does not answer within the runner's
    timeout, or has no worker and none joins within it."""
    timeout = runner_timeout(runner)
    where = runner.address or "the local Dask cluster"
    try:
        client = runner.client  # connects on first use, bounded by the client's timeout
    except (OSError, TimeoutError) as error:
        raise _no_worker(
            where,
            f"the scheduler did not answer within {timeout:g} s ({_first_line(error)}); check the address and "
            f"that `dask scheduler` runs there",
        ) from None
    where = runner.address or str(client.scheduler.address)
    _require_a_worker(client, where, timeout, "the scheduler has no worker")
    return client


def _require_a_worker(client: Any, where: str, timeout: float, situation: str) -> None:
    try:
        client.wait_for_workers(n_workers=1, timeout=timeout)
    except TimeoutError:
        raise _no_worker(
            where,
            f"{situation} and none joined within {timeout:g} s; start one (`dask worker {where}`) or give a "
            f"longer --dask-timeout",
        ) from None
    except OSError as error:
        raise _no_worker(where, f"the connection to the scheduler was lost ({_first_line(error)})") from None


def wait_for_buckets(
    client: Any,
    futures: Sequence[Any],
    *,
    timeout: float,
    where: str | None = None,
    poll: float = POLL_SECONDS,
) -> None:
    """Wait until every future of ``futures`` (Dask futures, or Prefect futures wrapping them) is
    finished: done, failed or cancelled.

    Every ``poll`` seconds with futures still pending, at least one worker must be there or join
    within ``timeout``; a lost scheduler stops the wait at once. Either is a one-line
    PipelineError naming ``where`` (default: the scheduler's address). A future that failed is
    left for its ``result()`` to raise."""
    import distributed
    from distributed.client import FuturesCancelledError

    where = where or str(client.scheduler.address)
    futures = [getattr(future, "wrapped_future", future) for future in futures]
    while True:
        try:
            with client.as_current():  # the runner's client is not the process's default one
                distributed.wait(list(futures), timeout=min(poll, timeout))
            return
        except TimeoutError:
            pending = sum(1 for future in futures if future.status == "pending")
            _require_a_worker(
                client,
                where,
                timeout,
                f"{pending} of {len(futures)} buckets are unfinished, the scheduler has no worker",
            )
        except FuturesCancelledError as error:
            reasons = ", ".join(sorted({group.reason for group in error.error_groups}))
            raise _no_worker(
                where, f"the buckets were cancelled ({reasons}): the connection to the scheduler was lost mid-run"
            ) from None
        except OSError as error:
            raise _no_worker(where, f"the connection to the scheduler was lost ({_first_line(error)})") from None
