"""The run manifest: a month's commit record, as one typed model that the run writes and every reader reads.

``manifests/billing_month=YYYY-MM/manifest.json`` is written last when a month is published
(docs/rules.md section 6). Its ``tables`` entry lists every part file of every table of the month
with its row count and SHA-256: readers read only those parts and check those checksums.

Reading never raises on a bad file: :func:`parse_manifest` gives either a :class:`Manifest` or a
:class:`DamagedManifest` saying what is wrong with which file (not JSON, a required field missing or
of the wrong type, a newer format, another month), so ``status`` can name it and a run that replaces
the month can go on without it.

``format_version`` is :data:`MANIFEST_FORMAT_VERSION` in every manifest written now. Manifests
written before the field existed read as version 0: they have the same fields, so they are read as
they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

MANIFEST_FORMAT_VERSION = 1
"""1: the typed manifest (``format_version``, ``extracts``, ``previous_version_unreadable``)."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PartEntry(_Record):
    """One part file of a table-month (one bucket): its name in the month's folder, rows, SHA-256."""

    file: str
    rows: int
    sha256: str


class TableEntry(_Record):
    """A table-month: its rows and every part file, in bucket order."""

    rows: int
    parts: list[PartEntry]


class BuiltFrom(_Record):
    """The published month (and its run) a month was built on; both null for an empty state."""

    month: str | None = None
    run_id: str | None = None


class RulebookRecord(_Record):
    path: str
    sha256: str
    changed_from_previous: bool = False


class InputFile(_Record):
    """One extract file read: its path under the extracts folder, SHA-256, rows, ignored columns."""

    file: str
    sha256: str
    rows: int
    ignored_columns: list[str] = Field(default_factory=list)


class GuardRecord(_Record):
    """The input guard figures (SPEC 2), the limits, what was breached and whether it was overridden."""

    rows_after_duplicates: int = 0
    quarantined_rows: int = 0
    quarantine_ratio: float = 0.0
    max_quarantine_ratio: str | None = None
    previous_subscribers: int = 0
    missing_subscribers: int = 0
    missing_ratio: float = 0.0
    max_missing_ratio: str | None = None
    breached: list[str] = Field(default_factory=list)
    overridden: bool = False
    override_flag: bool = False


class SummaryRow(_Record):
    """Subscribers per (program, level held, action) after the month."""

    program: str
    level: str | None
    action: str
    subscribers: int = Field(validation_alias=AliasChoices("subscribers", "len"))


class TransitionRow(_Record):
    """Members per (program, previous level, level)."""

    program: str
    previous_level: str | None
    level: str | None
    members: int


class OverridesRecord(BaseModel):
    """The manual overrides a month applied (SPEC 9): the ids in force, the checksum of the ledger
    entries used, and whether they differ from those of the version this run replaced."""

    model_config = ConfigDict(extra="ignore")

    in_force: list[str] = Field(default_factory=list)
    ledger_sha256: str | None = None
    changed_from_replaced: bool = False


class Manifest(_Record):
    """A published month's manifest. Required: what identifies the month and its lineage, what the
    next month and the readers cannot do without (``tables``, ``summary``, ``rulebook``)."""

    format_version: int = 0
    billing_month: str
    run_id: str
    created_at: str
    code_version: str | None = None
    prefect_flow_run_id: str | None = None
    built_from: BuiltFrom
    buckets: int
    extracts: str | None = None
    """The extracts folder the run read (as given to it)."""
    rulebook: RulebookRecord
    overrides: OverridesRecord = Field(default_factory=OverridesRecord)
    inputs: list[InputFile] = Field(default_factory=list)
    ignored_columns: list[str] = Field(default_factory=list)
    rows_read: int = 0
    duplicates_collapsed: int = 0
    quarantine_by_rule: dict[str, int] = Field(default_factory=dict)
    guards: GuardRecord = Field(default_factory=GuardRecord)
    summary: list[SummaryRow]
    transitions: list[TransitionRow] | None = None
    tables: dict[str, TableEntry]
    replaced_run_id: str | None = None
    """The run whose version of the month this one replaced (null: none, or it could not be read)."""
    previous_version_unreadable: str | None = None
    """Why the version this run replaced could not be read (its ``changes`` are then empty)."""
    changes_by_program: dict[str, int] | None = None
    """Rows of ``changes`` per program; null when the month was not published before."""
    dry_run: bool = False
    timings_seconds: dict[str, float] = Field(default_factory=dict)
    bucket_seconds_summed: dict[str, float] = Field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (what the file holds)."""
        return self.model_dump(mode="json")

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=2).encode()


@dataclass(frozen=True)
class DamagedManifest:
    """A manifest file that cannot be used, and why ("not JSON: ...", "no field tables", ...)."""

    path: Path
    reason: str

    def describe(self) -> str:
        return f"manifest {self.path} is damaged ({self.reason})"


def _first_error(error: ValidationError) -> str:
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        reason = f"no field {where}"
    elif not where:
        reason = "not a JSON object"
    else:
        reason = f"field {where}: {first['msg']}"
    more = len(problems) - 1
    return reason + (f" and {more} more problem{'s' if more > 1 else ''}" if more else "")


def parse_manifest(data: bytes, path: Path, *, month: str | None = None) -> Manifest | DamagedManifest:
    """The manifest in ``data`` (the bytes of ``path``), or what makes it unusable; never raises."""
    try:
        loaded = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return DamagedManifest(path, f"not JSON: {exc}")
    if isinstance(loaded, dict):
        version = loaded.get("format_version", 0)
        if isinstance(version, int) and version > MANIFEST_FORMAT_VERSION:
            return DamagedManifest(
                path, f"format_version {version} is newer than this version reads ({MANIFEST_FORMAT_VERSION})"
            )
    try:
        manifest = Manifest.model_validate(loaded)
    except ValidationError as exc:
        return DamagedManifest(path, _first_error(exc))
    if month is not None and manifest.billing_month != month:
        return DamagedManifest(path, f"it names month {manifest.billing_month}, not {month}")
    return manifest


def read_manifest_file(path: Path, *, month: str | None = None) -> Manifest | DamagedManifest | None:
    """The manifest at ``path``: None when there is none, else as :func:`parse_manifest` says."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return DamagedManifest(path, f"unreadable: {exc.strerror or exc}")
    return parse_manifest(data, path, month=month)
