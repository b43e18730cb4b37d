"""Run planning: which months a ``run`` or ``backfill`` evaluates, which published month the first one
builds on, and the refusals before anything runs (a gap, an earlier month, a month that is not
healthy to build on, a rulebook that drops a level members hold). Reads the manifests only; what
makes a month healthy is :mod:`billing_tiers.health`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from billing_tiers.errors import PipelineError
from billing_tiers.health import MonthStatus, first_unhealthy, repair_command, store_status
from billing_tiers.months import add_months, month_label
from billing_tiers.store import Store, extract_months
from rulebook import Rulebook


@dataclass(frozen=True)
class Plan:
    """Months to evaluate in order, and the published month the first one builds on (None: empty)."""

    months: list[dt.date]
    build_on: dt.date | None


def _build_on(statuses: list[MonthStatus], first: dt.date) -> dt.date | None:
    previous = add_months(first, -1)
    earlier = [s for s in statuses if s.month < first]
    if not earlier:
        return None
    by_month = {s.month: s for s in statuses}
    status = by_month.get(previous)
    if status is None:
        raise PipelineError(
            f"month {month_label(first)} needs the state of {month_label(previous)}, which is not published; "
            f"run {month_label(previous)} first"
        )
    if not status.healthy:
        first_bad = first_unhealthy(statuses) or previous
        raise PipelineError(
            f"month {month_label(previous)} is {status.problem}; run `{repair_command(first_bad)}` first"
        )
    return previous


def plan_run(store: Store, month: dt.date) -> Plan:
    """The plan for ``run --month``: the next month, or a rerun of the latest; else a refusal."""
    statuses = store_status(store, verify_checksums=False)
    if statuses:
        latest = statuses[-1].month
        if month < latest:
            raise PipelineError(
                f"month {month_label(month)} is earlier than the latest published month {month_label(latest)}; "
                f"use `billing-tiers backfill --from {month_label(month)}` to recompute from it"
            )
        if month > add_months(latest, 1):
            raise PipelineError(
                f"month {month_label(add_months(latest, 1))} is missing: the latest published month is "
                f"{month_label(latest)}; run or backfill the months in between first"
            )
    return Plan(months=[month], build_on=_build_on(statuses, month))


def plan_backfill(store: Store, extracts: Path, start: dt.date, end: dt.date | None) -> Plan:
    """The plan for ``backfill --from --to``: every month from start to end, each with an extract."""
    available = extract_months(extracts)
    if end is None:
        if not available:
            raise PipelineError(f"no extract month folders under {extracts}")
        end = available[-1]
    if end < start:
        raise PipelineError(f"--to {month_label(end)} is before --from {month_label(start)}")
    months = []
    month = start
    while month <= end:
        months.append(month)
        month = add_months(month, 1)
    missing = [m for m in months if m not in set(available)]
    if missing:
        raise PipelineError(f"month {month_label(missing[0])}: no extract folder under {extracts}")
    statuses = store_status(store, verify_checksums=False)
    return Plan(months=months, build_on=_build_on(statuses, start))


def refuse_rulebook_change(store: Store, build_on: dt.date | None, rulebook: Rulebook) -> None:
    """PipelineError when ``rulebook`` no longer has a program or a level that members hold after
    ``build_on`` (SPEC 8), naming program, level and member count. Reads only the manifest."""
    if build_on is None:
        return
    manifest = store.read_manifest(build_on)
    if manifest is None:
        return
    held: dict[tuple[str, str], int] = {}
    for row in manifest.summary:
        if row.level is not None:
            key = (row.program, row.level)
            held[key] = held.get(key, 0) + row.subscribers
    programs = rulebook.enabled_programs()
    problems = []
    for (program, level), members in sorted(held.items()):
        if program not in programs:
            problems.append(f"program {program} ({members} members hold {level}) is not in the rulebook or disabled")
        elif level not in programs[program].levels:
            problems.append(f"program {program} has no level {level}, which {members} members hold")
    if problems:
        raise PipelineError(
            f"rulebook {rulebook.checksum[:12]} cannot evaluate the month after {month_label(build_on)}: "
            + "; ".join(problems)
            + " (keep the program and level, or backfill from a month before they were held)"
        )
