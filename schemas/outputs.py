"""Pandera models of every published table, derived from the data contract (:mod:`schemas.contract`).

Each model's description is its table's grain. Tables are validated as collected DataFrames, bucket
by bucket (validating a LazyFrame would check only names and dtypes, see STACK-NOTES); a subscriber
lives in exactly one bucket, so per-subscriber uniqueness checked per bucket holds for the month.
``billing_month`` is the hive partition folder, not a file column.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.contract import PUBLISHED_TABLES, TIER_ASSIGNMENTS, Column, Table


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
        checks=extra if table is TIER_ASSIGNMENTS else None,
        unique=list(table.unique) or None,
        strict=True,
        coerce=False,
        name=table.name,
        description=table.grain,
    )


TABLE_MODELS: dict[str, pa.DataFrameSchema] = {name: table_schema(table) for name, table in PUBLISHED_TABLES.items()}
"""Every published table's Pandera schema, by table name."""
