"""Cross-checks the engine against tests/reference_model.py (SPEC sections 3 to 5 and 8).

The reference is written from the SPEC alone. A property test runs random monthly histories under
random calendar and metric settings through both, plus fixed histories for the rare transitions, and
compares every column of every month's tier rows, card events (with card ids), members at risk, carried
state and memberships; it then fails if the run did not reach every (program, action) pair, card
reason and reason code. The deterministic tests below pin the trickiest cases and also assert the
SPEC's figures directly.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from hypothesis import HealthCheck, example, given, settings

from tests.differential import FIXED_CASES, Case, Coverage, compare_month, engine_overrides, histories, rulebook_for
from tests.engine import Engine
from tests.extract_factory import row
from tests.reference_model import CREDIT, POINTS, STAR, VIP, ReferenceModel, Settings, month_index, month_label


def run_both(
    first: str,
    monthly_rows: list[list[dict[str, Any]]],
    settings_: Settings | None = None,
    coverage: Coverage | None = None,
    case: Case | None = None,
) -> tuple[Engine, ReferenceModel]:
    """Runs engine and reference month by month, asserting every compared table equal each month
    (with ``case``, its overrides in force each month)."""
    settings_ = settings_ or Settings()
    engine, reference = Engine(rulebook=rulebook_for(settings_)), ReferenceModel(settings_)
    start = month_index(first)
    for offset, rows in enumerate(monthly_rows):
        month = month_label(start + offset)
        in_force = case.in_force(offset) if case is not None else []
        engine.run(month, rows, engine_overrides(in_force) if in_force else None)
        compare_month(month, engine.tables(month), reference.run(month, rows, in_force))
        if coverage is not None:
            coverage.add(engine.tables(month))
    return engine, reference


def tier(engine: Engine, month: str, subscriber_id: str, program: str) -> tuple[Any, ...]:
    r = engine.row(month, subscriber_id, program)
    return (r["qualified_level"], r["previous_level"], r["level"], r["action"], r["valid_from"], r["valid_until"])


D = dt.date

# ---------------------------------------------------------------- random histories

EXAMPLES = int(os.environ.get("BT_REFERENCE_EXAMPLES", "50"))
"""Random histories per run (about 1 s each); CI runs the default. Search deeper with e.g. 300."""


def test_engine_matches_reference_on_random_histories_and_reaches_every_transition() -> None:
    coverage = Coverage()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(histories())
    @example(FIXED_CASES[0])
    @example(FIXED_CASES[1])
    def check(case: Case) -> None:
        run_both(case.first, case.monthly, case.settings, coverage, case)

    check()
    assert coverage.missing() == {}, f"the differential test did not reach: {coverage.missing()}"


# ---------------------------------------------------------------- deterministic regressions


def test_exact_900_sum_over_six_months_is_silver_and_one_fen_less_is_not() -> None:
    bills = ["149.99", "150.01", "150.00", "150.00", "150.00", "150.00"]
    engine, _ = run_both(
        "2024-01",
        [[row("x", b), row("y", "149.99" if k == 5 else b)] for k, b in enumerate(bills)],
    )
    assert tier(engine, "2024-06", "x", VIP)[0] == "silver"  # 900.00 exactly
    assert tier(engine, "2024-06", "y", VIP)[0] is None  # 899.99
    assert tier(engine, "2024-05", "x", VIP)[0] is None  # 750.00 over a partly empty window


def test_fixed_line_thresholds_and_supreme_only_for_groups() -> None:
    rows = [
        row("fixed", "600.00", service_type="fixed"),
        row("bb", "899.99", service_type="broadband"),
        row("ind", "6000.00"),
        row("grp", "6000.00", customer_type="group", service_type="fixed"),
    ]
    engine, _ = run_both("2024-01", [rows])
    assert tier(engine, "2024-01", "fixed", VIP)[0] == "silver"
    assert tier(engine, "2024-01", "bb", VIP)[0] == "silver"  # 149.99 >= 100 but < 150
    assert tier(engine, "2024-01", "ind", VIP)[0] == "diamond"
    assert tier(engine, "2024-01", "grp", VIP)[0] == "supreme"


def test_customer_type_change_to_group_upgrades_within_validity() -> None:
    engine, _ = run_both(
        "2024-01",
        [[row("g", "6000.00")], [row("g", "0.00", customer_type="group")]],
    )
    assert tier(engine, "2024-02", "g", VIP) == (
        "supreme",
        "diamond",
        "supreme",
        "upgrade",
        D(2024, 3, 5),
        D(2025, 3, 8),
    )
    assert engine.card_events("2024-02", "g", VIP) == [("void", "replaced", "diamond"), ("issue", "upgrade", "supreme")]


def test_credit_spend_bands_include_the_upper_bound_and_tenure_counts_29_february() -> None:
    # mzone 30 + spend: avg 20.00 -> 0 points, avg 20.01 (120.06 over six) -> 20 points.
    # activation 2012-02-29: 0 years at 2013-02-28, 1 year (50 points) at 2013-03-31.
    leap = D(2012, 2, 29)
    months = [
        [
            row("a", "120.00", brand="mzone", activation_date=leap),
            row("b", "120.06", brand="mzone", activation_date=leap),
        ],
        [row("a", "0.00", brand="mzone", activation_date=leap), row("b", "0.00", brand="mzone", activation_date=leap)],
    ]
    engine, _ = run_both("2013-02", months)
    assert tier(engine, "2013-02", "a", CREDIT)[0] is None  # 30 + 0 + 0
    assert tier(engine, "2013-02", "b", CREDIT)[0] is None  # 30 + 0 + 20
    assert tier(engine, "2013-03", "a", CREDIT)[:4] == (None, None, None, "none")  # 30 + 50 + 0 = 80
    assert tier(engine, "2013-03", "b", CREDIT)[:4] == ("star_1", None, "star_1", "new")  # 30 + 50 + 20 = 100


def test_credit_recompute_lapses_when_brand_becomes_null_and_suspensions_count_in_window() -> None:
    months = [
        [row("c", "2400.06", activation_date=D(2000, 1, 1))],  # 50 + 300 + 250 = 600: star_5
        [row("c", "0.00", activation_date=D(2000, 1, 1), suspension_count=2)],  # 600 - 200 = 400: star_4
        [row("c", "0.00", activation_date=D(2000, 1, 1), brand=None)],
        [row("c", "0.00", activation_date=D(2000, 1, 1), brand="easyown")],  # 20 + 300 + 250 - 200 = 370
    ]
    engine, _ = run_both("2024-01", months)
    assert tier(engine, "2024-01", "c", CREDIT)[:4] == ("star_5", None, "star_5", "new")
    assert tier(engine, "2024-02", "c", CREDIT)[:4] == ("star_4", "star_5", "star_4", "downgrade")
    assert tier(engine, "2024-03", "c", CREDIT)[:4] == (None, "star_4", None, "lapse")
    assert tier(engine, "2024-04", "c", CREDIT)[:4] == ("star_3", None, "star_3", "new")


def test_star_cum_and_month_paid_both_needed_and_normal_silver_cards() -> None:
    pays = ["500.00", "499.99", "50.00", "49.99"]
    engine, _ = run_both("2024-01", [[row("s", "0.00", p)] for p in pays])
    assert tier(engine, "2024-01", "s", STAR)[:4] == ("normal", None, "normal", "new")
    assert engine.card_events("2024-01", "s", STAR) == []
    assert tier(engine, "2024-02", "s", STAR)[0] == "normal"  # cum 999.99
    silver = ("silver", "normal", "silver", "upgrade", D(2024, 4, 5), D(2025, 4, 8))
    assert tier(engine, "2024-03", "s", STAR) == silver  # cum 1049.99, month 50.00
    assert engine.card_events("2024-03", "s", STAR) == [("issue", "upgrade", "silver")]  # no void for normal
    assert tier(engine, "2024-04", "s", STAR) == ("normal", "silver", "silver", "retain", *silver[4:])  # month 49.99


def test_star_re_rating_to_normal_voids_without_issue_and_forgetting_beats_the_re_rating() -> None:
    # s: silver from E = 2024-02-05 (valid to 2025-02-08), re-rated at E(2024-12) = 2025-01-05 to normal,
    # renewed as normal at E(2025-12). r: renewed as silver at E(2024-12), then absent from 2025-01:
    # its 12th absent month 2025-12 is also its re-rating month; forgetting comes first (SPEC 5).
    months = [[row("s", "0.00", "1000.00"), row("r", "0.00", "1000.00")]]
    months += [[row("s", "0.00", "0.00"), row("r", "0.00", "50.00")] for _ in range(11)]
    months += [[row("s", "0.00", "0.00")] for _ in range(13)]
    engine, _ = run_both("2024-01", months)
    assert tier(engine, "2024-12", "s", STAR) == (
        "normal",
        "silver",
        "normal",
        "downgrade",
        D(2025, 2, 1),
        D(2026, 2, 8),
    )
    assert engine.card_events("2024-12", "s", STAR) == [("void", "downgraded", "silver")]
    assert tier(engine, "2025-12", "s", STAR) == ("normal", "normal", "normal", "renew", D(2026, 2, 1), D(2027, 2, 8))
    assert engine.card_events("2025-12", "s", STAR) == []
    assert tier(engine, "2024-12", "r", STAR) == ("silver", "silver", "silver", "renew", D(2025, 2, 1), D(2026, 2, 8))
    assert tier(engine, "2025-11", "r", STAR)[:4] == ("normal", "silver", "silver", "retain")
    assert tier(engine, "2025-12", "r", STAR)[:4] == ("normal", "silver", None, "lapse")
    assert engine.card_events("2025-12", "r", STAR) == [("void", "lapsed", "silver")]


def test_upgrade_wins_over_the_re_rating_and_cancellation_over_both() -> None:
    bills = ["900.00"] + ["0.00"] * 10 + ["1800.00"]
    paid = ["3000.00"] + ["50.00"] * 11
    months = [[row("u", b), row("x", b), row("d", "0.00", p)] for b, p in zip(bills[:-1], paid, strict=False)]
    months += [[row("u", "1800.00"), row("x", "1800.00", status="cancelled"), row("d", "0.00", "50.00")]]
    engine, _ = run_both("2024-01", months)
    assert tier(engine, "2024-12", "u", VIP) == ("gold", "silver", "gold", "upgrade", D(2025, 1, 5), D(2026, 1, 8))
    assert tier(engine, "2024-12", "x", VIP) == (None, "silver", None, "terminate", None, None)
    assert engine.card_events("2024-12", "x", VIP) == [("void", "cancelled", "silver")]
    # star gold (cum 3000.00, month 3000.00 in 2024-01) re-rated with month_paid 50.00: silver, downgrade card
    assert tier(engine, "2024-12", "d", STAR) == ("silver", "gold", "silver", "downgrade", D(2025, 2, 1), D(2026, 2, 8))
    assert engine.card_events("2024-12", "d", STAR) == [("void", "replaced", "gold"), ("issue", "downgrade", "silver")]


def test_eleven_absent_months_keep_the_state_and_the_twelfth_forgets() -> None:
    # k: row in 2024-01, absent 11 months, back in 2025-01. f: absent 12 months, back in 2025-02.
    o = row("o", "0.00")
    months = [[row("k", "900.00", "1000.00"), row("f", "900.00", "1000.00"), o]] + [[o]] * 11
    months += [[row("k", "0.00", "50.00"), o], [row("f", "0.00", "50.00"), o]]
    engine, _ = run_both("2024-01", months)
    # k was absent 11 months: cum_paid 1050.00 and month_paid 50.00 -> star silver, not from nothing
    assert tier(engine, "2024-12", "k", VIP)[3] == "lapse"  # re-rating while absent, no qualification
    assert tier(engine, "2025-01", "k", STAR)[:4] == ("silver", "normal", "silver", "upgrade")
    # f: silver re-rated to normal at E(2024-12) while absent (eligible, month_paid 0), then forgotten
    assert tier(engine, "2024-12", "f", STAR)[:4] == ("normal", "silver", "normal", "downgrade")
    assert tier(engine, "2025-01", "f", STAR)[:4] == ("normal", "normal", None, "lapse")
    assert tier(engine, "2025-01", "f", POINTS)[3] == "none"
    assert tier(engine, "2025-02", "f", STAR)[:4] == ("normal", None, "normal", "new")  # cum_paid from nothing


def test_absent_subscriber_keeps_its_last_attributes_and_present_rows_take_nulls() -> None:
    months = [
        [row("p", "0.00", points_balance=None, brand="gotone"), row("q", "0.00")],
        [row("q", "0.00")],  # p absent: brand gotone as last seen
        [row("p", "0.00", points_balance=2000, brand=None), row("q", "0.00")],
        [row("p", "0.00", points_balance=None, brand=None), row("q", "0.00")],
    ]
    engine, _ = run_both("2024-01", months)
    assert tier(engine, "2024-02", "p", CREDIT)[:4] == ("star_3", "star_3", "star_3", "retain")
    assert tier(engine, "2024-03", "p", CREDIT)[:4] == (None, "star_3", None, "lapse")
    assert tier(engine, "2024-03", "p", POINTS)[:4] == ("unlocked", None, "unlocked", "new")
    assert tier(engine, "2024-04", "p", POINTS)[:4] == (None, "unlocked", "unlocked", "retain")


def test_cancellation_terminates_every_program_and_the_id_restarts() -> None:
    months = [
        [row("c", "6000.00", "2000.00", customer_type="group", points_balance=2000)],
        [row("c", "6000.00", "2000.00", customer_type="group", points_balance=2000, status="cancelled")],
        [row("c", "0.00", "50.00", status="cancelled")],
        [row("c", "0.00", "50.00")],
    ]
    engine, _ = run_both("2024-01", months)
    for program in (VIP, STAR, CREDIT, POINTS):
        assert tier(engine, "2024-02", "c", program)[:4][1:] == (
            tier(engine, "2024-01", "c", program)[2],
            None,
            "terminate",
        )
        assert tier(engine, "2024-03", "c", program)[:4] == (None, None, None, "none")
    assert engine.card_events("2024-02", "c", VIP) == [("void", "cancelled", "supreme")]
    assert engine.card_events("2024-02", "c", STAR) == [("void", "cancelled", "silver")]
    assert tier(engine, "2024-04", "c", STAR)[:4] == ("normal", None, "normal", "new")
