"""The Prefect flows: ``monthly_tiers`` evaluates one billing month, ``backfill_tiers`` a range.

Both take the store's single-writer lock, finish any interrupted publish, check that the months may
be built (ordering, staleness), then run each month: read, clean, load the previous state, guard,
evaluate, validate, publish. Prefect's task cache is off everywhere: correctness never depends on it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import polars as pl
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from billing_tiers import __version__
from billing_tiers.errors import PipelineError
from billing_tiers.history import Plan, plan_backfill, plan_run
from billing_tiers.months import add_months, month_label, parse_month
from billing_tiers.store import Store
from flows import steps
from rulebook import Rulebook, load_rulebook

P = ParamSpec("P")
R = TypeVar("R")


def _task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A Prefect task that never caches or persists results: reruns always recompute."""
    return task(name=name, cache_policy=NO_CACHE, persist_result=False, retries=0)


read_extract = _task("read-extract")(steps.read_extract)
clean_extract = _task("clean-extract")(steps.clean_extract)
load_previous = _task("load-previous-state")(steps.load_previous)
evaluate = _task("evaluate")(steps.evaluate)
validate_outputs = _task("validate-outputs")(steps.validate_outputs)


@_task("publish")
def publish(
    store: Store, month: dt.date, run_id: str, tables: dict[str, pl.DataFrame], manifest: dict[str, Any]
) -> dict[str, Any]:
    return store.publish(month, run_id, tables, manifest)


def _summary(tables: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    tier = tables["tier_assignments"]
    counts = tier.group_by("program", "level", "action").len().sort("program", "level", "action", nulls_last=True)
    return counts.to_dicts()


def run_month(
    *,
    store: Store,
    extracts: Path,
    month: dt.date,
    build_on: dt.date | None,
    rulebook: Rulebook,
    rulebook_path: Path | None,
    override_guards: bool,
) -> dict[str, Any]:
    """Evaluate and publish one month on top of the published ``build_on`` month (None: empty)."""
    logger = get_run_logger()
    label = month_label(month)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[step] = round(now - started, 3)
        started = now

    read = read_extract(extracts, month)
    lap("read_extract")
    clean = clean_extract(read, month)
    lap("clean_extract")
    if clean.duplicates_collapsed:
        logger.warning("month %s: %s exact duplicate rows collapsed to one copy", label, clean.duplicates_collapsed)
    if read.ignored_columns:
        logger.warning("month %s: ignored columns not in the contract: %s", label, ", ".join(read.ignored_columns))
    previous = load_previous(store, build_on)
    lap("load_previous_state")
    guards = steps.guard_figures(clean, previous, rulebook)
    breaches = guards.breaches()
    if breaches and not override_guards:
        raise PipelineError(
            f"month {label}: guard failed, nothing published: {'; '.join(breaches)} "
            f"(rerun with --override-guards to publish anyway)"
        )
    for breach in breaches:
        logger.warning("month %s: guard overridden by the operator: %s", label, breach)
    tables = evaluate(clean, previous, month, rulebook)
    lap("evaluate")
    validate_outputs(tables, month)
    lap("validate_outputs")
    run_id = f"{label}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    manifest: dict[str, Any] = {
        "billing_month": label,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "built_from": {
            "month": month_label(build_on) if build_on else None,
            "run_id": previous.run_id,
        },
        "rulebook": {
            "path": str(rulebook_path) if rulebook_path else "(bundled default)",
            "sha256": rulebook.checksum,
        },
        "inputs": read.files,
        "ignored_columns": read.ignored_columns,
        "rows_read": clean.rows_read,
        "duplicates_collapsed": clean.duplicates_collapsed,
        "quarantine_by_rule": clean.quarantine_by_rule,
        "guards": {
            **guards.as_dict(),
            "breached": breaches,
            "overridden": bool(breaches) and override_guards,
            "override_flag": override_guards,
        },
        "summary": _summary(tables),
        "timings_seconds": timings,
    }
    written = publish(store, month, run_id, tables, manifest)
    lap("publish")
    create_table_artifact(
        key=f"tier-summary-{label}",
        table=manifest["summary"],
        description=f"Levels and actions per program, billing month {label} (run {run_id})",
    )
    logger.info(
        "month %s published: %s tier rows, %s card events, %s quarantined, %s duplicates collapsed",
        label,
        tables["tier_assignments"].height,
        tables["card_issuance"].height,
        clean.quarantine.height,
        clean.duplicates_collapsed,
    )
    return written


def _run_plan(
    plan: Plan, *, store: Store, extracts: Path, rulebook_path: Path | None, override_guards: bool
) -> list[dict[str, Any]]:
    rulebook = load_rulebook(rulebook_path)
    manifests = []
    build_on = plan.build_on
    for month in plan.months:
        manifests.append(
            run_month(
                store=store,
                extracts=extracts,
                month=month,
                build_on=build_on,
                rulebook=rulebook,
                rulebook_path=rulebook_path,
                override_guards=override_guards,
            )
        )
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
) -> list[dict[str, Any]]:
    """Under the store's lock: finish any interrupted publish, plan, and run the planned months."""
    the_store = Store(Path(store))
    with the_store.writer_lock(command):
        for line in the_store.recover():
            get_run_logger().warning("store %s: %s", the_store.root, line)
        return _run_plan(
            make_plan(the_store),
            store=the_store,
            extracts=Path(extracts),
            rulebook_path=Path(rulebook) if rulebook else None,
            override_guards=override_guards,
        )


@flow(name="monthly-tiers", persist_result=False, log_prints=True)
def monthly_tiers(
    month: str,
    extracts: str = "data/sample/extracts",
    store: str = "data/store",
    rulebook: str | None = None,
    override_guards: bool = False,
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
    )


@flow(name="backfill-tiers", persist_result=False, log_prints=True)
def backfill_tiers(
    start: str,
    end: str | None = None,
    extracts: str = "data/sample/extracts",
    store: str = "data/store",
    rulebook: str | None = None,
    override_guards: bool = False,
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
    )


@flow(name="scheduled-monthly-tiers", persist_result=False, log_prints=True)
def scheduled_monthly_tiers(
    extracts: str = "data/sample/extracts",
    store: str = "data/store",
    rulebook: str | None = None,
    timezone: str = "Asia/Shanghai",
) -> list[dict[str, Any]]:
    """The scheduled entry point: evaluates the billing month that closed before today (in ``timezone``)."""
    from zoneinfo import ZoneInfo

    today = dt.datetime.now(ZoneInfo(timezone)).date()
    closed = add_months(today.replace(day=1), -1)
    return monthly_tiers(month=month_label(closed), extracts=extracts, store=store, rulebook=rulebook)
