"""The billing extract's value rules (SPEC section 2), as a Pandera schema with named rules.

The schema validates the *normalized* extract: the contract columns after reading, with the money
columns held as integer fen (``billed_fen``, ``paid_fen``). Every check carries the rule name that
a quarantined row reports.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandera.polars as pa

from schemas.contract import (
    AMOUNT_MAX_FEN,
    AMOUNT_MIN_FEN,
    ATTRIBUTE_VALUES,
    CONTRACT_COLUMNS,
    EARLIEST_ACTIVATION,
    FEN_SOURCE_COLUMN,
    NULLABLE_EXTRACT_COLUMNS,
)


@dataclass(frozen=True)
class NamedCheck:
    rule: str
    check: pa.Check


def _checks(column: str, month_end: dt.date) -> list[NamedCheck]:
    source = FEN_SOURCE_COLUMN.get(column, column)
    if column in ATTRIBUTE_VALUES:
        return [NamedCheck(f"{column}_allowed_value", pa.Check.isin(list(ATTRIBUTE_VALUES[column])))]
    if column == "subscriber_id":
        return [NamedCheck("subscriber_id_length", pa.Check.str_length(1, 32))]
    if column == "activation_date":
        return [NamedCheck("activation_date_range", pa.Check.in_range(EARLIEST_ACTIVATION, month_end))]
    if column in FEN_SOURCE_COLUMN:
        return [NamedCheck(f"{source}_range", pa.Check.in_range(AMOUNT_MIN_FEN, AMOUNT_MAX_FEN))]
    if column in ("suspension_count", "points_balance"):
        return [NamedCheck(f"{column}_negative", pa.Check.ge(0))]
    return []


def required_rule(column: str) -> str:
    """Rule name for a null in a required column."""
    return f"{FEN_SOURCE_COLUMN.get(column, column)}_required"


@dataclass(frozen=True)
class ExtractRules:
    """The extract schema for one billing month plus the rule name of every check."""

    schema: pa.DataFrameSchema
    rule_names: dict[tuple[str, int], str]


def extract_rules(*, month_end: dt.date) -> ExtractRules:
    """Value rules of one month's extract: one row per input row (after exact-duplicate removal).

    ``month_end`` is the last day of the billing month (activation dates may not be later).
    """
    columns: dict[str, pa.Column] = {}
    names: dict[tuple[str, int], str] = {}
    for column, dtype in CONTRACT_COLUMNS.items():
        named = _checks(column, month_end)
        columns[column] = pa.Column(dtype, checks=[n.check for n in named], nullable=column in NULLABLE_EXTRACT_COLUMNS)
        for number, n in enumerate(named):
            names[(column, number)] = n.rule
    schema = pa.DataFrameSchema(columns, strict=False, name="BillingExtract")
    return ExtractRules(schema=schema, rule_names=names)
