"""The carry-forward state machine of SPEC section 5: levels, validity windows and card events.

Input per (subscriber, program): the level held before (``P`` with ``valid_from`` F, ``valid_until``
U and its card), the qualified level ``Q`` and the subscriber's flags for the month. Output: the
action, the level after, its validity and card, the human-readable reason, and card events.
Levels are handled as indexes into the program's ordered level list (null = none).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from rulebook import Calendar
from schemas.contract import (
    ACTIONS,
    BLOCK,
    DOWNGRADE,
    GRANT,
    LAPSE,
    NEW,
    NONE,
    REASONED_ACTIONS,
    RENEW,
    RETAIN,
    TERMINATE,
    UPGRADE,
    Retention,
)


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


GRANT_DECIDES = (NEW, UPGRADE, RENEW, DOWNGRADE)
"""Actions whose reason is the override when a grant in force lifted the qualified level (SPEC 9)."""


def _granted_above_q() -> pl.Expr:
    """A grant in force lifted Q: Q' = G > Q."""
    return pl.col("granted_idx").fill_null(-1) > pl.col("qualified_idx").fill_null(-1)


def grant_and_block(levels: list[str]) -> dict[str, pl.Expr]:
    """``granted_idx`` (Q' = max(Q, G) under a grant in force, else Q) and ``blocked`` (a block in
    force), from the frame's ``override_kind`` and ``override_level`` columns (null: no override)."""
    grant = _level_index(levels, "override_level").fill_null(-1)
    q = pl.col("qualified_idx")
    is_grant = (pl.col("override_kind") == GRANT).fill_null(False)
    return {
        "granted_idx": pl.when(is_grant & (grant > q.fill_null(-1))).then(grant).otherwise(q).cast(pl.Int32),
        "blocked": (pl.col("override_kind") == BLOCK).fill_null(False),
    }


def evaluation_dates(*, month: dt.date, calendar: Calendar) -> dict[str, pl.Expr]:
    """E and the validity bounds a membership starting at E would get, as date literals.

    They are computed once with Polars' date offsets and handed to the row expressions as plain
    literals (an offset of a literal inside when/then broke Polars 2.1's in-memory engine)."""
    first_of_next = pl.lit(month).dt.offset_by("1mo")
    dates = pl.select(
        evaluated_on=first_of_next.dt.offset_by(f"{calendar.evaluation_day - 1}d"),
        new_until=first_of_next.dt.offset_by(f"{calendar.validity_months}mo").dt.offset_by(
            f"{calendar.expiry_day - 1}d"
        ),
        renewal_from=first_of_next.dt.offset_by("1mo"),
        month_of_e=first_of_next,
    ).row(0, named=True)
    return {name: pl.lit(value, dtype=pl.Date) for name, value in dates.items()}


@dataclass(frozen=True)
class _Terms:
    """The state machine's terms for one program and month, as Polars expressions."""

    p: pl.Expr  # level index held before (null: none)
    q: pl.Expr  # qualified level index after a grant in force, Q' = max(Q, G) (null: none)
    u: pl.Expr  # valid_until of the level held
    evaluated_on: pl.Expr
    dates: dict[str, pl.Expr]
    rerating: pl.Expr

    @property
    def held(self) -> pl.Expr:
        return self.p.is_not_null()


def _terms(month: dt.date, calendar: Calendar) -> _Terms:
    dates = evaluation_dates(month=month, calendar=calendar)
    u = pl.col("previous_valid_until")
    return _Terms(
        p=pl.col("previous_idx"),
        q=pl.col("granted_idx"),
        u=u,
        evaluated_on=dates["evaluated_on"],
        dates=dates,
        rerating=u.dt.offset_by("-1mo").dt.month_start() == dates["month_of_e"],
    )


ACTION_TYPE = pl.Enum(ACTIONS)
"""The action while the state machine runs: comparing small integers, not strings (the tier row shows text)."""


def _action(name: str) -> pl.Expr:
    return pl.lit(name, dtype=ACTION_TYPE)


def action_expr(t: _Terms, retention: Retention) -> pl.Expr:
    """SPEC section 5: the action, first match wins (leaving the state overrides every retention)."""
    p, q, held = t.p, t.q, t.held
    q_above_p = q.fill_null(-1) > p.fill_null(-1)
    q_below_p = q.fill_null(-1) < p.fill_null(-1)
    action: pl.Expr
    match retention:
        case "validity":
            action = (
                pl.when(~held & q.is_null())
                .then(_action(NONE))
                .when(~held)
                .then(_action(NEW))
                .when(t.u < t.evaluated_on)
                .then(_action(LAPSE))
                .when(q_above_p)
                .then(_action(UPGRADE))
                .when(t.rerating & (q == p))
                .then(_action(RENEW))
                .when(t.rerating & q.is_not_null())
                .then(_action(DOWNGRADE))
                .when(t.rerating)
                .then(_action(LAPSE))
                .otherwise(_action(RETAIN))
            )
        case "recompute":
            action = (
                pl.when(~held & q.is_null())
                .then(_action(NONE))
                .when(~held)
                .then(_action(NEW))
                .when(q.is_null())
                .then(_action(LAPSE))
                .when(q_above_p)
                .then(_action(UPGRADE))
                .when(q_below_p)
                .then(_action(DOWNGRADE))
                .otherwise(_action(RETAIN))
            )
        case "permanent":
            action = (
                pl.when(held).then(_action(RETAIN)).when(q.is_not_null()).then(_action(NEW)).otherwise(_action(NONE))
            )
    return (
        pl.when(pl.col("cancelled") & held)
        .then(_action(TERMINATE))
        .when(pl.col("cancelled"))
        .then(_action(NONE))
        .when(pl.col("forgotten") & held)
        .then(_action(LAPSE))
        .when(pl.col("forgotten"))
        .then(_action(NONE))
        .when(pl.col("blocked") & held)
        .then(_action(TERMINATE))
        .when(pl.col("blocked"))
        .then(_action(NONE))
        .otherwise(action)
    )


def level_index_expr(t: _Terms, retention: Retention) -> pl.Expr:
    """The level after the action, as an index (null: none)."""
    a = pl.col("action")
    return (
        pl.when(a.is_in([NEW, UPGRADE, DOWNGRADE]) | ((a == RETAIN) & pl.lit(retention == "recompute")))
        .then(t.q)
        .when(a.is_in([RENEW, RETAIN]))
        .then(t.p)
        .otherwise(pl.lit(None, dtype=pl.Int32))
    )


def validity_exprs(t: _Terms, retention: Retention, calendar: Calendar) -> tuple[pl.Expr, pl.Expr]:
    """(valid_from, valid_until) after the action; null outside the validity retention."""
    if retention != "validity":
        return pl.lit(None, dtype=pl.Date), pl.lit(None, dtype=pl.Date)
    a = pl.col("action")
    valid_from = (
        pl.when(a.is_in([NEW, UPGRADE]))
        .then(t.evaluated_on)
        .when(a.is_in([RENEW, DOWNGRADE]))
        .then(t.dates["renewal_from"])
        .when(a == RETAIN)
        .then(pl.col("previous_valid_from"))
    )
    valid_until = (
        pl.when(a.is_in([NEW, UPGRADE]))
        .then(t.dates["new_until"])
        .when(a.is_in([RENEW, DOWNGRADE]))
        .then(t.u.dt.offset_by(f"{calendar.validity_months}mo"))
        .when(a == RETAIN)
        .then(t.u)
    )
    return valid_from, valid_until


def card_exprs(t: _Terms, card_levels: list[str], card_prefix: str) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    """(issue_reason, void_reason, card_id): the month's card events and the card valid for the level.

    ``card_id`` reads ``issue_reason``, so it must be added after the reasons."""
    a = pl.col("action")
    level_has_card = pl.col("level").is_in(card_levels)
    previous_has_card = pl.col("previous_level").is_in(card_levels) & pl.col("previous_card_id").is_not_null()
    issue_reason = (
        pl.when(~level_has_card)
        .then(pl.lit(None, dtype=pl.String))
        .when(a == NEW)
        .then(pl.lit("new"))
        .when(a == UPGRADE)
        .then(pl.lit("upgrade"))
        .when(a == RENEW)
        .then(pl.lit("renewal"))
        .when(a == DOWNGRADE)
        .then(pl.lit("downgrade"))
    )
    issues_a_card = level_has_card & a.is_in([NEW, UPGRADE, RENEW, DOWNGRADE])
    void_reason = (
        pl.when(~previous_has_card)
        .then(pl.lit(None, dtype=pl.String))
        .when(a == TERMINATE)
        .then(pl.when(pl.col("blocked")).then(pl.lit("blocked")).otherwise(pl.lit("cancelled")))
        .when(a == LAPSE)
        .then(pl.lit("lapsed"))
        .when(a.is_in([UPGRADE, RENEW, DOWNGRADE]) & issues_a_card)
        .then(pl.lit("replaced"))
        .when(a == DOWNGRADE)
        .then(pl.lit("downgraded"))
        # an upgrade to a level without a card (a rulebook could say so): the old card just ends
        .when(a == UPGRADE)
        .then(pl.lit("lapsed"))
    )
    new_card_id = pl.concat_str(
        [pl.lit(f"{card_prefix}-"), t.evaluated_on.dt.strftime("%Y%m%d"), pl.lit("-"), pl.col("subscriber_id")]
    )
    card_id = (
        pl.when(pl.col("issue_reason").is_not_null())
        .then(new_card_id)
        .when((a == RETAIN) & level_has_card)
        .then(pl.col("previous_card_id"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    return issue_reason, void_reason, card_id


def effective_on_expr(t: _Terms, retention: Retention) -> pl.Expr:
    """The day the decision takes effect (SPEC 5, effective dates): the card office acts on it, so a
    member is never without a valid card between two cards. Null for none and retain."""
    a = pl.col("action")
    if retention != "validity":
        return pl.when(a.is_in([NONE, RETAIN])).then(pl.lit(None, dtype=pl.Date)).otherwise(t.evaluated_on)
    day_after_expiry = t.u.dt.offset_by("1d")
    return (
        pl.when(a.is_in([NEW, UPGRADE]))
        .then(t.evaluated_on)
        .when(a.is_in([RENEW, DOWNGRADE]))
        .then(t.dates["renewal_from"])
        .when(a == TERMINATE)
        .then(t.evaluated_on)
        .when((a == LAPSE) & pl.col("forgotten"))
        .then(t.evaluated_on)
        .when(a == LAPSE)
        .then(day_after_expiry)
        .otherwise(pl.lit(None, dtype=pl.Date))
    )


def reason_code_expr(t: _Terms, retention: Retention) -> pl.Expr:
    """The reason as a code from :data:`schemas.contract.REASON_CODES` (for reasoned rows)."""
    a = pl.col("action")
    missed = pl.when(pl.col("eligible")).then(pl.lit("threshold_missed")).otherwise(pl.lit("not_eligible"))
    return (
        pl.when((a == TERMINATE) & pl.col("blocked"))
        .then(pl.lit("blocked"))
        .when(a == TERMINATE)
        .then(pl.lit("cancelled"))
        .when((a == LAPSE) & pl.col("forgotten"))
        .then(pl.lit("absent_too_long"))
        .when(_granted_above_q() & a.is_in(GRANT_DECIDES))
        .then(pl.lit("override"))
        .when(a.is_in([NEW, UPGRADE, RENEW]))
        .then(pl.lit("threshold_met"))
        .when((a == LAPSE) & pl.lit(retention == "validity") & (t.u < t.evaluated_on))
        .then(pl.lit("validity_ended"))
        .when(a.is_in([DOWNGRADE, LAPSE]))
        .then(missed)
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def reason_expr(t: _Terms, retention: Retention, level_count: int, forget_after_months: int) -> pl.Expr:
    """The human-readable reason of a level-changing action; reads the ``explain_<i>`` columns."""
    a = pl.col("action")
    p, q, u = t.p, t.q, t.u
    validity = retention == "validity"
    lowest_or_ineligible = pl.when(pl.col("eligible")).then(pl.col("explain_0")).otherwise(pl.col("ineligible_reason"))
    why_not_previous = pl.when(pl.col("eligible")).then(_pick(p, level_count)).otherwise(pl.col("ineligible_reason"))
    expiry_text = u.dt.strftime("%Y-%m-%d")
    rerating_prefix = [pl.lit("re-rating before expiry "), expiry_text, pl.lit(": ")] if validity else []
    return (
        pl.when((a == TERMINATE) & pl.col("blocked"))
        .then(
            pl.concat_str(
                [pl.lit("blocked by override "), pl.col("override_id"), pl.lit(": "), pl.col("override_reason")]
            )
        )
        .when(a == TERMINATE)
        .then(pl.concat_str([pl.lit("status cancelled: "), pl.col("previous_level"), pl.lit(" terminated")]))
        .when(_granted_above_q() & a.is_in(GRANT_DECIDES))
        .then(
            pl.concat_str(
                [
                    pl.lit("override "),
                    pl.col("override_id"),
                    pl.lit(" grants "),
                    pl.col("override_level"),
                    pl.lit(": "),
                    pl.col("override_reason"),
                ]
            )
        )
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
        .then(_pick(q, level_count))
        .when((a == LAPSE) & pl.lit(validity) & (u < t.evaluated_on))
        .then(
            pl.concat_str(
                [
                    pl.lit("validity ended "),
                    expiry_text,
                    pl.lit(" before the evaluation on "),
                    t.evaluated_on.dt.strftime("%Y-%m-%d"),
                ]
            )
        )
        .when((a == RENEW) & pl.lit(validity))
        .then(pl.concat_str([*rerating_prefix, _pick(q, level_count)]))
        .when(a == DOWNGRADE)
        .then(pl.concat_str([*rerating_prefix, why_not_previous, pl.lit("; qualifies for "), _pick(q, level_count)]))
        .when(a == LAPSE)
        .then(pl.concat_str([*rerating_prefix, lowest_or_ineligible]))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def decide(
    frame: pl.LazyFrame,
    *,
    program_name: str,
    levels: list[str],
    card_levels: list[str],
    card_prefix: str,
    retention: Retention,
    month: dt.date,
    calendar: Calendar,
    forget_after_months: int,
    explanations: dict[str, pl.Expr],
    order_column: str,
) -> pl.LazyFrame:
    """Apply the state machine to one program's frame (subscribers with ``qualified_idx`` and the
    previous membership columns ``previous_level, previous_valid_from, previous_valid_until,
    previous_card_id``) and the override in force (``override_id, override_kind, override_level,
    override_reason``, null when none). Adds ``action, level, valid_from, valid_until, card_id, reason`` and
    the card event columns ``issue_reason, void_reason``. ``explanations`` are the program's
    ``explain_<i>`` and ``ineligible_reason`` expressions, evaluated only where a reason is written;
    ``order_column`` numbers the rows uniquely, to join the reasons back without reordering."""
    t = _terms(month, calendar)
    valid_from, valid_until = validity_exprs(t, retention, calendar)
    issue_reason, void_reason, card_id = card_exprs(t, card_levels, card_prefix)
    decided = (
        frame.with_columns(_level_index(levels, "previous_level").alias("previous_idx"), **grant_and_block(levels))
        .with_columns(action_expr(t, retention).alias("action"))
        .with_columns(
            _level_name(levels, level_index_expr(t, retention)).alias("level"),
            valid_from.alias("valid_from"),
            valid_until.alias("valid_until"),
            effective_on_expr(t, retention).alias("effective_on"),
            t.evaluated_on.alias("evaluated_on"),
            _level_name(levels, pl.col("qualified_idx")).alias("qualified_level"),
            _level_name(levels, t.q).alias("granted_level"),
        )
        .with_columns(issue_reason.alias("issue_reason"), void_reason.alias("void_reason"))
        .with_columns(card_id.alias("card_id"), pl.lit(program_name).alias("program"))
    )
    # Reason texts are costly strings: build them only for the rows whose action needs one.
    reasons = (
        decided.filter(pl.col("action").is_in(REASONED_ACTIONS))
        .with_columns(**explanations)
        .select(
            order_column,
            reason_expr(t, retention, len(levels), forget_after_months).alias("reason"),
            reason_code_expr(t, retention).alias("reason_code"),
        )
    )
    return decided.join(reasons, on=order_column, how="left", maintain_order="left")
