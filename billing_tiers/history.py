"""What the store holds: published months, their lineage, and which month a run may build on.

Every manifest records the month and run it was built from (``built_from``). A month is *stale*
when that is no longer the published previous month (it was re-published by a backfill, or the
month before was published later) or when the month it was built from is itself stale; it is
*incomplete* when its table files do not match its manifest or tables exist with no manifest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billing_tiers.errors import PipelineError
from billing_tiers.months import add_months, month_label
from billing_tiers.store import Store, extract_months, sha256_file
from rulebook import Rulebook


@dataclass(frozen=True)
class MonthStatus:
    month: dt.date
    manifest: dict[str, Any] | None
    problem: str | None  # None when healthy

    @property
    def healthy(self) -> bool:
        return self.problem is None


def _table_problem(store: Store, month: dt.date, manifest: dict[str, Any], verify: bool) -> str | None:
    for table in manifest.get("tables", {}):
        try:
            parts = store.part_paths(table, month, manifest)
        except (KeyError, TypeError):
            return "incomplete: the manifest does not list its part files; rerun the month"
        if not store.month_dir(table, month).is_dir():
            return f"incomplete: {table} folder missing"
        listed = {p.name for p in store.month_dir(table, month).iterdir()}
        if listed != {path.name for path, _ in parts}:
            return f"incomplete: {table} part files do not match the manifest"
        if verify and any(sha256_file(path) != sha256 for path, sha256 in parts):
            return f"incomplete: {table} file does not match the manifest checksum"
    return None


def store_status(store: Store, *, verify_checksums: bool = True) -> list[MonthStatus]:
    """Every month that has a manifest or a table file, oldest first, with its problem if any."""
    manifests: dict[dt.date, dict[str, Any] | None] = {}
    unreadable: set[dt.date] = set()
    for month in store.manifest_months():
        try:
            manifests[month] = store.read_manifest(month)
        except PipelineError:
            unreadable.add(month)
    months = sorted(set(manifests) | set(store.table_months()))
    statuses: dict[dt.date, MonthStatus] = {}
    for month in months:
        manifest = manifests.get(month)
        problem: str | None
        if month in unreadable:
            problem = "incomplete: the manifest is unreadable; rerun the month"
        elif manifest is None:
            problem = "incomplete: tables without a manifest (a run died while publishing)"
        else:
            problem = _table_problem(store, month, manifest, verify_checksums)
            if problem is None:
                problem = _lineage_problem(month, manifest, manifests, statuses)
        statuses[month] = MonthStatus(month=month, manifest=manifest, problem=problem)
    return [statuses[month] for month in months]


def _lineage_problem(
    month: dt.date,
    manifest: dict[str, Any],
    manifests: dict[dt.date, Any],
    statuses: dict[dt.date, MonthStatus],
) -> str | None:
    built_from = manifest.get("built_from") or {}
    previous = add_months(month, -1)
    earlier = [m for m in manifests if m < month]
    if built_from.get("month") is None:
        if earlier:
            return f"stale: built from an empty state, but {month_label(max(earlier))} is published before it"
        return None
    if built_from["month"] != month_label(previous):
        return f"stale: built from {built_from['month']}, not from {month_label(previous)}"
    previous_manifest = manifests.get(previous)
    if previous_manifest is None:
        return f"stale: built from {month_label(previous)}, which is no longer published"
    if previous_manifest.get("run_id") != built_from.get("run_id"):
        return f"stale: {month_label(previous)} was re-published after this month was built"
    previous_status = statuses.get(previous)
    if previous_status is not None and not previous_status.healthy:
        return f"stale: built on {month_label(previous)}, which is not healthy"
    return None


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
    if status is None or status.manifest is None:
        raise PipelineError(
            f"month {month_label(first)} needs the state of {month_label(previous)}, which is not published; "
            f"run {month_label(previous)} first"
        )
    if not status.healthy:
        first_bad = min(s.month for s in statuses if not s.healthy)
        raise PipelineError(
            f"month {month_label(previous)} is {status.problem}; "
            f"run `billing-tiers backfill --from {month_label(first_bad)}` first"
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
    for row in manifest.get("summary", []):
        if row["level"] is not None:
            key = (row["program"], row["level"])
            held[key] = held.get(key, 0) + row.get("subscribers", row.get("len", 0))
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
