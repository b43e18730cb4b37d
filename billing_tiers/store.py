"""Every path of the store and the atomic, crash-safe publish of one month.

Layout under ``<store>/``::

    <table>/billing_month=YYYY-MM/part-0.parquet     one file per table and month (hive layout)
    manifests/billing_month=YYYY-MM/manifest.json    written last: the month's commit record
    _staging/<run_id>/                              files being written (readers never look here)
    .lock                                            the single-writer lock

Publishing a month: every table is written and fsynced under ``_staging``; then a journal naming
the moves is written atomically (the commit point); then the old manifest is removed, each staged
file replaces its final file with ``os.replace`` (atomic per file, so a reader sees the old file or
the new one, never a torn one), the manifest is written, and the staging folder is removed. A run
that dies before the journal leaves only staging debris; one that dies after it is rolled forward by
:func:`recover` at the next start, so a month is always either as before or fully published.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from filelock import FileLock, Timeout

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label, parse_month

TABLES = (
    "tier_assignments",
    "card_issuance",
    "quarantine",
    "state",
    "memberships",
    "extract_presence",
)
"""Published tables, each hive-partitioned by ``billing_month``."""

PART_FILE = "part-0.parquet"
MANIFEST_FILE = "manifest.json"
_STAGING = "_staging"
_JOURNAL = "journal.json"
_MONTH_DIR = re.compile(r"^billing_month=(\d{4}-\d{2})$")


def extract_month_dir(extracts: Path, month: dt.date) -> Path:
    return extracts / f"billing_month={month_label(month)}"


def extract_files(extracts: Path, month: dt.date) -> list[Path]:
    """The month's extract files, sorted; an error naming the month when there are none."""
    folder = extract_month_dir(extracts, month)
    if not folder.is_dir():
        raise PipelineError(f"month {month_label(month)}: no extract folder {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".parquet" and not p.name.startswith((".", "_")))
    if not files:
        raise PipelineError(f"month {month_label(month)}: no Parquet file in {folder}")
    return files


def extract_months(extracts: Path) -> list[dt.date]:
    """Months that have an extract folder, oldest first."""
    if not extracts.is_dir():
        return []
    months = []
    for child in extracts.iterdir():
        match = _MONTH_DIR.match(child.name)
        if match and child.is_dir():
            with contextlib.suppress(PipelineError):
                months.append(parse_month(match.group(1)))
    return sorted(months)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Store:
    """A store folder: where each table and manifest of each month lives."""

    root: Path

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def table_file(self, table: str, month: dt.date) -> Path:
        return self.root / table / f"billing_month={month_label(month)}" / PART_FILE

    def manifest_file(self, month: dt.date) -> Path:
        return self.root / "manifests" / f"billing_month={month_label(month)}" / MANIFEST_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def lock_owner_file(self) -> Path:
        return self.root / ".lock.owner"

    def read_manifest(self, month: dt.date) -> dict[str, Any] | None:
        path = self.manifest_file(month)
        try:
            loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PipelineError(f"manifest {path}: unreadable: {exc}") from exc
        return loaded

    def manifest_months(self) -> list[dt.date]:
        """Months with a manifest, oldest first."""
        return self._months_under(self.root / "manifests", MANIFEST_FILE)

    def table_months(self) -> list[dt.date]:
        """Months with at least one published table file, oldest first."""
        found: set[dt.date] = set()
        for table in TABLES:
            found.update(self._months_under(self.table_dir(table), PART_FILE))
        return sorted(found)

    @staticmethod
    def _months_under(folder: Path, file_name: str) -> list[dt.date]:
        if not folder.is_dir():
            return []
        months = []
        for child in folder.iterdir():
            match = _MONTH_DIR.match(child.name)
            if match and (child / file_name).is_file():
                months.append(parse_month(match.group(1)))
        return sorted(months)

    def read_table(self, table: str, month: dt.date) -> pl.DataFrame:
        """One published table of one month, checked against the month's manifest checksum."""
        path = self.table_file(table, month)
        manifest = self.read_manifest(month)
        if manifest is None:
            raise PipelineError(f"month {month_label(month)}: not published (no manifest)")
        entry = manifest["tables"].get(table)
        if entry is None or not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise PipelineError(f"month {month_label(month)}: {table} does not match its manifest; rerun it")
        return pl.read_parquet(path)

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        month: dt.date,
        run_id: str,
        tables: Mapping[str, pl.DataFrame],
        manifest: dict[str, Any],
        *,
        fail_at: str | None = None,
    ) -> dict[str, Any]:
        """Publish one month atomically; returns the manifest as written.

        ``fail_at`` names a step at which to raise (fault injection for tests; never set in runs).
        """
        staging = self.root / _STAGING / run_id
        staging.mkdir(parents=True, exist_ok=False)
        entries: dict[str, dict[str, Any]] = {}
        for table, frame in tables.items():
            staged = staging / f"{table}.parquet"
            frame.write_parquet(staged, compression="zstd", statistics=True)
            with staged.open("rb") as handle:
                os.fsync(handle.fileno())
            entries[table] = {
                "path": str(self.table_file(table, month).relative_to(self.root)),
                "rows": frame.height,
                "sha256": sha256_file(staged),
            }
            _maybe_fail(fail_at, f"staged:{table}")
        _fsync_dir(staging)
        full_manifest = {**manifest, "tables": entries}
        journal = {"month": month_label(month), "manifest": full_manifest}
        _maybe_fail(fail_at, "before_journal")
        _write_bytes_atomically(staging / _JOURNAL, json.dumps(journal, indent=2).encode())
        _maybe_fail(fail_at, "after_journal")
        self._roll_forward(staging, fail_at=fail_at)
        return full_manifest

    def _roll_forward(self, staging: Path, *, fail_at: str | None = None) -> None:
        journal = json.loads((staging / _JOURNAL).read_text(encoding="utf-8"))
        month = parse_month(journal["month"])
        manifest = journal["manifest"]
        with contextlib.suppress(FileNotFoundError):
            self.manifest_file(month).unlink()
        for table, entry in manifest["tables"].items():
            staged = staging / f"{table}.parquet"
            final = self.root / entry["path"]
            if staged.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, final)
                _fsync_dir(final.parent)
            _maybe_fail(fail_at, f"moved:{table}")
        for table in TABLES:  # a table this run did not produce must not survive from an older run
            if table not in manifest["tables"]:
                with contextlib.suppress(FileNotFoundError):
                    self.table_file(table, month).unlink()
        _maybe_fail(fail_at, "before_manifest")
        _write_bytes_atomically(self.manifest_file(month), json.dumps(manifest, indent=2).encode())
        _maybe_fail(fail_at, "after_manifest")
        shutil.rmtree(staging)

    def recover(self) -> list[str]:
        """Finish publishes that passed their commit point; drop staging debris. Returns what it did."""
        staging_root = self.root / _STAGING
        done: list[str] = []
        if not staging_root.is_dir():
            return done
        for staging in sorted(staging_root.iterdir()):
            if (staging / _JOURNAL).is_file():
                self._roll_forward(staging)
                done.append(f"completed the interrupted publish {staging.name}")
            else:
                shutil.rmtree(staging, ignore_errors=True)
                done.append(f"removed the unfinished staging {staging.name}")
        return done

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def writer_lock(self, command: str) -> Iterator[None]:
        """Hold the store's single-writer lock; refuse at once if another process holds it.

        The lock is an OS file lock: the kernel releases it when its holder dies, so a lock left by
        a killed run is taken over by the next one without any manual step.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_file, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            owner = ""
            with contextlib.suppress(OSError):
                owner = self.lock_owner_file.read_text(encoding="utf-8").strip()
            raise PipelineError(
                f"store {self.root} is in use by another run ({owner or 'owner unknown'}); try again when it ends"
            ) from None
        try:
            self.lock_owner_file.write_text(
                f"pid {os.getpid()}, {command}, since {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}\n",
                encoding="utf-8",
            )
            yield
        finally:
            with contextlib.suppress(OSError):
                self.lock_owner_file.unlink()
            lock.release()


class InjectedFault(RuntimeError):
    """Raised by fault injection in tests."""


def _maybe_fail(fail_at: str | None, step: str) -> None:
    if fail_at == step:
        raise InjectedFault(f"injected fault at {step}")
