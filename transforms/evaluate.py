"""One month's evaluation, from the cleaned extract and the previous state to every output table.

:func:`evaluate_month` is pure: LazyFrames and typed settings in, LazyFrames out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import polars as pl

from rulebook import AnyProgram, Rulebook
from schemas.contract import CARD_ISSUANCE, ISSUE, MEMBERSHIP_SCHEMA, STATE_SCHEMA, TIER_ASSIGNMENTS, VOID
from transforms.carry_forward import decide
from transforms.metrics import carry_subscribers
from transforms.money import fen_to_yuan
from transforms.qualification import explanations, qualify

ORDER = "_order"
"""A subscriber's position in the month's subscriber-id order: outputs sort on this integer
instead of re-sorting strings per program."""


@dataclass(frozen=True)
class MonthTables:
    """Everything one evaluation produces (each table without its ``billing_month`` partition column)."""

    tier_assignments: pl.LazyFrame
    card_issuance: pl.LazyFrame
    state: pl.LazyFrame
    memberships: pl.LazyFrame

    def frames(self) -> list[pl.LazyFrame]:
        return [self.tier_assignments, self.card_issuance, self.state, self.memberships]


def _program_rows(
    subscribers: pl.LazyFrame,
    memberships: pl.LazyFrame,
    *,
    name: str,
    program: AnyProgram,
    rulebook: Rulebook,
    month: dt.date,
) -> pl.LazyFrame:
    held = memberships.filter(pl.col("program") == name).select(
        "subscriber_id",
        pl.col("level").alias("previous_level"),
        pl.col("valid_from").alias("previous_valid_from"),
        pl.col("valid_until").alias("previous_valid_until"),
        pl.col("card_id").alias("previous_card_id"),
    )
    frame = qualify(subscribers, program=program).join(held, on="subscriber_id", how="left")
    return decide(
        frame,
        program_name=name,
        levels=list(program.levels),
        card_levels=list(program.card_levels),
        card_prefix=program.card_prefix,
        retention=program.retention,
        month=month,
        calendar=rulebook.calendar,
        forget_after_months=rulebook.metrics.forget_after_months,
        explanations=explanations(program),
    )


def _tier_row(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.with_columns(
        fen_to_yuan(pl.col("billed_6m_fen")).alias("billed_6m"),
        fen_to_yuan(pl.col("avg_billed_6m_fen")).alias("avg_billed_6m"),
        fen_to_yuan(pl.col("paid_fen")).alias("month_paid"),
        fen_to_yuan(pl.col("cum_paid_fen")).alias("cum_paid"),
        pl.col("suspensions_6m").cast(pl.Int64),
    ).select(list(TIER_ASSIGNMENTS.columns))


def _card_events(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Void and issue events, each keeping ``program_order`` for the caller's sort."""
    voids = frame.filter(pl.col("void_reason").is_not_null()).select(
        pl.col("previous_card_id").alias("card_id"),
        "program",
        "subscriber_id",
        pl.col("previous_level").alias("level"),
        pl.lit(VOID).alias("event"),
        pl.col("void_reason").alias("reason"),
        pl.col("evaluated_on").alias("event_date"),
        pl.col("previous_valid_from").alias("valid_from"),
        pl.col("previous_valid_until").alias("valid_until"),
        "program_order",
        ORDER,
    )
    issues = frame.filter(pl.col("issue_reason").is_not_null()).select(
        "card_id",
        "program",
        "subscriber_id",
        "level",
        pl.lit(ISSUE).alias("event"),
        pl.col("issue_reason").alias("reason"),
        pl.col("evaluated_on").alias("event_date"),
        "valid_from",
        "valid_until",
        "program_order",
        ORDER,
    )
    return pl.concat([voids, issues])


def evaluate_month(
    *,
    valid_rows: pl.LazyFrame,
    state: pl.LazyFrame,
    memberships: pl.LazyFrame,
    month: dt.date,
    month_end: dt.date,
    rulebook: Rulebook,
) -> MonthTables:
    """Evaluate billing month ``month`` for every enabled program of ``rulebook``, all lazily.

    The subscriber frame and the decided rows are each read by several outputs; they are cached
    so that collecting the four tables together (``pl.collect_all(tables.frames())``) computes
    them once."""
    subscribers = month_subscribers(
        valid_rows=valid_rows, state=state, month=month, month_end=month_end, rulebook=rulebook
    ).cache()
    decided = decide_programs(subscribers=subscribers, memberships=memberships, month=month, rulebook=rulebook)
    return month_tables(decided=decided.cache(), subscribers=subscribers, rulebook=rulebook)


def month_subscribers(
    *, valid_rows: pl.LazyFrame, state: pl.LazyFrame, month: dt.date, month_end: dt.date, rulebook: Rulebook
) -> pl.LazyFrame:
    """Every subscriber evaluated in the month with its metrics (the rulebook's windows), in
    subscriber-id order, numbered by :data:`ORDER`."""
    return (
        carry_subscribers(
            state=state,
            valid_rows=valid_rows,
            month=month,
            month_end=month_end,
            window_months=rulebook.metrics.window_months,
            forget_after_months=rulebook.metrics.forget_after_months,
            average_divisor=rulebook.metrics.average_divisor,
        )
        .sort("subscriber_id")
        .with_row_index(ORDER)
    )


def decide_programs(
    *, subscribers: pl.LazyFrame, memberships: pl.LazyFrame, month: dt.date, rulebook: Rulebook
) -> pl.LazyFrame:
    """One decided row per enabled program per subscriber: action, level, validity, card, reason."""
    return pl.concat(
        [
            _program_rows(subscribers, memberships, name=name, program=program, rulebook=rulebook, month=month)
            .select(*TIER_SOURCE_COLUMNS)
            .with_columns(pl.lit(index, dtype=pl.Int32).alias("program_order"))
            for index, (name, program) in enumerate(rulebook.enabled_programs().items())
        ],
        how="vertical",
    )


def month_tables(*, decided: pl.LazyFrame, subscribers: pl.LazyFrame, rulebook: Rulebook) -> MonthTables:
    """The month's output tables from the decided rows, in program (rulebook) then subscriber order."""
    tier = _tier_row(decided.sort("program_order", ORDER))
    event_order = pl.col("event").replace_strict({VOID: 0, ISSUE: 1}, return_dtype=pl.Int32)
    cards = _card_events(decided).sort("program_order", ORDER, event_order).select(list(CARD_ISSUANCE.columns))
    staying = decided.filter(~pl.col("leaves") & pl.col("level").is_not_null())
    next_memberships = staying.sort("program_order", ORDER).select(list(MEMBERSHIP_SCHEMA))
    next_state = subscribers.filter(~pl.col("leaves")).sort(ORDER).select(list(STATE_SCHEMA))
    return MonthTables(
        tier_assignments=tier,
        card_issuance=cards,
        state=next_state,
        memberships=next_memberships,
    )


TIER_SOURCE_COLUMNS = (
    "program",
    "subscriber_id",
    ORDER,
    "evaluated_on",
    "qualified_level",
    "previous_level",
    "level",
    "action",
    "valid_from",
    "valid_until",
    "card_id",
    "reason",
    "eligible",
    "present",
    "months_absent",
    "billed_6m_fen",
    "avg_billed_6m_fen",
    "paid_fen",
    "cum_paid_fen",
    "tenure_years",
    "suspensions_6m",
    "points_balance",
    "score",
    "leaves",
    "issue_reason",
    "void_reason",
    "previous_card_id",
    "previous_valid_from",
    "previous_valid_until",
)
"""Columns every program's decided rows share, before the output tables pick theirs."""
