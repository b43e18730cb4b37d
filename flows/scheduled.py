"""The deployed entry points: what ``prefect.yaml`` runs on a worker.

``scheduled_tiers`` is the scheduled monthly run (deployment ``scheduled-tiers/monthly``). It
evaluates the billing month that closed before today in the configured time zone, or the
``month`` it is given; a month that has not closed yet there is refused at once (its extract
cannot be complete, and waiting for it would hold the deployment's only slot for a day). It waits
for a late extract (every ``extract_wait_seconds``, up to ``extract_wait_retries`` times, then
fails naming the month), and when the store is more than one month behind it catches up in order
with :func:`flows.monthly.backfill_tiers` instead of failing every month until someone notices.

``backfill_deployment_tiers`` (deployment ``backfill-deployment-tiers/backfill``) runs
:func:`flows.monthly.backfill_tiers` for corrections started from the UI or ``prefect deployment
run``. It exists so that the store and extract paths are *required* parameters: the plain flows
default to the sample data, which a deployment must never fall back to. Its runs are named by
their range (``backfill-2024-03-to-2024-06``, ``backfill-2024-03-to-latest``).

Both refuse an empty path at once with one line naming the parameter: ``prefect.yaml`` fills the
paths from environment variables at deploy time, and an unset variable deploys ``''``.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.runtime import flow_run, task_run

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.months import add_months, month_label, parse_month
from billing_tiers.store import Store, extract_files, extract_month_dir, extract_months
from flows.monthly import backfill_tiers, monthly_tiers

DEFAULT_TIMEZONE = "Asia/Shanghai"
_PATH_VARIABLES = {"extracts": "BILLING_TIERS_EXTRACTS", "store": "BILLING_TIERS_STORE"}


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # called as a plain function (tests, ``.fn``)
        return logging.getLogger(__name__)


# ------------------------------------------------------------------------------ parameters
def require_path(name: str, value: str | None) -> str:
    """The path parameter ``name``, or a one-line PipelineError when it is missing or blank."""
    if value is None or not str(value).strip():
        where = (
            f" (prefect.yaml takes it from ${_PATH_VARIABLES[name]} at deploy time)" if name in _PATH_VARIABLES else ""
        )
        raise PipelineError(f"parameter {name!r} is empty: give the {name} path{where}")
    return str(value).strip()


def optional_path(name: str, value: str | None) -> str | None:
    """An optional path parameter: None stays None (the default), a blank string is refused."""
    if value is None:
        return None
    if not value.strip():
        raise PipelineError(f"parameter {name!r} is empty: leave it unset (null) for the default, or give a path")
    return value.strip()


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PipelineError(
            f"parameter 'timezone': {timezone!r} is not a known time zone (e.g. Asia/Shanghai)"
        ) from None


def parse_today(today: str | None) -> dt.date | None:
    """The ``today`` parameter (YYYY-MM-DD) as a date; None or blank: None (the current date)."""
    if today is None or not str(today).strip():
        return None
    try:
        return dt.date.fromisoformat(str(today).strip())
    except ValueError:
        raise PipelineError(f"parameter 'today': {today!r} is not a date YYYY-MM-DD") from None


def today_in(timezone: str, today: dt.date | None = None, now: dt.datetime | None = None) -> dt.date:
    """``today`` if given, else the current date in ``timezone`` (``now``: an aware time, for tests)."""
    zone = _zone(timezone)
    if today is not None:
        return today
    return (now.astimezone(zone) if now is not None else dt.datetime.now(zone)).date()


def closed_month(timezone: str, now: dt.datetime | None = None, today: dt.date | None = None) -> dt.date:
    """The billing month that closed before today in ``timezone`` (``now``, ``today``: for tests and replays)."""
    return add_months(today_in(timezone, today, now).replace(day=1), -1)


def target_month(month: str | None, timezone: str, today: dt.date | None = None) -> dt.date:
    """``month`` if given, else the month that closed before today in ``timezone``."""
    if month is None or not month.strip():
        return closed_month(timezone, today=today)
    return parse_month(month)


def require_closed(month: dt.date, timezone: str, today: dt.date | None = None) -> None:
    """Refuse, in one line, a month that has not closed yet in ``timezone``: its extract cannot be
    complete, and waiting for it would hold the deployment's only slot for a day."""
    date = today_in(timezone, today)
    latest = add_months(date.replace(day=1), -1)
    if month > latest:
        raise PipelineError(
            f"month {month_label(month)} has not closed yet in {timezone} (today is {date.isoformat()} there): "
            f"the scheduled run publishes closed months only, the latest being {month_label(latest)}; run "
            f"{month_label(month)} on or after {add_months(month, 1).isoformat()}"
        )


def months_to_run(latest_published: dt.date | None, target: dt.date, extract_months: list[dt.date]) -> list[dt.date]:
    """The months the scheduled run evaluates, in order, to publish ``target``.

    - ``target`` is the next month, a rerun of the latest, or earlier than the latest: just
      ``target`` (``monthly_tiers`` runs it or refuses it, naming the backfill to use).
    - The store is behind by more than one month: every month after the latest published one
      through ``target``.
    - The store is empty: ``target`` alone when no extract is older than it, else every month from
      the first extract through ``target`` (a store is built from its first month).

    A month of the catch-up that has no extract is an error naming it (``target``'s own extract is
    what the run waits for, so it is not checked here).
    """
    if latest_published is not None and target <= add_months(latest_published, 1):
        return [target]
    if latest_published is None:
        earlier = [m for m in extract_months if m < target]
        if not earlier:
            return [target]
        first = min(earlier)
    else:
        first = add_months(latest_published, 1)
    months = []
    month = first
    while month <= target:
        months.append(month)
        month = add_months(month, 1)
    available = set(extract_months)
    missing = [m for m in months[:-1] if m not in available]
    if missing:
        behind = (
            f"the latest published month is {month_label(latest_published)}"
            if latest_published
            else "the store is empty"
        )
        raise PipelineError(
            f"month {month_label(missing[0])} has no extract: {behind} and {month_label(target)} cannot be "
            f"caught up to without it; add its extract, then run again"
        )
    return months


# ---------------------------------------------------------------------------- the extract wait
@task(
    name="wait-for-extract",
    task_run_name="wait-for-extract-{month}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def wait_for_extract(extracts: str, month: str, retries: int, delay_seconds: int) -> int:
    """One look for ``month``'s extract files (their count); raises while there are none.

    Run with ``retries``/``retry_delay_seconds`` set from the flow's parameters, Prefect calls it
    again until the extract is there or the retries are used up."""
    try:
        files = extract_files(Path(extracts), parse_month(month))
    except PipelineError as error:
        check = task_run.get_run_count() or 1
        if check <= retries:
            _logger().warning(
                "%s; waiting for it: check %d of %d, next in %d s", error, check, retries + 1, delay_seconds
            )
        else:
            _logger().error("%s; check %d of %d, giving up", error, check, retries + 1)
        raise
    _logger().info(
        "month %s: %d extract file(s) in %s", month, len(files), extract_month_dir(Path(extracts), parse_month(month))
    )
    return len(files)


def _await_extract(extracts: str, month: dt.date, retries: int, delay_seconds: int) -> None:
    label = month_label(month)
    waiting = wait_for_extract.with_options(retries=retries, retry_delay_seconds=delay_seconds)
    try:
        waiting(extracts, label, retries, delay_seconds)
    except PipelineError as error:  # "month 2026-03: no extract folder ..." + how long it waited
        raise PipelineError(
            f"{error}; gave up after {retries + 1} checks {delay_seconds} s apart (extract_wait_retries="
            f"{retries}, extract_wait_seconds={delay_seconds})"
        ) from error


# ----------------------------------------------------------------------------------- the flows
def _scheduled_run_name() -> str:
    """``scheduled-2026-03``: the month given, else the month that closed before today."""
    parameters = flow_run.get_parameters()
    try:
        month = target_month(
            parameters.get("month"),
            parameters.get("timezone") or DEFAULT_TIMEZONE,
            parse_today(parameters.get("today")),
        )
    except PipelineError:
        return "scheduled-bad-month"
    return f"scheduled-{month_label(month)}"


def _backfill_run_name() -> str:
    """``backfill-2024-03-to-2024-06``, or ``backfill-2024-03-to-latest`` without ``end``."""
    parameters = flow_run.get_parameters()
    start = str(parameters.get("start") or "").strip() or "unknown"
    end = str(parameters.get("end") or "").strip() or "latest"
    return f"backfill-{start}-to-{end}"


@flow(name="scheduled-tiers", flow_run_name=_scheduled_run_name, persist_result=False)
def scheduled_tiers(
    extracts: str,
    store: str,
    month: str | None = None,
    rulebook: str | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    extract_wait_retries: int = 24,
    extract_wait_seconds: int = 3600,
    today: str | None = None,
) -> list[dict[str, Any]]:
    """The scheduled monthly run: publish ``month`` (default: the month that closed before today in
    ``timezone``), waiting for its extract and catching up first if the store is behind. A month
    that has not closed yet is refused at once.

    Args:
        extracts: Folder of billing_month=YYYY-MM extract folders (required; relative to the repository).
        store: The store folder, made with `billing-tiers init` (required).
        month: Billing month YYYY-MM to publish; empty: the month that closed before today in `timezone`.
            A month that has not closed yet in `timezone` is refused.
        rulebook: Rulebook TOML file; unset (null): the bundled rulebook.
        timezone: Time zone of "today" for the default month and the closed-month check.
        extract_wait_retries: How many more times to look for a missing extract before failing.
        extract_wait_seconds: Seconds between two looks for a missing extract.
        today: The date taken as today in `timezone` (YYYY-MM-DD); unset (null): the current date.
            For tests and replays.
    """
    extracts = require_path("extracts", extracts)
    store = require_path("store", store)
    rulebook = optional_path("rulebook", rulebook)
    if extract_wait_retries < 0 or extract_wait_seconds < 0:
        raise PipelineError("parameters 'extract_wait_retries' and 'extract_wait_seconds' must be 0 or more")
    today_date = parse_today(today)
    target = target_month(month, timezone, today_date)
    require_closed(target, timezone, today_date)
    label = month_label(target)
    logger = _logger()
    if not Path(extracts).is_dir():
        raise PipelineError(f"month {label}: the extracts folder {extracts} does not exist")
    the_store = Store(Path(store)).require()

    statuses = store_status(the_store, verify_checksums=False)
    latest = statuses[-1].month if statuses else None
    if latest is not None and target < latest:
        raise PipelineError(
            f"month {label} is earlier than the latest published month {month_label(latest)}; the scheduled "
            f"run does not re-publish earlier months: run the backfill deployment with start={label}"
        )

    _await_extract(extracts, target, extract_wait_retries, extract_wait_seconds)
    months = months_to_run(latest, target, extract_months(Path(extracts)))
    if len(months) > 1:
        logger.warning(
            "store %s is behind: latest published month %s; catching up %s through %s in order",
            store,
            month_label(latest) if latest else "none (empty store)",
            month_label(months[0]),
            label,
        )
        return backfill_tiers(
            start=month_label(months[0]), end=label, extracts=extracts, store=store, rulebook=rulebook
        )
    return monthly_tiers(month=label, extracts=extracts, store=store, rulebook=rulebook)


@flow(name="backfill-deployment-tiers", flow_run_name=_backfill_run_name, persist_result=False)
def backfill_deployment_tiers(
    start: str,
    extracts: str,
    store: str,
    end: str | None = None,
    rulebook: str | None = None,
    override_guards: bool = False,
) -> list[dict[str, Any]]:
    """Re-evaluate ``start`` through ``end`` (default: the latest month with an extract) with
    required paths: the backfill deployment, for corrections started from the UI.

    Args:
        start: First billing month YYYY-MM to re-evaluate.
        extracts: Folder of billing_month=YYYY-MM extract folders (required; relative to the repository).
        store: The store folder, made with `billing-tiers init` (required).
        end: Last billing month YYYY-MM; empty: the latest month with an extract.
        rulebook: Rulebook TOML file; unset (null): the bundled rulebook.
        override_guards: Publish even if an input guard fails (recorded in the manifest).
    """
    extracts = require_path("extracts", extracts)
    store = require_path("store", store)
    rulebook = optional_path("rulebook", rulebook)
    first = parse_month(start)
    last = parse_month(end) if end and end.strip() else None
    Store(Path(store)).require()
    return backfill_tiers(
        start=month_label(first),
        end=month_label(last) if last else None,
        extracts=extracts,
        store=store,
        rulebook=rulebook,
        override_guards=override_guards,
    )
