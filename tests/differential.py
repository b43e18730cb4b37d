"""The differential test's parts: random histories and rulebook settings, fixed histories for the rare
transitions, the comparison of one month's tables with the reference model, and the coverage check.

Two entry points use them: ``tests/transforms/test_against_reference.py`` runs the pure engine
month by month in memory; ``tests/flows/test_published_against_reference.py`` publishes the same
histories through a multi-bucket backfill and compares what a reader gets back from the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import polars as pl
from hypothesis import strategies as st

from rulebook import Calendar, Metrics, Rulebook, load_rulebook
from schemas.contract import ACTIONS, CARD_REASONS, REASON_CODES
from tests.extract_factory import row
from tests.reference_model import (
    CREDIT,
    DEFAULTS,
    LEVELS,
    POINTS,
    PROGRAMS,
    RETENTION,
    STAR,
    VIP,
    MonthResult,
    Override,
    Settings,
    last_day,
    month_index,
    month_label,
)

D = dt.date

# ---------------------------------------------------------------- settings as a rulebook


def rulebook_for(settings: Settings) -> Rulebook:
    """The default rulebook with the calendar and metric settings of ``settings``."""
    base = load_rulebook()
    return base.model_copy(
        update={
            "calendar": Calendar(
                evaluation_day=settings.evaluation_day,
                expiry_day=settings.expiry_day,
                validity_months=settings.validity_months,
                at_risk_horizon_months=settings.at_risk_horizon_months,
            ),
            "metrics": Metrics(
                window_months=settings.window_months,
                average_divisor=settings.average_divisor,
                forget_after_months=settings.forget_after_months,
            ),
            "checksum": f"{base.checksum}:{settings}",
        }
    )


def rulebook_toml(settings: Settings) -> str:
    """The same rulebook as a TOML file's text (for runs through the command line)."""
    from rulebook import default_rulebook_path

    text = default_rulebook_path().read_text(encoding="utf-8")
    values = {
        "evaluation_day": settings.evaluation_day,
        "expiry_day": settings.expiry_day,
        "validity_months": settings.validity_months,
        "at_risk_horizon_months": settings.at_risk_horizon_months,
        "window_months": settings.window_months,
        "average_divisor": f'"{settings.average_divisor}"',
        "forget_after_months": settings.forget_after_months,
    }
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {values[key]}" if key in values else line)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- random histories

BILLS = [
    "0.00", "0.01", "-0.01", "-50.00", "20.00", "50.00", "99.99", "100.00", "100.01", "120.00", "120.01",
    "149.99", "150.00", "150.01", "200.00", "299.99", "300.00", "450.00", "480.00", "600.00", "720.00",
    "899.99", "900.00", "1000.00", "1200.00", "1800.00", "2400.00", "2700.00", "6000.00", "6000.01",
]  # fmt: skip
PAIDS = [
    "0.00", "-20.00", "49.99", "50.00", "499.99", "500.00", "999.99", "1000.00", "1999.99", "2000.00",
    "2500.00", "3000.00", "10000.00",
]  # fmt: skip
ATTRIBUTE_CHOICES: dict[str, list[Any]] = {
    "customer_type": ["individual", "individual", "family", "group", "group"],
    "service_type": ["mobile", "mobile", "mobile", "fixed", "broadband"],
    "plan_category": ["standard"] * 6 + ["data_card", "wo_family", "payphone"],
    "payment_type": ["postpaid"] * 4 + ["prepaid"],
    "account_class": ["normal"] * 6 + ["public_free", "test"],
    "real_name_verified": [True, True, True, False],
    "brand": ["gotone", "mzone", "easyown", None, None],
}


@dataclass(frozen=True)
class PlannedOverride:
    """An approved override and the months (offsets from the case's first month) it is in force."""

    override: Override
    first: int
    last: int | None  # None: open-ended


@dataclass(frozen=True)
class Case:
    """A differential case: rulebook settings, the first billing month, each month's valid rows and
    the approved overrides with their months."""

    settings: Settings
    first: str
    monthly: list[list[dict[str, Any]]]
    overrides: tuple[PlannedOverride, ...] = ()

    def in_force(self, offset: int) -> list[Override]:
        return [p.override for p in self.overrides if p.first <= offset and (p.last is None or offset <= p.last)]


def engine_overrides(overrides: list[Override]) -> list[dict[str, Any]]:
    """Overrides in force as the engine reads them (``OVERRIDES_IN_FORCE`` rows)."""
    return [
        {"program": o.program, "subscriber_id": o.subscriber_id, "override_id": o.override_id, "kind": o.kind,
         "level": o.level, "reason": o.reason}
        for o in overrides
    ]  # fmt: skip


def money(fen: int) -> Decimal:
    return Decimal(fen) / 100


def activation_dates(year: int) -> st.SearchStrategy[dt.date]:
    """Leap days, month ends and firsts from seven years before ``year`` to ``year + 2``."""
    years = st.integers(year - 7, year + 2)
    leap = st.integers((year - 7) // 4, (year + 2) // 4).map(lambda k: D(4 * k, 2, 29))
    month_end = st.tuples(years, st.integers(0, 11)).map(lambda ym: last_day(ym[0] * 12 + ym[1]))
    first = st.tuples(years, st.integers(1, 12)).map(lambda ym: D(ym[0], ym[1], 1))
    any_day = st.dates(D(year - 7, 1, 1), D(year + 2, 12, 31))
    return st.one_of(leap, month_end, first, any_day)


settings_strategy: st.SearchStrategy[Settings] = st.one_of(
    st.just(DEFAULTS),
    st.builds(
        Settings,
        evaluation_day=st.sampled_from([1, 5, 28]),
        expiry_day=st.sampled_from([1, 4, 8, 28]),
        validity_months=st.sampled_from([1, 2, 3, 12]),
        at_risk_horizon_months=st.sampled_from([1, 3, 6]),
        window_months=st.sampled_from([1, 3, 6]),
        average_divisor=st.sampled_from(["window", "months_in_state"]),
        forget_after_months=st.sampled_from([1, 2, 3, 12]),
    ),
)


@st.composite
def subscriber_history(draw: st.DrawFn, subscriber_id: str, first: int, months: int) -> list[dict[str, Any] | None]:
    """One subscriber's rows month by month (None = no row): presence and absence in blocks."""
    pattern: list[bool] = [False] * draw(st.sampled_from([0, 0, 0, 1, 3, 8]))
    present = True
    while len(pattern) < months:
        if present:
            length = draw(st.integers(1, 16))
        else:
            length = draw(st.sampled_from([1, 2, 3, 5, 10, 11, 11, 12, 12, 12, 13]))
        pattern += [present] * length
        present = not present

    attributes = {name: draw(st.sampled_from(choices)) for name, choices in ATTRIBUTE_CHOICES.items()}
    activations = activation_dates((first + months) // 12)
    activation = draw(activations)
    points: int | None = draw(st.sampled_from([0, None, 1999, 2000]))
    history: list[dict[str, Any] | None] = []
    for offset in range(months):
        if not pattern[offset]:
            history.append(None)
            continue
        if draw(st.integers(0, 5)) == 0:  # an attribute changes
            name = draw(st.sampled_from(sorted(ATTRIBUTE_CHOICES)))
            attributes[name] = draw(st.sampled_from(ATTRIBUTE_CHOICES[name]))
        if draw(st.integers(0, 12)) == 0:
            activation = draw(activations)
        if draw(st.integers(0, 3)) == 0:
            points = draw(st.sampled_from([None, 0, 1999, 2000, 2001, 5000]))
        billed = draw(st.one_of(st.sampled_from(BILLS), st.integers(-500_00, 7000_00).map(money)))
        paid_kind = draw(st.integers(0, 3))
        if paid_kind == 0:
            paid = billed
        elif paid_kind == 1:
            paid = draw(st.integers(-100_00, 25000_00).map(money))
        else:
            paid = Decimal(draw(st.sampled_from(PAIDS)))
        status = draw(st.sampled_from(["active"] * 28 + ["suspended"] * 2 + ["cancelled"]))
        month_end = last_day(first + offset)
        history.append(
            row(
                subscriber_id,
                billed,
                paid,
                **attributes,
                activation_date=min(activation, month_end),
                status=status,
                suspension_count=draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2])),
                points_balance=points,
            )
        )
    return history


OVERRIDE_REASONS = ["key account renegotiation", "fraud check [ticket 7]", "[bold]vip[/bold] promise"]


@st.composite
def planned_overrides(draw: st.DrawFn, subscriber_id: str, months: int, number: int) -> list[PlannedOverride]:
    """Up to two non-overlapping approved overrides of one program for one subscriber."""
    program = draw(st.sampled_from(PROGRAMS))
    planned: list[PlannedOverride] = []
    start = draw(st.integers(0, months - 1))
    for index in range(draw(st.integers(1, 2))):
        if start >= months:
            break
        kind = draw(st.sampled_from(["grant", "grant", "block"]))
        length = draw(st.sampled_from([1, 2, 3, 6, None]))
        last = None if length is None else start + length - 1
        override = Override(
            override_id=f"OVR-{number:04d}{index}",
            program=program,
            subscriber_id=subscriber_id,
            kind=kind,
            level=draw(st.sampled_from(LEVELS[program])) if kind == "grant" else None,
            reason=draw(st.sampled_from(OVERRIDE_REASONS)),
        )
        planned.append(PlannedOverride(override, start, last))
        if last is None:
            break
        start = last + 1 + draw(st.integers(0, 3))
    return planned


@st.composite
def histories(draw: st.DrawFn, *, max_subscribers: int = 8, with_overrides: bool = True) -> Case:
    settings = draw(settings_strategy)
    first = month_index("2011-01") + draw(st.integers(0, 6 * 12))
    months = draw(st.integers(13, 24))
    count = draw(st.integers(3, max_subscribers))
    per_subscriber = [draw(subscriber_history(f"s{k}", first, months)) for k in range(count)]
    monthly = [[h[m] for h in per_subscriber if h[m] is not None] for m in range(months)]
    overrides: list[PlannedOverride] = []
    if with_overrides:
        for k in range(count):
            if draw(st.integers(0, 2)) == 0:
                overrides += draw(planned_overrides(f"s{k}", months, k))
    return Case(settings, month_label(first), monthly, tuple(overrides))


# ---------------------------------------------------------------- fixed histories for the rare transitions


def rare_transitions() -> Case:
    """Default settings, 2024-01 to 2025-02: every VIP and star re-rating outcome, forgetting in every
    program, cancellation of every program, and both kinds of missed threshold.

    n also pays 1000.00 in 2024-04 (star normal to silver); r is billed 2400.00 in 2024-10 (credit upgrade);
    g has no brand (credit none).
    v: VIP silver renewed at the re-rating E(2024-12) (900.00 in 2024-01 and 2024-07 keep the window at 900.00).
    d: VIP gold downgraded to silver at the re-rating (1800.00, then 900.00 in 2024-07).
    n: VIP silver lapsed at the re-rating as not eligible (prepaid in 2024-12).
    s: star silver re-rated to normal (void ``downgraded``), at risk with a refund leaving cum_paid 900.00;
    r: star silver renewed (card ``renewal``).
    f: every program held, then absent from 2024-02: forgotten at its 12th absent month (2025-01).
    c: every program held, cancelled in 2024-02 (terminate, void ``cancelled``).
    """
    months = 14
    rows: list[list[dict[str, Any]]] = [[] for _ in range(months)]
    for m in range(months):
        rows[m].append(row("v", "900.00" if m in (0, 6) else "0.00", "0.00"))
        rows[m].append(row("d", {0: "1800.00", 6: "900.00"}.get(m, "0.00"), "0.00"))
        payment = "prepaid" if m == 11 else "postpaid"
        rows[m].append(
            row("n", "900.00" if m in (0, 6) else "0.00", "1000.00" if m == 3 else "0.00", payment_type=payment)
        )
        rows[m].append(row("s", "0.00", {0: "1000.00", 2: "-100.00"}.get(m, "0.00")))
        rows[m].append(row("r", "2400.00" if m == 9 else "0.00", "1000.00" if m == 0 else "50.00"))
        if m == 0:
            rows[m].append(row("f", "6000.00", "2000.00", points_balance=2000, customer_type="group"))
        if m <= 1:
            status = "cancelled" if m == 1 else "active"
            rows[m].append(row("c", "6000.00", "2000.00", points_balance=2000, customer_type="group", status=status))
    overrides = (
        # g: prepaid, so never eligible for VIP: granted silver from 2024-01, open-ended (new by override)
        PlannedOverride(Override("OVR-g", VIP, "g", "grant", "silver", "key account"), 0, None),
        # v: silver lifted to gold for 2024-03..04 (upgrade by override; gold kept within its validity)
        PlannedOverride(Override("OVR-v", VIP, "v", "grant", "gold", "contract renegotiation"), 2, 3),
        # b: silver blocked in 2024-04 only (terminate, void blocked), new again when the block ends
        PlannedOverride(Override("OVR-b", VIP, "b", "block", None, "fraud investigation"), 3, 3),
        # r: star silver blocked for one month while its points are granted
        PlannedOverride(Override("OVR-r", STAR, "r", "block", None, "[red]hold[/red]"), 4, 4),
        PlannedOverride(Override("OVR-p", POINTS, "r", "grant", "unlocked", "goodwill"), 5, 6),
    )
    for m in range(months):
        rows[m].append(row("g", "0.00", "0.00", payment_type="prepaid", brand=None))
        rows[m].append(row("b", "900.00" if m == 0 else "0.00", "0.00"))
    return Case(DEFAULTS, "2024-01", rows, overrides)


def validity_ends_unrated() -> Case:
    """``validity_months = 1``: a membership's re-rating month is the month it started in, so it is
    never re-rated and lapses with ``validity_ended`` once its expiry has passed; a shorter
    forgetting and window, and the months-in-state divisor, exercise those settings too."""
    settings = Settings(validity_months=1, forget_after_months=2, window_months=3, average_divisor="months_in_state")
    rows = [
        [row("a", "900.00", "1000.00"), row("b", "300.00", "3000.00")],
        [row("a", "0.00", "0.00"), row("b", "300.00", "600.00")],
        [row("a", "0.00", "0.00")],
        [row("a", "900.00", "50.00")],
        [row("a", "0.00", "0.00")],
    ]
    return Case(settings, "2024-01", rows)


FIXED_CASES = (rare_transitions(), validity_ends_unrated())

# ---------------------------------------------------------------- comparison


def tier_key(r: dict[str, Any]) -> tuple[str, str]:
    return (r["program"], r["subscriber_id"])


def card_key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    return (r["program"], r["subscriber_id"], r["event"], r["card_id"] or "")


def state_key(r: dict[str, Any]) -> tuple[str]:
    return (r["subscriber_id"],)


def membership_key(r: dict[str, Any]) -> tuple[str, str]:
    return (r["subscriber_id"], r["program"])


KEYS = {
    "tier_assignments": tier_key,
    "card_issuance": card_key,
    "at_risk": tier_key,
    "state": state_key,
    "memberships": membership_key,
}


def _keyed(name: str, rows: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], dict[str, Any]]:
    keyed: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = KEYS[name](r)
        assert key not in keyed, f"{name}: two rows for {key}"
        keyed[key] = r
    return keyed


def compare_month(month: str, tables: dict[str, pl.DataFrame], expected: MonthResult) -> None:
    """Every column of every compared table equals the reference's, row by row (the engine's tables
    must have exactly the reference's columns: a column added to the contract must be modelled)."""
    wanted = {
        "tier_assignments": expected.tiers,
        "card_issuance": expected.cards,
        "at_risk": expected.at_risk,
        "state": expected.state,
        "memberships": expected.memberships,
    }
    for name, expected_rows in wanted.items():
        frame = tables[name].drop("billing_month", strict=False)
        if expected_rows:
            assert set(frame.columns) == set(expected_rows[0]), (
                f"{month} {name}: columns differ: engine only {sorted(set(frame.columns) - set(expected_rows[0]))}, "
                f"reference only {sorted(set(expected_rows[0]) - set(frame.columns))}"
            )
        got = _keyed(name, frame.iter_rows(named=True))
        want = _keyed(name, expected_rows)
        if got == want:
            continue
        lines = [f"{month} {name} differs"]
        for key in sorted(set(got) | set(want)):
            g, w = got.get(key), want.get(key)
            if g == w:
                continue
            if g is None or w is None:
                lines.append(f"  {key}: engine {g}\n  {' ' * len(str(key))}  reference {w}")
                continue
            diff = {c: (g.get(c), w.get(c)) for c in sorted(set(g) | set(w)) if g.get(c) != w.get(c)}
            lines.append(f"  {key}: (engine, reference) {diff}")
            if len(lines) > 12:
                break
        raise AssertionError("\n".join(lines))


# ---------------------------------------------------------------- coverage


def _possible_actions(program: str) -> set[str]:
    retention = RETENTION[program]
    if retention == "validity":
        return set(ACTIONS)
    if retention == "recompute":
        return set(ACTIONS) - {"renew"}
    return {"none", "new", "retain", "lapse", "terminate"}  # permanent: lapse only by forgetting


REQUIRED_ACTIONS = {(program, action) for program in PROGRAMS for action in _possible_actions(program)}


@dataclass
class Coverage:
    """What a run of the differential test reached: (program, action), card reasons, reason codes."""

    actions: set[tuple[str, str]] = field(default_factory=set)
    card_reasons: set[str] = field(default_factory=set)
    reason_codes: set[str] = field(default_factory=set)

    def add(self, tables: dict[str, pl.DataFrame]) -> None:
        tiers = tables["tier_assignments"]
        self.actions |= set(tiers.select("program", "action").unique().iter_rows())
        self.reason_codes |= set(tiers.get_column("reason_code").drop_nulls().unique())
        self.card_reasons |= set(tables["card_issuance"].get_column("reason").unique())

    def missing(self) -> dict[str, list[Any]]:
        gaps = {
            "actions": sorted(REQUIRED_ACTIONS - self.actions),
            "card reasons": sorted(set(CARD_REASONS) - self.card_reasons),
            "reason codes": sorted(set(REASON_CODES) - self.reason_codes),
        }
        return {name: gap for name, gap in gaps.items() if gap}


__all__ = ["CREDIT", "FIXED_CASES", "POINTS", "STAR", "VIP", "Case", "Coverage", "compare_month", "histories"]
