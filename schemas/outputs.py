"""Pandera models of every published table, derived from the data contract (:mod:`schemas.contract`),
and the per-bucket check of each output table against them.

Each model's description is its table's grain. The value rules are written once: each kind of
check a contract column may carry (``Column.checks``: ``isin``, ``ge``, ``str_length``) is one Polars
expression in :data:`VALUE_RULES`, and the rules of a whole row in :data:`ROW_RULES`. The Pandera
models carry those expressions as their checks, and :func:`check_table` evaluates the same
expressions as one Polars pass, bucket by bucket (checking 8 million tier rows row by row through
Pandera took seconds), after Pandera has checked the schema (exact columns and dtypes). Uniqueness
is checked where it is not true by construction: the per-subscriber tables are one row per
evaluated subscriber (and program), and a subscriber lives in exactly one bucket, so one check that
the bucket's evaluated ids are distinct covers them all. ``billing_month`` is the hive partition
folder, not a file column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from schemas.contract import TIER_ASSIGNMENTS, Column, Table

VALUE_RULES: dict[str, Callable[[pl.Expr, Any], pl.Expr]] = {
    "isin": lambda values, allowed: values.is_in(allowed),
    "ge": lambda values, low: values >= low,
    "str_length": lambda values, bounds: values.str.len_chars().is_between(*bounds),
    "str_matches": lambda values, pattern: values.str.contains(pattern),  # patterns are anchored (^...$)
}
"""Each kind of a contract column's ``checks`` -> the expression that holds where a value keeps the rule
(given the column's values and the check's argument). It is null where the value is null: nulls are
judged by the column's ``nullable``, not by its checks."""

ROW_RULES: dict[str, dict[str, pl.Expr]] = {
    TIER_ASSIGNMENTS.name: {
        # a validity window belongs to a level: no level, no window
        "validity_only_with_a_level": pl.col("level").is_not_null() | pl.col("valid_until").is_null(),
    },
}
"""Table name -> rules on several columns of a row, by name -> the expression that holds where a row keeps it."""


@dataclass(frozen=True)
class ValueRule:
    """One value rule of a table: the column it checks (None: the whole row), its name as problems
    report it, and where it holds."""

    column: str | None
    name: str
    holds: pl.Expr


def value_rules(table: Table) -> list[ValueRule]:
    """Every value rule of ``table``: its columns' checks in column order, then its row rules."""
    unknown = {kind for column in table.columns.values() for kind in column.checks} - set(VALUE_RULES)
    if unknown:
        raise ValueError(f"table {table.name}: unknown check {sorted(unknown)}")
    rules = [
        ValueRule(name, f"{kind} {argument}", VALUE_RULES[kind](pl.col(name), argument))
        for name, column in table.columns.items()
        for kind, argument in column.checks.items()
    ]
    rules += [ValueRule(None, name, holds) for name, holds in ROW_RULES.get(table.name, {}).items()]
    return rules


def _holds(holds: pl.Expr, data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(holds)


def _pandera_check(rule: ValueRule) -> pa.Check:
    return pa.Check(partial(_holds, rule.holds), name=rule.name)


def table_schema(table: Table) -> pa.DataFrameSchema:
    """The strict Pandera schema of one contract table (exact columns, dtypes, nulls, checks, key)."""
    rules = value_rules(table)

    def column(name: str, spec: Column) -> pa.Column:
        checks = [_pandera_check(rule) for rule in rules if rule.column == name]
        return pa.Column(spec.dtype, nullable=spec.nullable, checks=checks)

    row_checks = [_pandera_check(rule) for rule in rules if rule.column is None]
    return pa.DataFrameSchema(
        {name: column(name, spec) for name, spec in table.columns.items()},
        checks=row_checks or None,
        unique=list(table.unique) or None,
        strict=True,
        coerce=False,
        name=table.name,
        description=table.grain,
    )


def _value_rule_breaks(table: Table) -> list[pl.Expr]:
    """One count per rule of the contract, column by column (nulls, then the column's checks), then the
    row rules; every count is 0 for a table that keeps them. Counts are named ``<column>: <rule>``."""
    rules = value_rules(table)
    counts = []
    for name, column in table.columns.items():
        if not column.nullable:
            counts.append(pl.col(name).null_count().alias(f"{name}: null"))
        counts += [_broken(rule).alias(f"{name}: {rule.name}") for rule in rules if rule.column == name]
    counts += [_broken(rule).alias(rule.name) for rule in rules if rule.column is None]
    return counts


def _broken(rule: ValueRule) -> pl.Expr:
    return rule.holds.not_().fill_null(False).sum()


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
