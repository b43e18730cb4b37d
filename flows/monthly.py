"""The Prefect flows: ``monthly_tiers`` evaluates one billing month, ``backfill_tiers`` a range.

Each is a thin adapter around the application layer (:mod:`billing_tiers.service`): it turns its
parameters into a request, opens the session (rulebook, store lock, recovery, plan, checks) and runs
its months with the buckets mapped as Prefect tasks over the flow's task runner: two buckets at a time
in this process by default, or a Dask cluster (:func:`task_runner`). ``run_prepared`` is the command
line's flow, for a session the CLI has already opened. Prefect's task cache is off everywhere:
correctness never depends on it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import prefect.runtime.flow_run
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from billing_tiers.errors import PipelineError
from billing_tiers.months import parse_month
from billing_tiers.service import Command, LoggingListener, RunRequest, Session, open_session, run_session
from billing_tiers.store import Store
from flows import dask_cluster
from flows.bucket import BucketJob, BucketResult
from flows.run_month import BUCKETS_AT_ONCE, DEPLOYMENT_OVERRIDE_HINT, GuardError


def task_runner(
    *, dask_address: str | None = None, dask_workers: int | None = None, dask_timeout: float | None = None
) -> TaskRunner[Any]:
    """Where the buckets run: an existing Dask cluster, a local one started for the run, or (default)
    :data:`flows.run_month.BUCKETS_AT_ONCE` buckets at a time in this process.

    On Dask, ``dask_timeout`` (default :data:`flows.dask_cluster.DASK_TIMEOUT_SECONDS`) bounds the
    wait for the scheduler and for a worker (:mod:`flows.dask_cluster`); it travels as the Dask
    client's own ``timeout``."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        client_kwargs = {"timeout": dask_cluster.check_timeout(dask_timeout)}
        if dask_address:
            return DaskTaskRunner(address=dask_address, client_kwargs=client_kwargs)
        # The local cluster listens on this machine only, its HTTP server included: the scheduler
        # always serves one (dashboard or not), by default on every interface at :8787, which another
        # cluster on the machine may hold; a free local port instead.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": dask_workers,
                "threads_per_worker": 1,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": "127.0.0.1:0",
            },
            client_kwargs=client_kwargs,
        )
    return ThreadPoolTaskRunner(max_workers=BUCKETS_AT_ONCE)


def backfill_run_name() -> str:
    """``backfill-2024-03-to-2024-06``, or ``...-to-latest`` when no end month is given."""
    parameters = prefect.runtime.flow_run.parameters
    return f"backfill-{parameters.get('start')}-to-{parameters.get('end') or 'latest'}"


def _map_as_tasks(work: Callable[[BucketJob], BucketResult], jobs: Sequence[BucketJob]) -> list[BucketResult]:
    """Each bucket is a Prefect task (``evaluate-2026-03-b002``) on the flow's task runner.

    On a Dask cluster, no bucket is submitted before a worker answers, and the wait for them ends
    (one line) when the cluster is left with no worker or loses its scheduler: a run never waits
    forever while it holds the store's lock (:mod:`flows.dask_cluster`)."""
    bucket_task = task(
        name="evaluate-bucket",
        task_run_name="evaluate-{job.label}",
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
    )(work)
    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    client = dask_cluster.connect(runner) if dask_cluster.is_dask_runner(runner) else None
    futures = [bucket_task.submit(job) for job in jobs]
    if client is not None:
        dask_cluster.wait_for_buckets(
            client,
            futures,
            timeout=dask_cluster.runner_timeout(runner),
            where=getattr(runner, "address", None),
        )
    return [future.result() for future in futures]


def changes_per_program(manifest: dict[str, Any]) -> list[tuple[str, int]] | None:
    """Tier rows changed per program by a month that replaced a published one (every program the
    month evaluated, 0 included), from the manifest's ``changes_by_program``; None when the month
    replaced nothing."""
    changes = manifest.get("changes_by_program")
    if changes is None:
        return None
    programs = {row["program"] for row in manifest.get("summary") or []} | set(changes)
    return [(program, int(changes.get(program, 0))) for program in sorted(programs)]


def changes_line(manifest: dict[str, Any]) -> str | None:
    """One log line: what a month that replaced a published one changed, per program; None otherwise."""
    rows = changes_per_program(manifest)
    if rows is None:
        return None
    per_program = ", ".join(f"{program} {count}" for program, count in rows) or "no program"
    return (
        f"month {manifest['billing_month']} replaced run {manifest.get('replaced_run_id')}: "
        f"{sum(count for _, count in rows)} tier rows changed (table `changes`); per program: {per_program}"
    )


def changes_markdown(manifest: dict[str, Any]) -> str | None:
    """The same as a Markdown section with a table (program, rows_changed); None when the month
    replaced nothing."""
    rows = changes_per_program(manifest)
    if rows is None:
        return None
    label = manifest["billing_month"]
    lines = [
        f"## Changes from the version replaced {label}\n",
        f"This run replaced run `{manifest.get('replaced_run_id')}`: {sum(count for _, count in rows)} tier rows "
        "changed (`level`, `action`, `valid_from`, `valid_until` or `card_id`, or added or removed); every row "
        "is in the `changes` table.\n",
        "| program | rows_changed |",
        "|---|---:|",
        *[f"| {program} | {count} |" for program, count in rows],
    ]
    return "\n".join(lines) + "\n"


def _with_changes(markdown: str, manifest: dict[str, Any]) -> str:
    """The month report's Markdown with the changes section after its title and run line."""
    section = changes_markdown(manifest)
    if section is None:
        return markdown
    at = markdown.find("\n## ")
    if at < 0:
        return f"{markdown.rstrip()}\n\n{section}"
    return f"{markdown[: at + 1]}{section}\n{markdown[at + 1 :]}"


def _report(store: Store, month: dt.date, manifest: dict[str, Any], *, html: bool, logger: Any) -> None:
    """The month's figures as a Prefect markdown artifact, and (for a run, or the last month of a
    backfill: drawing the charts takes about 2 s) the HTML report beside the manifest. The month is
    already published: a failure here is logged, and `billing-tiers report` can redo it. A month
    that replaced a published one has its changes per program in the artifact too."""
    from billing_tiers.report import default_report_path, write_report_and_markdown

    label = manifest["billing_month"]
    try:
        where, markdown = write_report_and_markdown(store, month, default_report_path(store, month) if html else None)
        markdown = _with_changes(markdown, manifest)
        create_markdown_artifact(
            key=f"tier-report-{label}",
            markdown=markdown,
            description=f"Month report {label} (run {manifest['run_id']})" + (f"; HTML: {where}" if where else ""),
        )
    except Exception as exc:
        logger.warning("month %s: the month report could not be written: %s", label, exc)


def _execute(session: Session) -> list[dict[str, Any]]:
    """Run an opened session's months with the buckets as Prefect tasks, reporting each month."""
    logger = get_run_logger()
    flow_run_id = prefect.runtime.flow_run.id

    def report(month: dt.date, manifest: dict[str, Any], is_last: bool) -> None:
        if (line := changes_line(manifest)) is not None:
            logger.info("%s", line)
        _report(session.store, month, manifest, html=is_last, logger=logger)

    return run_session(
        session,
        map_buckets=_map_as_tasks,
        logger=logger,
        flow_run_id=str(flow_run_id) if flow_run_id else None,
        after_month=report,
    )


def _open_and_execute(
    command: Command,
    *,
    first: str,
    last: str | None,
    store: str,
    extracts: str | None,
    rulebook: str | None,
    override_guards: bool,
    buckets: int | None,
) -> list[dict[str, Any]]:
    """The plain flows' body: their parameters as a request, the session opened here, its months run."""
    if not store or not store.strip():
        raise PipelineError("parameter store is empty: give the store folder")
    if extracts is not None and not extracts.strip():
        raise PipelineError(
            "parameter extracts is empty: give the extracts folder, or leave it out to use the one "
            "the store recorded at init"
        )
    request = RunRequest(
        command=command,
        store=Path(store),
        first=parse_month(first),
        last=parse_month(last) if last else None,
        extracts=Path(extracts) if extracts else None,
        rulebook=Path(rulebook) if rulebook else None,
        override_guards=override_guards,
        buckets=buckets,
    )
    try:
        with open_session(request, LoggingListener(get_run_logger())) as session:
            return _execute(session)
    except GuardError as exc:  # a deployment's run: the way to publish anyway is its parameter
        raise exc.with_hint(DEPLOYMENT_OVERRIDE_HINT) from None


@flow(
    name="billing-tiers",
    flow_run_name="{session.label}",
    persist_result=False,
    validate_parameters=False,
    task_runner=task_runner(),
)
def run_prepared(session: Any) -> list[dict[str, Any]]:
    """The command line's flow: a :class:`~billing_tiers.service.Session` the CLI has already opened
    (checked, locked, planned). Typed ``Any`` for Prefect, which would build a parameter schema."""
    if not isinstance(session, Session):
        raise TypeError(f"run_prepared takes an opened Session, not {type(session).__name__}")
    return _execute(session)


@flow(name="monthly-tiers", flow_run_name="tiers-{month}", persist_result=False, task_runner=task_runner())
def monthly_tiers(
    month: str,
    store: str,
    extracts: str | None = None,
    rulebook: str | None = None,
    override_guards: bool = False,
    buckets: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate one billing month (the next one, or a rerun of the latest) and publish it.
    ``extracts`` defaults to the folder the store recorded at ``init``."""
    return _open_and_execute(
        "run", first=month, last=None, store=store, extracts=extracts, rulebook=rulebook,
        override_guards=override_guards, buckets=buckets,
    )  # fmt: skip


@flow(name="backfill-tiers", flow_run_name=backfill_run_name, persist_result=False, task_runner=task_runner())
def backfill_tiers(
    start: str,
    store: str,
    end: str | None = None,
    extracts: str | None = None,
    rulebook: str | None = None,
    override_guards: bool = False,
    buckets: int | None = None,
) -> list[dict[str, Any]]:
    """Re-evaluate ``start`` through ``end`` (default: the latest month with an extract), in order."""
    return _open_and_execute(
        "backfill", first=start, last=end, store=store, extracts=extracts, rulebook=rulebook,
        override_guards=override_guards, buckets=buckets,
    )  # fmt: skip
