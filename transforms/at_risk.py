"""Members at risk (SPEC 8): who holds a validity level that will be re-rated within the horizon while
qualifying below it this month, and the smallest spend next month that would keep the level.

A member is at risk in month B when it holds a level after E(B), that level is re-rated at one of
the next ``horizon`` evaluations (month(E(B+k)) = month(U) - 1 for k in 1..horizon) and its
qualified level at B is below the level held. ``needed_next_month`` assumes every other figure
stays as in B: for average-bill programs ``max(0, threshold x divisor - (billed_6m - bill of B-5))``
(the window slides by one month; the divisor is the one B+1 uses), for paid-spend programs
``max(min_month_paid, min_cum_paid - cum_paid)``; null when the member is not eligible, when a
condition other than spend fails (supreme's customer type), and for kinds with no spend formula.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from rulebook import AnyProgram, AverageBillProgram, Calendar, Metrics, PaidSpendProgram
from schemas.contract import AT_RISK, BILLED_WINDOW, window_columns
from transforms.money import fen_to_yuan


def _month_number(date: pl.Expr) -> pl.Expr:
    return date.dt.year().cast(pl.Int32) * 12 + date.dt.month().cast(pl.Int32) - 1


def _needed_fen(program: AnyProgram, metrics: Metrics) -> pl.Expr:
    """Fen needed in month B+1 to qualify for the level held (before the floor at 0), or null."""
    level = pl.col("level")
    match program:
        case AverageBillProgram():
            window = metrics.window_months
            divisor = (
                pl.lit(window, dtype=pl.Int64)
                if metrics.average_divisor == "window"
                else pl.min_horizontal(pl.col("months_in_state").cast(pl.Int64) + 1, pl.lit(window, dtype=pl.Int64))
            )
            oldest = window_columns(BILLED_WINDOW, window)[-1]
            kept = pl.col("billed_6m_fen") - pl.col(oldest).fill_null(0)
            needed: pl.Expr = pl.lit(None, dtype=pl.Int64)
            for name in program.levels:
                spec = program.thresholds[name]
                threshold = pl.col("service_type").replace_strict(spec.min_avg_billed, return_dtype=pl.Int64)
                amount = threshold * divisor - kept
                if spec.customer_type is not None:  # no amount helps a customer of another type
                    amount = pl.when(pl.col("customer_type").is_in(spec.customer_type)).then(amount)
                needed = pl.when(level == name).then(amount).otherwise(needed)
            return needed
        case PaidSpendProgram():
            needed = pl.lit(None, dtype=pl.Int64)
            for name in program.levels:
                paid = program.thresholds[name]
                month_min = pl.lit(paid.min_month_paid or 0, dtype=pl.Int64)
                cum_gap = pl.lit(paid.min_cum_paid or 0, dtype=pl.Int64) - pl.col("cum_paid_fen")
                needed = pl.when(level == name).then(pl.max_horizontal(month_min, cum_gap)).otherwise(needed)
            return needed
        case _:
            return pl.lit(None, dtype=pl.Int64)


def at_risk(
    decided: pl.LazyFrame,
    *,
    program: AnyProgram,
    month: dt.date,
    calendar: Calendar,
    metrics: Metrics,
    horizon_months: int,
) -> pl.LazyFrame:
    """The at-risk rows of one validity program from its decided rows beside the subscribers' metrics
    (``level, valid_until, qualified_level, eligible, leaves`` and the window, paid, attributes)."""
    if program.retention != "validity":
        return AT_RISK.empty().lazy()
    rank = {name: index for index, name in enumerate(program.levels)}
    level_rank = pl.col("level").replace_strict(rank, default=None, return_dtype=pl.Int32)
    qualified_rank = pl.col("qualified_level").replace_strict(rank, default=None, return_dtype=pl.Int32).fill_null(-1)
    month_of_e = month.year * 12 + month.month  # month(E(B)) = B + 1, counted from year 0
    rerating_month = _month_number(pl.col("valid_until")) - 1
    months_to_rerating = (rerating_month - month_of_e).cast(pl.Int32)
    rerated_on = (
        pl.col("valid_until").dt.month_start().dt.offset_by("-1mo").dt.offset_by(f"{calendar.evaluation_day - 1}d")
    )
    amount = _needed_fen(program, metrics)
    needed = pl.when(pl.col("eligible") & amount.is_not_null()).then(pl.max_horizontal(amount, pl.lit(0)))
    return (
        decided.filter(
            ~pl.col("leaves")
            & pl.col("level").is_not_null()
            & months_to_rerating.is_between(1, horizon_months)
            & (qualified_rank < level_rank)
        )
        .with_columns(
            rerated_on.alias("rerated_on"),
            months_to_rerating.alias("months_to_rerating"),
            fen_to_yuan(needed).alias("needed_next_month"),
        )
        .select(list(AT_RISK.columns))
    )
