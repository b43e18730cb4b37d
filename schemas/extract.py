"""The billing extract's value rules (SPEC section 2), as a Pandera schema with named rules.

The schema validates the *normalized* extract: the contract columns after reading, with the money
columns held as integer fen (``billed_fen``, ``paid_fen``). Every check carries the rule name that
a quarantined row reports.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandera.polars as pa
import polars as pl

from schemas.contract import (
    AMOUNT_MAX_FEN,
    AMOUNT_MIN_FEN,
    ATTRIBUTE_VALUES,
    CONTRACT_COLUMNS,
    EARLIEST_ACTIVATION,
    FEN_SOURCE_COLUMN,
    NULLABLE_EXTRACT_COLUMNS,
    SUBSCRIBER_ID_CHARACTERS,
    SUBSCRIBER_ID_LENGTH,
)

UNPRINTABLE_ID = r"[\p{Cc}\p{Cf}]|^\s|\s$"
r"""What breaks ``subscriber_id_characters``: a control or format character (Unicode categories Cc and
Cf: NUL, newline, escape, bidi marks, zero-width characters, BOM) anywhere, or whitespace at either
end. Polars' regex engine (Rust ``regex``) is Unicode-aware: ``\p{..}`` are general categories and
``\s`` is Unicode White_Space; ``$`` is the end of the text only (not before a final newline)."""


def printable_subscriber_id(values: pl.Expr) -> pl.Expr:
    """True where ``values`` keeps the character rule of SPEC section 2 (null where null)."""
    return values.str.contains(UNPRINTABLE_ID).not_()


def _printable(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(printable_subscriber_id(pl.col(data.key)))


@dataclass(frozen=True)
class NamedCheck:
    rule: str
    check: pa.Check


def _checks(column: str, month_end: dt.date) -> list[NamedCheck]:
    source = FEN_SOURCE_COLUMN.get(column, column)
    if column in ATTRIBUTE_VALUES:
        return [NamedCheck(f"{column}_allowed_value", pa.Check.isin(list(ATTRIBUTE_VALUES[column])))]
    if column == "subscriber_id":
        return [
            NamedCheck(SUBSCRIBER_ID_LENGTH, pa.Check.str_length(1, 32)),
            NamedCheck(SUBSCRIBER_ID_CHARACTERS, pa.Check(_printable, name=SUBSCRIBER_ID_CHARACTERS)),
        ]
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
