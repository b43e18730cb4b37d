"""Every path of the store and the atomic, crash-safe publish of one month.

Layout under ``<store>/``::

    <table>/billing_month=YYYY-MM/part-BBBBB-<tag>.parquet  one file per bucket (hive layout)
    manifests/billing_month=YYYY-MM/manifest.json           written last: the month's commit record
    _staging/<run_id>/                                     a run's work (readers never look here)
    .lock                                                   the single-writer lock

A month of a table is one folder, and it appears all at once. A run writes its part files under
``_staging/<run_id>/<table>/``; publishing then writes a journal naming the month's parts (the
commit point), removes the month's manifest, swaps each staged folder with the published one in a
single ``renameat2(RENAME_EXCHANGE)`` (a plain rename when there is none yet), writes the manifest
and removes the staging folder, which by then holds the old parts. A reader listing a month's
folder therefore sees every part of one run or every part of the other, never a mix, and part file
names carry the run's ``<tag>`` so that a reader holding an old listing fails instead of mixing.
A run that dies before the journal leaves only staging debris; one that dies after it is rolled
forward by :meth:`Store.recover` at the next start, so a month is always as before or fully new.
On a file system without ``RENAME_EXCHANGE`` the old folder is renamed aside first: a reader may
then briefly find the month missing, but still never mixed.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
from filelock import FileLock, Timeout

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label, parse_month
from schemas.contract import CHANGES, STORE_TABLES
from schemas.manifest import DamagedManifest, Manifest, PartEntry, read_manifest_file

MANIFEST_FILE = "manifest.json"
MARKER_FILE = "billing-tiers-store.json"
"""Marks a folder as a store made on purpose by ``billing-tiers init`` (SPEC 8)."""
STORE_FORMAT = 2
"""2: bucket part files per table-month, memberships carried in the state."""
_STAGING = "_staging"
_JOURNAL = "journal.json"
_RUN_MARKER = "run.json"
_DISCARDED = ".discarded-"
_MONTH_DIR = re.compile(r"^billing_month=(\d{4}-\d{2})$")
PARQUET_COMPRESSION: Literal["zstd"] = "zstd"
PARQUET_COMPRESSION_LEVEL = 1
"""zstd level 1: nearly the size of the default level at a fraction of its write time."""


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


def part_name(bucket: int, tag: str) -> str:
    """File name of one bucket's part of a table-month; ``tag`` names the run that wrote it."""
    return f"part-{bucket:05d}-{tag}.parquet"


def write_part(frame: pl.DataFrame, path: Path, *, make_folder: bool = True) -> PartEntry:
    """Write one part file durably; returns its manifest entry (file name, rows, SHA-256).

    A run's buckets pass ``make_folder=False``: their folders are made by the run before they start,
    so a bucket still running after its run removed its staging fails instead of recreating it."""
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(
        path, compression=PARQUET_COMPRESSION, compression_level=PARQUET_COMPRESSION_LEVEL, statistics=True
    )
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
    return PartEntry(file=path.name, rows=frame.height, sha256=sha256_file(path))


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


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2_exchange(first: Path, second: Path) -> bool:
    """Swap two folders atomically (Linux ``renameat2``); False when the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def swap_in(staged: Path, final: Path) -> None:
    """Make ``staged`` the folder at ``final`` in one step; the old folder ends up at ``staged``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.rename(staged, final)
    elif not _renameat2_exchange(staged, final):
        aside = staged.with_name(staged.name + ".old")
        os.rename(final, aside)
        os.rename(staged, final)
        os.rename(aside, staged)
    _fsync_dir(final.parent)


def publish_checkpoint(step: str) -> None:
    """The seam where fault tests pause or fail the publish; does nothing in a run.

    :meth:`Store.commit` calls it at each step of a month's publish, in this order: ``staged:<table>``
    (once per table, its staged parts checked), ``before_journal``, ``after_journal`` (the commit
    point has passed), ``moved:<table>`` (once per table, its folder swapped in), ``before_manifest``,
    ``after_manifest`` (the staging folder is removed next). :meth:`Store.recover` reaches the
    ``moved:``, ``before_manifest`` and ``after_manifest`` steps again when it rolls a publish forward.
    The publish looks the function up in this module at each call, so a test replaces it with
    ``monkeypatch.setattr(billing_tiers.store, "publish_checkpoint", ...)`` (see ``tests/faults.py``).
    """


@dataclass(frozen=True)
class Store:
    """A store folder: where each table and manifest of each month lives."""

    root: Path

    def table_dir(self, table: str) -> Path:
        return self.root / table

    def month_dir(self, table: str, month: dt.date) -> Path:
        return self.root / table / f"billing_month={month_label(month)}"

    def manifest_file(self, month: dt.date) -> Path:
        return self.root / "manifests" / f"billing_month={month_label(month)}" / MANIFEST_FILE

    def staging_dir(self, run_id: str) -> Path:
        return self.root / _STAGING / run_id

    def staged_table_dir(self, run_id: str, table: str) -> Path:
        """Where a run stages a table-month's part files before it swaps them in."""
        return self.staging_dir(run_id) / "tables" / table

    def scratch_extract_dir(self, run_id: str, bucket: int) -> Path:
        """Where a run puts one bucket's extract rows (read once, split by bucket)."""
        return self.staging_dir(run_id) / "extract" / f"bucket-{bucket:05d}"

    def scratch_missing_dir(self, run_id: str) -> Path:
        """Where each bucket leaves the previous extract's ids missing from this one."""
        return self.staging_dir(run_id) / "missing"

    def scratch_previous_dir(self, run_id: str, table: str, bucket: int) -> Path:
        """Where a run puts one bucket's share of a previous table built with another bucket count."""
        return self.staging_dir(run_id) / "previous" / table / f"bucket-{bucket:05d}"

    @property
    def marker_file(self) -> Path:
        return self.root / MARKER_FILE

    @property
    def rejected_dir(self) -> Path:
        return self.root / "_rejected"

    def rejected_file(self, month: dt.date) -> Path:
        """Where the rows a guard rejected wait for the operator (never read as a published table)."""
        return self.rejected_dir / f"billing_month={month_label(month)}" / "quarantine.parquet"

    def rejected_months(self) -> list[dt.date]:
        return self._months_under(self.rejected_dir, lambda folder: any(folder.glob("*.parquet")))

    def is_initialised(self) -> bool:
        return self.marker_file.is_file()

    def initialise(self, extracts: Path | None = None) -> bool:
        """Create the store (the folder and its marker, recording ``extracts`` if given); False if it
        already is one (then only a newly given extracts folder is recorded).

        A folder that exists, is not empty and is not a store is refused: a store is never laid
        over other files."""
        if self.is_initialised():
            if extracts is not None:
                self.record_extracts(extracts)
            return False
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise PipelineError(f"store {self.root}: the folder exists and is not empty; choose a new folder")
        self.root.mkdir(parents=True, exist_ok=True)
        marker: dict[str, Any] = {
            "format": STORE_FORMAT,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "extracts": str(extracts.resolve()) if extracts is not None else None,
        }
        _write_bytes_atomically(self.marker_file, json.dumps(marker, indent=2).encode())
        return True

    def _marker(self) -> dict[str, Any]:
        try:
            marker = json.loads(self.marker_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PipelineError(
                f"store {self.root}: its marker {self.marker_file} cannot be read ({exc}); restore it, or make "
                f"a new store with `billing-tiers init`"
            ) from None
        if not isinstance(marker, dict):
            raise PipelineError(f"store {self.root}: its marker {self.marker_file} is not a JSON object")
        return marker

    def recorded_extracts(self) -> Path | None:
        """The extracts folder recorded by ``init --extracts`` (None when none was)."""
        recorded = self._marker().get("extracts")
        return Path(recorded) if recorded else None

    def record_extracts(self, extracts: Path) -> None:
        """Record (or change) the store's extracts folder in its marker."""
        marker = self._marker()
        marker["extracts"] = str(extracts.resolve())
        _write_bytes_atomically(self.marker_file, json.dumps(marker, indent=2).encode())

    def require(self) -> Store:
        """This store, or a PipelineError naming the path and pointing to ``init`` (creates nothing)."""
        if not self.root.is_dir():
            raise PipelineError(
                f"store {self.root} does not exist; create it with `billing-tiers init --store {self.root}`"
            )
        if not self.is_initialised():
            raise PipelineError(
                f"store {self.root} is not an initialised store (no {MARKER_FILE}); "
                f"create one with `billing-tiers init --store DIR`"
            )
        marker = self._marker()
        if marker.get("format") != STORE_FORMAT:
            raise PipelineError(
                f"store {self.root} has format {marker.get('format')}, this version reads format {STORE_FORMAT}"
            )
        return self

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def lock_owner_file(self) -> Path:
        return self.root / ".lock.owner"

    def pending_publishes(self) -> list[str]:
        """Runs with a staging folder: in progress, or left by a run that died (the next run tidies)."""
        folder = self.root / _STAGING
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def publishing_months(self) -> list[dt.date]:
        """Months whose publish passed its commit point and is not finished (a journal in staging)."""
        folder = self.root / _STAGING
        months = []
        for journal in sorted(folder.glob(f"*/{_JOURNAL}")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, KeyError, PipelineError):
                months.append(parse_month(json.loads(journal.read_text(encoding="utf-8"))["month"]))
        return sorted(set(months))

    def lock_owner(self) -> LockOwner | None:
        """Who holds (or last held, if it died) the writer lock, from ``.lock.owner``; None if nobody."""
        try:
            text = self.lock_owner_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return LockOwner.parse(text) if text else None

    def load_manifest(self, month: dt.date) -> Manifest | DamagedManifest | None:
        """The month's manifest, what makes it unusable, or None when there is none; never raises."""
        return read_manifest_file(self.manifest_file(month), month=month_label(month))

    def read_manifest(self, month: dt.date) -> Manifest | None:
        """The month's manifest (None when there is none); a damaged one is a PipelineError naming it."""
        loaded = self.load_manifest(month)
        if isinstance(loaded, DamagedManifest):
            raise PipelineError(f"month {month_label(month)}: {loaded.describe()}; {repair_hint(month)}")
        return loaded

    def manifest(self, month: dt.date) -> Manifest:
        """The manifest of a published month; a PipelineError when it is not published or damaged."""
        manifest = self.read_manifest(month)
        if manifest is None:
            raise PipelineError(f"month {month_label(month)}: not published (no manifest in {self.root})")
        return manifest

    def manifest_months(self) -> list[dt.date]:
        """Months with a manifest, oldest first."""
        return self._months_under(self.root / "manifests", lambda folder: (folder / MANIFEST_FILE).is_file())

    def table_months(self) -> list[dt.date]:
        """Months with a published table folder holding at least one file, oldest first."""
        found: set[dt.date] = set()
        for table in STORE_TABLES:
            found.update(self._months_under(self.table_dir(table), lambda folder: any(folder.glob("*.parquet"))))
        return sorted(found)

    @staticmethod
    def _months_under(folder: Path, holds: Any) -> list[dt.date]:
        if not folder.is_dir():
            return []
        months = []
        for child in folder.iterdir():
            match = _MONTH_DIR.match(child.name)
            if match and child.is_dir() and holds(child):
                months.append(parse_month(match.group(1)))
        return sorted(months)

    def part_paths(self, table: str, month: dt.date, manifest: Manifest) -> list[tuple[Path, str]]:
        """(path, sha256) of every part of a published table-month, bucket order, as its manifest says.

        A month published before every month had ``changes`` lists none: it has no part."""
        entry = manifest.tables.get(table)
        if entry is None:
            if table == CHANGES.name:
                return []
            raise PipelineError(
                f"month {month_label(month)}: manifest {self.manifest_file(month)} lists no table {table}; "
                f"{repair_hint(month)}"
            )
        folder = self.month_dir(table, month)
        return [(folder / part.file, part.sha256) for part in entry.parts]

    def read_table(self, table: str, month: dt.date, manifest: Manifest | None = None) -> pl.DataFrame:
        """One published table-month: the parts its manifest lists, each checked against its checksum."""
        manifest = manifest or self.manifest(month)
        frames = [
            read_verified(path, sha256, table=table, month=month)
            for path, sha256 in self.part_paths(table, month, manifest)
        ]
        if not frames:
            return CHANGES.empty() if table == CHANGES.name else pl.DataFrame()
        return pl.concat(frames, how="vertical")

    def scan_table(self, table: str, month: dt.date, manifest: Manifest | None = None) -> pl.LazyFrame:
        """:meth:`read_table` as a lazy frame (for readers that want a few rows or columns): every part
        is checked against its checksum first, then scanned, so filters and selections push down."""
        manifest = manifest or self.manifest(month)
        parts = self.part_paths(table, month, manifest)
        for path, sha256 in parts:
            verify_part(path, sha256, table=table, month=month)
        if not parts:
            return CHANGES.empty().lazy() if table == CHANGES.name else pl.LazyFrame()
        return pl.scan_parquet([path for path, _ in parts], hive_partitioning=False)

    # ------------------------------------------------------------------ publish

    def commit(
        self,
        month: dt.date,
        run_id: str,
        manifest: Manifest,
        *,
        before_manifest: Callable[[Manifest], Manifest] | None = None,
    ) -> Manifest:
        """Publish the month whose parts are staged under ``_staging/<run_id>``; returns the manifest.

        ``manifest.tables`` names every staged part. ``before_manifest`` is called just before the
        manifest is written and returns the manifest to write (e.g. with the publish timing). Each
        step passes through :func:`publish_checkpoint`.
        """
        staging = self.staging_dir(run_id)
        for table, entry in manifest.tables.items():
            folder = self.staged_table_dir(run_id, table)
            folder.mkdir(parents=True, exist_ok=True)  # a table with no part is an empty folder
            staged = {p.name for p in folder.iterdir()}
            expected = {part.file for part in entry.parts}
            if staged != expected:
                raise PipelineError(f"month {month_label(month)}: staged {table} parts do not match the run's record")
            _fsync_dir(folder)
            publish_checkpoint(f"staged:{table}")
        _fsync_dir(staging)
        journal = {"month": month_label(month), "run_id": run_id, "manifest": manifest.as_dict()}
        publish_checkpoint("before_journal")
        _write_bytes_atomically(staging / _JOURNAL, json.dumps(journal, indent=2).encode())
        publish_checkpoint("after_journal")
        return self._roll_forward(staging, live_manifest=manifest, before_manifest=before_manifest)

    def _roll_forward(
        self,
        staging: Path,
        *,
        live_manifest: Manifest | None = None,
        before_manifest: Callable[[Manifest], Manifest] | None = None,
    ) -> Manifest:
        """Finish a committed publish; safe to repeat after a crash at any point inside it."""
        journal = json.loads((staging / _JOURNAL).read_text(encoding="utf-8"))
        month = parse_month(journal["month"])
        manifest = live_manifest if live_manifest is not None else Manifest.model_validate(journal["manifest"])
        with contextlib.suppress(FileNotFoundError):
            self.manifest_file(month).unlink()
        for table, entry in manifest.tables.items():
            final = self.month_dir(table, month)
            staged = staging / "tables" / table
            expected = {part.file for part in entry.parts}
            published = {p.name for p in final.iterdir()} if final.is_dir() else None
            if published != expected:  # not swapped yet (after a swap, staged holds the old parts)
                swap_in(staged, final)
            publish_checkpoint(f"moved:{table}")
        for table in STORE_TABLES:  # a table this run did not produce must not survive from an older run
            if table not in manifest.tables:
                shutil.rmtree(self.month_dir(table, month), ignore_errors=True)
        publish_checkpoint("before_manifest")
        if before_manifest is not None:
            manifest = before_manifest(manifest)
        _write_bytes_atomically(self.manifest_file(month), manifest.to_json())
        publish_checkpoint("after_manifest")
        shutil.rmtree(staging)
        return manifest

    def run_marker(self, run_id: str) -> Path:
        """The file that says a run's staging is live: its buckets write only while it exists."""
        return self.staging_dir(run_id) / _RUN_MARKER

    def open_staging(self, run_id: str, month: dt.date) -> None:
        """Create a run's staging folder and its live marker (before any bucket starts)."""
        marker = {"run_id": run_id, "month": month_label(month), "pid": os.getpid()}
        _write_bytes_atomically(self.run_marker(run_id), json.dumps(marker).encode())

    def discard(self, run_id: str) -> None:
        """Remove a run's staging folder (a run that publishes nothing).

        The folder is first renamed aside in one step, so a bucket still running elsewhere finds its
        live marker and folders gone at once and writes nothing more; then it is removed."""
        staging = self.staging_dir(run_id)
        aside = staging.with_name(f"{_DISCARDED}{run_id}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(staging, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

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


def run_tag(run_id: str) -> str:
    """The short tag that part file names of a run carry."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


def repair_hint(month: dt.date) -> str:
    """How a damaged published month is repaired (SPEC 8): the command ``status`` names too."""
    return f"repair it with `billing-tiers backfill --from {month_label(month)}`"


def _checksum_error(path: Path, *, table: str, month: dt.date) -> PipelineError:
    return PipelineError(
        f"month {month_label(month)}: {table} part {path} does not match its manifest checksum; {repair_hint(month)}"
    )


def _missing_error(path: Path, *, table: str, month: dt.date) -> PipelineError:
    return PipelineError(f"month {month_label(month)}: {table} part {path} is missing; {repair_hint(month)}")


def verify_part(path: Path, sha256: str, *, table: str, month: dt.date) -> None:
    """Refuse a part file of a published ``month`` that is missing or whose bytes do not match the
    checksum its manifest recorded; the error names the month, the table and the file."""
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise _missing_error(path, table=table, month=month) from None
    if actual != sha256:
        raise _checksum_error(path, table=table, month=month)


def read_verified(path: Path, sha256: str | None, *, table: str, month: dt.date) -> pl.DataFrame:
    """Read a part file of ``month``, refusing one whose bytes do not match the checksum its manifest
    recorded (``sha256`` None: a file this run made). The checksum is of the bytes actually parsed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _missing_error(path, table=table, month=month) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise _checksum_error(path, table=table, month=month)
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # a file this run made and cannot read back is as damaged as a wrong checksum
        raise PipelineError(
            f"month {month_label(month)}: {table} part {path} is not readable Parquet ({exc}); {repair_hint(month)}"
        ) from exc

    return pl.read_parquet(io.BytesIO(data))


_OWNER = re.compile(r"^pid (?P<pid>\d+), (?P<command>.*), since (?P<since>.+)$")


@dataclass(frozen=True)
class LockOwner:
    """What ``.lock.owner`` says: the process holding the writer lock, its command and start time.

    The file is removed when the lock is released; a file left behind names a process that died."""

    text: str
    pid: int | None = None
    command: str | None = None
    since: str | None = None

    @classmethod
    def parse(cls, text: str) -> LockOwner:
        match = _OWNER.match(text)
        if match is None:
            return cls(text=text)
        return cls(text=text, pid=int(match["pid"]), command=match["command"], since=match["since"])

    def alive(self) -> bool:
        """The owning process still runs (on this machine); False when it died or is unknown."""
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, owned by another user
            return True
        return True
