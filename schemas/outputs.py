"""Pandera models of every published table, derived from the data contract (:mod:`schemas.contract`),
and the per-bucket check of each output table against them.

Each model's description is its table's grain. Checking 8 million tier rows row by row through
Pandera took seconds, so :func:`check_table` lets Pandera check the schema (exact columns and
dtypes) and evaluates every value rule of the contract (nulls, allowed values, bounds, lengths) as
one Polars pass, bucket by bucket. Uniqueness is checked where it is not true by construction: the
per-subscriber tables are one row per evaluated subscriber (and program), and a subscriber lives
in exactly one bucket, so one check that the bucket's evaluated ids are distinct covers them all.
``billing_month`` is the hive partition folder, not a file column.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from schemas.contract import TIER_ASSIGNMENTS, Column, Table


def _checks(column: Column) -> list[pa.Check]:
    checks = []
    for kind, argument in column.checks.items():
        match kind:
            case "isin":
                checks.append(pa.Check.isin(argument))
            case "ge":
                checks.append(pa.Check.ge(argument))
            case "str_length":
                checks.append(pa.Check.str_length(*argument))
            case _:
                raise ValueError(f"unknown check {kind!r}")
    return checks


def _validity_only_with_a_level(data: pa.PolarsData) -> pl.LazyFrame:
    """A validity window belongs to a level: no level, no window."""
    return data.lazyframe.select(pl.col("level").is_not_null() | pl.col("valid_until").is_null())


def table_schema(table: Table) -> pa.DataFrameSchema:
    """The strict Pandera schema of one contract table (exact columns, dtypes, nulls, checks, key)."""
    extra = [pa.Check(_validity_only_with_a_level, name="validity_only_with_a_level")]
    return pa.DataFrameSchema(
        {
            name: pa.Column(column.dtype, nullable=column.nullable, checks=_checks(column))
            for name, column in table.columns.items()
        },
        checks=extra if table.name == TIER_ASSIGNMENTS.name else None,
        unique=list(table.unique) or None,
        strict=True,
        coerce=False,
        name=table.name,
        description=table.grain,
    )


def _value_rule_breaks(table: Table) -> list[pl.Expr]:
    """One count per value rule of the contract; every count is 0 for a table that keeps them."""
    counts = []
    for name, column in table.columns.items():
        values = pl.col(name)
        if not column.nullable:
            counts.append(values.null_count().alias(f"{name}: null"))
        for kind, argument in column.checks.items():
            match kind:
                case "isin":
                    broken = ~values.is_in(argument)
                case "ge":
                    broken = values < argument
                case "str_length":
                    low, high = argument
                    length = values.str.len_chars()
                    broken = (length < low) | (length > high)
                case _:
                    raise ValueError(f"unknown check {kind!r}")
            counts.append(broken.fill_null(False).sum().alias(f"{name}: {kind} {argument}"))
    if table.name == TIER_ASSIGNMENTS.name:
        window_without_level = pl.col("level").is_null() & pl.col("valid_until").is_not_null()
        counts.append(window_without_level.sum().alias("validity_only_with_a_level"))
    return counts


PER_SUBSCRIBER_TABLES = frozenset({"tier_assignments", "state", "memberships", "extract_presence"})
"""Tables unique by construction once the evaluated subscribers are distinct (see the module doc)."""


def check_table(frame: pl.DataFrame, table: Table) -> list[str]:
    """What is wrong with ``frame`` as ``table`` (empty when nothing): schema, value rules, key."""
    try:
        table_schema(table).validate(frame.lazy())  # a LazyFrame: names and dtypes only (STACK-NOTES)
    except (SchemaError, SchemaErrors) as error:
        return [str(error).splitlines()[0]]
    counts = frame.select(_value_rule_breaks(table)).row(0, named=True)
    problems = [f"{rule}: {count} rows" for rule, count in counts.items() if count]
    if table.unique and table.name not in PER_SUBSCRIBER_TABLES:
        duplicated = frame.select(pl.struct(list(table.unique)).is_duplicated().sum()).item()
        if duplicated:
            problems.append(f"{', '.join(table.unique)} not unique: {duplicated} rows")
    return problems


def check_evaluated_subscribers(tier_assignments: pl.DataFrame) -> list[str]:
    """Each program has one row per evaluated subscriber, and those subscribers are distinct.

    Tier rows come grouped by program, so the programs are runs of equal length (found by comparing
    neighbours, no hashing) and only the first run's ids need a distinctness check."""
    if tier_assignments.height == 0:
        return []
    runs = tier_assignments.select(pl.col("program").rle()).unnest("program")
    if runs["value"].n_unique() != runs.height:
        return ["the rows of a program are not contiguous"]
    if runs["len"].n_unique() != 1:
        return [f"programs have different row counts: {dict(zip(runs['value'], runs['len'], strict=True))}"]
    first = tier_assignments.get_column("subscriber_id").head(int(runs["len"][0]))
    return ["subscriber_id repeated within a program"] if first.is_duplicated().any() else []
