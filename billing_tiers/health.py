"""Store health: which published months are ok, stale or damaged, which file is damaged, which command
repairs it, and whether a run is in progress (what ``billing-tiers status`` shows).

Every manifest records the month and run it was built from (``built_from``). A month is *stale*
when that is no longer the published previous month (it was re-published by a backfill, or the
month before was published later) or when the month it was built from is not healthy; it is
*incomplete* (damaged) when its manifest is unreadable or incomplete, when a part file it lists is
missing or does not match its checksum, or when tables exist with no manifest. A damaged or stale
month is repaired by ``billing-tiers backfill --from`` the first month that is not healthy (SPEC 8).

A run in progress holds the store's writer lock and names itself in ``.lock.owner``: its staging
folder and the months it is replacing are work in progress, not problems. Staging left by a run
whose process is gone is an interrupted publish, finished or removed by the next run or backfill.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billing_tiers.months import add_months, month_label, parse_month
from billing_tiers.store import LockOwner, Store, extract_months, sha256_file
from schemas.contract import CHANGES
from schemas.manifest import DamagedManifest, Manifest


@dataclass(frozen=True)
class Damage:
    """What is wrong with a published month, and the file it is about."""

    problem: str
    path: Path


@dataclass(frozen=True)
class MonthStatus:
    month: dt.date
    manifest: Manifest | None
    problem: str | None  # None when healthy
    damaged_file: Path | None = None
    """The file that is missing, damaged or unlisted (None for a healthy or stale month)."""

    @property
    def healthy(self) -> bool:
        return self.problem is None


def table_damage(
    store: Store, month: dt.date, manifest: Manifest, *, tables: list[str] | None = None, verify: bool = True
) -> Damage | None:
    """The first problem with the part files of ``tables`` (default: every table the manifest lists):
    a missing folder or part, a file the manifest does not list, a checksum that does not match."""
    for table in tables if tables is not None else list(manifest.tables):
        if table not in manifest.tables:
            if table == CHANGES.name:  # months published before every month had changes list none
                continue
            return Damage(f"incomplete: the manifest lists no table {table}", store.manifest_file(month))
        parts = store.part_paths(table, month, manifest)
        folder = store.month_dir(table, month)
        if not folder.is_dir():
            return Damage(f"incomplete: {table} folder {folder} is missing", folder)
        present = {p.name for p in folder.iterdir()}
        for path, _ in parts:
            if path.name not in present:
                return Damage(f"incomplete: {table} part {path} is missing", path)
        unlisted = sorted(present - {path.name for path, _ in parts})
        if unlisted:
            path = folder / unlisted[0]
            return Damage(f"incomplete: {table} folder holds {path}, which the manifest does not list", path)
        if verify:
            for path, sha256 in parts:
                try:
                    matches = sha256_file(path) == sha256
                except FileNotFoundError:
                    return Damage(f"incomplete: {table} part {path} is missing", path)
                if not matches:
                    return Damage(f"incomplete: {table} part {path} does not match its manifest checksum", path)
    return None


def store_status(store: Store, *, verify_checksums: bool = True) -> list[MonthStatus]:
    """Every month that has a manifest or a table file, oldest first, with its problem if any."""
    loaded: dict[dt.date, Manifest | DamagedManifest] = {}
    for month in store.manifest_months():
        found = store.load_manifest(month)
        if found is not None:
            loaded[month] = found
    manifests = {month: found for month, found in loaded.items() if isinstance(found, Manifest)}
    months = sorted(set(loaded) | set(store.table_months()))
    statuses: dict[dt.date, MonthStatus] = {}
    for month in months:
        found = loaded.get(month)
        damage: Damage | None
        if isinstance(found, DamagedManifest):
            damage = Damage(f"incomplete: {found.describe()}", found.path)
        elif found is None:
            path = store.manifest_file(month)
            damage = Damage(f"incomplete: tables without a manifest ({path} is missing)", path)
        else:
            damage = table_damage(store, month, found, verify=verify_checksums)
        if damage is not None:
            statuses[month] = MonthStatus(month, manifests.get(month), damage.problem, damage.path)
            continue
        assert isinstance(found, Manifest)
        statuses[month] = MonthStatus(month, found, _lineage_problem(month, found, loaded, statuses))
    return [statuses[month] for month in months]


def _lineage_problem(
    month: dt.date,
    manifest: Manifest,
    loaded: dict[dt.date, Manifest | DamagedManifest],
    statuses: dict[dt.date, MonthStatus],
) -> str | None:
    built_from = manifest.built_from
    previous = add_months(month, -1)
    earlier = [m for m in statuses if m < month]
    if built_from.month is None:
        if earlier:
            return f"stale: built from an empty state, but {month_label(max(earlier))} is published before it"
        return None
    if built_from.month != month_label(previous):
        return f"stale: built from {built_from.month}, not from {month_label(previous)}"
    previous_status = statuses.get(previous)
    if previous_status is None:
        return f"stale: built from {month_label(previous)}, which is no longer published"
    if not previous_status.healthy:
        return f"stale: built on {month_label(previous)}, which is not healthy"
    previous_manifest = loaded.get(previous)
    if isinstance(previous_manifest, Manifest) and previous_manifest.run_id != built_from.run_id:
        return f"stale: {month_label(previous)} was re-published after this month was built"
    return None


def first_unhealthy(statuses: list[MonthStatus]) -> dt.date | None:
    return min((s.month for s in statuses if not s.healthy), default=None)


def repair_command(month: dt.date) -> str:
    """The command that repairs every unhealthy month from ``month`` on (SPEC 8)."""
    return f"billing-tiers backfill --from {month_label(month)}"


# ------------------------------------------------------------------------------------ the whole store

_COMMAND_MONTHS = re.compile(r"^(?P<verb>run|backfill)\s+--(?:month|from)\s+(?P<month>\d{4}-\d{2})\b")


@dataclass(frozen=True)
class RunInProgress:
    """A run or backfill that holds the store's writer lock right now."""

    owner: LockOwner
    staging: list[str]

    def covers(self, month: dt.date) -> bool:
        """The run is (re)publishing ``month``: ``run --month M`` covers M, ``backfill --from M`` M on."""
        match = _COMMAND_MONTHS.match(self.owner.command or "")
        if match is None:
            return False
        try:
            first = parse_month(match["month"])
        except ValueError:
            return False
        return month == first if match["verb"] == "run" else month >= first

    def describe(self) -> str:
        return f"pid {self.owner.pid}, {self.owner.command}, since {self.owner.since}"


@dataclass(frozen=True)
class StoreHealth:
    """Everything ``status`` reports about a store."""

    months: list[MonthStatus]
    behind: list[dt.date]
    """Months with an extract after the latest published one."""
    rejected: list[dt.date]
    running: RunInProgress | None
    interrupted: list[str] = field(default_factory=list)
    """Staging folders of runs that died (no live owner holds the lock)."""
    publishing: list[dt.date] = field(default_factory=list)
    """Months the running run is swapping in right now (past its commit point)."""

    def in_progress(self, month: dt.date) -> bool:
        return self.running is not None and self.running.covers(month)

    @property
    def repair_from(self) -> dt.date | None:
        """The first month that is unhealthy and that no running run is replacing."""
        return min((s.month for s in self.months if not s.healthy and not self.in_progress(s.month)), default=None)

    @property
    def needs_attention(self) -> bool:
        """What ``status --check`` exits 3 for: a damaged or stale month, an interrupted publish, or
        extracts not yet published; never the work of a run in progress."""
        return (
            self.repair_from is not None
            or bool(self.interrupted)
            or any(not self.in_progress(month) for month in self.behind)
        )

    def month_rows(self) -> list[dict[str, Any]]:
        rows = []
        first_bad = first_unhealthy(self.months)
        for s in self.months:
            manifest = s.manifest
            tables = manifest.tables if manifest is not None else {}
            rows.append(
                {
                    "billing_month": month_label(s.month),
                    "status": "ok" if s.healthy else "publishing" if s.month in self.publishing else s.problem,
                    "run_id": manifest.run_id if manifest else None,
                    "built_from": manifest.built_from.month if manifest else None,
                    "created_at": manifest.created_at if manifest else None,
                    "buckets": manifest.buckets if manifest else None,
                    "tier_rows": tables["tier_assignments"].rows if "tier_assignments" in tables else None,
                    "quarantined": tables["quarantine"].rows if "quarantine" in tables else None,
                    "guards_overridden": manifest.guards.overridden if manifest else None,
                    "damaged_file": str(s.damaged_file) if s.damaged_file else None,
                    "in_progress": self.in_progress(s.month),
                    "repair": repair_command(first_bad) if not s.healthy and first_bad is not None else None,
                }
            )
        return rows

    def as_json(self) -> dict[str, Any]:
        running = self.running
        owner = running.owner if running else None
        return {
            "months": self.month_rows(),
            "behind": [month_label(m) for m in self.behind],
            "rejected": [month_label(m) for m in self.rejected],
            "running": (
                {"pid": owner.pid, "command": owner.command, "since": owner.since, "staging": running.staging}
                if running and owner
                else None
            ),
            "interrupted_publishes": self.interrupted,
            "repair": repair_command(self.repair_from) if self.repair_from else None,
            "needs_attention": self.needs_attention,
        }

    def notes(self, store: Store, extracts: Path | None) -> list[str]:
        """The lines ``status`` prints under its table of months."""
        lines = []
        for s in self.months:
            if s.healthy:
                continue
            if s.month in self.publishing:
                lines.append(f"{month_label(s.month)}: publishing (the running run is swapping it in)")
                continue
            suffix = " (the running run is replacing it)" if self.in_progress(s.month) else ""
            lines.append(f"{month_label(s.month)}: {s.problem}{suffix}")
        if self.repair_from is not None:
            lines.append(
                f"repair: {repair_command(self.repair_from)} (recomputes {month_label(self.repair_from)} "
                f"and every later month)"
            )
        if self.behind:
            waiting = [m for m in self.behind if not self.in_progress(m)]
            lines.append(
                f"behind: extracts under {extracts} not yet published: {', '.join(month_label(m) for m in self.behind)}"
                + ("" if waiting else " (the running run is publishing them)")
            )
        for month in self.rejected:
            lines.append(f"rejected: {month_label(month)} was stopped by a guard; rows in {store.rejected_file(month)}")
        if self.running is not None:
            lines.append(
                f"running: {self.running.describe()}"
                + (f"; staging {', '.join(self.running.staging)}" if self.running.staging else "")
            )
        if self.interrupted:
            lines.append(f"interrupted publishes (finished by the next run or backfill): {', '.join(self.interrupted)}")
        return lines


def store_health(store: Store, extracts: Path | None, *, verify_checksums: bool = True) -> StoreHealth:
    """The health of every published month, the run in progress if any, and what is left to do."""
    owner = store.lock_owner()
    pending = store.pending_publishes()
    running = RunInProgress(owner, pending) if owner is not None and owner.alive() else None
    statuses = store_status(store, verify_checksums=verify_checksums)
    latest = statuses[-1].month if statuses else None
    behind = [m for m in extract_months(extracts) if latest is None or m > latest] if extracts is not None else []
    return StoreHealth(
        months=statuses,
        behind=behind,
        rejected=store.rejected_months(),
        running=running,
        interrupted=[] if running is not None else pending,
        publishing=store.publishing_months() if running is not None else [],
    )
