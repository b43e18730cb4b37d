"""Runs the pure engine month by month in memory (no Prefect, no files) for rule tests."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from billing_tiers.months import add_months, month_end, parse_month
from rulebook import Rulebook, load_rulebook
from schemas.contract import CONTRACT_COLUMNS, ENGINE_OVERRIDE_COLUMNS, OVERRIDES_IN_FORCE, state_table
from transforms.evaluate import evaluate_month


def empty_state(window_months: int) -> pl.LazyFrame:
    """The state before a store's first month."""
    return pl.LazyFrame(schema=state_table(window_months).schema)


def to_valid_rows(rows: list[dict[str, Any]]) -> pl.LazyFrame:
    """Extract-factory rows (yuan Decimals) -> the normalized valid-row frame the engine reads."""
    normalized = []
    for row in rows:
        item = {k: v for k, v in row.items() if k not in ("billed_amount", "paid_amount")}
        item["billed_fen"] = int(row["billed_amount"] * 100)
        item["paid_fen"] = int(row["paid_amount"] * 100)
        normalized.append(item)
    return pl.LazyFrame(normalized, schema=CONTRACT_COLUMNS)


@dataclass
class Engine:
    """Carries state between months like the flow does, keeping every month's tables."""

    rulebook: Rulebook = field(default_factory=load_rulebook)
    state: pl.DataFrame = field(default_factory=lambda: empty_state(6).collect())
    memberships: pl.DataFrame = field(default_factory=pl.DataFrame)
    tiers: dict[str, pl.DataFrame] = field(default_factory=dict)
    cards: dict[str, pl.DataFrame] = field(default_factory=dict)
    at_risk: dict[str, pl.DataFrame] = field(default_factory=dict)
    states: dict[str, pl.DataFrame] = field(default_factory=dict)
    memberships_by_month: dict[str, pl.DataFrame] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.state = empty_state(self.rulebook.metrics.window_months).collect()

    def run(
        self, month: str, rows: list[dict[str, Any]], overrides: list[dict[str, Any]] | None = None
    ) -> pl.DataFrame:
        """One month; ``overrides`` are the approved overrides in force (OVERRIDES_IN_FORCE rows)."""
        start = parse_month(month)
        tables = evaluate_month(
            valid_rows=to_valid_rows(rows),
            state=self.state.lazy(),
            month=start,
            month_end=month_end(start),
            rulebook=self.rulebook,
            overrides=pl.LazyFrame(overrides, schema={c: OVERRIDES_IN_FORCE.schema[c] for c in ENGINE_OVERRIDE_COLUMNS})
            if overrides is not None
            else None,
        )
        tier, cards, state, memberships, at_risk = pl.collect_all(tables.frames())
        self.state, self.memberships = state, memberships
        self.states[month], self.memberships_by_month[month] = state, memberships
        self.at_risk[month] = at_risk
        self.tiers[month], self.cards[month] = tier, cards
        return tier

    def tables(self, month: str) -> dict[str, pl.DataFrame]:
        """The month's tables by their published names."""
        return {
            "tier_assignments": self.tiers[month],
            "card_issuance": self.cards[month],
            "at_risk": self.at_risk[month],
            "state": self.states[month],
            "memberships": self.memberships_by_month[month],
        }

    def run_months(self, first: str, monthly_rows: list[list[dict[str, Any]]]) -> None:
        month = parse_month(first)
        for rows in monthly_rows:
            self.run(f"{month.year:04d}-{month.month:02d}", rows)
            month = add_months(month, 1)

    def row(self, month: str, subscriber_id: str, program: str) -> dict[str, Any]:
        frame = self.tiers[month].filter((pl.col("subscriber_id") == subscriber_id) & (pl.col("program") == program))
        assert frame.height == 1, f"{month} {subscriber_id} {program}: {frame.height} rows"
        return frame.row(0, named=True)

    def card_events(self, month: str, subscriber_id: str, program: str) -> list[tuple[str, str, str]]:
        frame = self.cards[month].filter((pl.col("subscriber_id") == subscriber_id) & (pl.col("program") == program))
        return [(r["event"], r["reason"], r["level"]) for r in frame.iter_rows(named=True)]


def date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)
