"""SPEC section 5: the carry-forward state machine, row by row, with card events.

Every test runs a short history through the in-memory engine and compares, for every month of it,
the whole decision: (month, qualified_level, previous_level, level, action, valid_from, valid_until,
card_id), and every card event of the history. The expected rows are worked out by hand from
SPEC sections 3-5 (the window sums are written next to them); they are not copied from the engine.

Calendar of the default rulebook: E(B) is day 5 of B+1; a membership that starts on E runs to
expiry(month(E) + 12) = day 8 of that month; it is re-rated at the evaluation in the month before
the month of valid_until, and a renewed or downgraded membership runs from day 1 of the month after
E to valid_until + 12 months.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import polars as pl

from tests.engine import Engine, date
from tests.extract_factory import row

VIP = "unicom_vip"
STAR = "unicom_star"
CREDIT = "cmcc_credit"
POINTS = "points_redemption"

Step = tuple[str, str | None, str | None, str | None, str, str | None, str | None, str | None]
CardEvent = tuple[str, str, str, str, str]


def months_from(first: str, count: int) -> list[str]:
    year, month = map(int, first.split("-"))
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return out


def iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def run_bills(subscriber: str, first: str, bills: list[str], **overrides: Any) -> Engine:
    """One subscriber present every month from ``first`` with these bills (paid = billed)."""
    engine = Engine()
    for month, billed in zip(months_from(first, len(bills)), bills, strict=True):
        engine.run(month, [row(subscriber, billed, **overrides)])
    return engine


def steps(engine: Engine, subscriber: str, program: str) -> list[Step]:
    """The subscriber's decision in ``program`` for every month the engine ran, in month order."""
    out = []
    for month in sorted(engine.tiers):
        r = engine.row(month, subscriber, program)
        out.append(
            (
                month,
                r["qualified_level"],
                r["previous_level"],
                r["level"],
                r["action"],
                iso(r["valid_from"]),
                iso(r["valid_until"]),
                r["card_id"],
            )
        )
    return out


def column(engine: Engine, subscriber: str, program: str, name: str) -> list[Any]:
    """One tier-row column for every month the engine ran, in month order."""
    return [engine.row(month, subscriber, program)[name] for month in sorted(engine.tiers)]


def card_history(engine: Engine, subscriber: str, program: str) -> dict[str, list[CardEvent]]:
    """Every month's card events of the subscriber in ``program``: (event, reason, level, card_id,
    effective_on). Months with no event are left out, so comparing the dict checks every month."""
    out = {}
    for month in sorted(engine.cards):
        frame = engine.cards[month].filter((pl.col("subscriber_id") == subscriber) & (pl.col("program") == program))
        events = [
            (e["event"], e["reason"], e["level"], e["card_id"], iso(e["effective_on"]))
            for e in frame.iter_rows(named=True)
        ]
        if events:
            out[month] = events
    return out


def yuan(*amounts: str) -> list[Decimal]:
    return [Decimal(a) for a in amounts]


def retained(
    months: list[str], q: str | None, level: str, valid_from: str, valid_until: str, card: str | None
) -> list[Step]:
    return [(m, q, level, level, "retain", valid_from, valid_until, card) for m in months]


# ------------------------------------------------------------------------------ the seed's examples
def test_seed_worked_example_silver_then_gold_upgrade() -> None:
    bills = ["900.00"] + ["100.00"] * 3 + ["250.00"] * 5 + ["550.00"]  # 2011-05 .. 2012-02
    engine = run_bills("seed", "2011-05", bills)
    # window sums B-5..B (months before the subscriber entered count 0); silver >= 900, gold >= 1800
    assert column(engine, "seed", VIP, "billed_6m") == yuan(
        "900", "1000", "1100", "1200", "1450", "1700", "1050", "1200", "1350", "1800"
    )
    silver = ("2011-06-05", "2012-06-08", "VIP-20110605-seed")
    assert steps(engine, "seed", VIP) == [
        ("2011-05", "silver", None, "silver", "new", *silver),
        *retained(months_from("2011-06", 8), "silver", "silver", *silver),
        ("2012-02", "gold", "silver", "gold", "upgrade", "2012-03-05", "2013-03-08", "VIP-20120305-seed"),
    ]
    assert card_history(engine, "seed", VIP) == {
        "2011-05": [("issue", "new", "silver", "VIP-20110605-seed", "2011-06-05")],
        "2012-02": [
            ("void", "replaced", "silver", "VIP-20110605-seed", "2012-03-05"),
            ("issue", "upgrade", "gold", "VIP-20120305-seed", "2012-03-05"),
        ],
    }
    gold = engine.row("2012-02", "seed", VIP)
    assert gold["evaluated_on"] == date("2012-03-05")
    assert "avg_billed_6m 300.00 >= 300.00 (gold, mobile)" in gold["reason"]


def test_seed_worked_example_renewal_at_the_december_re_rating() -> None:
    engine = run_bills("renewer", "2011-12", ["900.00"] + ["150.00"] * 12)  # 2011-12 .. 2012-12
    # 900 alone, then +150 a month until 2012-06, when the 900 has left the window: 6 x 150 = 900
    assert column(engine, "renewer", VIP, "billed_6m") == yuan(
        "900", "1050", "1200", "1350", "1500", "1650", *["900"] * 7
    )
    first = ("2012-01-05", "2013-01-08", "VIP-20120105-renewer")
    renewed = ("2013-01-01", "2014-01-08", "VIP-20121205-renewer")
    assert steps(engine, "renewer", VIP) == [
        ("2011-12", "silver", None, "silver", "new", *first),
        *retained(months_from("2012-01", 10), "silver", "silver", *first),
        # E(2012-11) = 2012-12-05 is in the month before the expiry month 2013-01: re-rating, Q = P
        ("2012-11", "silver", "silver", "silver", "renew", *renewed),
        ("2012-12", "silver", "silver", "silver", "retain", *renewed),
    ]
    assert engine.row("2012-11", "renewer", VIP)["effective_on"] == date("2013-01-01")
    assert card_history(engine, "renewer", VIP) == {
        "2011-12": [("issue", "new", "silver", "VIP-20120105-renewer", "2012-01-05")],
        "2012-11": [
            ("void", "replaced", "silver", "VIP-20120105-renewer", "2013-01-01"),
            ("issue", "renewal", "silver", "VIP-20121205-renewer", "2013-01-01"),
        ],
    }


# -------------------------------------------------------------------------- validity retention
def test_within_validity_a_level_never_falls() -> None:
    bills = ["2700.00"] + ["0.00"] * 7 + ["900.00", "900.00", "0.00", "0.00"]  # 2024-01 .. 2024-12
    engine = run_bills("s", "2024-01", bills)
    # diamond >= 2700, gold >= 1800, silver >= 900: Q goes diamond, none, silver, gold below the held diamond
    assert column(engine, "s", VIP, "billed_6m") == yuan(*["2700"] * 6, "0", "0", "900", "1800", "1800", "1800")
    diamond = ("2024-02-05", "2025-02-08", "VIP-20240205-s")
    assert steps(engine, "s", VIP) == [
        ("2024-01", "diamond", None, "diamond", "new", *diamond),
        *retained(months_from("2024-02", 5), "diamond", "diamond", *diamond),
        *retained(["2024-07", "2024-08"], None, "diamond", *diamond),
        ("2024-09", "silver", "diamond", "diamond", "retain", *diamond),
        *retained(["2024-10", "2024-11"], "gold", "diamond", *diamond),
        # the level falls only at the re-rating E(2024-12) = 2025-01-05, the month before expiry
        ("2024-12", "gold", "diamond", "gold", "downgrade", "2025-02-01", "2026-02-08", "VIP-20250105-s"),
    ]
    assert card_history(engine, "s", VIP) == {
        "2024-01": [("issue", "new", "diamond", "VIP-20240205-s", "2024-02-05")],
        "2024-12": [
            ("void", "replaced", "diamond", "VIP-20240205-s", "2025-02-01"),
            ("issue", "downgrade", "gold", "VIP-20250105-s", "2025-02-01"),
        ],
    }


def test_re_rating_downgrade_issues_a_downgrade_card_at_the_lower_level() -> None:
    bills = ["2700.00"] + ["0.00"] * 10 + ["1000.00", "0.00"]  # 2024-01 .. 2025-01
    engine = run_bills("d", "2024-01", bills)
    assert column(engine, "d", VIP, "billed_6m") == yuan(*["2700"] * 6, *["0"] * 5, "1000", "1000")
    diamond = ("2024-02-05", "2025-02-08", "VIP-20240205-d")
    silver = ("2025-02-01", "2026-02-08", "VIP-20250105-d")
    assert steps(engine, "d", VIP) == [
        ("2024-01", "diamond", None, "diamond", "new", *diamond),
        *retained(months_from("2024-02", 5), "diamond", "diamond", *diamond),
        *retained(months_from("2024-07", 5), None, "diamond", *diamond),
        ("2024-12", "silver", "diamond", "silver", "downgrade", *silver),
        ("2025-01", "silver", "silver", "silver", "retain", *silver),
    ]
    assert card_history(engine, "d", VIP) == {
        "2024-01": [("issue", "new", "diamond", "VIP-20240205-d", "2024-02-05")],
        "2024-12": [
            ("void", "replaced", "diamond", "VIP-20240205-d", "2025-02-01"),
            ("issue", "downgrade", "silver", "VIP-20250105-d", "2025-02-01"),
        ],
    }
    down = engine.row("2024-12", "d", VIP)
    assert down["effective_on"] == date("2025-02-01")
    assert down["reason"].startswith("re-rating before expiry 2025-02-08: avg_billed_6m 166.66 < 450.00 (diamond")


def test_re_rating_with_no_qualification_lapses_and_voids() -> None:
    engine = run_bills("s", "2024-01", ["900.00"] + ["0.00"] * 12)  # 2024-01 .. 2025-01
    assert column(engine, "s", VIP, "billed_6m") == yuan(*["900"] * 6, *["0"] * 7)
    silver = ("2024-02-05", "2025-02-08", "VIP-20240205-s")
    assert steps(engine, "s", VIP) == [
        ("2024-01", "silver", None, "silver", "new", *silver),
        *retained(months_from("2024-02", 5), "silver", "silver", *silver),
        *retained(months_from("2024-07", 5), None, "silver", *silver),
        ("2024-12", None, "silver", None, "lapse", None, None, None),
        ("2025-01", None, None, None, "none", None, None, None),
    ]
    assert column(engine, "s", VIP, "effective_on")[-2:] == [date("2025-02-09"), None]  # U + 1 day; none: null
    assert card_history(engine, "s", VIP) == {
        "2024-01": [("issue", "new", "silver", "VIP-20240205-s", "2024-02-05")],
        "2024-12": [("void", "lapsed", "silver", "VIP-20240205-s", "2025-02-09")],
    }


def test_upgrade_during_validity_restarts_the_window() -> None:
    bills = ["900.00", "0.00", "0.00", "0.00", "900.00"] + ["0.00"] * 10 + ["1800.00"]  # 2024-01 .. 2025-04
    engine = run_bills("u", "2024-01", bills)
    assert column(engine, "u", VIP, "billed_6m") == yuan(
        "900", "900", "900", "900", "1800", "1800", "900", "900", "900", "900", *["0"] * 5, "1800"
    )
    silver = ("2024-02-05", "2025-02-08", "VIP-20240205-u")
    gold = ("2024-06-05", "2025-06-08", "VIP-20240605-u")
    assert steps(engine, "u", VIP) == [
        ("2024-01", "silver", None, "silver", "new", *silver),
        *retained(months_from("2024-02", 3), "silver", "silver", *silver),
        # E(2024-05) = 2024-06-05, inside the silver validity: a new 12-month validity from E
        ("2024-05", "gold", "silver", "gold", "upgrade", *gold),
        ("2024-06", "gold", "gold", "gold", "retain", *gold),
        *retained(months_from("2024-07", 4), "silver", "gold", *gold),
        # 2025-01-05 would have re-rated the silver, 2025-03-05 was past its expiry: gold runs on
        *retained(months_from("2024-11", 5), None, "gold", *gold),
        # the gold's own re-rating: E(2025-04) = 2025-05-05, the month before 2025-06-08
        ("2025-04", "gold", "gold", "gold", "renew", "2025-06-01", "2026-06-08", "VIP-20250505-u"),
    ]
    assert card_history(engine, "u", VIP) == {
        "2024-01": [("issue", "new", "silver", "VIP-20240205-u", "2024-02-05")],
        "2024-05": [
            ("void", "replaced", "silver", "VIP-20240205-u", "2024-06-05"),
            ("issue", "upgrade", "gold", "VIP-20240605-u", "2024-06-05"),
        ],
        "2025-04": [
            ("void", "replaced", "gold", "VIP-20240605-u", "2025-06-01"),
            ("issue", "renewal", "gold", "VIP-20250505-u", "2025-06-01"),
        ],
    }


def test_lapse_when_validity_ended_before_the_evaluation_needs_a_hand_made_state() -> None:
    engine = Engine()
    engine.run("2024-01", [row("h", "900.00")])
    # the state carries each program's membership; end the VIP validity before the next evaluation
    engine.state = engine.state.with_columns(pl.lit(dt.date(2024, 2, 8)).alias(f"{VIP}__valid_until"))
    engine.run("2024-02", [row("h", "900.00")])  # E = 2024-03-05 > U = 2024-02-08
    engine.run("2024-03", [row("h", "900.00")])
    assert column(engine, "h", VIP, "billed_6m") == yuan("900", "1800", "2700")
    assert steps(engine, "h", VIP) == [
        ("2024-01", "silver", None, "silver", "new", "2024-02-05", "2025-02-08", "VIP-20240205-h"),
        # U < E comes before Q > P: the gold it qualifies for is not an upgrade of an expired level
        ("2024-02", "gold", "silver", None, "lapse", None, None, None),
        ("2024-03", "diamond", None, "diamond", "new", "2024-04-05", "2025-04-08", "VIP-20240405-h"),
    ]
    lapsed = engine.row("2024-02", "h", VIP)
    assert lapsed["reason"] == "validity ended 2024-02-08 before the evaluation on 2024-03-05"
    assert (lapsed["effective_on"], lapsed["reason_code"]) == (date("2024-02-09"), "validity_ended")  # U + 1 day
    assert card_history(engine, "h", VIP) == {
        "2024-01": [("issue", "new", "silver", "VIP-20240205-h", "2024-02-05")],
        "2024-02": [("void", "lapsed", "silver", "VIP-20240205-h", "2024-02-09")],
        "2024-03": [("issue", "new", "diamond", "VIP-20240405-h", "2024-04-05")],
    }
    (void,) = engine.cards["2024-02"].filter(pl.col("program") == VIP).to_dicts()
    assert (void["valid_from"], void["valid_until"]) == (date("2024-02-05"), date("2024-02-08"))  # the voided card's


# --------------------------------------------------------------------- leaving the state
def test_cancellation_terminates_and_the_number_restarts_from_nothing() -> None:
    engine = Engine()
    engine.run("2024-01", [row("c", "900.00", points_balance=5000)])
    engine.run("2024-02", [row("c", "900.00", status="cancelled", points_balance=5000)])
    assert engine.state.filter(pl.col("subscriber_id") == "c").height == 0
    engine.run("2024-03", [row("c", "10.00", activation_date=dt.date(2024, 3, 2))])
    # 2024-01: window 900 -> silver; cum_paid 900 < 1000 -> star normal; score gotone 50 + tenure
    # 14 y 300 + avg 150.00 -> 150 = 500 -> star_5; 5000 points -> unlocked.
    # 2024-03: a new subscriber: window 10, cum_paid 10, tenure 0 (score 50), 0 points.
    none = (None, None, None, "none", None, None, None)
    assert steps(engine, "c", VIP) == [
        ("2024-01", "silver", None, "silver", "new", "2024-02-05", "2025-02-08", "VIP-20240205-c"),
        ("2024-02", None, "silver", None, "terminate", None, None, None),
        ("2024-03", *none),
    ]
    assert steps(engine, "c", STAR) == [
        ("2024-01", "normal", None, "normal", "new", "2024-02-05", "2025-02-08", None),
        ("2024-02", None, "normal", None, "terminate", None, None, None),
        ("2024-03", "normal", None, "normal", "new", "2024-04-05", "2025-04-08", None),
    ]
    assert steps(engine, "c", CREDIT) == [
        ("2024-01", "star_5", None, "star_5", "new", None, None, None),
        ("2024-02", None, "star_5", None, "terminate", None, None, None),
        ("2024-03", *none),
    ]
    assert steps(engine, "c", POINTS) == [
        ("2024-01", "unlocked", None, "unlocked", "new", None, None, None),
        ("2024-02", None, "unlocked", None, "terminate", None, None, None),
        ("2024-03", *none),
    ]
    for program in (VIP, STAR, CREDIT, POINTS):
        assert engine.row("2024-02", "c", program)["effective_on"] == date("2024-03-05"), program  # E
    assert card_history(engine, "c", VIP) == {
        "2024-01": [("issue", "new", "silver", "VIP-20240205-c", "2024-02-05")],
        "2024-02": [("void", "cancelled", "silver", "VIP-20240205-c", "2024-03-05")],
    }
    for program in (STAR, CREDIT, POINTS):
        assert card_history(engine, "c", program) == {}, program  # star normal has no card
    fresh = engine.row("2024-03", "c", STAR)
    assert (fresh["billed_6m"], fresh["cum_paid"], fresh["tenure_years"]) == (Decimal("10"), Decimal("10"), 0)


def test_cancelled_without_a_level_is_none() -> None:
    engine = Engine()
    # figures that would qualify in every program: cancelled, Q is none, and with P none the action is none
    engine.run("2024-01", [row("n", "900.00", paid="3000.00", status="cancelled", points_balance=5000)])
    for program in (VIP, STAR, CREDIT, POINTS):
        assert steps(engine, "n", program) == [("2024-01", None, None, None, "none", None, None, None)], program
        assert card_history(engine, "n", program) == {}, program
        assert engine.row("2024-01", "n", program)["effective_on"] is None
    assert engine.tiers["2024-01"].height == 4
    assert engine.state.filter(pl.col("subscriber_id") == "n").height == 0  # it leaves the state


def test_absence_counts_zero_and_forgetting_after_twelve_months() -> None:
    engine = Engine()
    engine.run("2024-01", [row("a", "900.00"), row("other", "1.00")])
    for month in months_from("2024-02", 12):  # 2024-02 .. 2025-01: "a" absent 1 .. 12 months in a row
        engine.run(month, [row("other", "1.00")])
    assert column(engine, "a", VIP, "present") == [True] + [False] * 12
    assert column(engine, "a", VIP, "months_absent") == list(range(13))
    # an absent month bills and pays 0: the 900 leaves the window after 2024-06; cum_paid stays 900
    assert column(engine, "a", VIP, "billed_6m") == yuan(*["900"] * 6, *["0"] * 7)
    assert column(engine, "a", VIP, "month_paid") == yuan("900", *["0"] * 12)
    assert column(engine, "a", VIP, "cum_paid") == yuan(*["900"] * 13)

    silver = ("2024-02-05", "2025-02-08", "VIP-20240205-a")
    assert steps(engine, "a", VIP) == [
        ("2024-01", "silver", None, "silver", "new", *silver),
        *retained(months_from("2024-02", 5), "silver", "silver", *silver),
        *retained(months_from("2024-07", 5), None, "silver", *silver),
        ("2024-12", None, "silver", None, "lapse", None, None, None),  # the re-rating, absent 11 months
        ("2025-01", None, None, None, "none", None, None, None),  # forgotten with no level
    ]
    assert card_history(engine, "a", VIP) == {
        "2024-01": [("issue", "new", "silver", "VIP-20240205-a", "2024-02-05")],
        "2024-12": [("void", "lapsed", "silver", "VIP-20240205-a", "2025-02-09")],
    }
    # star: attributes as last seen (mobile, real name), so Q stays normal while absent; the normal is
    # even renewed at the re-rating, then forgotten at the 12th absent month.
    normal = ("2024-02-05", "2025-02-08", None)
    assert steps(engine, "a", STAR) == [
        ("2024-01", "normal", None, "normal", "new", *normal),
        *retained(months_from("2024-02", 10), "normal", "normal", *normal),
        ("2024-12", "normal", "normal", "normal", "renew", "2025-02-01", "2026-02-08", None),
        ("2025-01", "normal", "normal", None, "lapse", None, None, None),
    ]
    # credit: gotone 50 + tenure 300 + spend 150 (avg 150.00) = 500, then spend 0 once the 900 has left
    assert steps(engine, "a", CREDIT) == [
        ("2024-01", "star_5", None, "star_5", "new", None, None, None),
        *[(m, "star_5", "star_5", "star_5", "retain", None, None, None) for m in months_from("2024-02", 5)],
        ("2024-07", "star_3", "star_5", "star_3", "downgrade", None, None, None),
        *[(m, "star_3", "star_3", "star_3", "retain", None, None, None) for m in months_from("2024-08", 5)],
        ("2025-01", "star_3", "star_3", None, "lapse", None, None, None),
    ]
    assert steps(engine, "a", POINTS) == [(m, None, None, None, "none", None, None, None) for m in sorted(engine.tiers)]
    twelfth = engine.row("2025-01", "a", STAR)
    assert twelfth["reason"] == "absent 12 months in a row (forget_after_months 12)"
    assert twelfth["effective_on"] == date("2025-02-05")  # forgetting takes effect on E
    assert engine.state.filter(pl.col("subscriber_id") == "a").height == 0


def test_star_normal_to_silver_issues_without_void_and_re_rating_to_normal_voids_only() -> None:
    engine = run_bills("st", "2024-01", ["10.00", "1000.00"] + ["0.00"] * 12)  # 2024-01 .. 2025-02
    # cum_paid 10, then 1010 for good; silver needs cum_paid >= 1000 and month_paid >= 50
    assert column(engine, "st", STAR, "cum_paid") == yuan("10", *["1010"] * 13)
    silver = ("2024-03-05", "2025-03-08", "STAR-20240305-st")
    normal = ("2025-03-01", "2026-03-08", None)
    assert steps(engine, "st", STAR) == [
        ("2024-01", "normal", None, "normal", "new", "2024-02-05", "2025-02-08", None),
        ("2024-02", "silver", "normal", "silver", "upgrade", *silver),
        *retained(months_from("2024-03", 10), "normal", "silver", *silver),
        # re-rating E(2025-01) = 2025-02-05, the month before 2025-03-08
        ("2025-01", "normal", "silver", "normal", "downgrade", *normal),
        ("2025-02", "normal", "normal", "normal", "retain", *normal),
    ]
    assert card_history(engine, "st", STAR) == {
        "2024-02": [("issue", "upgrade", "silver", "STAR-20240305-st", "2024-03-05")],
        "2025-01": [("void", "downgraded", "silver", "STAR-20240305-st", "2025-03-01")],
    }


# --------------------------------------------------------------------- recompute and permanent
def test_recompute_program_follows_the_score_every_month() -> None:
    engine = Engine()
    start = dt.date(2023, 6, 1)  # tenure 0 until 2024-05, 1 year (50 points) from 2024-06
    months = [
        ("1200.00", "gotone", 0),
        ("1300.00", "gotone", 0),
        ("0.00", "gotone", 1),
        ("0.00", "gotone", 0),
        ("0.00", None, 0),
        ("0.00", "gotone", 0),
    ]
    for month, (billed, brand, suspensions) in zip(months_from("2024-01", 6), months, strict=True):
        engine.run(month, [row("cr", billed, brand=brand, activation_date=start, suspension_count=suspensions)])
    # score = gotone 50 + tenure + spend band of the window average - 100 x suspensions_6m:
    # 01 avg 200.00 -> 150: 200; 02 avg 416.66 -> 250: 300; 03 and 04 300 - 100 = 200;
    # 05 no brand: not eligible; 06 50 + 50 + 250 - 100 = 250.
    assert steps(engine, "cr", CREDIT) == [
        ("2024-01", "star_2", None, "star_2", "new", None, None, None),
        ("2024-02", "star_3", "star_2", "star_3", "upgrade", None, None, None),
        ("2024-03", "star_2", "star_3", "star_2", "downgrade", None, None, None),
        ("2024-04", "star_2", "star_2", "star_2", "retain", None, None, None),
        ("2024-05", None, "star_2", None, "lapse", None, None, None),
        ("2024-06", "star_2", None, "star_2", "new", None, None, None),
    ]
    scores = column(engine, "cr", CREDIT, "score")
    assert scores[:4] + scores[5:] == [200, 300, 200, 200, 250]
    assert engine.row("2024-05", "cr", CREDIT)["reason"] == "not eligible: brand null not in [gotone, mzone, easyown]"
    assert card_history(engine, "cr", CREDIT) == {}


def test_permanent_unlock_survives_a_lower_balance() -> None:
    engine = Engine()
    for month, points in zip(months_from("2024-01", 5), [1999, 2000, 0, None, 2500], strict=True):
        engine.run(month, [row("p", "1.00", points_balance=points)])
    assert steps(engine, "p", POINTS) == [
        ("2024-01", None, None, None, "none", None, None, None),
        ("2024-02", "unlocked", None, "unlocked", "new", None, None, None),
        ("2024-03", None, "unlocked", "unlocked", "retain", None, None, None),
        ("2024-04", None, "unlocked", "unlocked", "retain", None, None, None),  # null points count 0
        ("2024-05", "unlocked", "unlocked", "unlocked", "retain", None, None, None),
    ]
    assert column(engine, "p", POINTS, "effective_on") == [None, date("2024-03-05"), None, None, None]
    assert card_history(engine, "p", POINTS) == {}


def test_recompute_retention_every_action() -> None:
    engine = Engine()
    start = dt.date(2023, 6, 1)  # tenure 0 until 2024-05: score = gotone 50 + spend band - suspensions
    months = [
        ("0.00", "gotone", 0),  # window 0 -> 0: 50, none
        ("720.00", "gotone", 0),  # window 720, avg 120.00 -> 100: 150, star_1
        ("480.00", "gotone", 0),  # window 1200, avg 200.00 -> 150: 200, star_2
        ("0.00", "gotone", 0),  # same window: star_2
        ("0.00", "gotone", 1),  # one suspension in the window: 100, star_1
        ("0.00", None, 0),  # no brand: not eligible
    ]
    for month, (billed, brand, suspensions) in zip(months_from("2024-01", 6), months, strict=True):
        engine.run(month, [row("r", billed, brand=brand, activation_date=start, suspension_count=suspensions)])
    assert steps(engine, "r", CREDIT) == [
        ("2024-01", None, None, None, "none", None, None, None),
        ("2024-02", "star_1", None, "star_1", "new", None, None, None),
        ("2024-03", "star_2", "star_1", "star_2", "upgrade", None, None, None),
        ("2024-04", "star_2", "star_2", "star_2", "retain", None, None, None),
        ("2024-05", "star_1", "star_2", "star_1", "downgrade", None, None, None),
        ("2024-06", None, "star_1", None, "lapse", None, None, None),
    ]
    # effective_on is E for every action but none and retain
    assert column(engine, "r", CREDIT, "effective_on") == [
        None,
        date("2024-03-05"),
        date("2024-04-05"),
        None,
        date("2024-06-05"),
        date("2024-07-05"),
    ]
    assert card_history(engine, "r", CREDIT) == {}


def test_recompute_downgrade_when_the_score_falls() -> None:
    engine = Engine()
    start = dt.date(2015, 1, 1)  # tenure 9 years: 300, + gotone 50 = 350 before spend
    engine.run("2024-01", [row("d", "1200.00", brand="gotone", activation_date=start)])  # avg 200.00: +150
    engine.run("2024-02", [row("d", "0.00", brand="gotone", activation_date=start, suspension_count=2)])
    engine.run("2024-03", [row("d", "0.00", brand="gotone", activation_date=start)])  # the 2 stay in the window
    assert column(engine, "d", CREDIT, "score") == [500, 300, 300]
    assert steps(engine, "d", CREDIT) == [
        ("2024-01", "star_5", None, "star_5", "new", None, None, None),
        ("2024-02", "star_3", "star_5", "star_3", "downgrade", None, None, None),
        ("2024-03", "star_3", "star_3", "star_3", "retain", None, None, None),
    ]
    assert engine.row("2024-02", "d", CREDIT)["reason"].startswith("score 300 < 500 (star_5)")


def test_permanent_unlock_lapses_only_when_forgotten() -> None:
    engine = Engine()
    engine.run("2024-01", [row("p", "1.00", points_balance=3000), row("o", "1.00")])
    for month in months_from("2024-02", 12):  # 2024-02 .. 2025-01: "p" absent 1 .. 12 months
        engine.run(month, [row("o", "1.00")])
    # absent, its points are as last seen (3000), so it still qualifies; only forgetting ends the level
    assert steps(engine, "p", POINTS) == [
        ("2024-01", "unlocked", None, "unlocked", "new", None, None, None),
        *[(m, "unlocked", "unlocked", "unlocked", "retain", None, None, None) for m in months_from("2024-02", 11)],
        ("2025-01", "unlocked", "unlocked", None, "lapse", None, None, None),
    ]
    assert engine.row("2025-01", "p", POINTS)["effective_on"] == date("2025-02-05")
    assert engine.state.filter(pl.col("subscriber_id") == "p").height == 0
