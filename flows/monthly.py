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
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from billing_tiers import progress
from billing_tiers.errors import PipelineError
from billing_tiers.months import parse_month
from billing_tiers.planning import Plan, plan_backfill, plan_run, refuse_rulebook_change
from billing_tiers.store import Store
from flows.bucket import BucketJob, BucketResult
from flows.run_month import run_month
from rulebook import load_rulebook


def task_runner(*, dask_address: str | None = None, dask_workers: int | None = None) -> TaskRunner[Any]:
    """Where the buckets run: an existing Dask cluster, a local one started for the run, or (default)
    one bucket at a time in this process, since Polars already uses every core inside a bucket."""
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
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
            }
        )
    return ThreadPoolTaskRunner(max_workers=1)


def _map_as_tasks(work: Callable[[BucketJob], BucketResult], jobs: Sequence[BucketJob]) -> list[BucketResult]:
    """Each bucket is a Prefect task (``evaluate-2026-03-b002``) on the flow's task runner."""
    bucket_task = task(
        name="evaluate-bucket",
        task_run_name="evaluate-{job.label}",
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
    )(work)
    futures = [bucket_task.submit(job) for job in jobs]
    return [future.result() for future in futures]


def _report(store: Store, month: dt.date, manifest: dict[str, Any], *, html: bool, logger: Any) -> None:
    """The month's figures as a Prefect markdown artifact, and (for a run, or the last month of a
    backfill: drawing the charts takes about 2 s) the HTML report beside the manifest. The month is
    already published: a failure here is logged, and `billing-tiers report` can redo it."""
    from billing_tiers.report import default_report_path, write_report_and_markdown

    label = manifest["billing_month"]
    try:
        where, markdown = write_report_and_markdown(store, month, default_report_path(store, month) if html else None)
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
        ).as_dict()
        progress.month_done(manifest["billing_month"])
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
