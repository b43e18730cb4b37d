"""An independent reference model of SPEC sections 3 to 5 and 8 (members at risk).

Written from /work/shared/SPEC.md, rulebook/default.toml and the documented output format of
docs/rules.md (card ids, reason texts) only, never from the engine: plain Python, integer fen,
``datetime.date``, dicts. It is deliberately slow and simple, for cross-checking the real engine.

The programs and thresholds are the default rulebook's; the calendar and metric settings (evaluation
and expiry days, validity, window, divisor, forgetting, at-risk horizon) are a :class:`Settings`, so
the differential test can draw them at random like any rulebook an operator may write.

Input: a first billing month (``"YYYY-MM"``) and a list of months, each a list of valid extract rows
as built by ``tests.extract_factory.row`` (Decimal yuan amounts, at most one row per subscriber).
Output: one :class:`MonthResult` per month with every column of the tier rows, the card events, the
members at risk, and the carried state and memberships after the month.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

# ---------------------------------------------------------------- settings (rulebook [calendar], [metrics])


@dataclass(frozen=True)
class Settings:
    evaluation_day: int = 5
    expiry_day: int = 8
    validity_months: int = 12
    at_risk_horizon_months: int = 3
    window_months: int = 6
    average_divisor: Literal["window", "months_in_state"] = "window"
    forget_after_months: int = 12


DEFAULTS = Settings()

# ---------------------------------------------------------------- default rulebook programs

VIP = "unicom_vip"
STAR = "unicom_star"
CREDIT = "cmcc_credit"
POINTS = "points_redemption"
PROGRAMS = (VIP, STAR, CREDIT, POINTS)

LEVELS = {
    VIP: ["silver", "gold", "diamond", "supreme"],
    STAR: ["normal", "silver", "gold", "platinum", "diamond"],
    CREDIT: ["star_1", "star_2", "star_3", "star_4", "star_5"],
    POINTS: ["unlocked"],
}
RETENTION = {VIP: "validity", STAR: "validity", CREDIT: "recompute", POINTS: "permanent"}
CARD_LEVELS = {
    VIP: {"silver", "gold", "diamond", "supreme"},
    STAR: {"silver", "gold", "platinum", "diamond"},
    CREDIT: set(),
    POINTS: set(),
}
CARD_PREFIX = {VIP: "VIP", STAR: "STAR", CREDIT: "CREDIT", POINTS: "POINTS"}

# Eligibility per program as (attribute, allowed values), in the order the reason names the first
# failing one (docs/rules.md: the rulebook's attribute order customer_type, service_type,
# plan_category, payment_type, account_class, brand, status, real_name_verified).
ELIGIBLE: dict[str, list[tuple[str, list[Any]]]] = {
    VIP: [("plan_category", ["standard"]), ("payment_type", ["postpaid"]), ("account_class", ["normal"])],
    STAR: [("service_type", ["mobile"]), ("real_name_verified", [True])],
    CREDIT: [("brand", ["gotone", "mzone", "easyown"])],
    POINTS: [],
}

# unicom_vip: minimum average bill in fen per level and service type; supreme is for groups only.
VIP_MIN_AVG_FEN = {
    "silver": {"mobile": 150_00, "fixed": 100_00, "broadband": 100_00},
    "gold": {"mobile": 300_00, "fixed": 150_00, "broadband": 150_00},
    "diamond": {"mobile": 450_00, "fixed": 300_00, "broadband": 300_00},
    "supreme": {"mobile": 1000_00, "fixed": 1000_00, "broadband": 1000_00},
}

# unicom_star: (min cum_paid, min month_paid) in fen; normal has no condition.
STAR_MIN_PAID_FEN = {
    "normal": (None, None),
    "silver": (1000_00, 50_00),
    "gold": (3000_00, 500_00),
    "platinum": (10000_00, 1000_00),
    "diamond": (20000_00, 2000_00),
}

# cmcc_credit score parts.
BRAND_POINTS = {"gotone": 50, "mzone": 30, "easyown": 20}
TENURE_POINTS = [0, 50, 150, 200, 250, 300]  # index = whole years, the last entry for that many or more
SPEND_BANDS_FEN = [(20_00, 0), (50_00, 20), (80_00, 50), (120_00, 100), (200_00, 150), (400_00, 200)]
SPEND_POINTS_ABOVE = 250
SUSPENSION_PENALTY = 100
CREDIT_MIN_SCORE = {"star_1": 100, "star_2": 200, "star_3": 300, "star_4": 400, "star_5": 500}

MIN_POINTS_UNLOCKED = 2000

ATTRIBUTES = (
    "customer_type",
    "service_type",
    "plan_category",
    "payment_type",
    "account_class",
    "real_name_verified",
    "brand",
    "activation_date",
    "status",
    "points_balance",
)

# ---------------------------------------------------------------- calendar and money helpers


def month_index(label: str) -> int:
    """``"2024-03"`` -> a month counter (year * 12 + month - 1)."""
    year, month = label.split("-")
    return int(year) * 12 + int(month) - 1


def month_label(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def day_of(index: int, day: int) -> dt.date:
    return dt.date(index // 12, index % 12 + 1, day)


def last_day(index: int) -> dt.date:
    return day_of(index + 1, 1) - dt.timedelta(days=1)


def index_of(day: dt.date) -> int:
    return day.year * 12 + day.month - 1


def whole_years(start: dt.date, end: dt.date) -> int:
    """Whole calendar years from ``start`` to ``end`` (29 Feb counts on 1 Mar in common years)."""
    years = end.year - start.year
    if (end.month, end.day) < (start.month, start.day):
        years -= 1
    return years


def to_fen(amount: Decimal) -> int:
    fen = amount * 100
    assert fen == int(fen), f"{amount} has more than two decimals"
    return int(fen)


def yuan(fen: int) -> Decimal:
    """Fen as the published ``decimal(18,2)`` yuan value (always two places: ``Decimal("9.50")``)."""
    return Decimal(fen).scaleb(-2)


def yuan_text(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


# ---------------------------------------------------------------- state


@dataclass
class Membership:
    level: str
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None
    card_id: str | None = None


@dataclass
class Known:
    """What the state holds for one subscriber between evaluations."""

    attributes: dict[str, Any]
    entered: int = 0  # month index of the evaluation that brought it into the state
    last_seen: int = 0
    billed_fen: list[int] = field(default_factory=list)  # one entry per month since entering the state
    suspensions: list[int] = field(default_factory=list)
    cum_paid_fen: int = 0
    months_absent: int = 0
    memberships: dict[str, Membership] = field(default_factory=dict)


@dataclass
class MonthResult:
    month: str
    tiers: list[dict[str, Any]]
    cards: list[dict[str, Any]]
    at_risk: list[dict[str, Any]] = field(default_factory=list)
    state: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Figures:
    """One subscriber's month, as the programs read it."""

    attrs: dict[str, Any]
    billed_6m: int
    divisor: int
    cum_paid: int
    month_paid: int
    tenure: int
    suspensions_6m: int

    @property
    def shown_avg(self) -> int:
        """The average shown, floored to the fen (SPEC 3: -0.005 shows as -0.01)."""
        return self.billed_6m // self.divisor


# ---------------------------------------------------------------- qualification (SPEC 4) with reasons


def _compare(value: str, holds: bool, threshold: str) -> str:
    return f"{value} {'>=' if holds else '<'} {threshold}"


def level_test(program: str, level: str, f: Figures) -> tuple[bool, str]:
    """(the level's conditions hold, the sentence explaining them) for an eligible subscriber."""
    attrs = f.attrs
    if program == VIP:
        threshold = VIP_MIN_AVG_FEN[level][attrs["service_type"]]
        spend = f.billed_6m >= threshold * f.divisor  # avg >= X  <=>  sum >= X * divisor, exactly
        text = (
            f"avg_billed_6m {_compare(yuan_text(f.shown_avg), spend, yuan_text(threshold))}"
            f" ({level}, {attrs['service_type']})"
        )
        if level == "supreme" and attrs["customer_type"] != "group":
            return False, f"customer_type {attrs['customer_type']} is not group (supreme)"
        return spend, text
    if program == STAR:
        min_cum, min_month = STAR_MIN_PAID_FEN[level]
        if min_cum is None:
            return True, f"no spend condition ({level})"
        cum_ok, month_ok = f.cum_paid >= min_cum, f.month_paid >= min_month
        return cum_ok and month_ok, (
            f"cum_paid {_compare(yuan_text(f.cum_paid), cum_ok, yuan_text(min_cum))} and "
            f"month_paid {_compare(yuan_text(f.month_paid), month_ok, yuan_text(min_month))} ({level})"
        )
    if program == CREDIT:
        brand, tenure, spend_points, penalty, score = credit_parts(f)
        holds = score >= CREDIT_MIN_SCORE[level]
        return holds, (
            f"score {_compare(str(score), holds, str(CREDIT_MIN_SCORE[level]))} ({level})"
            f" (brand {brand} + tenure {tenure} + spend {spend_points} - suspensions {penalty})"
        )
    points = attrs["points_balance"] or 0
    holds = points >= MIN_POINTS_UNLOCKED
    return holds, f"points_balance {_compare(str(points), holds, str(MIN_POINTS_UNLOCKED))} ({level})"


def credit_parts(f: Figures) -> tuple[int, int, int, int, int]:
    """(brand, tenure, spend, suspension penalty, score) of cmcc_credit; a null brand scores 0."""
    brand = BRAND_POINTS.get(f.attrs["brand"], 0) if f.attrs["brand"] is not None else 0
    tenure = TENURE_POINTS[min(max(f.tenure, 0), len(TENURE_POINTS) - 1)]
    spend = SPEND_POINTS_ABOVE
    for up_to, points in SPEND_BANDS_FEN:
        if f.billed_6m <= up_to * f.divisor:  # avg <= X  <=>  sum <= X * divisor (upper bound included)
            spend = points
            break
    penalty = SUSPENSION_PENALTY * f.suspensions_6m
    return brand, tenure, spend, penalty, brand + tenure + spend - penalty


def ineligible_reason(program: str, attrs: dict[str, Any]) -> str | None:
    """The first failing eligibility condition as docs/rules.md writes it, or None when eligible."""
    for attribute, allowed in ELIGIBLE[program]:
        if attrs[attribute] not in allowed:
            value = "null" if attrs[attribute] is None else str(attrs[attribute]).lower()
            shown = ", ".join(str(v).lower() for v in allowed)
            return f"not eligible: {attribute} {value} not in [{shown}]"
    return None


def eligible(program: str, attrs: dict[str, Any]) -> bool:
    return ineligible_reason(program, attrs) is None


def qualify(program: str, f: Figures, cancelled: bool) -> str | None:
    """Q: the highest level whose conditions hold; none when cancelled or not eligible."""
    if cancelled or not eligible(program, f.attrs):
        return None
    best = None
    for level in LEVELS[program]:
        if level_test(program, level, f)[0]:
            best = level
    return best


def rank(program: str, level: str | None) -> int:
    return -1 if level is None else LEVELS[program].index(level)


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Decision:
    after: Membership | None
    action: str
    cards: list[tuple[str, str, Membership]]  # (event, reason, membership)
    effective_on: dt.date | None
    code: str | None  # "missed" stands for threshold_missed or not_eligible
    reason: str | None


NO_DECISION = Decision(None, "none", [], None, None, None)

OVERRIDE_ACTIONS = ("new", "upgrade", "renew", "downgrade")
"""Actions whose reason is the override when a grant in force lifts Q (SPEC 9)."""


@dataclass(frozen=True)
class Override:
    """An approved override in force for one (program, subscriber) in the month (SPEC 9)."""

    override_id: str
    program: str
    subscriber_id: str
    kind: Literal["grant", "block"]
    level: str | None
    reason: str


def grant_reason(override: Override) -> str:
    return f"override {override.override_id} grants {override.level}: {override.reason}"


def block_reason(override: Override) -> str:
    return f"blocked by override {override.override_id}: {override.reason}"


class ReferenceModel:
    def __init__(self, settings: Settings = DEFAULTS) -> None:
        self.settings = settings
        self.state: dict[str, Known] = {}

    def run_months(self, first: str, monthly_rows: list[list[dict[str, Any]]]) -> list[MonthResult]:
        start = month_index(first)
        return [self.run(month_label(start + offset), rows) for offset, rows in enumerate(monthly_rows)]

    def run(self, month: str, rows: list[dict[str, Any]], overrides: Sequence[Override] = ()) -> MonthResult:
        """One month; ``overrides`` are the approved overrides in force for it (at most one per
        program and subscriber)."""
        s = self.settings
        in_force = {(o.program, o.subscriber_id): o for o in overrides}
        assert len(in_force) == len(overrides), "at most one override in force per program and subscriber"
        b = month_index(month)
        evaluated_on = day_of(b + 1, s.evaluation_day)
        by_id = {r["subscriber_id"]: r for r in rows}
        assert len(by_id) == len(rows), "at most one row per subscriber per month"

        result = MonthResult(month, [], [], [])
        next_state: dict[str, Known] = {}
        for subscriber_id in sorted(set(self.state) | set(by_id)):
            row = by_id.get(subscriber_id)
            known = self.state.get(subscriber_id)
            if known is None:  # new to the state (first time, or recycled after leaving): from nothing
                assert row is not None
                known = Known(attributes={}, entered=b)
            if row is not None:
                known.attributes = {name: row[name] for name in ATTRIBUTES}
                known.months_absent = 0
                known.last_seen = b
                billed, paid, suspensions = (
                    to_fen(row["billed_amount"]),
                    to_fen(row["paid_amount"]),
                    row["suspension_count"],
                )
            else:  # absent: nothing billed or paid, attributes as last seen
                known.months_absent += 1
                billed, paid, suspensions = 0, 0, 0
            known.billed_fen.append(billed)
            known.suspensions.append(suspensions)
            known.cum_paid_fen += paid

            attrs = known.attributes
            months_in_state = len(known.billed_fen)
            figures = Figures(
                attrs=attrs,
                billed_6m=sum(known.billed_fen[-s.window_months :]),
                divisor=s.window_months if s.average_divisor == "window" else min(months_in_state, s.window_months),
                cum_paid=known.cum_paid_fen,
                month_paid=paid,
                tenure=whole_years(attrs["activation_date"], last_day(b)),
                suspensions_6m=sum(known.suspensions[-s.window_months :]),
            )
            cancelled = row is not None and row["status"] == "cancelled"
            forgotten = row is None and known.months_absent >= s.forget_after_months
            leaves = cancelled or forgotten

            for program in PROGRAMS:
                held = known.memberships.get(program)
                qualified = qualify(program, figures, cancelled)
                override = in_force.get((program, subscriber_id))
                granted = qualified  # Q' = max(Q, G) under a grant in force
                if (
                    override is not None
                    and override.kind == "grant"
                    and rank(program, override.level) > rank(program, qualified)
                ):
                    granted = override.level
                if override is not None and override.kind == "block" and not leaves:
                    d = self._block(program, held, override, b)
                else:
                    d = self._carry(program, held, granted, figures, b, subscriber_id, cancelled, forgotten, known)
                code, reason = d.code, d.reason
                if code == "missed":
                    code = "threshold_missed" if eligible(program, attrs) else "not_eligible"
                if override is not None and granted != qualified and d.action in OVERRIDE_ACTIONS:
                    code, reason = "override", grant_reason(override)
                result.tiers.append(
                    {
                        "program": program,
                        "subscriber_id": subscriber_id,
                        "evaluated_on": evaluated_on,
                        "qualified_level": qualified,
                        "previous_level": held.level if held else None,
                        "level": d.after.level if d.after else None,
                        "action": d.action,
                        "valid_from": d.after.valid_from if d.after else None,
                        "valid_until": d.after.valid_until if d.after else None,
                        "effective_on": d.effective_on,
                        "card_id": d.after.card_id if d.after else None,
                        "reason": reason,
                        "reason_code": code,
                        "eligible": eligible(program, attrs),
                        "present": row is not None,
                        "months_absent": known.months_absent,
                        "billed_6m": yuan(figures.billed_6m),
                        "avg_billed_6m": yuan(figures.shown_avg),
                        "month_paid": yuan(paid),
                        "cum_paid": yuan(known.cum_paid_fen),
                        "tenure_years": figures.tenure,
                        "suspensions_6m": figures.suspensions_6m,
                        "points_balance": attrs["points_balance"],
                        "score": credit_parts(figures)[4] if program == CREDIT else None,
                        "override_id": override.override_id if override is not None else None,
                    }
                )
                for event, reason, membership in d.cards:
                    result.cards.append(
                        {
                            "card_id": membership.card_id,
                            "program": program,
                            "subscriber_id": subscriber_id,
                            "level": membership.level,
                            "event": event,
                            "reason": reason,
                            "event_date": evaluated_on,
                            "effective_on": d.effective_on,
                            "valid_from": membership.valid_from,
                            "valid_until": membership.valid_until,
                        }
                    )
                if d.after is None:
                    known.memberships.pop(program, None)
                else:
                    known.memberships[program] = d.after
                risk = self._at_risk(program, d.after, granted, b, known, figures)
                if risk is not None and not leaves:
                    result.at_risk.append({"program": program, "subscriber_id": subscriber_id, **risk})

            if not leaves:
                next_state[subscriber_id] = known
        self.state = next_state
        result.state = [self._state_row(sid, known) for sid, known in sorted(next_state.items())]
        result.memberships = [
            {
                "subscriber_id": sid,
                "program": program,
                "level": m.level,
                "valid_from": m.valid_from,
                "valid_until": m.valid_until,
                "card_id": m.card_id,
            }
            for sid, known in sorted(next_state.items())
            for program, m in sorted(known.memberships.items())
        ]
        return result

    def _state_row(self, subscriber_id: str, known: Known) -> dict[str, Any]:
        """The carried state as the engine's ``state`` table holds it (windows newest first, null
        for the months before the subscriber entered; one membership column set per program)."""
        w = self.settings.window_months

        def window(values: list[int]) -> list[int | None]:
            newest_first = list(reversed(values[-w:]))
            return newest_first + [None] * (w - len(newest_first))

        row: dict[str, Any] = {
            "subscriber_id": subscriber_id,
            "entered_month": day_of(known.entered, 1),
            "last_seen_month": day_of(known.last_seen, 1),
            "months_in_state": len(known.billed_fen),
            "months_absent": known.months_absent,
            "cum_paid_fen": known.cum_paid_fen,
        }
        row.update({f"billed_fen_age{age}": v for age, v in enumerate(window(known.billed_fen))})
        row.update({f"suspensions_age{age}": v for age, v in enumerate(window(known.suspensions))})
        row.update(known.attributes)
        for program in PROGRAMS:
            held = known.memberships.get(program)
            row[f"{program}__level"] = held.level if held else None
            row[f"{program}__valid_from"] = held.valid_from if held else None
            row[f"{program}__valid_until"] = held.valid_until if held else None
            row[f"{program}__card_id"] = held.card_id if held else None
        return row

    def _at_risk(
        self,
        program: str,
        after: Membership | None,
        qualified: str | None,
        b: int,
        known: Known,
        f: Figures,
    ) -> dict[str, Any] | None:
        """SPEC 8: held after E(B), re-rated at E(B+k) for k in 1..horizon, qualified below the level."""
        s = self.settings
        if RETENTION[program] != "validity" or after is None or after.valid_until is None:
            return None
        rerating = index_of(after.valid_until) - 1  # month(E(B+k)) = B + k + 1
        k = rerating - (b + 1)
        if not 1 <= k <= s.at_risk_horizon_months or rank(program, qualified) >= rank(program, after.level):
            return None
        needed: int | None = None
        attrs = f.attrs
        if eligible(program, attrs):
            if program == VIP and not (after.level == "supreme" and attrs["customer_type"] != "group"):
                months_next = len(known.billed_fen) + 1
                divisor = s.window_months if s.average_divisor == "window" else min(months_next, s.window_months)
                oldest = known.billed_fen[-s.window_months] if len(known.billed_fen) >= s.window_months else 0
                needed = VIP_MIN_AVG_FEN[after.level][attrs["service_type"]] * divisor - (f.billed_6m - oldest)
            elif program == STAR:
                min_cum, min_month = STAR_MIN_PAID_FEN[after.level]
                needed = max(min_month or 0, (min_cum or 0) - known.cum_paid_fen)
        return {
            "level": after.level,
            "valid_until": after.valid_until,
            "rerated_on": day_of(rerating, s.evaluation_day),
            "months_to_rerating": k,
            "qualified_level": qualified,
            "needed_next_month": None if needed is None else yuan(max(needed, 0)),
        }

    def _block(self, program: str, held: Membership | None, override: Override, b: int) -> Decision:
        """SPEC 9: a block in force terminates a level held (void ``blocked``) and keeps the member
        in the state; with nothing held it is ``none``."""
        if held is None:
            return NO_DECISION
        evaluated_on = day_of(b + 1, self.settings.evaluation_day)
        voids = [("void", "blocked", held)] if held.level in CARD_LEVELS[program] and held.card_id else []
        return Decision(None, "terminate", voids, evaluated_on, "blocked", block_reason(override))

    def _carry(
        self,
        program: str,
        held: Membership | None,
        qualified: str | None,
        f: Figures,
        b: int,
        subscriber_id: str,
        cancelled: bool,
        forgotten: bool,
        known: Known,
    ) -> Decision:
        """SPEC 5 as amended, with the reason texts of docs/rules.md."""
        s = self.settings
        cards = CARD_LEVELS[program]
        e_month = b + 1
        evaluated_on = day_of(e_month, s.evaluation_day)
        next_first = day_of(e_month + 1, 1)
        new_card_id = f"{CARD_PREFIX[program]}-{evaluated_on:%Y%m%d}-{subscriber_id}"

        def explain(level: str) -> str:
            return level_test(program, level, f)[1]

        def why_not(level: str) -> str:
            return ineligible_reason(program, f.attrs) or explain(level)

        def void(reason: str) -> list[tuple[str, str, Membership]]:
            return [("void", reason, held)] if held is not None and held.level in cards and held.card_id else []

        def carded(membership: Membership) -> Membership:
            if membership.level in cards:
                return Membership(membership.level, membership.valid_from, membership.valid_until, new_card_id)
            return membership

        def issue(reason: str, membership: Membership) -> list[tuple[str, str, Membership]]:
            return [("issue", reason, membership)] if membership.card_id else []

        def swap(issue_reason: str, after: Membership, no_card_void: str) -> list[tuple[str, str, Membership]]:
            issued = issue(issue_reason, after)
            return void("replaced" if issued else no_card_void) + issued

        if cancelled:
            if held is None:
                return NO_DECISION
            return Decision(
                None, "terminate", void("cancelled"), evaluated_on, "cancelled",
                f"status cancelled: {held.level} terminated",
            )  # fmt: skip
        if forgotten:
            if held is None:
                return NO_DECISION
            return Decision(
                None, "lapse", void("lapsed"), evaluated_on, "absent_too_long",
                f"absent {known.months_absent} months in a row (forget_after_months {s.forget_after_months})",
            )  # fmt: skip

        retention = RETENTION[program]
        if retention == "permanent":
            if held:
                return Decision(Membership(held.level), "retain", [], None, None, None)
            if qualified:
                return Decision(Membership(qualified), "new", [], evaluated_on, "threshold_met", explain(qualified))
            return NO_DECISION

        if retention == "recompute":
            if held is None:
                if qualified:
                    return Decision(Membership(qualified), "new", [], evaluated_on, "threshold_met", explain(qualified))
                return NO_DECISION
            if qualified is None:
                return Decision(None, "lapse", [], evaluated_on, "missed", why_not(LEVELS[program][0]))
            if rank(program, qualified) > rank(program, held.level):
                return Decision(Membership(qualified), "upgrade", [], evaluated_on, "threshold_met", explain(qualified))
            if rank(program, qualified) < rank(program, held.level):
                return Decision(
                    Membership(qualified), "downgrade", [], evaluated_on, "missed",
                    f"{why_not(held.level)}; qualifies for {explain(qualified)}",
                )  # fmt: skip
            return Decision(Membership(qualified), "retain", [], None, None, None)

        assert retention == "validity"
        new_until = day_of(e_month + s.validity_months, s.expiry_day)
        if held is None:
            if qualified is None:
                return NO_DECISION
            new = carded(Membership(qualified, evaluated_on, new_until))
            return Decision(new, "new", issue("new", new), evaluated_on, "threshold_met", explain(qualified))
        assert held.valid_from is not None and held.valid_until is not None
        day_after_expiry = held.valid_until + dt.timedelta(days=1)
        expiry = f"{held.valid_until:%Y-%m-%d}"
        if held.valid_until < evaluated_on:
            return Decision(
                None, "lapse", void("lapsed"), day_after_expiry, "validity_ended",
                f"validity ended {expiry} before the evaluation on {evaluated_on:%Y-%m-%d}",
            )  # fmt: skip
        if rank(program, qualified) > rank(program, held.level):
            assert qualified is not None
            up = carded(Membership(qualified, evaluated_on, new_until))
            return Decision(
                up, "upgrade", swap("upgrade", up, "lapsed"), evaluated_on, "threshold_met", explain(qualified)
            )
        if e_month == index_of(held.valid_until) - 1:  # the re-rating one month before expiry
            prefix = f"re-rating before expiry {expiry}: "
            if qualified is None:
                return Decision(
                    None, "lapse", void("lapsed"), day_after_expiry, "missed", prefix + why_not(LEVELS[program][0])
                )
            renewed_until = day_of(index_of(held.valid_until) + s.validity_months, held.valid_until.day)
            renewed = carded(Membership(qualified, next_first, renewed_until))
            if qualified == held.level:
                return Decision(
                    renewed, "renew", swap("renewal", renewed, "downgraded"), next_first, "threshold_met",
                    prefix + explain(qualified),
                )  # fmt: skip
            return Decision(
                renewed, "downgrade", swap("downgrade", renewed, "downgraded"), next_first, "missed",
                f"{prefix}{why_not(held.level)}; qualifies for {explain(qualified)}",
            )  # fmt: skip
        kept = Membership(held.level, held.valid_from, held.valid_until, held.card_id if held.level in cards else None)
        return Decision(kept, "retain", [], None, None, None)
