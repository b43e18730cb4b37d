"""The carry-forward state machine of SPEC section 5: levels, validity windows and card events.

Input per (subscriber, program): the level held before (``P`` with ``valid_from`` F, ``valid_until``
U and its card), the qualified level ``Q`` and the subscriber's flags for the month. Output: the
action, the level after, its validity and card, the human-readable reason, and card events.
Levels are handled as indexes into the program's ordered level list (null = none).
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from rulebook import Calendar

TERMINATE, LAPSE, NONE, NEW, UPGRADE, DOWNGRADE, RENEW, RETAIN = (
    "terminate",
    "lapse",
    "none",
    "new",
    "upgrade",
    "downgrade",
    "renew",
    "retain",
)
ACTIONS = (NONE, NEW, UPGRADE, RENEW, DOWNGRADE, RETAIN, LAPSE, TERMINATE)
REASONED_ACTIONS = (NEW, UPGRADE, RENEW, DOWNGRADE, LAPSE, TERMINATE)
"""Actions whose tier row carries a human-readable reason (every level change, and renewals)."""
CARD_EVENTS = ("issue", "void")
CARD_REASONS = ("new", "upgrade", "renewal", "replaced", "lapsed", "cancelled")

MEMBERSHIP_SCHEMA: dict[str, pl.DataType] = {
    "subscriber_id": pl.String(),
    "program": pl.String(),
    "level": pl.String(),
    "valid_from": pl.Date(),
    "valid_until": pl.Date(),
    "card_id": pl.String(),
}
"""Columns of the carried memberships (one row per subscriber per program with a level held)."""


def empty_memberships() -> pl.LazyFrame:
    return pl.LazyFrame(schema=MEMBERSHIP_SCHEMA)


def _level_index(levels: list[str], column: str) -> pl.Expr:
    return pl.col(column).replace_strict(
        {name: i for i, name in enumerate(levels)}, default=None, return_dtype=pl.Int32
    )


def _level_name(levels: list[str], index: pl.Expr) -> pl.Expr:
    return index.replace_strict(dict(enumerate(levels)), default=None, return_dtype=pl.String)


def _pick(index: pl.Expr, count: int) -> pl.Expr:
    """The ``explain_<index>`` text of the level at ``index``."""
    chosen: pl.Expr = pl.lit(None, dtype=pl.String)
    for i in range(count):
        chosen = pl.when(index == i).then(pl.col(f"explain_{i}")).otherwise(chosen)
    return chosen


def evaluation_dates(*, month: dt.date, calendar: Calendar) -> dict[str, pl.Expr]:
    """E and the validity bounds a membership starting at E would get, as Polars date expressions."""
    first_of_next = pl.lit(month).dt.offset_by("1mo")
    evaluated_on = first_of_next.dt.offset_by(f"{calendar.evaluation_day - 1}d")
    new_until = first_of_next.dt.offset_by(f"{calendar.validity_months}mo").dt.offset_by(f"{calendar.expiry_day - 1}d")
    return {
        "evaluated_on": evaluated_on,
        "new_until": new_until,
        "renewal_from": first_of_next.dt.offset_by("1mo"),
        "month_of_e": first_of_next,
    }


def decide(
    frame: pl.LazyFrame,
    *,
    program_name: str,
    levels: list[str],
    card_levels: list[str],
    card_prefix: str,
    retention: str,
    month: dt.date,
    calendar: Calendar,
    forget_after_months: int,
    explanations: dict[str, pl.Expr],
) -> pl.LazyFrame:
    """Apply the state machine to one program's frame (subscribers with ``qualified_idx`` and the
    previous membership columns ``previous_level, previous_valid_from, previous_valid_until,
    previous_card_id``). Adds ``action, level, valid_from, valid_until, card_id, reason`` and
    the card event columns ``issue_reason, void_reason``. ``explanations`` are the program's
    ``explain_<i>`` and ``ineligible_reason`` expressions, evaluated only where a reason is written."""
    dates = evaluation_dates(month=month, calendar=calendar)
    evaluated_on = dates["evaluated_on"]
    p = pl.col("previous_idx")
    q = pl.col("qualified_idx")
    held = p.is_not_null()
    u = pl.col("previous_valid_until")
    rerating = u.dt.offset_by("-1mo").dt.month_start() == dates["month_of_e"]
    q_above_p = q.fill_null(-1) > p.fill_null(-1)
    q_below_p = q.fill_null(-1) < p.fill_null(-1)

    action: pl.Expr
    if retention == "validity":
        action = (
            pl.when(~held & q.is_null())
            .then(pl.lit(NONE))
            .when(~held)
            .then(pl.lit(NEW))
            .when(u < evaluated_on)
            .then(pl.lit(LAPSE))
            .when(q_above_p)
            .then(pl.lit(UPGRADE))
            .when(rerating & (q == p))
            .then(pl.lit(RENEW))
            .when(rerating & q.is_not_null())
            .then(pl.lit(DOWNGRADE))
            .when(rerating)
            .then(pl.lit(LAPSE))
            .otherwise(pl.lit(RETAIN))
        )
    elif retention == "recompute":
        action = (
            pl.when(~held & q.is_null())
            .then(pl.lit(NONE))
            .when(~held)
            .then(pl.lit(NEW))
            .when(q.is_null())
            .then(pl.lit(LAPSE))
            .when(q_above_p)
            .then(pl.lit(UPGRADE))
            .when(q_below_p)
            .then(pl.lit(DOWNGRADE))
            .otherwise(pl.lit(RETAIN))
        )
    elif retention == "permanent":
        action = pl.when(held).then(pl.lit(RETAIN)).when(q.is_not_null()).then(pl.lit(NEW)).otherwise(pl.lit(NONE))
    else:
        raise ValueError(f"unknown retention {retention!r}")
    action = (
        pl.when(pl.col("cancelled") & held)
        .then(pl.lit(TERMINATE))
        .when(pl.col("cancelled"))
        .then(pl.lit(NONE))
        .when(pl.col("forgotten") & held)
        .then(pl.lit(LAPSE))
        .when(pl.col("forgotten"))
        .then(pl.lit(NONE))
        .otherwise(action)
    )

    a = pl.col("action")
    level_idx = (
        pl.when(a.is_in([NEW, UPGRADE, DOWNGRADE]) | ((a == RETAIN) & pl.lit(retention == "recompute")))
        .then(q)
        .when(a.is_in([RENEW, RETAIN]))
        .then(p)
        .otherwise(pl.lit(None, dtype=pl.Int32))
    )
    validity = retention == "validity"
    renewal_until = u.dt.offset_by(f"{calendar.validity_months}mo")
    valid_from = (
        (
            pl.when(a.is_in([NEW, UPGRADE]))
            .then(evaluated_on)
            .when(a.is_in([RENEW, DOWNGRADE]))
            .then(dates["renewal_from"])
            .when(a == RETAIN)
            .then(pl.col("previous_valid_from"))
        )
        if validity
        else pl.lit(None, dtype=pl.Date)
    )
    valid_until = (
        (
            pl.when(a.is_in([NEW, UPGRADE]))
            .then(dates["new_until"])
            .when(a.is_in([RENEW, DOWNGRADE]))
            .then(renewal_until)
            .when(a == RETAIN)
            .then(u)
        )
        if validity
        else pl.lit(None, dtype=pl.Date)
    )

    level_has_card = pl.col("level").is_in(card_levels)
    previous_has_card = pl.col("previous_level").is_in(card_levels) & pl.col("previous_card_id").is_not_null()
    issue_reason = (
        pl.when(~level_has_card)
        .then(pl.lit(None, dtype=pl.String))
        .when(a == NEW)
        .then(pl.lit("new"))
        .when(a == UPGRADE)
        .then(pl.lit("upgrade"))
        .when(a.is_in([RENEW, DOWNGRADE]))
        .then(pl.lit("renewal"))
    )
    void_reason = (
        pl.when(~previous_has_card)
        .then(pl.lit(None, dtype=pl.String))
        .when(a == TERMINATE)
        .then(pl.lit("cancelled"))
        .when(a == LAPSE)
        .then(pl.lit("lapsed"))
        .when(a.is_in([UPGRADE, RENEW, DOWNGRADE]))
        .then(pl.lit("replaced"))
    )
    new_card_id = pl.concat_str(
        [
            pl.lit(f"{card_prefix}-"),
            evaluated_on.dt.strftime("%Y%m%d"),
            pl.lit("-"),
            pl.col("subscriber_id"),
        ]
    )
    card_id = (
        pl.when(pl.col("issue_reason").is_not_null())
        .then(new_card_id)
        .when((a == RETAIN) & level_has_card)
        .then(pl.col("previous_card_id"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )

    count = len(levels)
    lowest_or_ineligible = pl.when(pl.col("eligible")).then(pl.col("explain_0")).otherwise(pl.col("ineligible_reason"))
    why_not_previous = pl.when(pl.col("eligible")).then(_pick(p, count)).otherwise(pl.col("ineligible_reason"))
    expiry_text = u.dt.strftime("%Y-%m-%d")
    reason = (
        pl.when(a == TERMINATE)
        .then(pl.concat_str([pl.lit("status cancelled: "), pl.col("previous_level"), pl.lit(" terminated")]))
        .when((a == LAPSE) & pl.col("forgotten"))
        .then(
            pl.concat_str(
                [
                    pl.lit("absent "),
                    pl.col("months_absent").cast(pl.String),
                    pl.lit(f" months in a row (forget_after_months {forget_after_months})"),
                ]
            )
        )
        .when(a.is_in([NEW, UPGRADE]))
        .then(_pick(q, count))
        .when((a == LAPSE) & validity & (u < evaluated_on))
        .then(
            pl.concat_str(
                [
                    pl.lit("validity ended "),
                    expiry_text,
                    pl.lit(" before the evaluation on "),
                    evaluated_on.dt.strftime("%Y-%m-%d"),
                ]
            )
        )
        .when((a == RENEW) & validity)
        .then(pl.concat_str([pl.lit("re-rating before expiry "), expiry_text, pl.lit(": "), _pick(q, count)]))
        .when(a == DOWNGRADE)
        .then(
            pl.concat_str(
                [
                    pl.lit("re-rating before expiry " if validity else ""),
                    *([expiry_text, pl.lit(": ")] if validity else []),
                    why_not_previous,
                    pl.lit("; qualifies for "),
                    _pick(q, count),
                ]
            )
        )
        .when(a == LAPSE)
        .then(
            pl.concat_str(
                [
                    pl.lit("re-rating before expiry " if validity else ""),
                    *([expiry_text, pl.lit(": ")] if validity else []),
                    lowest_or_ineligible,
                ]
            )
        )
        .otherwise(pl.lit(None, dtype=pl.String))
    )

    decided = (
        frame.with_columns(
            _level_index(levels, "previous_level").alias("previous_idx"),
        )
        .with_columns(action.alias("action"))
        .with_columns(
            _level_name(levels, level_idx).alias("level"),
            valid_from.alias("valid_from"),
            valid_until.alias("valid_until"),
            evaluated_on.alias("evaluated_on"),
            _level_name(levels, q).alias("qualified_level"),
        )
        .with_columns(issue_reason.alias("issue_reason"), void_reason.alias("void_reason"))
        .with_columns(card_id.alias("card_id"), pl.lit(program_name).alias("program"))
    )
    needs_reason = pl.col("action").is_in(REASONED_ACTIONS)
    with_reason = (
        decided.filter(needs_reason)
        .with_columns(**explanations)
        .with_columns(reason.alias("reason"))
        .drop(list(explanations))
    )
    without_reason = decided.filter(~needs_reason).with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    return pl.concat([with_reason, without_reason], how="vertical")
