"""The steps of one month's run as plain functions (the Prefect tasks in :mod:`flows.monthly` wrap them).

Each step does one kind of work: read the extract, clean and validate it, load the previous state,
check the guards, evaluate, validate the outputs. Publishing is :meth:`billing_tiers.store.Store.publish`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from billing_tiers.errors import PipelineError
from billing_tiers.extract_io import read_extract_file
from billing_tiers.months import month_end, month_label
from billing_tiers.store import Store, extract_files
from rulebook import Rulebook
from schemas.extract import CONTRACT_COLUMNS, extract_rules, required_rule
from schemas.outputs import TABLE_MODELS
from transforms.carry_forward import empty_memberships
from transforms.evaluate import MonthTables, decide_programs, month_subscribers, month_tables
from transforms.extract import (
    ROW_ID,
    SOURCE_FILE,
    SOURCE_ROW,
    collapse_duplicates,
    conflicting_row_ids,
    presence,
    quarantine_table,
)
from transforms.guards import GuardFigures, missing_subscribers
from transforms.metrics import empty_state


@dataclass
class ReadExtract:
    rows: pl.DataFrame
    files: list[dict[str, Any]]
    ignored_columns: list[str]


def read_extract(extracts: Path, month: dt.date) -> ReadExtract:
    """Read every file of the month; file-level problems raise PipelineError naming file and column."""
    frames = []
    files = []
    ignored: set[str] = set()
    for path in extract_files(extracts, month):
        read = read_extract_file(path, month=month, root=extracts)
        name = str(path.relative_to(extracts))
        frames.append(
            read.rows.with_columns(
                pl.lit(name).alias(SOURCE_FILE),
                pl.int_range(pl.len(), dtype=pl.Int64).alias(SOURCE_ROW),
            )
        )
        files.append(
            {
                "file": name,
                "sha256": read.sha256,
                "rows": read.rows.height,
                "ignored_columns": list(read.ignored_columns),
            }
        )
        ignored.update(read.ignored_columns)
    rows = pl.concat(frames).with_row_index(ROW_ID)
    if rows.height == 0:
        raise PipelineError(f"month {month_label(month)}: the extract has no rows")
    return ReadExtract(rows=rows, files=files, ignored_columns=sorted(ignored))


@dataclass
class CleanExtract:
    valid_rows: pl.DataFrame
    quarantine: pl.DataFrame
    presence: pl.DataFrame
    rows_read: int
    rows_after_duplicates: int
    duplicates_collapsed: int
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)


def _value_rule_failures(candidates: pl.DataFrame, month: dt.date) -> pl.DataFrame:
    """Run the Pandera extract schema; one row per (row_id, rule) broken."""
    rules = extract_rules(month_end=month_end(month))
    data = candidates.select(list(CONTRACT_COLUMNS))
    try:
        rules.schema.validate(data, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
    except SchemaError as error:  # pragma: no cover - lazy=True reports SchemaErrors
        raise PipelineError(f"extract {month_label(month)}: {error}") from error
    else:
        return pl.DataFrame(schema={ROW_ID: pl.UInt32, "rule": pl.String, "detail": pl.String})
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
        .sort(ROW_ID, "column_order")
        .select(ROW_ID, "rule", pl.col("failure_case").cast(pl.String).fill_null("null").alias("detail"))
    )


def clean_extract(read: ReadExtract, month: dt.date) -> CleanExtract:
    """SPEC section 2 steps 2-4: collapse duplicates, quarantine conflicts, then value-rule breakers."""
    deduplicated = collapse_duplicates(read.rows.lazy()).collect()
    conflicts = conflicting_row_ids(deduplicated.lazy()).collect()
    candidates = deduplicated.join(conflicts.select(ROW_ID), on=ROW_ID, how="anti")
    value_failures = _value_rule_failures(candidates, month)
    failures = pl.concat([conflicts, value_failures.with_columns(pl.col(ROW_ID).cast(conflicts[ROW_ID].dtype))])
    quarantine = quarantine_table(deduplicated.lazy(), failures=failures.lazy()).collect()
    valid = candidates.join(failures.select(ROW_ID).unique(), on=ROW_ID, how="anti")
    by_rule = dict(quarantine.group_by("rule").len().sort("rule").iter_rows())
    return CleanExtract(
        valid_rows=valid.select(list(CONTRACT_COLUMNS)),
        quarantine=quarantine,
        presence=presence(deduplicated.lazy()).collect(),
        rows_read=read.rows.height,
        rows_after_duplicates=deduplicated.height,
        duplicates_collapsed=read.rows.height - deduplicated.height,
        quarantine_by_rule=by_rule,
    )


@dataclass
class Previous:
    state: pl.DataFrame
    memberships: pl.DataFrame
    presence: pl.DataFrame
    run_id: str | None


def load_previous(store: Store, build_on: dt.date | None) -> Previous:
    """The state after ``build_on`` (empty when None), checked against its manifest."""
    if build_on is None:
        return Previous(
            state=empty_state().collect(),
            memberships=empty_memberships().collect(),
            presence=pl.DataFrame(schema={"subscriber_id": pl.String}),
            run_id=None,
        )
    manifest = store.read_manifest(build_on)
    assert manifest is not None
    return Previous(
        state=store.read_table("state", build_on),
        memberships=store.read_table("memberships", build_on),
        presence=store.read_table("extract_presence", build_on),
        run_id=manifest["run_id"],
    )


def guard_figures(clean: CleanExtract, previous: Previous, rulebook: Rulebook) -> GuardFigures:
    missing = missing_subscribers(previous_ids=previous.presence.lazy(), current_ids=clean.presence.lazy())
    return GuardFigures(
        rows_after_duplicates=clean.rows_after_duplicates,
        quarantined_rows=clean.quarantine.height,
        previous_subscribers=previous.presence.height,
        missing_subscribers=missing.select(pl.len()).collect().item(),
        max_quarantine_ratio=rulebook.guards.max_quarantine_ratio,
        max_missing_ratio=rulebook.guards.max_missing_ratio,
    )


def evaluate(clean: CleanExtract, previous: Previous, month: dt.date, rulebook: Rulebook) -> dict[str, pl.DataFrame]:
    """Evaluate the month and collect every output table."""
    subscribers = month_subscribers(
        valid_rows=clean.valid_rows.lazy(),
        state=previous.state.lazy(),
        month=month,
        month_end=month_end(month),
        rulebook=rulebook,
    ).collect()  # every program reads it: compute it once
    decided = decide_programs(
        subscribers=subscribers.lazy(), memberships=previous.memberships.lazy(), month=month, rulebook=rulebook
    ).collect()  # every output table reads it: decide once
    tables: MonthTables = month_tables(decided=decided.lazy(), subscribers=subscribers.lazy(), rulebook=rulebook)
    collected = pl.collect_all([tables.tier_assignments, tables.card_issuance, tables.state, tables.memberships])
    return {
        "tier_assignments": collected[0],
        "card_issuance": collected[1],
        "quarantine": clean.quarantine,
        "state": collected[2],
        "memberships": collected[3],
        "extract_presence": clean.presence,
    }


def validate_outputs(tables: dict[str, pl.DataFrame], month: dt.date) -> None:
    """Every output table against its Pandera model; a failure is a bug, reported before publishing."""
    for name, frame in tables.items():
        try:
            TABLE_MODELS[name].validate(frame, lazy=True)
        except (SchemaErrors, SchemaError) as error:
            cases = getattr(error, "failure_cases", None)
            detail = cases.head(3).to_dicts() if isinstance(cases, pl.DataFrame) else str(error)
            raise PipelineError(
                f"month {month_label(month)}: output table {name} fails its schema (nothing published): {detail}"
            ) from error
