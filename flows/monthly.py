"""The Prefect flows: ``monthly_tiers`` evaluates one billing month, ``backfill_tiers`` a range.

Both take the store's single-writer lock, finish any interrupted publish, check that the months may
be built (ordering, staleness), then call :func:`flows.run_month.run_month` for each month, with
the month's buckets mapped as Prefect tasks over the flow's task runner: one bucket at a time in
this process by default, or a Dask cluster (:func:`task_runner`). Prefect's task cache is off
everywhere: correctness never depends on it.
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

from billing_tiers import progress
from billing_tiers.errors import PipelineError
from billing_tiers.history import Plan, plan_backfill, plan_run, refuse_rulebook_change
from billing_tiers.months import parse_month
from billing_tiers.store import Store
from flows import dask_cluster
from flows.bucket import BucketJob, BucketResult
from flows.run_month import run_month
from rulebook import load_rulebook


def task_runner(
    *, dask_address: str | None = None, dask_workers: int | None = None, dask_timeout: float | None = None
) -> TaskRunner[Any]:
    """Where the buckets run: an existing Dask cluster, a local one started for the run, or (default)
    one bucket at a time in this process, since Polars already uses every core inside a bucket.

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
    return ThreadPoolTaskRunner(max_workers=1)


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


def _run_plan(
    plan: Plan,
    *,
    store: Store,
    extracts: Path,
    rulebook_path: Path | None,
    override_guards: bool,
    buckets: int | None,
) -> list[dict[str, Any]]:
    rulebook = load_rulebook(rulebook_path)
    refuse_rulebook_change(store, plan.build_on, rulebook)
    logger = get_run_logger()
    manifests = []
    build_on = plan.build_on
    for month in plan.months:
        manifest = run_month(
            store=store,
            extracts=extracts,
            month=month,
            build_on=build_on,
            rulebook=rulebook,
            rulebook_path=rulebook_path,
            override_guards=override_guards,
            buckets=buckets,
            map_buckets=_map_as_tasks,
            logger=logger,
            flow_run_id=str(prefect.runtime.flow_run.id) if prefect.runtime.flow_run.id else None,
        )
        progress.month_done(manifest["billing_month"])
        if (line := changes_line(manifest)) is not None:
            logger.info("%s", line)
        _report(store, month, manifest, html=month == plan.months[-1], logger=logger)
        manifests.append(manifest)
        build_on = month
    return manifests


def _locked_run(
    command: str,
    make_plan: Callable[[Store], Plan],
    *,
    store: str,
    extracts: str,
    rulebook: str | None,
    override_guards: bool,
    buckets: int | None,
) -> list[dict[str, Any]]:
    """Under the store's lock: finish any interrupted publish, plan, and run the planned months."""
    for name, value in (("extracts", extracts), ("store", store)):
        if not value or not value.strip():
            raise PipelineError(f"parameter {name} is empty: give the {name} folder")
    the_store = Store(Path(store)).require()
    with the_store.writer_lock(command):
        for line in the_store.recover():
            get_run_logger().warning("store %s: %s", the_store.root, line)
        return _run_plan(
            make_plan(the_store),
            store=the_store,
            extracts=Path(extracts),
            rulebook_path=Path(rulebook) if rulebook else None,
            override_guards=override_guards,
            buckets=buckets,
        )


@flow(name="monthly-tiers", flow_run_name="tiers-{month}", persist_result=False, task_runner=task_runner())
def monthly_tiers(
    month: str,
    extracts: str = "data/sample/extracts",
    store: str = "data/store",
    rulebook: str | None = None,
    override_guards: bool = False,
    buckets: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate one billing month (the next one, or a rerun of the latest) and publish it."""
    target = parse_month(month)
    return _locked_run(
        f"run --month {month}",
        lambda the_store: plan_run(the_store, target),
        store=store,
        extracts=extracts,
        rulebook=rulebook,
        override_guards=override_guards,
        buckets=buckets,
    )


@flow(name="backfill-tiers", flow_run_name="backfill-{start}", persist_result=False, task_runner=task_runner())
def backfill_tiers(
    start: str,
    end: str | None = None,
    extracts: str = "data/sample/extracts",
    store: str = "data/store",
    rulebook: str | None = None,
    override_guards: bool = False,
    buckets: int | None = None,
) -> list[dict[str, Any]]:
    """Re-evaluate ``start`` through ``end`` (default: the latest month with an extract), in order."""
    first, last = parse_month(start), parse_month(end) if end else None
    return _locked_run(
        f"backfill --from {start}",
        lambda the_store: plan_backfill(the_store, Path(extracts), first, last),
        store=store,
        extracts=extracts,
        rulebook=rulebook,
        override_guards=override_guards,
        buckets=buckets,
    )
