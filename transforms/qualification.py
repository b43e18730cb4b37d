"""Which level each subscriber qualifies for this month in one program (SPEC section 4).

For every program kind this module builds, per level, a boolean "the level's conditions hold" and a
text stating the deciding metric, its value and the threshold. ``qualified_level`` is the highest
level whose conditions hold for an eligible, non-cancelled subscriber. Thresholds are compared in
integer fen: "average >= X" is evaluated as ``window sum >= X * divisor``, never on a rounded mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from rulebook import (
    AnyProgram,
    AverageBillProgram,
    CreditScoreProgram,
    PaidSpendProgram,
    PointsThresholdProgram,
)
from transforms.money import format_yuan, yuan_text


@dataclass(frozen=True)
class LevelRule:
    """One level's conditions (``holds``) and the sentence that explains them (``explain``)."""

    holds: pl.Expr
    explain: pl.Expr


def _compare(value_text: pl.Expr, holds: pl.Expr, threshold_text: pl.Expr | str) -> pl.Expr:
    threshold = pl.lit(threshold_text) if isinstance(threshold_text, str) else threshold_text
    op = pl.when(holds).then(pl.lit(" >= ")).otherwise(pl.lit(" < "))
    return pl.concat_str([value_text, op, threshold])


def _average_bill_rules(program: AverageBillProgram) -> list[LevelRule]:
    rules = []
    avg_text = format_yuan(pl.col("avg_billed_6m_fen"))
    for level in program.levels:
        spec = program.thresholds[level]
        threshold_fen = pl.col("service_type").replace_strict(spec.min_avg_billed, return_dtype=pl.Int64)
        threshold_text = pl.col("service_type").replace_strict(
            {service: yuan_text(fen) for service, fen in spec.min_avg_billed.items()}, return_dtype=pl.String
        )
        spend_holds = pl.col("billed_6m_fen") >= threshold_fen * pl.col("avg_divisor")
        explain = pl.concat_str(
            [
                pl.lit("avg_billed_6m "),
                _compare(avg_text, spend_holds, threshold_text),
                pl.lit(f" ({level}, "),
                pl.col("service_type"),
                pl.lit(")"),
            ]
        )
        holds = spend_holds
        if spec.customer_type is not None:
            type_holds = pl.col("customer_type").is_in(spec.customer_type).fill_null(False)
            holds = holds & type_holds
            explain = (
                pl.when(type_holds)
                .then(explain)
                .otherwise(
                    pl.concat_str(
                        [
                            pl.lit("customer_type "),
                            pl.col("customer_type"),
                            pl.lit(f" is not {' or '.join(spec.customer_type)} ({level})"),
                        ]
                    )
                )
            )
        rules.append(LevelRule(holds=holds, explain=explain))
    return rules


def _paid_spend_rules(program: PaidSpendProgram) -> list[LevelRule]:
    rules = []
    for level in program.levels:
        spec = program.thresholds[level]
        parts: list[pl.Expr] = []
        holds = pl.lit(True)
        for metric, column, threshold in (
            ("cum_paid", "cum_paid_fen", spec.min_cum_paid),
            ("month_paid", "paid_fen", spec.min_month_paid),
        ):
            if threshold is None:
                continue
            metric_holds = pl.col(column) >= threshold
            holds = holds & metric_holds
            parts.append(
                pl.concat_str(
                    [
                        pl.lit(f"{metric} "),
                        _compare(format_yuan(pl.col(column)), metric_holds, yuan_text(threshold)),
                    ]
                )
            )
        explain = (
            pl.concat_str([*_join(parts, " and "), pl.lit(f" ({level})")])
            if parts
            else pl.lit(f"no spend condition ({level})")
        )
        rules.append(LevelRule(holds=holds, explain=explain))
    return rules


def _join(parts: Sequence[pl.Expr], separator: str) -> list[pl.Expr]:
    joined: list[pl.Expr] = []
    for index, part in enumerate(parts):
        if index:
            joined.append(pl.lit(separator))
        joined.append(part)
    return joined


def credit_score(program: CreditScoreProgram) -> dict[str, pl.Expr]:
    """The score's parts: brand, tenure, spend and suspension points, and their total."""
    score = program.score
    brand = pl.col("brand").replace_strict(score.brand_points, default=0, return_dtype=pl.Int64)
    last = len(score.tenure_points) - 1
    tenure = (
        pl.col("tenure_years").clip(0, last).replace_strict(dict(enumerate(score.tenure_points)), return_dtype=pl.Int64)
    )
    spend = pl.lit(score.spend_points_above, dtype=pl.Int64)
    for band in reversed(score.spend_bands):
        # avg <= up_to  <=>  window sum <= up_to * divisor (exact, no rounding of the average)
        spend = (
            pl.when(pl.col("billed_6m_fen") <= band.up_to * pl.col("avg_divisor"))
            .then(pl.lit(band.points, dtype=pl.Int64))
            .otherwise(spend)
        )
    penalty = pl.col("suspensions_6m") * score.suspension_penalty
    return {
        "brand": brand,
        "tenure": tenure,
        "spend": spend,
        "penalty": penalty,
        "total": brand + tenure + spend - penalty,
    }


def _credit_score_rules(program: CreditScoreProgram) -> list[LevelRule]:
    parts = credit_score(program)
    breakdown = pl.concat_str(
        [
            pl.lit(" (brand "),
            parts["brand"].cast(pl.String),
            pl.lit(" + tenure "),
            parts["tenure"].cast(pl.String),
            pl.lit(" + spend "),
            parts["spend"].cast(pl.String),
            pl.lit(" - suspensions "),
            parts["penalty"].cast(pl.String),
            pl.lit(")"),
        ]
    )
    rules = []
    for level in program.levels:
        holds = pl.col("score") >= program.min_score[level]
        explain = pl.concat_str(
            [
                pl.lit("score "),
                _compare(pl.col("score").cast(pl.String), holds, str(program.min_score[level])),
                pl.lit(f" ({level})"),
                breakdown,
            ]
        )
        rules.append(LevelRule(holds=holds, explain=explain))
    return rules


def _points_rules(program: PointsThresholdProgram) -> list[LevelRule]:
    points = pl.col("points_balance").fill_null(0)
    rules = []
    for level in program.levels:
        holds = points >= program.min_points[level]
        explain = pl.concat_str(
            [
                pl.lit("points_balance "),
                _compare(points.cast(pl.String), holds, str(program.min_points[level])),
                pl.lit(f" ({level})"),
            ]
        )
        rules.append(LevelRule(holds=holds, explain=explain))
    return rules


def level_rules(program: AnyProgram) -> list[LevelRule]:
    """The per-level rules of any program kind, lowest level first."""
    match program:
        case AverageBillProgram():
            return _average_bill_rules(program)
        case PaidSpendProgram():
            return _paid_spend_rules(program)
        case CreditScoreProgram():
            return _credit_score_rules(program)
        case PointsThresholdProgram():
            return _points_rules(program)


def eligibility(program: AnyProgram) -> tuple[pl.Expr, pl.Expr]:
    """(is eligible, text naming the first attribute that is not) for the program."""
    eligible = pl.lit(True)
    why_not: pl.Expr = pl.lit(None, dtype=pl.String)
    for attribute, allowed in reversed(list(program.eligible.conditions().items())):
        matches = pl.col(attribute).is_in(allowed).fill_null(False)
        eligible = eligible & matches
        shown = ", ".join(str(value).lower() for value in allowed)
        value = pl.col(attribute).cast(pl.String).str.to_lowercase().fill_null("null")
        why_not = (
            pl.when(~matches)
            .then(pl.concat_str([pl.lit(f"not eligible: {attribute} "), value, pl.lit(f" not in [{shown}]")]))
            .otherwise(why_not)
        )
    return eligible, why_not


def qualify(subscribers: pl.LazyFrame, *, program: AnyProgram) -> pl.LazyFrame:
    """Adds ``score`` (credit programs; null elsewhere), ``eligible`` and ``qualified_idx``
    (Int32 index into the program's levels, null for none) to the subscriber frame."""
    match program:
        case CreditScoreProgram():
            score = credit_score(program)["total"]
        case _:
            score = pl.lit(None, dtype=pl.Int64)
    frame = subscribers.with_columns(score.alias("score"))
    eligible, _ = eligibility(program)
    qualified: pl.Expr = pl.lit(None, dtype=pl.Int32)
    can_qualify = pl.col("eligible") & ~pl.col("cancelled")
    for index, rule in enumerate(level_rules(program)):
        qualified = pl.when(can_qualify & rule.holds).then(pl.lit(index, dtype=pl.Int32)).otherwise(qualified)
    return frame.with_columns(eligible.alias("eligible")).with_columns(qualified.alias("qualified_idx"))


def explanations(program: AnyProgram) -> dict[str, pl.Expr]:
    """Text columns for reasons: ``explain_<i>`` says why level i holds or not, and
    ``ineligible_reason`` names the first eligibility condition that fails. They are costly
    strings, so they are computed only for the rows whose action needs a reason."""
    _, why_not = eligibility(program)
    columns = {f"explain_{index}": rule.explain for index, rule in enumerate(level_rules(program))}
    columns["ineligible_reason"] = why_not
    return columns
