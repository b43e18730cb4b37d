"""Property tests: invariants of the carry-forward state machine over random monthly histories."""

from __future__ import annotations

import datetime as dt

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine import Engine
from tests.extract_factory import row

# 15 months reach the first re-ratings (a level from month 1 is re-rated at month 12); each month
# costs a full lazy evaluation, so the histories stay short and few.
MONTHS = [f"{2023 + (i // 12)}-{i % 12 + 1:02d}" for i in range(15)]
LEVELS = {
    "unicom_vip": ["silver", "gold", "diamond", "supreme"],
    "unicom_star": ["normal", "silver", "gold", "platinum", "diamond"],
}
CARD_LEVELS = {"unicom_vip": set(LEVELS["unicom_vip"]), "unicom_star": {"silver", "gold", "platinum", "diamond"}}

month_entry = st.one_of(
    st.none(),  # absent
    st.fixed_dictionaries(
        {
            "billed": st.sampled_from(["0.00", "99.99", "100.00", "149.99", "150.00", "300.00", "450.00", "1000.00"]),
            "paid": st.sampled_from(["0.00", "49.99", "50.00", "500.00", "1000.00", "2000.00", "3000.00"]),
            "status": st.sampled_from(["active"] * 12 + ["suspended", "cancelled"]),
            "service_type": st.sampled_from(["mobile", "mobile", "fixed", "broadband"]),
            "customer_type": st.sampled_from(["individual", "family", "group"]),
        }
    ),
)
history = st.lists(st.lists(month_entry, min_size=len(MONTHS), max_size=len(MONTHS)), min_size=1, max_size=4)


def run(histories: list[list[dict[str, str] | None]]) -> Engine:
    engine = Engine()
    for index, month in enumerate(MONTHS):
        rows = []
        for number, subscriber in enumerate(histories):
            entry = subscriber[index]
            if entry is not None:
                rows.append(
                    row(
                        f"s{number}",
                        entry["billed"],
                        paid=entry["paid"],
                        status=entry["status"],
                        service_type=entry["service_type"],
                        customer_type=entry["customer_type"],
                        activation_date=dt.date(2020, 2, 29),
                    )
                )
        engine.run(month, rows)
    return engine


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history)
def test_validity_levels_fall_only_at_re_rating_termination_or_forgetting(
    histories: list[list[dict[str, str] | None]],
) -> None:
    engine = run(histories)
    tiers = pl.concat([engine.tiers[m].with_columns(pl.lit(m).alias("month")) for m in MONTHS])
    for program, levels in LEVELS.items():
        rank = {name: i for i, name in enumerate(levels)}
        rows = tiers.filter(pl.col("program") == program).sort("subscriber_id", "month")
        for r in rows.iter_rows(named=True):
            before = -1 if r["previous_level"] is None else rank[r["previous_level"]]
            after = -1 if r["level"] is None else rank[r["level"]]
            if after < before:
                assert r["action"] in {"downgrade", "lapse", "terminate"}, r
                if r["action"] == "downgrade":
                    # a fall inside validity happens only at the re-rating, and renews from the next month
                    next_month = (r["evaluated_on"].replace(day=1) + dt.timedelta(days=32)).replace(day=1)
                    assert r["valid_from"] == next_month, r
            if r["level"] is not None:
                assert r["valid_until"] is not None and r["valid_until"].day == 8, r
                assert r["valid_from"] <= r["evaluated_on"] + dt.timedelta(days=31), r
                assert r["valid_until"] > r["evaluated_on"], r
                has_card = r["level"] in CARD_LEVELS[program]
                assert (r["card_id"] is not None) == has_card, r
            else:
                assert r["valid_from"] is None and r["valid_until"] is None and r["card_id"] is None, r


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history)
def test_every_card_issued_is_voided_at_most_once_and_only_after_issue(
    histories: list[list[dict[str, str] | None]],
) -> None:
    engine = run(histories)
    cards = pl.concat([engine.cards[m] for m in MONTHS])
    issued = cards.filter(pl.col("event") == "issue")
    voided = cards.filter(pl.col("event") == "void")
    assert issued["card_id"].is_unique().all()
    assert voided["card_id"].is_unique().all()
    assert set(voided["card_id"]) <= set(issued["card_id"])
    held = pl.concat([engine.tiers[m] for m in MONTHS])["card_id"].drop_nulls()
    assert set(held) <= set(issued["card_id"])
