"""Spend metrics carried from month to month (SPEC section 3), all in integer fen.

The state holds, per subscriber, the last ``window_months`` monthly bills and suspension counts
(oldest first), the cumulative payments and the last-seen attributes. A month's run joins that state
with the month's valid rows; nothing older is ever re-read.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from schemas.contract import BILLED_WINDOW, SUSPENSION_WINDOW, window_columns
from schemas.contract import CARRIED_ATTRIBUTES as ATTRIBUTES
from transforms.money import fen_to_yuan


def _slide(prefix: str, current: pl.Expr, *, window_months: int, previous: set[str]) -> list[pl.Expr]:
    """The window after this month: age 0 is this month, age i was age i-1. A state written with a
    shorter window lacks the older ages (they count 0); a longer one's extra ages are dropped."""
    names = window_columns(prefix, window_months)
    slid = [current.cast(pl.Int64).alias(names[0])]
    for age in range(1, window_months):
        older = names[age - 1]
        slid.append((pl.col(older) if older in previous else pl.lit(None, dtype=pl.Int64)).alias(names[age]))
    return slid


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

    Returns the state columns updated for the month, plus this month's ``present, billed_fen,
    paid_fen, billed_6m_fen, suspensions_6m, avg_divisor, avg_billed_6m_fen, tenure_years,
    cancelled, forgotten, leaves`` and the yuan amounts the tier rows show. Rows come in a
    deterministic order: the previous state's order, then subscribers new to it in extract order.
    """
    previous = set(state.collect_schema().names())
    current = valid_rows.select(
        "subscriber_id",
        *[pl.col(a).alias(f"{a}__now") for a in ATTRIBUTES],
        pl.col("billed_fen"),
        pl.col("paid_fen"),
        pl.col("suspension_count"),
        pl.lit(True).alias("present"),
    )
    # A left join keeps the state's columns in place (a full join gathers every one of them); the
    # month's rows have one row per subscriber, so the subscribers new to the state follow in extract order.
    joined = pl.concat(
        [
            state.join(current, on="subscriber_id", how="left", maintain_order="left"),
            current.join(state.select("subscriber_id"), on="subscriber_id", how="anti", maintain_order="left"),
        ],
        how="diagonal",
    )
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
        *_slide(BILLED_WINDOW, pl.col("billed_fen").fill_null(0), window_months=window_months, previous=previous),
        *_slide(
            SUSPENSION_WINDOW,
            pl.col("suspension_count").fill_null(0),
            window_months=window_months,
            previous=previous,
        ),
    ).drop([f"{a}__now" for a in ATTRIBUTES], "suspension_count")
    divisor = (
        pl.lit(window_months)
        if average_divisor == "window"
        else pl.min_horizontal(pl.col("months_in_state"), pl.lit(window_months))
    )
    cancelled = present & (pl.col("status") == "cancelled")
    forgotten = pl.col("months_absent") >= forget_after_months
    return (
        carried.with_columns(
            pl.sum_horizontal(window_columns(BILLED_WINDOW, window_months)).alias("billed_6m_fen"),
            pl.sum_horizontal(window_columns(SUSPENSION_WINDOW, window_months)).alias("suspensions_6m"),
            divisor.cast(pl.Int64).alias("avg_divisor"),
            whole_years(pl.col("activation_date"), month_end).alias("tenure_years"),
            cancelled.alias("cancelled"),
            forgotten.alias("forgotten"),
            (cancelled | forgotten).alias("leaves"),
        )
        .with_columns(
            # Floor division keeps the shown average at or below the exact one (149.996 -> 149.99).
            (pl.col("billed_6m_fen") // pl.col("avg_divisor")).alias("avg_billed_6m_fen"),
        )
        .with_columns(
            # Once per subscriber, not once per program row.
            fen_to_yuan(pl.col("billed_6m_fen")).alias("billed_6m"),
            fen_to_yuan(pl.col("avg_billed_6m_fen")).alias("avg_billed_6m"),
            fen_to_yuan(pl.col("paid_fen")).alias("month_paid"),
            fen_to_yuan(pl.col("cum_paid_fen")).alias("cum_paid"),
        )
    )
