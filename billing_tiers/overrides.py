"""The override ledger (SPEC 9): manual grants and blocks, append-only, with an audit trail.

Layout under ``<store>/overrides/``::

    entries/<first sequence:08d>-<8 hex>.parquet   one file per batch of entries, never changed or removed
    entries/.<file name>.tmp                       a batch being written (no reader reads it)
    .lock, .lock.owner                             the ledger's own lock (not the store's run lock)

Every ``add``, ``approve`` and ``revoke`` is one row (:data:`schemas.contract.OVERRIDE_LEDGER`); an
``override add``, a whole ``override import`` and an ``approve`` of several ids are each one batch,
one file, all or nothing. A batch is written under the ledger lock: the whole ledger is read and
checked, the entries get the next sequence numbers (and an ``add`` the next override id,
``OVR-000001`` on), the file is written to a temporary name in the same folder, fsynced, renamed to
its final name and the folder fsynced; only then does the command print anything. A kill at any
moment therefore leaves either the whole batch or nothing (a temporary file, which readers skip and
the next writer removes), and a printed id is on disk. The lock is a file lock of its own, so an
``override add`` during a run is neither refused nor blocking the run; the kernel releases it when
its holder dies.

Any reader sees a prefix of the ledger (files appear one at a time, in sequence order), and reads
it with a glob: ``pl.read_parquet("<store>/overrides/entries/*.parquet")``,
``read_parquet('<store>/overrides/entries/*.parquet')`` in DuckDB, or pyarrow and pandas on the
folder (they skip names starting with ``.``).

What the engine calls (read-only, no lock): :func:`overrides_for_month` (the overrides in force in
a month, the ledger entries they come from and their checksum for the manifest), and
:func:`refuse_overrides_unknown_to` (a run's rulebook must have every program and level in force).
:func:`current_overrides` gives every override's state for ``list``, ``explain`` and ``history``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from filelock import FileLock, Timeout

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label, parse_month
from billing_tiers.store import PARQUET_COMPRESSION, PARQUET_COMPRESSION_LEVEL, Store, _fsync_dir
from rulebook import Rulebook
from schemas.contract import (
    ADD,
    APPROVE,
    APPROVED,
    BLOCK,
    GRANT,
    OVERRIDE_IMPORT_HEADER,
    OVERRIDE_KINDS,
    OVERRIDE_LEDGER,
    OVERRIDES,
    OVERRIDES_IN_FORCE,
    PENDING,
    REVOKE,
    REVOKED,
)

LEDGER_DIR = "overrides"
ENTRIES_DIR = "entries"
LOCK_TIMEOUT_SECONDS = 60.0
"""How long a ledger command waits for another one to finish its batch before it gives up."""
SUBSCRIBER_ID_MAX = 32
_FILE_NAME = re.compile(r"^(\d{8})-[0-9a-f]{8}\.parquet$")
_ID_NUMBER = re.compile(r"^OVR-(\d+)$")

LedgerSource = Store | pl.DataFrame
"""Where the read functions take the ledger from: a store (read now), or entries already read
(so that several views come from one consistent read)."""


def ledger_checkpoint(step: str) -> None:
    """The seam where fault tests pause or fail a ledger write; does nothing otherwise.

    Each batch passes ``written`` (the temporary file is complete and fsynced, not yet renamed),
    ``renamed`` (the entry file has its final name) and ``durable`` (its folder is fsynced). The
    writer looks the function up in this module at each call, so a test replaces it with
    ``monkeypatch.setattr(billing_tiers.overrides, "ledger_checkpoint", ...)`` (see
    ``tests/ledger_runner.py``)."""


# ----------------------------------------------------------------------------- paths


def ledger_dir(store: Store) -> Path:
    return store.root / LEDGER_DIR


def entries_dir(store: Store) -> Path:
    """The folder of entry files: read ``<this>/*.parquet``."""
    return ledger_dir(store) / ENTRIES_DIR


def ledger_files(store: Store) -> list[Path]:
    """The ledger's entry files in sequence order (temporary files, named ``.*``, are not entries)."""
    folder = entries_dir(store)
    if not folder.is_dir():
        return []
    files = sorted(path for path in folder.iterdir() if not path.name.startswith("."))
    for path in files:
        if not _FILE_NAME.match(path.name):
            raise PipelineError(
                f"override ledger {folder}: {path.name} is not a ledger entry file (<sequence>-<hex>.parquet); "
                f"the ledger is written only by `billing-tiers override`: move the file out"
            )
    return files


# ----------------------------------------------------------------------------- checks of entries


def _shape_rules() -> dict[str, pl.Expr]:
    """Which columns each kind of entry fills: each expression is true on the rows that break it."""
    entry, kind, level = pl.col("entry"), pl.col("kind"), pl.col("level")
    add, approve, revoke = entry == ADD, entry == APPROVE, entry == REVOKE
    details = ("kind", "level", "first_month", "last_month", "ticket")

    def blank(name: str) -> pl.Expr:
        return pl.col(name).str.strip_chars() == ""

    return {
        "an add has a kind, a first month and a reason": add
        & (kind.is_null() | pl.col("first_month").is_null() | pl.col("reason").is_null()),
        "a grant has a level and a block none": add & ((kind == GRANT) != level.is_not_null()),
        "an add's last month is not before its first": add & (pl.col("last_month") < pl.col("first_month")),
        "only a revoke has revoke_from, and every revoke has it and a reason": (
            revoke != pl.col("revoke_from").is_not_null()
        )
        | (revoke & pl.col("reason").is_null()),
        "approve and revoke entries carry no kind, level, months or ticket": ~add
        & pl.any_horizontal(pl.col(name).is_not_null() for name in details),
        "an approve carries no reason": approve & pl.col("reason").is_not_null(),
        "names and reasons are not blank": blank("by") | blank("reason").fill_null(False) | blank("os_user"),
    }


def ledger_problems(entries: pl.DataFrame) -> list[str]:
    """What is wrong with ``entries`` as rows of the ledger (empty when nothing): the contract's
    Pandera schema and value rules (:func:`schemas.outputs.check_table`), and which columns each kind
    of entry fills."""
    from schemas.outputs import check_table

    problems = check_table(entries, OVERRIDE_LEDGER)
    if problems:
        return problems
    counts = entries.select(rule.sum().alias(name) for name, rule in _shape_rules().items()).row(0, named=True)
    return [f"{name}: {count} rows break it" for name, count in counts.items() if count]


def _history_problem(entries: pl.DataFrame) -> str | None:
    """The first entry that does not follow from the ones before it (an approve or revoke of an
    override never added, a second approve, a self-approval...), or None."""
    added: dict[str, dict[str, Any]] = {}
    for row in entries.iter_rows(named=True):
        where = f"entry {row['sequence']} ({row['entry']} {row['override_id']})"
        known = added.get(row["override_id"])
        if row["entry"] == ADD:
            if known is not None:
                return f"{where}: the override id was added before"
            added[row["override_id"]] = {**row, "approved": False, "revoked": False}
            continue
        if known is None:
            return f"{where}: no earlier add of this override"
        if (row["program"], row["subscriber_id"]) != (known["program"], known["subscriber_id"]):
            return f"{where}: program or subscriber_id differs from the add"
        if known["revoked"]:
            return f"{where}: the override was revoked before"
        if row["entry"] == APPROVE:
            if known["approved"]:
                return f"{where}: the override was approved before"
            if same_person(row["by"], known["by"]):
                return f"{where}: approved by its requester"
            known["approved"] = True
        else:
            known["revoked"] = True
    return None


# ----------------------------------------------------------------------------- reading


_FILE = "__file"


def _read_entry_file(path: Path) -> pl.DataFrame:
    """One entry file, or a PipelineError naming it when it cannot be read as ledger entries."""
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # any unreadable file is named, whatever the reader says
        raise PipelineError(f"override ledger file {path}: not a readable Parquet file ({exc})") from None
    if frame.schema != OVERRIDE_LEDGER.schema:
        raise PipelineError(f"override ledger file {path}: its columns are not the ledger's")
    return frame


def _read_entry_files(files: list[Path]) -> pl.DataFrame:
    """Every entry file in one read (three times faster than one read per file), with the path of
    each row's file in :data:`_FILE`; when that fails, the file that cannot be read is named."""
    try:
        frame = pl.scan_parquet(files, include_file_paths=_FILE).collect()
    except Exception:  # which file? read them one by one to say
        frame = None
    if frame is None or frame.drop(_FILE).schema != OVERRIDE_LEDGER.schema:
        frames = [_read_entry_file(path).with_columns(pl.lit(str(path)).alias(_FILE)) for path in files]
        frame = pl.concat(frames, how="vertical")
    return frame


def read_ledger(store: Store) -> pl.DataFrame:
    """Every entry of the ledger, in sequence order (:data:`OVERRIDE_LEDGER` columns), checked: the
    files against the contract and their names, the sequence without gaps, the history consistent. A
    store with no override has an empty ledger. A damaged ledger is a PipelineError naming the file."""
    files = ledger_files(store)
    if not files:
        return OVERRIDE_LEDGER.empty()
    read = _read_entry_files(files)
    batches = read.group_by(_FILE, maintain_order=True).agg(
        first=pl.col("sequence").first(), sequences=pl.col("sequence")
    )
    expected = 1
    for path, first, sequences in batches.iter_rows():
        if (
            first != expected
            or first != int(Path(path).name[:8])
            or sequences != list(range(first, first + len(sequences)))
        ):
            raise PipelineError(
                f"override ledger file {path}: holds entries {sequences[0]} to {sequences[-1]} where entry "
                f"{expected} is next; an entry file is missing or was changed"
            )
        expected = first + len(sequences)
    entries = read.drop(_FILE)
    problems = ledger_problems(entries)
    if problems:
        culprit = next(
            (
                path
                for (path,), frame in read.group_by(_FILE, maintain_order=True)
                if ledger_problems(frame.drop(_FILE))
            ),
            entries_dir(store),
        )
        raise PipelineError(f"override ledger file {culprit}: {problems[0]}")
    history = _history_problem(entries)
    if history is not None:
        raise PipelineError(f"override ledger {entries_dir(store)}: {history}")
    return entries


def _entries(source: LedgerSource) -> pl.DataFrame:
    return read_ledger(source) if isinstance(source, Store) else source


def _month_before(month: pl.Expr) -> pl.Expr:
    return (month + "-01").str.to_date("%Y-%m-%d").dt.offset_by("-1mo").dt.strftime("%Y-%m")


def current_overrides(source: LedgerSource) -> pl.DataFrame:
    """One row per override (:data:`OVERRIDES` columns), in the order they were added: its fields,
    ``status`` (pending, approved, revoked), who requested and approved it and when, and its
    effective ``last_month``: after a revoke from M the earlier of the requested one and M-1 (open
    becomes M-1). A revoke from a month at or before ``first_month`` removes it: ``removed`` is true
    and ``last_month`` falls before ``first_month``, so ``first_month <= B <= last_month`` holds for
    no month B."""
    entries = _entries(source)
    adds = entries.filter(pl.col("entry") == ADD).select(
        "override_id", "program", "subscriber_id", "kind", "level", "first_month",
        pl.col("last_month").alias("requested_last_month"), "reason", "ticket",
        pl.col("by").alias("requested_by"), pl.col("recorded_at").alias("requested_at"), "sequence",
    )  # fmt: skip
    approvals = entries.filter(pl.col("entry") == APPROVE).select(
        "override_id", pl.col("by").alias("approved_by"), pl.col("recorded_at").alias("approved_at")
    )
    revokes = entries.filter(pl.col("entry") == REVOKE).select(
        "override_id",
        pl.col("by").alias("revoked_by"),
        pl.col("recorded_at").alias("revoked_at"),
        "revoke_from",
        pl.col("reason").alias("revoke_reason"),
    )
    requested, cut = pl.col("requested_last_month"), _month_before(pl.col("revoke_from"))
    return (
        adds.join(approvals, on="override_id", how="left")
        .join(revokes, on="override_id", how="left")
        .sort("sequence")
        .with_columns(
            last_month=pl.when(pl.col("revoke_from").is_null())
            .then(requested)
            .when(requested.is_null() | (cut < requested))
            .then(cut)
            .otherwise(requested),
            status=pl.when(pl.col("revoked_by").is_not_null())
            .then(pl.lit(REVOKED))
            .when(pl.col("approved_by").is_not_null())
            .then(pl.lit(APPROVED))
            .otherwise(pl.lit(PENDING)),
            removed=(pl.col("revoke_from") <= pl.col("first_month")).fill_null(False),
        )
        .select(list(OVERRIDES.columns))
        .cast(OVERRIDES.schema)  # type: ignore[arg-type]
    )


def pending_overrides(source: LedgerSource) -> pl.DataFrame:
    """The overrides waiting for approval (``status`` lists them), in the order they were added."""
    return current_overrides(source).filter(pl.col("status") == PENDING)


def _month_text(month: dt.date | str) -> str:
    return month_label(month) if isinstance(month, dt.date) else month_label(parse_month(month))


def overrides_in_force(source: LedgerSource, month: dt.date | str) -> pl.DataFrame:
    """The approved overrides whose effective months hold ``month`` (a date in the month, or
    ``YYYY-MM``): :data:`OVERRIDES_IN_FORCE` columns, at most one per program and subscriber (two
    would be a damaged ledger: a PipelineError naming both)."""
    label = _month_text(month)
    in_force = (
        current_overrides(source)
        .filter(
            pl.col("approved_by").is_not_null(),
            pl.col("first_month") <= label,
            pl.col("last_month").is_null() | (pl.col("last_month") >= label),
        )
        .select(list(OVERRIDES_IN_FORCE.columns))
    )
    twice = in_force.filter(pl.struct("program", "subscriber_id").is_duplicated())
    if twice.height:
        ids = ", ".join(twice.get_column("override_id"))
        raise PipelineError(f"override ledger: {ids} are in force together in {label} for one program and subscriber")
    return in_force


@dataclass(frozen=True)
class MonthOverrides:
    """What a month's run applies and records: the overrides in force, the ledger entries they come
    from (their add, approve and any revoke) and the checksum of those entries for the manifest."""

    month: str
    in_force: pl.DataFrame
    entries: pl.DataFrame
    checksum: str

    @property
    def override_ids(self) -> list[str]:
        return self.in_force.get_column("override_id").to_list()


def overrides_for_month(source: LedgerSource, month: dt.date | str) -> MonthOverrides:
    """The overrides in force in ``month`` with their entries and checksum, from one read of the
    ledger. The checksum changes when an entry that decides what is in force changes (an approve,
    a revoke of an override in force), not when unrelated overrides are added."""
    entries = _entries(source)
    in_force = overrides_in_force(entries, month)
    used = entries.filter(pl.col("override_id").is_in(in_force.get_column("override_id").to_list()))
    return MonthOverrides(month=_month_text(month), in_force=in_force, entries=used, checksum=ledger_checksum(used))


def ledger_checksum(entries: pl.DataFrame) -> str:
    """SHA-256 of the canonical content of ``entries`` (not of their files): the entries in sequence
    order, each one line holding the JSON array of its :data:`OVERRIDE_LEDGER` columns in contract
    order (nulls as ``null``, ``recorded_at`` as ISO 8601 with microseconds and offset, no spaces, not
    ASCII-escaped), lines joined by ``\\n`` after the line ``override-ledger v1``. So it does not depend
    on how the entries were batched into files or compressed."""

    def canonical(value: Any) -> Any:
        return value.isoformat(timespec="microseconds") if isinstance(value, dt.datetime) else value

    lines = ["override-ledger v1"]
    for row in entries.sort("sequence").select(list(OVERRIDE_LEDGER.columns)).iter_rows():
        lines.append(json.dumps([canonical(v) for v in row], ensure_ascii=False, separators=(",", ":")))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def refuse_overrides_unknown_to(rulebook: Rulebook, in_force: pl.DataFrame, month: dt.date | str) -> None:
    """A run refuses, before anything runs, an override in force whose program is not an enabled
    program of its rulebook, or whose level is not a level of it (SPEC 9), naming the override."""
    programs = rulebook.enabled_programs()
    for row in in_force.iter_rows(named=True):
        program = programs.get(row["program"])
        where = f"override {row['override_id']} (in force in {_month_text(month)})"
        if program is None:
            raise PipelineError(
                f"{where} is for program '{row['program']}', which the rulebook does not have enabled; "
                f"revoke the override or run with a rulebook that has the program"
            )
        if row["level"] is not None and row["level"] not in program.levels:
            raise PipelineError(
                f"{where} grants {row['program']} level '{row['level']}', which the rulebook does not have "
                f"(levels: {', '.join(program.levels)}); revoke the override or run with a rulebook that has it"
            )


# ----------------------------------------------------------------------------- checking what operators give


class FieldError(PipelineError):
    """One value an operator gave breaks a rule: ``field`` is the ledger's (and the CSV's) column
    name; ``index`` is the position of the request in its batch (an import's data row - 1)."""

    def __init__(self, field: str, problem: str, index: int | None = None) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.index = index


MONTHS_FIELD = "first_month,last_month"
"""The field an overlap names: the months of the request."""


def _bad_character(text: str) -> str | None:
    """The first control or format character (Unicode Cc, Cf) in ``text``, as ``U+XXXX``."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf"):
            return f"U+{ord(char):04X}"
    return None


def check_subscriber_id(value: str) -> str:
    """SPEC 2's rule for a subscriber_id: 1 to 32 characters, no control or format character
    (Unicode Cc, Cf), no whitespace at either end. Returned unchanged (never trimmed)."""
    field = "subscriber_id"
    if not value:
        raise FieldError(field, f"must not be empty; a subscriber_id has 1 to {SUBSCRIBER_ID_MAX} characters")
    bad = _bad_character(value)
    if bad is not None:
        raise FieldError(field, f"'{value}' has a control or format character ({bad}); a subscriber_id may not")
    if value != value.strip():
        raise FieldError(field, f"'{value}' starts or ends with whitespace; a subscriber_id may not")
    if len(value) > SUBSCRIBER_ID_MAX:
        raise FieldError(field, f"'{value}' has {len(value)} characters; a subscriber_id has 1 to {SUBSCRIBER_ID_MAX}")
    return value


def check_name(value: str | None, field: str = "by") -> str:
    """A person's name as given (surrounding whitespace dropped): not empty, and no control or format
    character (an invisible one would make two names look alike to the four-eyes rule)."""
    name = (value or "").strip()
    if not name:
        raise FieldError(field, "must not be empty; give the name of the person deciding")
    bad = _bad_character(name)
    if bad is not None:
        raise FieldError(field, f"'{name}' has a control or format character ({bad}); give a plain name")
    return name


def check_reason(value: str | None, field: str = "reason") -> str:
    """Required text, surrounding whitespace dropped; empty or whitespace-only is refused."""
    reason = (value or "").strip()
    if not reason:
        raise FieldError(field, "must not be empty; say why")
    return reason


def same_person(first: str, second: str) -> bool:
    """Whether two given names are the same person for the four-eyes rule: equal once Unicode
    compatibility forms are folded (NFKC), case is folded and inner whitespace is collapsed."""

    def folded(name: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", name).casefold().split())

    return folded(first) == folded(second)


def check_month(value: str | None, field: str) -> str:
    """A billing month ``YYYY-MM`` as the ledger writes it."""
    try:
        return month_label(parse_month(value or ""))
    except PipelineError as exc:
        raise FieldError(field, str(exc)) from None


@dataclass(frozen=True)
class OverrideRequest:
    """An override as asked for, checked (:func:`parse_request`); the store gives it its id."""

    program: str
    subscriber_id: str
    kind: str
    level: str | None
    first_month: str
    last_month: str | None
    reason: str
    ticket: str | None = None

    @property
    def months(self) -> str:
        return months_text(self.first_month, self.last_month)


def months_text(first: str, last: str | None) -> str:
    return f"{first}..{last or 'open'}"


def parse_request(fields: Mapping[str, str | None], rulebook: Rulebook, rulebook_label: str) -> OverrideRequest:
    """An override request from the operator's values (keys: :data:`OVERRIDE_IMPORT_HEADER`; empty text
    is none for level, last_month and ticket), checked in column order against ``rulebook`` (named
    ``rulebook_label`` in messages). The first broken rule is a :class:`FieldError`."""
    program_name = fields.get("program") or ""
    programs = rulebook.enabled_programs()
    program = programs.get(program_name)
    if program is None:
        state = "is disabled in" if program_name in rulebook.programs else "is not a program of"
        raise FieldError("program", f"'{program_name}' {state} the {rulebook_label} (enabled: {', '.join(programs)})")
    subscriber_id = check_subscriber_id(fields.get("subscriber_id") or "")
    kind = fields.get("kind") or ""
    if kind not in OVERRIDE_KINDS:
        raise FieldError("kind", f"'{kind}' is not a kind of override ({' or '.join(OVERRIDE_KINDS)})")
    level = fields.get("level") or None
    levels = ", ".join(program.levels)
    if kind == GRANT and level is None:
        raise FieldError("level", f"a grant needs a level of {program_name} ({levels})")
    if kind == BLOCK and level is not None:
        raise FieldError("level", f"a block takes no level (got '{level}')")
    if level is not None and level not in program.levels:
        raise FieldError("level", f"'{level}' is not a level of {program_name} ({levels})")
    first_month = check_month(fields.get("first_month"), "first_month")
    last_month = check_month(fields["last_month"], "last_month") if fields.get("last_month") else None
    if last_month is not None and last_month < first_month:
        raise FieldError("last_month", f"{last_month} is before the first month {first_month}")
    reason = check_reason(fields.get("reason"))
    ticket = (fields.get("ticket") or "").strip() or None
    return OverrideRequest(program_name, subscriber_id, kind, level, first_month, last_month, reason, ticket)


# ----------------------------------------------------------------------------- writing


def _make_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents durably (each new entry fsynced in its parent)."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def _ledger_lock(store: Store) -> Iterator[None]:
    """Hold the ledger's lock (waiting up to :data:`LOCK_TIMEOUT_SECONDS` for another ledger command)."""
    root = ledger_dir(store)
    _make_dirs(root / ENTRIES_DIR)
    lock = FileLock(root / ".lock", timeout=LOCK_TIMEOUT_SECONDS)
    owner_file = root / ".lock.owner"
    try:
        lock.acquire()
    except Timeout:
        owner = ""
        with contextlib.suppress(OSError):
            owner = owner_file.read_text(encoding="utf-8").strip()
        raise PipelineError(
            f"the override ledger of store {store.root} is busy ({owner or 'holder unknown'}) after "
            f"{LOCK_TIMEOUT_SECONDS:g} s; try again"
        ) from None
    try:
        with contextlib.suppress(OSError):
            owner_file.write_text(f"pid {os.getpid()} since {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            owner_file.unlink()
        lock.release()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in this environment: the uid says who
        return f"uid {os.getuid()}"


def _write_batch(folder: Path, frame: pl.DataFrame) -> Path:
    """Write one batch file atomically: temporary file, fsync, rename, fsync the folder."""
    first = frame.get_column("sequence")[0]
    final = folder / f"{first:08d}-{uuid.uuid4().hex[:8]}.parquet"
    temporary = folder / f".{final.name}.tmp"
    try:
        frame.write_parquet(
            temporary, compression=PARQUET_COMPRESSION, compression_level=PARQUET_COMPRESSION_LEVEL, statistics=True
        )
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        ledger_checkpoint("written")
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    ledger_checkpoint("renamed")
    _fsync_dir(folder)
    ledger_checkpoint("durable")
    return final


def _append(store: Store, build: Callable[[pl.DataFrame], list[dict[str, Any]]]) -> pl.DataFrame:
    """Append one batch: ``build`` gets the ledger read under the lock and returns the new entries
    (without sequence, entry_id, os_user, recorded_at) or raises a refusal. Returns the whole ledger
    as it is once the batch is on disk."""
    folder = entries_dir(store)
    if not folder.is_dir():
        build(OVERRIDE_LEDGER.empty())  # a refusal on a store with no ledger yet creates nothing
    with _ledger_lock(store):
        for debris in folder.glob(".*.tmp"):  # left by a writer that died before its rename
            debris.unlink(missing_ok=True)
        ledger = read_ledger(store)
        rows = build(ledger)
        first = ledger.height + 1
        now = dt.datetime.now(dt.UTC)
        user = _os_user()
        frame = pl.DataFrame(
            [
                {**row, "entry_id": uuid.uuid4().hex, "sequence": first + i, "os_user": user, "recorded_at": now}
                for i, row in enumerate(rows)
            ],
            schema=OVERRIDE_LEDGER.schema,
        )
        problems = ledger_problems(frame)
        if problems:
            raise PipelineError(f"override ledger: refusing to write a batch that breaks the contract: {problems[0]}")
        _write_batch(folder, frame)
    return pl.concat([ledger, frame], how="vertical")


def _overlaps(first: str, last: str | None, other_first: str, other_last: str | None) -> bool:
    """Whether two month ranges share a month (None: open end)."""
    return (other_last is None or first <= other_last) and (last is None or other_first <= last)


def _taken_months(current: pl.DataFrame) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per program and subscriber, the overrides whose months a new one may not share: pending or
    approved ones, and revoked ones that were approved and keep effective months."""
    taken: dict[tuple[str, str], list[dict[str, Any]]] = {}
    occupying = current.filter(
        (pl.col("status") != REVOKED) | (pl.col("approved_by").is_not_null() & ~pl.col("removed"))
    )
    for row in occupying.iter_rows(named=True):
        taken.setdefault((row["program"], row["subscriber_id"]), []).append(row)
    return taken


def _next_number(ledger: pl.DataFrame) -> int:
    ids = ledger.filter(pl.col("entry") == ADD).get_column("override_id")
    numbers = [int(match.group(1)) for value in ids if (match := _ID_NUMBER.match(value))]
    return max(numbers, default=0) + 1


def add_overrides(store: Store, requests: Sequence[OverrideRequest], by: str) -> list[str]:
    """Record ``requests`` as pending overrides requested by ``by``, as one batch; returns their ids
    in order. Refused (nothing written) when one overlaps, for its program and subscriber, another
    pending or approved override (or one earlier in the batch): a :class:`FieldError` on
    :data:`MONTHS_FIELD` with the request's ``index``, naming the other."""
    name = check_name(by)
    if not requests:
        raise PipelineError("no override to add")

    def build(ledger: pl.DataFrame) -> list[dict[str, Any]]:
        asked = {request.subscriber_id for request in requests}
        taken = _taken_months(current_overrides(ledger).filter(pl.col("subscriber_id").is_in(sorted(asked))))
        number = _next_number(ledger)
        rows: list[dict[str, Any]] = []
        for index, request in enumerate(requests):
            key = (request.program, request.subscriber_id)
            for other in taken.get(key, []):
                if not _overlaps(request.first_month, request.last_month, other["first_month"], other["last_month"]):
                    continue
                if "row" in other:
                    raise FieldError(
                        MONTHS_FIELD,
                        f"{request.months} overlaps data row {other['row']} of this file "
                        f"({months_text(other['first_month'], other['last_month'])}) of {request.program} for "
                        f"subscriber '{request.subscriber_id}'",
                        index,
                    )
                hint = "choose months" if other["status"] == REVOKED else "revoke it first, or choose months"
                raise FieldError(
                    MONTHS_FIELD,
                    f"{request.months} overlaps {other['override_id']} ({other['status']}, "
                    f"{months_text(other['first_month'], other['last_month'])}) of {request.program} for "
                    f"subscriber '{request.subscriber_id}'; {hint} that do not overlap",
                    index,
                )
            taken.setdefault(key, []).append(
                {"row": index + 1, "first_month": request.first_month, "last_month": request.last_month}
            )
            rows.append(
                {
                    "entry": ADD,
                    "override_id": f"OVR-{number + index:06d}",
                    "program": request.program,
                    "subscriber_id": request.subscriber_id,
                    "kind": request.kind,
                    "level": request.level,
                    "first_month": request.first_month,
                    "last_month": request.last_month,
                    "reason": request.reason,
                    "ticket": request.ticket,
                    "by": name,
                }
            )
        return rows

    return _append(store, build).get_column("override_id").tail(len(requests)).to_list()


def _find(current: pl.DataFrame, override_id: str, nothing: str) -> dict[str, Any]:
    found = current.filter(pl.col("override_id") == override_id)
    if found.height == 0:
        raise PipelineError(f"no override '{override_id}' in the ledger; {nothing}")
    return found.row(0, named=True)


def approve_overrides(store: Store, override_ids: Sequence[str], by: str) -> list[str]:
    """Approve pending overrides as one batch (an id listed twice counts once); returns the ids.
    Refused, approving none of them, when one is unknown or not pending, or was requested by ``by``
    (four eyes, :func:`same_person`)."""
    name = check_name(by)
    ids = list(dict.fromkeys(override_ids))
    if not ids:
        raise PipelineError("approve: give at least one override id")

    def build(ledger: pl.DataFrame) -> list[dict[str, Any]]:
        current = current_overrides(ledger)
        rows = []
        for override_id in ids:
            row = _find(current, override_id, "nothing was approved")
            if row["status"] != PENDING:
                raise PipelineError(f"{override_id} is {row['status']}, not pending; nothing was approved")
            if same_person(name, row["requested_by"]):
                raise PipelineError(
                    f"four eyes: {override_id} was requested by {row['requested_by']}, who may not approve it; "
                    f"nothing was approved"
                )
            rows.append(_follow_up(APPROVE, row, name))
        return rows

    _append(store, build)
    return ids


def _follow_up(entry: str, row: Mapping[str, Any], by: str, **fields: Any) -> dict[str, Any]:
    return {
        "entry": entry,
        "override_id": row["override_id"],
        "program": row["program"],
        "subscriber_id": row["subscriber_id"],
        "by": by,
        **fields,
    }


def revoke_override(store: Store, override_id: str, from_month: str, by: str, reason: str) -> dict[str, Any]:
    """Record that ``override_id`` no longer applies from ``from_month`` on (as if its last month were
    the month before; from a month at or before its first month it never applies). Takes effect
    without approval. Refused when the id is unknown or already revoked. Returns the override's
    :func:`current_overrides` row after the revoke."""
    month = check_month(from_month, "revoke_from")
    name = check_name(by)
    text = check_reason(reason)

    def build(ledger: pl.DataFrame) -> list[dict[str, Any]]:
        row = _find(current_overrides(ledger), override_id, "nothing was revoked")
        if row["status"] == REVOKED:
            raise PipelineError(
                f"{override_id} is already revoked (from {row['revoke_from']}, by {row['revoked_by']}); "
                f"nothing was revoked"
            )
        return [_follow_up(REVOKE, row, name, revoke_from=month, reason=text)]

    return _find(current_overrides(_append(store, build)), override_id, "")


# ----------------------------------------------------------------------------- import


@dataclass(frozen=True)
class ImportRow:
    """One data row of an import file: its number (1-based, header excluded) and its first line."""

    row: int
    line: int
    request: OverrideRequest


def _where(path: Path, row: int, line: int) -> str:
    return f"{path}: data row {row} (line {line})"


def read_import_file(path: Path, rulebook: Rulebook, rulebook_label: str) -> list[ImportRow]:
    """The requests of an import CSV (UTF-8; header exactly :data:`OVERRIDE_IMPORT_HEADER`), in file
    order, each checked as :func:`parse_request` checks ``override add``. The first bad row refuses
    the whole file: a PipelineError naming the data row (1-based, the header not counted), the line
    where it starts, and the column. Blank lines are skipped."""
    nothing = "nothing was imported"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such file; {nothing}") from None
    except UnicodeDecodeError as exc:
        raise PipelineError(f"{path}: not UTF-8 text (byte {exc.start}); {nothing}") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read ({exc.strerror}); {nothing}") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[ImportRow] = []
    try:
        header = next(reader, None)
        if header is None or tuple(header) != OVERRIDE_IMPORT_HEADER:
            found = ",".join(header) if header is not None else "an empty file"
            raise PipelineError(
                f"{path}: line 1 must be the header {','.join(OVERRIDE_IMPORT_HEADER)}, found {found}; {nothing}"
            )
        line = reader.line_num + 1
        for values in reader:
            start, line = line, reader.line_num + 1
            if not values:
                continue
            number = len(rows) + 1
            if len(values) != len(OVERRIDE_IMPORT_HEADER):
                raise PipelineError(
                    f"{_where(path, number, start)}: {len(values)} fields, the header has "
                    f"{len(OVERRIDE_IMPORT_HEADER)}; {nothing}"
                )
            try:
                request = parse_request(
                    dict(zip(OVERRIDE_IMPORT_HEADER, values, strict=True)), rulebook, rulebook_label
                )
            except FieldError as exc:
                raise PipelineError(
                    f"{_where(path, number, start)}, column {exc.field}: {exc.problem}; {nothing}"
                ) from None
            rows.append(ImportRow(number, start, request))
    except csv.Error as exc:
        raise PipelineError(f"{path}: line {reader.line_num}: not valid CSV ({exc}); {nothing}") from None
    if not rows:
        raise PipelineError(f"{path}: no data row under the header; {nothing}")
    return rows


def import_overrides(store: Store, path: Path, by: str, rulebook: Rulebook, rulebook_label: str) -> list[str]:
    """``override import``: every row of the file as a pending override, as one batch, or nothing."""
    name = check_name(by)
    rows = read_import_file(path, rulebook, rulebook_label)
    try:
        return add_overrides(store, [row.request for row in rows], name)
    except FieldError as exc:
        if exc.index is None:
            raise
        row = rows[exc.index]
        columns = "columns" if "," in exc.field else "column"
        raise PipelineError(
            f"{_where(path, row.row, row.line)}, {columns} {exc.field}: {exc.problem}; nothing was imported"
        ) from None
