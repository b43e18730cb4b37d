"""SPEC sections 3 and 4: exact thresholds, credit-score bands, eligibility."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.engine import Engine
from tests.extract_factory import row

VIP, STAR, CREDIT = "unicom_vip", "unicom_star", "cmcc_credit"


def six_months(bills: list[str], **overrides: object) -> Engine:
    engine = Engine()
    for index, billed in enumerate(bills):
        engine.run(f"2024-{index + 1:02d}", [row("x", billed, **overrides)])
    return engine


def test_six_months_summing_to_899_98_do_not_make_mobile_silver() -> None:
    engine = six_months(["150.00"] * 5 + ["149.98"])
    r = engine.row("2024-06", "x", VIP)
    assert r["qualified_level"] is None
    assert str(r["billed_6m"]) == "899.98"
    assert str(r["avg_billed_6m"]) == "149.99"  # 149.9966.. floored to the cent, never rounded up to 150.00


def test_six_months_summing_to_900_00_make_mobile_silver() -> None:
    engine = six_months(["149.99", "150.01", "150.00", "150.00", "150.00", "150.00"])
    r = engine.row("2024-06", "x", VIP)
    assert (r["qualified_level"], str(r["avg_billed_6m"])) == ("silver", "150.00")


def test_an_uneven_window_one_cent_short_does_not_qualify() -> None:
    engine = six_months(["0.01", "0.01", "0.01", "299.99", "299.99", "299.97"])
    assert str(engine.row("2024-06", "x", VIP)["billed_6m"]) == "899.98"
    assert engine.row("2024-06", "x", VIP)["qualified_level"] is None


@pytest.mark.parametrize(
    ("service", "window_sum", "level"),
    [
        ("fixed", "599.99", None),
        ("fixed", "600.00", "silver"),
        ("broadband", "900.00", "gold"),
        ("fixed", "1800.00", "diamond"),
        ("mobile", "2700.00", "diamond"),
        ("mobile", "2699.99", "gold"),
    ],
)
def test_vip_thresholds_by_service_type(service: str, window_sum: str, level: str | None) -> None:
    engine = Engine()
    engine.run("2024-01", [row("x", window_sum, service_type=service)])
    assert engine.row("2024-01", "x", VIP)["qualified_level"] == level


def test_supreme_needs_a_group_customer() -> None:
    engine = Engine()
    engine.run("2024-01", [row("g", "6000.00", customer_type="group"), row("i", "6000.00")])
    assert engine.row("2024-01", "g", VIP)["qualified_level"] == "supreme"
    assert engine.row("2024-01", "i", VIP)["qualified_level"] == "diamond"
    assert engine.row("2024-01", "g", VIP)["valid_until"] == dt.date(2025, 2, 8)


@pytest.mark.parametrize(
    "override",
    [
        {"payment_type": "prepaid"},
        {"account_class": "public_free"},
        {"account_class": "test"},
        {"plan_category": "data_card"},
        {"plan_category": "wo_family"},
        {"plan_category": "employee_2g"},
        {"plan_category": "sms_card_2g"},
        {"plan_category": "high_data_2g"},
        {"plan_category": "payphone"},
    ],
)
def test_vip_ineligible_plans_qualify_for_nothing(override: dict[str, str]) -> None:
    engine = Engine()
    engine.run("2024-01", [row("x", "9000.00", **override)])
    r = engine.row("2024-01", "x", VIP)
    assert (r["eligible"], r["qualified_level"], r["action"]) == (False, None, "none")


@pytest.mark.parametrize(
    ("cum", "month", "level"),
    [
        ("999.99", "999.99", "normal"),
        ("1000.00", "50.00", "silver"),
        ("1000.00", "49.99", "normal"),
        ("3000.00", "500.00", "gold"),
        ("10000.00", "999.99", "gold"),
        ("10000.00", "1000.00", "platinum"),
        ("20000.00", "2000.00", "diamond"),
    ],
)
def test_star_levels_need_both_cumulative_and_monthly_payment(cum: str, month: str, level: str) -> None:
    engine = Engine()
    first = str(round(float(cum) - float(month), 2))
    engine.run("2024-01", [row("s", "0.00", paid=f"{float(first):.2f}")])
    engine.run("2024-02", [row("s", "0.00", paid=month)])
    assert engine.row("2024-02", "s", STAR)["qualified_level"] == level


def test_star_requires_real_name_mobile() -> None:
    engine = Engine()
    engine.run(
        "2024-01",
        [row("a", "0.00", paid="5000.00", real_name_verified=False), row("b", "0.00", service_type="fixed")],
    )
    assert engine.row("2024-01", "a", STAR)["qualified_level"] is None
    assert engine.row("2024-01", "b", STAR)["qualified_level"] is None


@pytest.mark.parametrize(
    ("window_sum", "spend_points"),
    [
        ("120.00", 0),  # avg 20.00 exactly: "20 or less" scores nothing
        ("120.06", 20),  # avg 20.01
        ("300.00", 20),
        ("300.06", 50),
        ("480.00", 50),
        ("720.00", 100),
        ("1200.00", 150),
        ("2400.00", 200),
        ("2400.06", 250),
    ],
)
def test_credit_spend_band_edges_are_inclusive(window_sum: str, spend_points: int) -> None:
    engine = Engine()
    # easyown 20 + tenure 5+ years 300 = 320 before spend
    engine.run("2024-01", [row("c", window_sum, brand="easyown", activation_date=dt.date(2015, 1, 1))])
    assert engine.row("2024-01", "c", CREDIT)["score"] == 320 + spend_points


@pytest.mark.parametrize(
    ("activation", "month", "years"),
    [
        (dt.date(2023, 1, 31), "2024-01", 1),  # anniversary on the month's last day counts
        (dt.date(2023, 2, 1), "2024-01", 0),  # anniversary just after the month's end
        (dt.date(2012, 2, 29), "2013-02", 0),  # 29 February: no anniversary on 2013-02-28
        (dt.date(2012, 2, 29), "2013-03", 1),
        (dt.date(2012, 2, 29), "2016-02", 4),  # leap year: the anniversary exists
        (dt.date(2019, 3, 31), "2024-03", 5),
    ],
)
def test_tenure_whole_years_to_the_last_day_of_the_month(activation: dt.date, month: str, years: int) -> None:
    engine = Engine()
    engine.run(month, [row("t", "0.00", activation_date=activation)])
    assert engine.row(month, "t", CREDIT)["tenure_years"] == years


@pytest.mark.parametrize(
    ("tenure_start", "expected_tenure_points"),
    [(dt.date(2023, 6, 1), 0), (dt.date(2022, 6, 1), 50), (dt.date(2021, 6, 1), 150), (dt.date(2018, 1, 1), 300)],
)
def test_credit_tenure_points(tenure_start: dt.date, expected_tenure_points: int) -> None:
    engine = Engine()
    engine.run("2024-01", [row("c", "0.00", brand="gotone", activation_date=tenure_start)])
    assert engine.row("2024-01", "c", CREDIT)["score"] == 50 + expected_tenure_points


def test_suspensions_in_the_window_cost_100_each_and_levels_follow_the_score() -> None:
    engine = Engine()
    engine.run("2024-01", [row("c", "2400.06", brand="gotone", activation_date=dt.date(2015, 1, 1))])
    engine.run("2024-02", [row("c", "0.00", brand="gotone", activation_date=dt.date(2015, 1, 1), suspension_count=2)])
    first, second = engine.row("2024-01", "c", CREDIT), engine.row("2024-02", "c", CREDIT)
    assert (first["score"], first["level"]) == (600, "star_5")
    assert (second["suspensions_6m"], second["score"], second["level"], second["action"]) == (
        2,
        400,
        "star_4",
        "downgrade",
    )


def test_credit_requires_a_brand() -> None:
    engine = Engine()
    engine.run("2024-01", [row("c", "9000.00", brand=None, activation_date=dt.date(2000, 1, 1))])
    r = engine.row("2024-01", "c", CREDIT)
    assert (r["eligible"], r["qualified_level"]) == (False, None)


def test_months_in_state_divisor_is_a_rulebook_setting() -> None:
    from rulebook import default_rulebook_path, parse_rulebook

    text = (
        default_rulebook_path().read_text().replace('average_divisor = "window"', 'average_divisor = "months_in_state"')
    )
    engine = Engine(rulebook=parse_rulebook(text))
    engine.run("2024-01", [row("x", "150.00")])
    engine.run("2024-02", [row("x", "150.00")])
    first, second = engine.row("2024-01", "x", VIP), engine.row("2024-02", "x", VIP)
    assert (str(first["avg_billed_6m"]), first["qualified_level"]) == ("150.00", "silver")
    assert (str(second["avg_billed_6m"]), second["qualified_level"]) == ("150.00", "silver")


def test_disabled_programs_get_no_rows_and_windows_follow_the_rulebook() -> None:
    from rulebook import default_rulebook_path, parse_rulebook

    text = default_rulebook_path().read_text()
    text = text.replace("[programs.cmcc_credit]\nenabled = true", "[programs.cmcc_credit]\nenabled = false")
    text = text.replace("window_months = 6", "window_months = 3")
    engine = Engine(rulebook=parse_rulebook(text))
    for month, billed in (("2024-01", "900.00"), ("2024-02", "0.00"), ("2024-03", "0.00"), ("2024-04", "0.00")):
        engine.run(month, [row("x", billed)])
    assert set(engine.tiers["2024-01"]["program"]) == {"unicom_vip", "unicom_star", "points_redemption"}
    assert str(engine.row("2024-03", "x", VIP)["billed_6m"]) == "900.00"
    assert str(engine.row("2024-04", "x", VIP)["billed_6m"]) == "0.00"  # the 900.00 left the 3-month window
