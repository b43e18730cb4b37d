"""Spend metrics carried from month to month (SPEC section 3), all in integer fen.

The state holds, per subscriber, the last ``window_months`` monthly bills and suspension counts
(oldest first), the cumulative payments and the last-seen attributes. A month's run joins that state
with the month's valid rows; nothing older is ever re-read.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from schemas.contract import CARRIED_ATTRIBUTES as ATTRIBUTES
from schemas.contract import STATE_SCHEMA


def empty_state() -> pl.LazyFrame:
    """The state before a store's first month."""
    return pl.LazyFrame(schema=STATE_SCHEMA)


def _slide(previous: pl.Expr, current: pl.Expr, *, window_months: int) -> pl.Expr:
    kept = previous.fill_null(pl.lit([], dtype=pl.List(pl.Int64))).list.tail(window_months - 1)
    return pl.concat_list([kept, current.cast(pl.Int64)])


def whole_years(start: pl.Expr, end: dt.date) -> pl.Expr:
    """Whole calendar years from ``start`` to ``end`` (an anniversary counts on its own day)."""
    end_expr = pl.lit(end)

    def month_day(date: pl.Expr) -> pl.Expr:
        # dt.month() and dt.day() are Int8: widen before arithmetic or 7 * 100 overflows.
        return date.dt.month().cast(pl.Int32) * 100 + date.dt.day().cast(pl.Int32)

    before_anniversary = month_day(end_expr) < month_day(start)
    return (end_expr.dt.year() - start.dt.year() - before_anniversary.cast(pl.Int32)).cast(pl.Int32)


def carry_subscribers(
    *,
    state: pl.LazyFrame,
    valid_rows: pl.LazyFrame,
    month: dt.date,
    month_end: dt.date,
    window_months: int,
    forget_after_months: int,
    average_divisor: str,
) -> pl.LazyFrame:
    """Every subscriber evaluated in ``month``: the previous state joined with the month's valid rows.

    Returns the carried columns of :data:`STATE_SCHEMA` updated for the month, plus this month's
    ``present, billed_fen, paid_fen, billed_6m_fen, suspensions_6m, avg_divisor, tenure_years,
    cancelled, forgotten, leaves``.
    """
    current = valid_rows.select(
        "subscriber_id",
        *[pl.col(a).alias(f"{a}__now") for a in ATTRIBUTES],
        pl.col("billed_fen"),
        pl.col("paid_fen"),
        pl.col("suspension_count"),
        pl.lit(True).alias("present"),
    )
    joined = state.join(current, on="subscriber_id", how="full", coalesce=True)
    present = pl.col("present").fill_null(False)
    is_new = pl.col("months_in_state").is_null()
    carried = joined.with_columns(
        present.alias("present"),
        pl.col("billed_fen").fill_null(0),
        pl.col("paid_fen").fill_null(0),
        # A present subscriber takes every attribute from its row, nulls included (brand, points).
        *[pl.when(present).then(pl.col(f"{a}__now")).otherwise(pl.col(a)).alias(a) for a in ATTRIBUTES],
        pl.when(is_new).then(pl.lit(month)).otherwise(pl.col("entered_month")).alias("entered_month"),
        pl.when(present).then(pl.lit(month)).otherwise(pl.col("last_seen_month")).alias("last_seen_month"),
        (pl.col("months_in_state").fill_null(0) + 1).cast(pl.Int32).alias("months_in_state"),
        pl.when(present)
        .then(0)
        .otherwise(pl.col("months_absent").fill_null(0) + 1)
        .cast(pl.Int32)
        .alias("months_absent"),
        (pl.col("cum_paid_fen").fill_null(0) + pl.col("paid_fen").fill_null(0)).alias("cum_paid_fen"),
        _slide(pl.col("billed_window_fen"), pl.col("billed_fen").fill_null(0), window_months=window_months).alias(
            "billed_window_fen"
        ),
        _slide(pl.col("suspension_window"), pl.col("suspension_count").fill_null(0), window_months=window_months).alias(
            "suspension_window"
        ),
    ).drop([f"{a}__now" for a in ATTRIBUTES], "suspension_count")
    divisor = (
        pl.lit(window_months)
        if average_divisor == "window"
        else pl.min_horizontal(pl.col("months_in_state"), pl.lit(window_months))
    )
    cancelled = present & (pl.col("status") == "cancelled")
    forgotten = pl.col("months_absent") >= forget_after_months
    return carried.with_columns(
        pl.col("billed_window_fen").list.sum().alias("billed_6m_fen"),
        pl.col("suspension_window").list.sum().alias("suspensions_6m"),
        divisor.cast(pl.Int64).alias("avg_divisor"),
        whole_years(pl.col("activation_date"), month_end).alias("tenure_years"),
        cancelled.alias("cancelled"),
        forgotten.alias("forgotten"),
        (cancelled | forgotten).alias("leaves"),
    ).with_columns(
        # Floor division keeps the shown average at or below the exact one (149.996 -> 149.99).
        (pl.col("billed_6m_fen") // pl.col("avg_divisor")).alias("avg_billed_6m_fen"),
    )
