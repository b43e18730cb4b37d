"""One bucket of one month, start to finish: clean its extract rows, evaluate it on its previous
state, validate its output tables and write them as staged part files.

A bucket holds every row of the subscribers whose stable hash falls in it (:mod:`transforms.buckets`),
so every rule that looks at one subscriber (duplicates, conflicts, carry-forward) runs inside one
bucket, and memory grows with the bucket, not with the base. A job names only paths and settings
(never frames), so the same function runs in this process or on a Dask worker that sees the store.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from billing_tiers.errors import PipelineError
from billing_tiers.extract_io import FILE_INDEX
from billing_tiers.months import month_end, month_label
from billing_tiers.store import part_name, read_verified, write_part
from rulebook import Rulebook
from schemas.contract import (
    CHANGES,
    CONTRACT_COLUMNS,
    EXTRACT_PRESENCE,
    ROW_ID,
    SOURCE_FILE,
    SOURCE_ROW,
    STORE_TABLES,
    TIER_ASSIGNMENTS,
    published_tables,
    state_table,
)
from schemas.extract import extract_rules, required_rule
from schemas.manifest import PartEntry, SummaryRow, TableEntry, TransitionRow
from schemas.outputs import check_evaluated_subscribers, check_table
from transforms.changes import CHANGE_KEYS, tier_changes
from transforms.evaluate import evaluate_month
from transforms.extract import collapse_duplicates, conflicting_row_ids, presence, quarantine_table, visible_details
from transforms.guards import GuardFigures, missing_subscribers


@dataclass(frozen=True)
class PartRef:
    """A part file to read: a published month's part with the checksum its manifest recorded, or a
    piece this run made (``sha256`` None). ``month`` and ``table`` name it when it is damaged."""

    path: Path
    sha256: str | None
    month: dt.date
    table: str

    def read(self) -> pl.DataFrame:
        return read_verified(self.path, self.sha256, table=self.table, month=self.month)


class RunCancelled(PipelineError):
    """The run this bucket belongs to has stopped (another bucket failed): write nothing more."""


@dataclass(frozen=True)
class BucketJob:
    """Everything one bucket's work needs, as paths and settings."""

    month: dt.date
    bucket: int
    buckets: int
    extract_dir: Path
    """Scratch folder of this bucket's extract rows (may not exist: no rows)."""
    source_files: tuple[str, ...]
    """Extract file names by file index, for the quarantine table."""
    previous: dict[str, tuple[PartRef, ...]]
    """Carried table name -> the parts of the previous month that belong to this bucket."""
    staged_dirs: dict[str, Path]
    """Published table name -> the staging folder its part goes to (made by the run, never by a bucket)."""
    missing_dir: Path
    """Scratch folder for the ids of the previous extract missing from this one (for the operator)."""
    run_marker: Path
    """The run's live marker: a bucket starts and writes only while it exists (see ``Store.discard``)."""
    tag: str
    rulebook: Rulebook
    replaced: tuple[PartRef, ...] | None = None
    """The bucket's share of the month's tier rows as published before; None when the month was not
    published before or that version cannot be read (its ``changes`` part is then empty)."""
    overrides: Path | None = None
    """The bucket's share of the overrides in force (a scratch file); None: no override applies."""

    @property
    def label(self) -> str:
        return f"{month_label(self.month)}-b{self.bucket:03d}"

    def check_live(self) -> None:
        """Raise :class:`RunCancelled` when the run has stopped: its staging is gone."""
        if not self.run_marker.is_file():
            raise RunCancelled(f"month {month_label(self.month)}: bucket {self.bucket} stopped: the run was cancelled")


SummaryKey = tuple[str, str | None, str]
"""(program, level, action)"""
TransitionKey = tuple[str, str | None, str | None]
"""(program, previous level, level)"""


@dataclass
class BucketResult:
    """What one bucket reports back: counts for the guards and the manifest, and its part files."""

    bucket: int
    rows_read: int
    rows_after_duplicates: int
    quarantined_rows: int
    quarantine_by_rule: dict[str, int]
    previous_subscribers: int
    missing_subscribers: int
    summary: dict[SummaryKey, int]
    transitions: dict[TransitionKey, int]
    parts: dict[str, PartEntry]
    changes_by_program: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MonthFigures:
    """What the buckets of a month report, summed: the guard figures, the manifest's counts and every
    table's parts in bucket order. ``MonthFigures.total(results)`` adds :meth:`of` each result."""

    buckets: tuple[int, ...] = ()
    rows_read: int = 0
    rows_after_duplicates: int = 0
    quarantined_rows: int = 0
    previous_subscribers: int = 0
    missing_subscribers: int = 0
    quarantine_by_rule: Counter[str] = field(default_factory=Counter)
    summary: Counter[SummaryKey] = field(default_factory=Counter)
    transitions: Counter[TransitionKey] = field(default_factory=Counter)
    changes_by_program: Counter[str] = field(default_factory=Counter)
    bucket_seconds: Counter[str] = field(default_factory=Counter)
    parts: dict[str, tuple[PartEntry, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, result: BucketResult) -> MonthFigures:
        return cls(
            buckets=(result.bucket,),
            rows_read=result.rows_read,
            rows_after_duplicates=result.rows_after_duplicates,
            quarantined_rows=result.quarantined_rows,
            previous_subscribers=result.previous_subscribers,
            missing_subscribers=result.missing_subscribers,
            quarantine_by_rule=Counter(result.quarantine_by_rule),
            summary=Counter(result.summary),
            transitions=Counter(result.transitions),
            changes_by_program=Counter(result.changes_by_program),
            bucket_seconds=Counter(result.seconds),
            parts={table: (part,) for table, part in result.parts.items()},
        )

    def __add__(self, other: MonthFigures) -> MonthFigures:
        tables = [*self.parts, *(t for t in other.parts if t not in self.parts)]
        return MonthFigures(
            buckets=self.buckets + other.buckets,
            rows_read=self.rows_read + other.rows_read,
            rows_after_duplicates=self.rows_after_duplicates + other.rows_after_duplicates,
            quarantined_rows=self.quarantined_rows + other.quarantined_rows,
            previous_subscribers=self.previous_subscribers + other.previous_subscribers,
            missing_subscribers=self.missing_subscribers + other.missing_subscribers,
            quarantine_by_rule=self.quarantine_by_rule + other.quarantine_by_rule,
            summary=self.summary + other.summary,
            transitions=self.transitions + other.transitions,
            changes_by_program=self.changes_by_program + other.changes_by_program,
            bucket_seconds=self.bucket_seconds + other.bucket_seconds,
            parts={t: self.parts.get(t, ()) + other.parts.get(t, ()) for t in tables},
        )

    @classmethod
    def total(cls, results: Iterable[BucketResult]) -> MonthFigures:
        """Every bucket's figures summed, parts in bucket order."""
        figures = cls()
        for result in sorted(results, key=lambda r: r.bucket):
            figures += cls.of(result)
        return figures

    @property
    def duplicates_collapsed(self) -> int:
        return self.rows_read - self.rows_after_duplicates

    def guards(self, rulebook: Rulebook) -> GuardFigures:
        return GuardFigures(
            rows_after_duplicates=self.rows_after_duplicates,
            quarantined_rows=self.quarantined_rows,
            previous_subscribers=self.previous_subscribers,
            missing_subscribers=self.missing_subscribers,
            max_quarantine_ratio=rulebook.guards.max_quarantine_ratio,
            max_missing_ratio=rulebook.guards.max_missing_ratio,
        )

    def quarantine_rows_by_rule(self) -> dict[str, int]:
        return dict(sorted(self.quarantine_by_rule.items()))

    def summary_rows(self) -> list[SummaryRow]:
        """Subscribers per (program, level, action); nulls last within a program, like Polars."""
        order = lambda key: (key[0], key[1] is None, key[1] or "", key[2])  # noqa: E731
        return [
            SummaryRow(program=program, level=level, action=action, subscribers=self.summary[(program, level, action)])
            for program, level, action in sorted(self.summary, key=order)
        ]

    def transition_rows(self) -> list[TransitionRow]:
        """Members per (program, previous level, level): the report's transition matrices."""
        order = lambda key: (key[0], key[1] or "", key[2] or "")  # noqa: E731
        return [
            TransitionRow(program=program, previous_level=before, level=after, members=self.transitions[key])
            for key in sorted(self.transitions, key=order)
            for program, before, after in [key]
        ]

    def tables(self) -> dict[str, TableEntry]:
        """Every table's rows and parts, in the order of the published tables."""
        order = [*STORE_TABLES, *sorted(set(self.parts) - set(STORE_TABLES))]
        return {
            table: TableEntry(rows=sum(part.rows for part in self.parts[table]), parts=list(self.parts[table]))
            for table in order
            if table in self.parts
        }

    def seconds_summed(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in sorted(self.bucket_seconds.items())}


@dataclass
class CleanRows:
    """A month's (or a bucket's) rows after SPEC section 2 steps 2-4."""

    valid_rows: pl.DataFrame
    quarantine: pl.DataFrame
    presence: pl.DataFrame
    rows_read: int
    rows_after_duplicates: int
    quarantine_by_rule: dict[str, int]

    @property
    def duplicates_collapsed(self) -> int:
        return self.rows_read - self.rows_after_duplicates


def _value_rule_failures(candidates: pl.DataFrame, month: dt.date) -> pl.DataFrame:
    """Run the Pandera extract schema; one row per (row_id, rule) broken."""
    rules = extract_rules(month_end=month_end(month))
    empty = pl.DataFrame(schema={ROW_ID: pl.UInt32, "rule": pl.String, "detail": pl.String})
    try:
        rules.schema.validate(candidates.select(list(CONTRACT_COLUMNS)), lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
    except SchemaError as error:  # pragma: no cover - lazy=True reports SchemaErrors
        raise PipelineError(f"extract {month_label(month)}: {error}") from error
    else:
        return empty
    row_cases = cases.filter(pl.col("index").is_not_null())
    if row_cases.height < cases.height:
        schema_level = cases.filter(pl.col("index").is_null()).row(0, named=True)
        raise PipelineError(f"extract {month_label(month)}: column {schema_level['column']}: {schema_level['check']}")
    names = {f"{column}#{number}": rule for (column, number), rule in rules.rule_names.items()}
    required = {column: required_rule(column) for column in CONTRACT_COLUMNS}
    rule = (
        pl.when(pl.col("check") == "not_nullable")
        .then(pl.col("column").replace_strict(required, default=None, return_dtype=pl.String))
        .otherwise(
            pl.concat_str([pl.col("column"), pl.lit("#"), pl.col("check_number").cast(pl.String)]).replace_strict(
                names, default=pl.col("check")
            )
        )
    )
    column_order = {column: i for i, column in enumerate(CONTRACT_COLUMNS)}
    ids = candidates.select(ROW_ID).with_row_index("index").with_columns(pl.col("index").cast(pl.Int32))
    return (
        row_cases.with_columns(
            rule.alias("rule"),
            pl.col("column").replace_strict(column_order, default=99).alias("column_order"),
        )
        .join(ids, on="index", how="inner")
        .sort(ROW_ID, "column_order", pl.col("check_number").fill_null(-1), maintain_order=True)
        .select(
            pl.col(ROW_ID).cast(pl.UInt32),
            "rule",
            pl.col("failure_case").cast(pl.String).fill_null("null").alias("detail"),
        )
        .with_columns(pl.col("detail").map_batches(visible_details, return_dtype=pl.String))
    )


def clean_rows(rows: pl.DataFrame, month: dt.date) -> CleanRows:
    """SPEC section 2 steps 2-4 on rows in read order (``row_id``, ``source_file``, ``source_row``
    and the contract columns): collapse duplicates, quarantine conflicts, then value-rule breakers."""
    repeated_ids = rows.select(pl.col("subscriber_id").is_duplicated().any()).item()
    if repeated_ids:
        deduplicated = collapse_duplicates(rows.lazy()).collect()
        conflicts = conflicting_row_ids(deduplicated.lazy()).collect().with_columns(pl.col(ROW_ID).cast(pl.UInt32))
        candidates = deduplicated.join(conflicts.select(ROW_ID), on=ROW_ID, how="anti")
        ids = presence(deduplicated.lazy()).collect()
    else:  # the usual month: one row per subscriber, so no duplicate and no conflict to look for
        deduplicated = candidates = rows
        conflicts = pl.DataFrame(schema={ROW_ID: pl.UInt32, "rule": pl.String, "detail": pl.String})
        ids = rows.select("subscriber_id").drop_nulls()
    failures = pl.concat([conflicts, _value_rule_failures(candidates, month)])
    quarantine = quarantine_table(deduplicated.lazy(), failures=failures.lazy()).collect()
    valid = candidates.join(failures.select(ROW_ID).unique(), on=ROW_ID, how="anti") if failures.height else candidates
    return CleanRows(
        valid_rows=valid.select(list(CONTRACT_COLUMNS)),
        quarantine=quarantine,
        presence=ids,
        rows_read=rows.height,
        rows_after_duplicates=deduplicated.height,
        quarantine_by_rule=dict(quarantine.group_by("rule").len().sort("rule").iter_rows()),
    )


def _bucket_rows(job: BucketJob) -> pl.DataFrame:
    """This bucket's extract rows in the month's read order (file, then row in file)."""
    pieces = sorted(job.extract_dir.glob("*.parquet")) if job.extract_dir.is_dir() else []
    schema = {**CONTRACT_COLUMNS, FILE_INDEX: pl.Int32(), SOURCE_ROW: pl.Int64()}
    rows = pl.concat([pl.read_parquet(piece) for piece in pieces]) if pieces else pl.DataFrame(schema=schema)
    names = dict(enumerate(job.source_files))
    return (
        rows.sort(FILE_INDEX, SOURCE_ROW)
        .with_columns(pl.col(FILE_INDEX).replace_strict(names, return_dtype=pl.String).alias(SOURCE_FILE))
        .drop(FILE_INDEX)
        .with_row_index(ROW_ID)
    )


def _read_parts(refs: Iterable[PartRef], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = [frame for frame in (ref.read() for ref in refs) if frame.height]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def _read_previous_state(job: BucketJob) -> pl.DataFrame:
    """The bucket's previous state; a state written with another window length keeps its columns
    (the month's evaluation slides whatever window it finds)."""
    empty = state_table(job.rulebook.metrics.window_months, tuple(job.rulebook.enabled_programs()))
    return _read_parts(job.previous.get(empty.name, ()), empty.schema)


def validate_tables(tables: dict[str, pl.DataFrame], month: dt.date, rulebook: Rulebook) -> None:
    """Every output table against its contract; a failure is a bug, reported before publishing."""
    contract = {
        **published_tables(rulebook.metrics.window_months, tuple(rulebook.enabled_programs())),
        "changes": CHANGES,
    }
    for name, frame in tables.items():
        problems = check_table(frame, contract[name])
        if name == "tier_assignments":
            problems += check_evaluated_subscribers(frame)
        if problems:
            raise PipelineError(
                f"month {month_label(month)}: output table {name} breaks its contract (nothing published): "
                + "; ".join(problems[:3])
            )


def _changes(job: BucketJob, tier: pl.DataFrame) -> pl.DataFrame:
    """The month's tier rows that differ from the version it replaces; empty (with its schema) when
    the month was not published before or that version could not be read."""
    if job.replaced is None:
        return CHANGES.empty()
    old = _read_parts(job.replaced, TIER_ASSIGNMENTS.schema)
    if old.height == 0:
        old = TIER_ASSIGNMENTS.empty()
    aligned = old.height == tier.height and old.select(CHANGE_KEYS).equals(tier.select(CHANGE_KEYS))
    return tier_changes(before=old.lazy(), after=tier.lazy(), aligned=aligned).collect()


def evaluate_bucket(job: BucketJob) -> BucketResult:
    """Clean, evaluate, validate and stage one bucket of one month.

    The bucket writes only while its run is live (:meth:`BucketJob.check_live`): when another
    bucket failed and the run removed its staging, it stops instead of writing into it."""
    seconds: dict[str, float] = {}

    @contextmanager
    def timed(step: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - started, 3)

    job.check_live()
    with timed("clean_extract"):
        clean = clean_rows(_bucket_rows(job), job.month)
    with timed("load_previous_state"):
        state = _read_previous_state(job)
        previous_presence = _read_parts(job.previous.get(EXTRACT_PRESENCE.name, ()), EXTRACT_PRESENCE.schema)
        missing = missing_subscribers(
            previous_ids=previous_presence.lazy(), current_ids=clean.presence.lazy()
        ).collect()
    with timed("evaluate"):
        evaluated = evaluate_month(
            valid_rows=clean.valid_rows.lazy(),
            state=state.lazy(),
            month=job.month,
            month_end=month_end(job.month),
            rulebook=job.rulebook,
            overrides=pl.scan_parquet(job.overrides) if job.overrides is not None else None,
        )
        tier, cards, next_state, next_memberships, members_at_risk = pl.collect_all(evaluated.frames())
        tables = {
            "tier_assignments": tier,
            "card_issuance": cards,
            "at_risk": members_at_risk,
            "quarantine": clean.quarantine,
            "state": next_state,
            "memberships": next_memberships,
            "extract_presence": clean.presence,
            "changes": _changes(job, tier),
        }
        summary, transitions = pl.collect_all(  # together, in parallel: 70 ms a bucket instead of 200
            [
                tier.lazy().group_by("program", "level", "action").agg(pl.len().alias("subscribers")),
                tier.lazy().group_by("program", "previous_level", "level").agg(pl.len().alias("members")),
            ]
        )
    with timed("validate_outputs"):
        validate_tables(tables, job.month, job.rulebook)
    with timed("write_parts"):
        job.check_live()
        if missing.height:
            missing.write_parquet(job.missing_dir / part_name(job.bucket, job.tag))
        parts = {
            name: write_part(frame, job.staged_dirs[name] / part_name(job.bucket, job.tag), make_folder=False)
            for name, frame in tables.items()
        }
    assert set(parts) >= set(published_tables())
    return BucketResult(
        bucket=job.bucket,
        rows_read=clean.rows_read,
        rows_after_duplicates=clean.rows_after_duplicates,
        quarantined_rows=clean.quarantine.height,
        quarantine_by_rule=clean.quarantine_by_rule,
        previous_subscribers=previous_presence.height,
        missing_subscribers=missing.height,
        summary={(p, lv, a): n for p, lv, a, n in summary.iter_rows()},
        transitions={(p, before, after): n for p, before, after, n in transitions.iter_rows()},
        parts=parts,
        changes_by_program=dict(tables["changes"].group_by("program").len().iter_rows()),
        seconds=seconds,
    )
