"""SPEC 8 members at risk: the re-rating horizon, the level held against the level qualified for,
and needed_next_month worked by hand."""

from __future__ import annotations

from decimal import Decimal

import polars as pl

from tests.engine import Engine, date
from tests.extract_factory import row

VIP, STAR = "unicom_vip", "unicom_star"


def months(count: int) -> list[str]:
    return [f"{2024 + (i // 12)}-{i % 12 + 1:02d}" for i in range(count)]


def risk(engine: Engine, month: str, subscriber_id: str, program: str) -> dict[str, object] | None:
    rows = engine.at_risk[month].filter((pl.col("subscriber_id") == subscriber_id) & (pl.col("program") == program))
    return rows.row(0, named=True) if rows.height else None


def test_a_silver_member_whose_bills_fell_is_at_risk_three_months_before_the_re_rating() -> None:
    engine = Engine()
    for index, month in enumerate(months(9)):  # silver from E(2024-01) = 2024-02-05, valid to 2025-02-08
        engine.run(month, [row("v", "900.00" if index == 0 else "10.00", paid="0.00")])
    assert risk(engine, "2024-08", "v", VIP) is None  # re-rated at E(2024-12): four evaluations ahead
    at_risk = risk(engine, "2024-09", "v", VIP)
    assert at_risk is not None
    assert (at_risk["level"], at_risk["qualified_level"], at_risk["months_to_rerating"]) == ("silver", None, 3)
    assert (at_risk["valid_until"], at_risk["rerated_on"]) == (date("2025-02-08"), date("2025-01-05"))
    # window 2024-04..09 = 60.00; next month drops 2024-04's 10.00: 150.00 x 6 - (60.00 - 10.00)
    assert at_risk["needed_next_month"] == Decimal("850.00")


def test_a_star_member_needs_the_larger_of_the_month_minimum_and_the_cumulative_gap() -> None:
    engine = Engine()
    for index, month in enumerate(months(10)):  # star silver on cum 1000 + month 50 in 2024-01
        engine.run(month, [row("s", "10.00", paid="1000.00" if index == 0 else "0.00")])
    at_risk = risk(engine, "2024-10", "s", STAR)
    assert at_risk is not None
    assert (at_risk["level"], at_risk["qualified_level"], at_risk["months_to_rerating"]) == ("silver", "normal", 2)
    assert at_risk["needed_next_month"] == Decimal("50.00")  # cum 1000 already met; month_paid >= 50


def test_a_member_who_qualifies_for_the_level_held_is_not_at_risk() -> None:
    engine = Engine()
    for month in months(10):
        engine.run(month, [row("k", "900.00")])
    assert engine.at_risk["2024-10"].filter(pl.col("subscriber_id") == "k").height == 0
