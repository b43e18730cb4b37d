"""Pandera models of every published table; each docstring states the table's grain.

Tables are validated as collected DataFrames (validating a LazyFrame would check only names and
dtypes, see STACK-NOTES). ``billing_month`` is the hive partition folder, not a file column.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

import pandera.polars as pa
import polars as pl
from pandera.engines import polars_engine as pe

from transforms.carry_forward import ACTIONS, CARD_EVENTS, CARD_REASONS

_MONEY = {"precision": 18, "scale": 2}


class _Strict(pa.DataFrameModel):
    class Config:
        strict = True
        coerce = False


class TierAssignments(_Strict):
    """One row per enabled program per subscriber evaluated in the billing month."""

    program: str
    subscriber_id: str = pa.Field(str_length={"min_value": 1, "max_value": 32})
    evaluated_on: dt.date
    qualified_level: str = pa.Field(nullable=True)
    previous_level: str = pa.Field(nullable=True)
    level: str = pa.Field(nullable=True)
    action: str = pa.Field(isin=list(ACTIONS))
    valid_from: dt.date = pa.Field(nullable=True)
    valid_until: dt.date = pa.Field(nullable=True)
    card_id: str = pa.Field(nullable=True)
    reason: str = pa.Field(nullable=True)
    eligible: bool
    present: bool
    months_absent: pl.Int32 = pa.Field(ge=0)
    billed_6m: pe.Decimal = pa.Field(dtype_kwargs=_MONEY)
    avg_billed_6m: pe.Decimal = pa.Field(dtype_kwargs=_MONEY)
    month_paid: pe.Decimal = pa.Field(dtype_kwargs=_MONEY)
    cum_paid: pe.Decimal = pa.Field(dtype_kwargs=_MONEY)
    tenure_years: pl.Int32 = pa.Field(ge=0)
    suspensions_6m: pl.Int64 = pa.Field(ge=0)
    points_balance: pl.Int64 = pa.Field(nullable=True, ge=0)
    score: pl.Int64 = pa.Field(nullable=True)

    class Config:
        unique: ClassVar[list[str]] = ["program", "subscriber_id"]

    @pa.dataframe_check
    @classmethod
    def validity_only_with_a_level(cls, data: pa.PolarsData) -> pl.LazyFrame:
        """A validity window belongs to a level: no level, no window."""
        return data.lazyframe.select(pl.col("level").is_not_null() | pl.col("valid_until").is_null())


class CardIssuance(_Strict):
    """One row per card event (issue or void) at the billing month's evaluation."""

    card_id: str
    program: str
    subscriber_id: str
    level: str
    event: str = pa.Field(isin=list(CARD_EVENTS))
    reason: str = pa.Field(isin=list(CARD_REASONS))
    event_date: dt.date
    valid_from: dt.date = pa.Field(nullable=True)
    valid_until: dt.date = pa.Field(nullable=True)

    class Config:
        unique: ClassVar[list[str]] = ["card_id", "event"]


class Quarantine(_Strict):
    """One row per rejected input row of the billing month's extract, with the rule it broke."""

    source_file: str
    source_row: pl.Int64 = pa.Field(ge=0)
    rule: str
    broken_rules: str
    subscriber_id: str = pa.Field(nullable=True)
    customer_type: str = pa.Field(nullable=True)
    service_type: str = pa.Field(nullable=True)
    plan_category: str = pa.Field(nullable=True)
    payment_type: str = pa.Field(nullable=True)
    account_class: str = pa.Field(nullable=True)
    real_name_verified: bool = pa.Field(nullable=True)
    brand: str = pa.Field(nullable=True)
    activation_date: dt.date = pa.Field(nullable=True)
    status: str = pa.Field(nullable=True)
    suspension_count: pl.Int64 = pa.Field(nullable=True)
    points_balance: pl.Int64 = pa.Field(nullable=True)
    billed_amount: pe.Decimal = pa.Field(nullable=True, dtype_kwargs=_MONEY)
    paid_amount: pe.Decimal = pa.Field(nullable=True, dtype_kwargs=_MONEY)

    class Config:
        unique: ClassVar[list[str]] = ["source_file", "source_row"]


class State(_Strict):
    """One row per subscriber in the carry-forward state after the billing month's evaluation."""

    subscriber_id: str
    entered_month: dt.date
    last_seen_month: dt.date
    months_in_state: pl.Int32 = pa.Field(ge=1)
    months_absent: pl.Int32 = pa.Field(ge=0)
    cum_paid_fen: pl.Int64
    billed_window_fen: pl.List(pl.Int64)  # type: ignore[valid-type]
    suspension_window: pl.List(pl.Int64)  # type: ignore[valid-type]
    customer_type: str
    service_type: str
    plan_category: str
    payment_type: str
    account_class: str
    real_name_verified: bool
    brand: str = pa.Field(nullable=True)
    activation_date: dt.date
    status: str = pa.Field(isin=["active", "suspended"])
    points_balance: pl.Int64 = pa.Field(nullable=True)

    class Config:
        unique: ClassVar[list[str]] = ["subscriber_id"]


class Memberships(_Strict):
    """One row per subscriber per program with a level held after the billing month's evaluation."""

    subscriber_id: str
    program: str
    level: str
    valid_from: dt.date = pa.Field(nullable=True)
    valid_until: dt.date = pa.Field(nullable=True)
    card_id: str = pa.Field(nullable=True)

    class Config:
        unique: ClassVar[list[str]] = ["subscriber_id", "program"]


class ExtractPresence(_Strict):
    """One row per subscriber id with any row (valid or quarantined) in the billing month's extract."""

    subscriber_id: str

    class Config:
        unique: ClassVar[list[str]] = ["subscriber_id"]


TABLE_MODELS: dict[str, type[pa.DataFrameModel]] = {
    "tier_assignments": TierAssignments,
    "card_issuance": CardIssuance,
    "quarantine": Quarantine,
    "state": State,
    "memberships": Memberships,
    "extract_presence": ExtractPresence,
}
