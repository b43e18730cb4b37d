"""Property tests: invariants of the carry-forward state machine (SPEC section 5) over random histories.

Every month of a random history of a few subscribers is evaluated by the in-memory engine; then every
tier row and card event is checked, month by month in order, against invariants of SPEC 5 for all
four programs of the default rulebook. One engine run per example checks every invariant (a month
costs a full lazy evaluation, so running each history once keeps 45 examples near a minute).

The invariants:
- who is evaluated: each month, exactly the subscribers in the state after the previous month or
  with a row this month, each with one row per program; months_absent and present follow the rows;
  a subscriber leaves on a cancelled row or its 12th absent month in a row, and one seen again
  starts from nothing (no level held, cumulative paid = this month's paid);
- previous_level is the level the last evaluation left (none after leaving);
- validity programs (unicom_vip, unicom_star): a level never falls except by terminate, forgetting,
  or at the re-rating (E in the month before valid_until's month); it rises only by new or upgrade
  (a fresh validity from E); retain keeps level, validity and card; renew and downgrade happen only
  at the re-rating and extend the validity from the next month;
- permanent (points_redemption): a level held is kept (retain) except on terminate or forgetting;
- recompute (cmcc_credit): the level is the qualified level except when leaving by forgetting;
- cards, in month order: each card id is issued once; a void carries the id, level and validity
  of a card issued in an earlier month and still live, and each card is voided at most once; a
  ``replaced`` void comes with an issue to the same member in the same evaluation; a member never
  holds two live cards; the tier row's card is the live one; only card levels get cards.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.engine import Engine
from tests.extract_factory import row

FIRST_MONTH = dt.date(2024, 1, 1)
MAX_MONTHS = 15  # a level from month 1 is re-rated at month 12; 12 absent months in a row are forgotten
FORGET_AFTER = 12
VALIDITY_MONTHS = 12
LEVELS = {
    "unicom_vip": ["silver", "gold", "diamond", "supreme"],
    "unicom_star": ["normal", "silver", "gold", "platinum", "diamond"],
    "cmcc_credit": ["star_1", "star_2", "star_3", "star_4", "star_5"],
    "points_redemption": ["unlocked"],
}
RETENTION = {
    "unicom_vip": "validity",
    "unicom_star": "validity",
    "cmcc_credit": "recompute",
    "points_redemption": "permanent",
}
CARD_LEVELS = {
    "unicom_vip": {"silver", "gold", "diamond", "supreme"},
    "unicom_star": {"silver", "gold", "platinum", "diamond"},
    "cmcc_credit": set(),
    "points_redemption": set(),
}
ISSUE_REASON = {"new": "new", "upgrade": "upgrade", "renew": "renewal", "downgrade": "downgrade"}

# The first value of each list is what the simplest example uses: a present, eligible line that
# qualifies in every program, so the first example hypothesis tries is not an empty history.
entry = st.fixed_dictionaries(
    {
        "absent": st.sampled_from([False] * 5 + [True]),
        "billed": st.sampled_from(
            ["900.00", "0.00", "99.99", "150.00", "450.00", "899.99", "1800.00", "2700.00", "6000.00", "-50.00"]
        ),
        "paid": st.sampled_from(["1000.00", "0.00", "49.99", "50.00", "500.00", "2000.00", "3000.00", "10000.00"]),
        "status": st.sampled_from(["active"] * 10 + ["suspended", "cancelled"]),
        "service_type": st.sampled_from(["mobile", "mobile", "fixed", "broadband"]),
        "customer_type": st.sampled_from(["individual", "family", "group"]),
        "real_name_verified": st.sampled_from([True, True, False]),
        "brand": st.sampled_from(["gotone", "mzone", "easyown", None]),
        "points_balance": st.sampled_from([2000, None, 0, 1999, 5000]),
        "suspension_count": st.sampled_from([0, 0, 0, 1, 2]),
        # tenure 14 years; 1 -> 2 years at 2024-06; 0 -> 1 year at 2024-12; a leap-day anniversary
        "activation_date": st.sampled_from(
            [dt.date(2010, 1, 15), dt.date(2022, 6, 1), dt.date(2023, 12, 31), dt.date(2020, 2, 29)]
        ),
    }
)
Entry = dict[str, Any] | None
History = list[list[Entry]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """1 to 5 subscribers over the same 2 to 16 months; some with a long silence (to be forgotten)."""
    months = draw(st.integers(min_value=2, max_value=MAX_MONTHS))
    subscribers = []
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        entries: list[Entry] = [
            None if e["absent"] else e for e in draw(st.lists(entry, min_size=months, max_size=months))
        ]
        silence = draw(st.none() | st.tuples(st.integers(0, months - 1), st.integers(1, FORGET_AFTER + 1)))
        if silence is not None:
            start, length = silence
            entries[start : start + length] = [None] * len(entries[start : start + length])
        subscribers.append(entries)
    return subscribers


def add_months(day: dt.date, count: int) -> dt.date:
    index = day.year * 12 + day.month - 1 + count
    return day.replace(year=index // 12, month=index % 12 + 1)


def label(month: dt.date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def extract_row(subscriber: str, e: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in e.items() if k not in ("absent", "billed", "paid")}
    return row(subscriber, e["billed"], paid=e["paid"], **fields)


def run(history: History) -> tuple[Engine, list[str]]:
    engine = Engine()
    months = [label(add_months(FIRST_MONTH, i)) for i in range(len(history[0]))]
    for index, month in enumerate(months):
        rows = [extract_row(f"s{n}", s[index]) for n, s in enumerate(history) if s[index] is not None]
        engine.run(month, rows)
    return engine, months


def rank(program: str, level: str | None) -> int:
    return -1 if level is None else LEVELS[program].index(level)


# A hand-made long history that always reaches what random ones reach only sometimes: re-ratings
# (renew, downgrade, lapse), star normal <-> silver cards, forgetting, cancellation and a recycled id.
_ACTIVE = {
    "absent": False,
    "paid": "0.00",
    "status": "active",
    "service_type": "mobile",
    "customer_type": "individual",
    "real_name_verified": True,
    "brand": "gotone",
    "points_balance": 0,
    "suspension_count": 0,
    "activation_date": dt.date(2010, 1, 15),
}


def _month(billed: str, paid: str = "0.00", **changes: Any) -> dict[str, Any]:
    return {**_ACTIVE, "billed": billed, "paid": paid, **changes}


RICH_HISTORY: History = [
    # vip diamond downgraded to silver at the re-rating; star silver downgraded to normal (a void only)
    [_month("2700.00", "1000.00")] + [_month("0.00")] * 10 + [_month("1000.00")] + [_month("0.00")] * 4,
    # silver renewed at the re-rating
    [_month("900.00")] + [_month("150.00")] * 15,
    # silver lapsing at the re-rating; points unlocked and kept with a zero balance, then while absent
    [_month("900.00", points_balance=5000)] + [_month("0.00")] * 11 + [None] * 4,
    # present once, then forgotten at its 12th absent month, then seen again from nothing
    [_month("1800.00", "3000.00", points_balance=2000)] + [None] * 12 + [_month("900.00")] * 3,
    # cancelled while holding levels, then the id recycled
    [_month("900.00", "1000.00")] * 3 + [_month("900.00", status="cancelled")] + [_month("100.00")] * 12,
]


@settings(max_examples=45, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(RICH_HISTORY)
@given(histories())
def test_carry_forward_invariants_hold_month_by_month_in_every_program(history: History) -> None:
    engine, months = run(history)
    in_state: dict[str, int] = {}  # subscriber -> months absent in a row, after the previous month
    last: dict[tuple[str, str], dict[str, Any]] = {}  # (subscriber, program) -> its last row while in the state
    issued: dict[str, tuple[int, dict[str, Any]]] = {}  # card id -> (month index, issue event)
    voided: set[str] = set()
    live: dict[tuple[str, str], str] = {}  # (subscriber, program) -> the card id not voided yet

    for index, month in enumerate(months):
        evaluated_on = add_months(FIRST_MONTH, index + 1).replace(day=5)
        present = {f"s{n}": s[index] for n, s in enumerate(history) if s[index] is not None}
        evaluated = set(in_state) | set(present)
        absent = {s: 0 if s in present else in_state[s] + 1 for s in evaluated}
        cancelled = {s for s, e in present.items() if e["status"] == "cancelled"}
        forgotten = {s for s in evaluated if absent[s] >= FORGET_AFTER}
        tiers = engine.tiers[month]

        # one row per program per evaluated subscriber, and nobody else
        for program in LEVELS:
            ids = tiers.filter(pl.col("program") == program)["subscriber_id"].to_list()
            assert sorted(ids) == sorted(evaluated), (month, program, ids, evaluated)
        assert tiers.height == len(LEVELS) * len(evaluated), month

        rows = {(r["subscriber_id"], r["program"]): r for r in tiers.iter_rows(named=True)}
        for (subscriber, program), r in rows.items():
            event(f"{program}: {r['action']}")
            where = (month, subscriber, program, r)
            assert r["evaluated_on"] == evaluated_on, where
            assert (r["present"], r["months_absent"]) == (subscriber in present, absent[subscriber]), where
            before = last.get((subscriber, program))
            assert r["previous_level"] == (before["level"] if before else None), where
            if subscriber not in in_state:  # new to the state, or back after leaving: from nothing
                assert r["cum_paid"] == r["month_paid"], where
            if subscriber in cancelled:
                assert r["qualified_level"] is None and r["level"] is None, where
                assert r["action"] == ("terminate" if before and before["level"] else "none"), where
            elif subscriber in forgotten:
                assert r["level"] is None, where
                assert r["action"] == ("lapse" if before and before["level"] else "none"), where
            else:
                assert r["action"] != "terminate", where
            check_retention(program, r, before, leaving=subscriber in cancelled | forgotten)

        # cards, in month order
        cards = engine.cards[month]
        assert set(cards["program"]) <= {p for p, levels in CARD_LEVELS.items() if levels}, month
        events = list(cards.iter_rows(named=True))
        voids = [c for c in events if c["event"] == "void"]
        issues = [c for c in events if c["event"] == "issue"]
        assert len(voids) + len(issues) == cards.height, month
        for void in voids:
            key, card = (void["subscriber_id"], void["program"]), void["card_id"]
            r = rows[key]
            assert card in issued and issued[card][0] < index, ("void of a card not issued earlier", month, void)
            assert card not in voided, ("card voided twice", month, void)
            assert live.get(key) == card, ("void of a card the member does not hold", month, void, live.get(key))
            first = issued[card][1]
            assert (void["level"], void["valid_from"], void["valid_until"]) == (
                first["level"],
                first["valid_from"],
                first["valid_until"],
            ), (month, void, first)
            assert void["level"] == r["previous_level"], (month, void, r)
            expected_reason = {"terminate": "cancelled", "lapse": "lapsed"}.get(
                r["action"], "replaced" if r["level"] in CARD_LEVELS[key[1]] else "downgraded"
            )
            assert void["reason"] == expected_reason, (month, void, r)
            if void["reason"] == "replaced":
                assert any((i["subscriber_id"], i["program"]) == key for i in issues), (month, void)
            voided.add(card)
            del live[key]
        for issue in issues:
            key, card = (issue["subscriber_id"], issue["program"]), issue["card_id"]
            r = rows[key]
            assert card not in issued, ("card issued twice", month, issue)
            assert key not in live, ("a second live card", month, issue, live[key])
            assert issue["level"] in CARD_LEVELS[key[1]] and issue["level"] == r["level"], (month, issue, r)
            assert issue["reason"] == ISSUE_REASON[r["action"]], (month, issue, r)
            assert (issue["valid_from"], issue["valid_until"], issue["effective_on"]) == (
                r["valid_from"],
                r["valid_until"],
                r["effective_on"],
            ), (month, issue, r)
            issued[card] = (index, issue)
            live[key] = card
        for key, r in rows.items():
            assert r["card_id"] == live.get(key), (month, key, r, live.get(key))
            has_card = r["level"] in CARD_LEVELS[key[1]]
            assert (r["card_id"] is not None) == has_card, (month, key, r)

        # the state after this month
        leaving = cancelled | forgotten
        in_state = {s: absent[s] for s in evaluated if s not in leaving}
        last = {key: r for key, r in rows.items() if key[0] in in_state}
        assert not any(key[0] in leaving for key in live), (month, live)


def check_retention(program: str, r: dict[str, Any], before: dict[str, Any] | None, *, leaving: bool) -> None:
    where = (program, r, before)
    action, level, q, p = r["action"], r["level"], r["qualified_level"], r["previous_level"]
    falls, rises = rank(program, level) < rank(program, p), rank(program, level) > rank(program, p)
    match RETENTION[program]:
        case "validity":
            evaluated_on = r["evaluated_on"]
            next_month = add_months(evaluated_on.replace(day=1), 1)
            u = before["valid_until"] if before and before["level"] else None
            rerating = u is not None and add_months(u.replace(day=1), -1) == evaluated_on.replace(day=1)
            if falls:
                assert action in {"downgrade", "lapse", "terminate"}, where
                assert leaving or rerating or (u is not None and u < evaluated_on), ("fell inside validity", where)
            if rises:
                assert action in {"new", "upgrade"} and level == q, where
            if not leaving and u is not None and u >= evaluated_on and rank(program, q) > rank(program, p):
                assert action == "upgrade", ("a higher qualification inside validity is not an upgrade", where)
            if action == "lapse" and not leaving:
                assert (rerating and q is None) or (u is not None and u < evaluated_on), where
            if action in {"new", "upgrade"}:
                assert (r["valid_from"], r["valid_until"]) == (
                    evaluated_on,
                    add_months(evaluated_on, VALIDITY_MONTHS).replace(day=8),  # expiry(month(E) + V)
                ), where
            if action in {"renew", "downgrade"}:
                assert before is not None and u is not None and rerating, ("re-rated outside the re-rating", where)
                assert level == q and (action == "renew") == (level == p), where
                assert (r["valid_from"], r["valid_until"]) == (next_month, add_months(u, VALIDITY_MONTHS)), where
            if action == "retain":
                assert before is not None and not rerating, where
                assert (level, r["valid_from"], r["valid_until"]) == (
                    p,
                    before["valid_from"],
                    before["valid_until"],
                ), where
            if level is None:
                assert (r["valid_from"], r["valid_until"]) == (None, None), where
            else:
                assert r["valid_until"].day == 8 and r["valid_until"] > evaluated_on, where
        case "permanent":
            if p is not None:
                assert action in ({"terminate", "lapse"} if leaving else {"retain"}), where
                assert level == (None if leaving else p), where
            else:
                assert action == ("new" if q is not None and not leaving else "none"), where
                assert level == (q if not leaving else None), where
        case "recompute":
            if leaving:
                assert level is None, where
            else:
                assert level == q, ("recompute level differs from the qualified level", where)
                expected = (
                    ("none" if q is None else "new")
                    if p is None
                    else "lapse"
                    if q is None
                    else "upgrade"
                    if rises
                    else "downgrade"
                    if falls
                    else "retain"
                )
                assert action == expected, where
    if RETENTION[program] != "validity":
        assert (r["valid_from"], r["valid_until"], r["card_id"]) == (None, None, None), where
