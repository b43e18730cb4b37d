"""SPEC section 5: the carry-forward state machine, row by row, with card events."""

from __future__ import annotations

import datetime as dt

import polars as pl

from tests.engine import Engine, date
from tests.extract_factory import row

VIP = "unicom_vip"
STAR = "unicom_star"
CREDIT = "cmcc_credit"
POINTS = "points_redemption"


def months_from(first: str, count: int) -> list[str]:
    year, month = map(int, first.split("-"))
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        month += 1
        if month == 13:
            year, month = year + 1, 1
    return out


def test_seed_worked_example_silver_then_gold_upgrade() -> None:
    engine = Engine()
    bills = {"2011-05": "900.00"}
    for m in months_from("2011-06", 3):
        bills[m] = "100.00"
    for m in months_from("2011-09", 5):
        bills[m] = "250.00"
    bills["2012-02"] = "550.00"
    for month, billed in bills.items():
        engine.run(month, [row("seed", billed)])
    first = engine.row("2011-05", "seed", VIP)
    assert (first["action"], first["level"]) == ("new", "silver")
    assert (first["evaluated_on"], first["valid_from"], first["valid_until"]) == (
        date("2011-06-05"),
        date("2011-06-05"),
        date("2012-06-08"),
    )
    assert engine.row("2012-01", "seed", VIP)["action"] == "retain"
    gold = engine.row("2012-02", "seed", VIP)
    assert (gold["action"], gold["level"], gold["previous_level"]) == ("upgrade", "gold", "silver")
    assert (gold["valid_from"], gold["valid_until"]) == (date("2012-03-05"), date("2013-03-08"))
    assert engine.card_events("2012-02", "seed", VIP) == [
        ("void", "replaced", "silver"),
        ("issue", "upgrade", "gold"),
    ]
    assert "avg_billed_6m 300.00 >= 300.00 (gold, mobile)" in gold["reason"]


def test_seed_worked_example_renewal_at_the_december_re_rating() -> None:
    engine = Engine()
    for index, month in enumerate(months_from("2011-12", 12)):  # 2011-12 .. 2012-11
        engine.run(month, [row("renewer", "900.00" if index == 0 else "150.00")])
    first = engine.row("2011-12", "renewer", VIP)
    assert (first["action"], first["valid_from"], first["valid_until"]) == (
        "new",
        date("2012-01-05"),
        date("2013-01-08"),
    )
    renewed = engine.row("2012-11", "renewer", VIP)
    assert renewed["evaluated_on"] == date("2012-12-05")
    assert (renewed["action"], renewed["level"]) == ("renew", "silver")
    assert (renewed["valid_from"], renewed["valid_until"]) == (date("2013-01-01"), date("2014-01-08"))
    assert renewed["card_id"] == "VIP-20121205-renewer"
    assert engine.card_events("2012-11", "renewer", VIP) == [
        ("void", "replaced", "silver"),
        ("issue", "renewal", "silver"),
    ]


def _one_year(first_bill: str, later_bill: str, rerating_bill: str) -> Engine:
    """A silver from 2024-01 (valid to 2025-02-08), re-rated at E(2024-12) = 2025-01-05."""
    engine = Engine()
    months = months_from("2024-01", 12)
    for index, month in enumerate(months):
        billed = first_bill if index == 0 else later_bill
        if month == "2024-12":
            billed = rerating_bill
        engine.run(month, [row("s", billed)])
    return engine


def test_within_validity_a_level_never_falls() -> None:
    engine = _one_year("900.00", "0.00", "0.00")
    for index, month in enumerate(months_from("2024-02", 10)):
        r = engine.row(month, "s", VIP)
        still_in_window = index < 5  # the 900.00 of 2024-01 stays in the 6-month window until 2024-06
        assert (r["action"], r["level"], r["qualified_level"]) == (
            "retain",
            "silver",
            "silver" if still_in_window else None,
        )
        assert r["card_id"] == "VIP-20240205-s"


def test_re_rating_downgrade_issues_a_downgrade_card_at_the_lower_level() -> None:
    engine = Engine()
    bills = ["2700.00"] + ["0.00"] * 10 + ["1000.00"]  # diamond, then silver-level spend in the window
    for month, billed in zip(months_from("2024-01", 12), bills, strict=True):
        engine.run(month, [row("d", billed)])
    r = engine.row("2024-12", "d", VIP)
    assert (r["previous_level"], r["qualified_level"], r["action"], r["level"]) == (
        "diamond",
        "silver",
        "downgrade",
        "silver",
    )
    assert (r["valid_from"], r["valid_until"]) == (date("2025-02-01"), date("2026-02-08"))
    assert engine.card_events("2024-12", "d", VIP) == [
        ("void", "replaced", "diamond"),
        ("issue", "downgrade", "silver"),
    ]
    assert r["reason"].startswith("re-rating before expiry 2025-02-08: avg_billed_6m 166.66 < 450.00 (diamond")


def test_re_rating_with_no_qualification_lapses_and_voids() -> None:
    engine = _one_year("900.00", "0.00", "0.00")
    r = engine.row("2024-12", "s", VIP)
    assert (r["action"], r["level"], r["valid_from"], r["valid_until"], r["card_id"]) == (
        "lapse",
        None,
        None,
        None,
        None,
    )
    assert engine.card_events("2024-12", "s", VIP) == [("void", "lapsed", "silver")]
    assert engine.row("2025-01", "s", VIP)["action"] == "none" if "2025-01" in engine.tiers else True


def test_upgrade_during_validity_restarts_the_window() -> None:
    engine = _one_year("900.00", "0.00", "0.00")
    engine.run("2025-01", [row("s", "1800.00")])
    r = engine.row("2025-01", "s", VIP)
    assert (r["action"], r["level"], r["valid_from"], r["valid_until"]) == (
        "new",
        "gold",
        date("2025-02-05"),
        date("2026-02-08"),
    )


def test_lapse_when_validity_ended_before_the_evaluation_needs_a_hand_made_state() -> None:
    engine = Engine()
    engine.run("2024-01", [row("h", "900.00")])
    # the state carries each program's membership; end the VIP validity before the next evaluation
    engine.state = engine.state.with_columns(pl.lit(dt.date(2024, 2, 8)).alias(f"{VIP}__valid_until"))
    engine.run("2024-02", [row("h", "900.00")])  # E = 2024-03-05 > U = 2024-02-08
    r = engine.row("2024-02", "h", VIP)
    assert (r["action"], r["level"], r["qualified_level"]) == ("lapse", None, "gold")
    assert r["reason"] == "validity ended 2024-02-08 before the evaluation on 2024-03-05"
    assert (r["effective_on"], r["reason_code"]) == (date("2024-02-09"), "validity_ended")  # U + 1 day
    (void,) = engine.cards["2024-02"].filter(pl.col("program") == VIP).to_dicts()
    assert void["effective_on"] == date("2024-02-09")
    assert engine.card_events("2024-02", "h", VIP) == [("void", "lapsed", "silver")]
    engine.run("2024-03", [row("h", "900.00")])
    assert engine.row("2024-03", "h", VIP)["action"] == "new"


def test_cancellation_terminates_and_the_number_restarts_from_nothing() -> None:
    engine = Engine()
    engine.run("2024-01", [row("c", "900.00", points_balance=5000)])
    engine.run("2024-02", [row("c", "900.00", status="cancelled", points_balance=5000)])
    for program, level in ((VIP, "silver"), (POINTS, "unlocked")):
        r = engine.row("2024-02", "c", program)
        assert (r["action"], r["level"], r["previous_level"], r["qualified_level"]) == (
            "terminate",
            None,
            level,
            None,
        )
    assert engine.card_events("2024-02", "c", VIP) == [("void", "cancelled", "silver")]
    assert engine.state.filter(pl.col("subscriber_id") == "c").height == 0
    engine.run("2024-03", [row("c", "10.00", activation_date=dt.date(2024, 3, 2))])
    fresh = engine.row("2024-03", "c", STAR)
    assert (fresh["previous_level"], fresh["cum_paid"]) == (None, pl.Series([10]).cast(pl.Decimal(18, 2))[0])
    assert engine.row("2024-03", "c", POINTS)["action"] == "none"


def test_cancelled_without_a_level_is_none() -> None:
    engine = Engine()
    engine.run("2024-01", [row("n", "1.00", status="cancelled", real_name_verified=False, brand=None)])
    assert {r["action"] for r in engine.tiers["2024-01"].iter_rows(named=True)} == {"none"}


def test_absence_counts_zero_and_forgetting_after_twelve_months() -> None:
    engine = Engine()
    engine.run("2024-01", [row("a", "900.00"), row("other", "1.00")])
    for month in months_from("2024-02", 12):
        engine.run(month, [row("other", "1.00")])
    eleventh = engine.row("2024-12", "a", VIP)
    assert (eleventh["present"], eleventh["months_absent"], eleventh["action"]) == (False, 11, "lapse")
    twelfth = engine.row("2025-01", "a", STAR)
    assert (twelfth["months_absent"], twelfth["action"], twelfth["previous_level"]) == (12, "lapse", "normal")
    assert twelfth["reason"] == "absent 12 months in a row (forget_after_months 12)"
    assert engine.state.filter(pl.col("subscriber_id") == "a").height == 0
    forgotten_none = engine.row("2025-01", "a", VIP)
    assert forgotten_none["action"] == "none"


def test_star_normal_to_silver_issues_without_void_and_re_rating_to_normal_voids_only() -> None:
    engine = Engine()
    engine.run("2024-01", [row("st", "10.00")])
    assert engine.row("2024-01", "st", STAR)["level"] == "normal"
    engine.run("2024-02", [row("st", "1000.00")])
    up = engine.row("2024-02", "st", STAR)
    assert (up["action"], up["level"], up["valid_until"]) == ("upgrade", "silver", date("2025-03-08"))
    assert engine.card_events("2024-02", "st", STAR) == [("issue", "upgrade", "silver")]
    for month in months_from("2024-03", 11):  # month paid 0 -> normal at re-rating E(2025-01)
        engine.run(month, [row("st", "0.00")])
    down = engine.row("2025-01", "st", STAR)
    assert (down["action"], down["level"], down["card_id"]) == ("downgrade", "normal", None)
    assert engine.card_events("2025-01", "st", STAR) == [("void", "downgraded", "silver")]


def test_recompute_program_follows_the_score_every_month() -> None:
    engine = Engine()
    seq = [("1200.00", "new"), ("1200.00", "upgrade"), ("0.00", "retain"), ("0.00", "retain")]
    levels = []
    for month, (billed, _) in zip(months_from("2024-01", 4), seq, strict=True):
        engine.run(month, [row("cr", billed, activation_date=dt.date(2023, 6, 1))])
        r = engine.row(month, "cr", CREDIT)
        levels.append((r["action"], r["level"], r["valid_until"]))
    # brand 50 + tenure 0; spend: 200/avg 200 -> 150 (star_2); 400/avg -> 200 (star_2 still: 250)
    assert levels[0] == ("new", "star_2", None)
    engine.run("2024-05", [row("cr", "0.00", brand=None, activation_date=dt.date(2023, 6, 1))])
    gone = engine.row("2024-05", "cr", CREDIT)
    assert (gone["action"], gone["level"], gone["reason"]) == (
        "lapse",
        None,
        "not eligible: brand null not in [gotone, mzone, easyown]",
    )


def test_permanent_unlock_survives_a_lower_balance() -> None:
    engine = Engine()
    engine.run("2024-01", [row("p", "1.00", points_balance=1999)])
    assert engine.row("2024-01", "p", POINTS)["action"] == "none"
    engine.run("2024-02", [row("p", "1.00", points_balance=2000)])
    assert engine.row("2024-02", "p", POINTS)["action"] == "new"
    engine.run("2024-03", [row("p", "1.00", points_balance=0)])
    kept = engine.row("2024-03", "p", POINTS)
    assert (kept["action"], kept["level"], kept["qualified_level"]) == ("retain", "unlocked", None)


def test_recompute_retention_every_action() -> None:
    engine = Engine()
    start = dt.date(2023, 6, 1)  # tenure 0 in 2024: score = brand 50 + spend band
    # window sums (6-month) chosen so spend points move the level: 0 -> none(50), 720 -> star_1(150),
    # 1200 -> star_2(200), then falls back as the big month leaves the window.
    bills = {"2024-01": "0.00", "2024-02": "720.00", "2024-03": "480.00", "2024-04": "0.00"}
    seen = []
    for month, billed in bills.items():
        engine.run(month, [row("r", billed, brand="gotone", activation_date=start)])
        r = engine.row(month, "r", CREDIT)
        seen.append((r["action"], r["level"]))
    engine.run("2024-05", [row("r", "0.00", brand=None, activation_date=start)])
    r = engine.row("2024-05", "r", CREDIT)
    seen.append((r["action"], r["level"]))
    assert seen == [
        ("none", None),
        ("new", "star_1"),
        ("upgrade", "star_2"),
        ("retain", "star_2"),
        ("lapse", None),
    ]
    assert engine.cards["2024-05"].filter(pl.col("program") == CREDIT).height == 0


def test_recompute_downgrade_when_the_score_falls() -> None:
    engine = Engine()
    start = dt.date(2015, 1, 1)  # tenure 300 + gotone 50 = 350 before spend
    engine.run("2024-01", [row("d", "1200.00", brand="gotone", activation_date=start)])  # +150 -> 500 star_5
    engine.run("2024-02", [row("d", "0.00", brand="gotone", activation_date=start, suspension_count=2)])
    first, second = engine.row("2024-01", "d", CREDIT), engine.row("2024-02", "d", CREDIT)
    assert (first["level"], second["action"], second["level"]) == ("star_5", "downgrade", "star_3")
    assert second["reason"].startswith("score 300 < 500 (star_5)")


def test_permanent_unlock_lapses_only_when_forgotten() -> None:
    engine = Engine()
    engine.run("2024-01", [row("p", "1.00", points_balance=3000), row("o", "1.00")])
    for month in months_from("2024-02", 12):
        engine.run(month, [row("o", "1.00")])
    kept = engine.row("2024-12", "p", POINTS)
    assert (kept["action"], kept["level"]) == ("retain", "unlocked")
    gone = engine.row("2025-01", "p", POINTS)
    assert (gone["action"], gone["level"], gone["previous_level"]) == ("lapse", None, "unlocked")
