"""An independent reference model of SPEC sections 3 to 5 with the default rulebook.

Written from /work/shared/SPEC.md and rulebook/default.toml only (not from the engine), in plain
Python: integer fen, ``datetime.date``, dicts. It is deliberately slow and simple, for
cross-checking the real engine in tests.

Input: a first billing month (``"YYYY-MM"``) and a list of months, each a list of valid extract rows
as built by ``tests.extract_factory.row`` (Decimal yuan amounts, at most one row per subscriber).
Output: one ``MonthResult`` per month with the tier rows and the card events.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# ---------------------------------------------------------------- default rulebook values

EVALUATION_DAY = 5
EXPIRY_DAY = 8
VALIDITY_MONTHS = 12
WINDOW_MONTHS = 6
FORGET_AFTER_MONTHS = 12
AT_RISK_HORIZON_MONTHS = 3

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

# ---------------------------------------------------------------- calendar helpers


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


# ---------------------------------------------------------------- state


@dataclass
class Membership:
    level: str
    valid_from: dt.date | None = None
    valid_until: dt.date | None = None


@dataclass
class Known:
    """What the state holds for one subscriber between evaluations."""

    attributes: dict[str, Any]
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


# ---------------------------------------------------------------- qualification (SPEC 4)


def qualify_vip(attrs: dict[str, Any], billed_6m_fen: int) -> str | None:
    eligible = (
        attrs["payment_type"] == "postpaid"
        and attrs["account_class"] == "normal"
        and attrs["plan_category"] == "standard"
    )
    if not eligible:
        return None
    best = None
    for level in LEVELS[VIP]:
        if level == "supreme" and attrs["customer_type"] != "group":
            continue
        minimum = VIP_MIN_AVG_FEN[level][attrs["service_type"]]
        if billed_6m_fen >= minimum * WINDOW_MONTHS:  # avg >= X  <=>  sum >= 6 X, exactly
            best = level
    return best


def qualify_star(attrs: dict[str, Any], cum_paid_fen: int, month_paid_fen: int) -> str | None:
    if attrs["service_type"] != "mobile" or attrs["real_name_verified"] is not True:
        return None
    best = None
    for level in LEVELS[STAR]:
        min_cum, min_month = STAR_MIN_PAID_FEN[level]
        if (min_cum is None or cum_paid_fen >= min_cum) and (min_month is None or month_paid_fen >= min_month):
            best = level
    return best


def credit_score(attrs: dict[str, Any], billed_6m_fen: int, tenure: int, suspensions_6m: int) -> int:
    brand = BRAND_POINTS[attrs["brand"]]
    tenure_points = TENURE_POINTS[min(max(tenure, 0), len(TENURE_POINTS) - 1)]
    spend = SPEND_POINTS_ABOVE
    for up_to, points in SPEND_BANDS_FEN:
        if billed_6m_fen <= up_to * WINDOW_MONTHS:  # avg <= X  <=>  sum <= 6 X (upper bound included)
            spend = points
            break
    return brand + tenure_points + spend - SUSPENSION_PENALTY * suspensions_6m


def qualify_credit(attrs: dict[str, Any], billed_6m_fen: int, tenure: int, suspensions_6m: int) -> str | None:
    if attrs["brand"] is None:
        return None
    score = credit_score(attrs, billed_6m_fen, tenure, suspensions_6m)
    best = None
    for level in LEVELS[CREDIT]:
        if score >= CREDIT_MIN_SCORE[level]:
            best = level
    return best


def qualify_points(attrs: dict[str, Any]) -> str | None:
    balance = attrs["points_balance"] or 0
    return "unlocked" if balance >= MIN_POINTS_UNLOCKED else None


def eligible(program: str, attrs: dict[str, Any]) -> bool:
    """SPEC 4: each program's eligibility (the same conditions the qualify functions apply first)."""
    if program == VIP:
        return (
            attrs["payment_type"] == "postpaid"
            and attrs["account_class"] == "normal"
            and attrs["plan_category"] == "standard"
        )
    if program == STAR:
        return attrs["service_type"] == "mobile" and attrs["real_name_verified"] is True
    if program == CREDIT:
        return attrs["brand"] is not None
    return True


def rank(program: str, level: str | None) -> int:
    return -1 if level is None else LEVELS[program].index(level)


# ---------------------------------------------------------------- the model


class ReferenceModel:
    def __init__(self) -> None:
        self.state: dict[str, Known] = {}

    def run_months(self, first: str, monthly_rows: list[list[dict[str, Any]]]) -> list[MonthResult]:
        start = month_index(first)
        return [self.run(month_label(start + offset), rows) for offset, rows in enumerate(monthly_rows)]

    def run(self, month: str, rows: list[dict[str, Any]]) -> MonthResult:
        b = month_index(month)
        evaluated_on = day_of(b + 1, EVALUATION_DAY)
        by_id = {r["subscriber_id"]: r for r in rows}
        assert len(by_id) == len(rows), "at most one row per subscriber per month"

        tiers: list[dict[str, Any]] = []
        cards: list[dict[str, Any]] = []
        at_risk: list[dict[str, Any]] = []
        next_state: dict[str, Known] = {}
        for subscriber_id in sorted(set(self.state) | set(by_id)):
            row = by_id.get(subscriber_id)
            known = self.state.get(subscriber_id)
            if known is None:  # new to the state (first time, or recycled after leaving): from nothing
                assert row is not None
                known = Known(attributes={})
            if row is not None:
                known.attributes = {name: row[name] for name in ATTRIBUTES}
                known.months_absent = 0
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
            billed_6m = sum(known.billed_fen[-WINDOW_MONTHS:])
            suspensions_6m = sum(known.suspensions[-WINDOW_MONTHS:])
            tenure = whole_years(attrs["activation_date"], last_day(b))
            cancelled = row is not None and row["status"] == "cancelled"
            forgotten = row is None and known.months_absent == FORGET_AFTER_MONTHS

            qualified: dict[str, str | None] = {
                VIP: qualify_vip(attrs, billed_6m),
                STAR: qualify_star(attrs, known.cum_paid_fen, paid),
                CREDIT: qualify_credit(attrs, billed_6m, tenure, suspensions_6m),
                POINTS: qualify_points(attrs),
            }
            if cancelled:
                qualified = dict.fromkeys(PROGRAMS)

            for program in PROGRAMS:
                held = known.memberships.get(program)
                after, action, events, effective_on, code = self._carry(
                    program, held, qualified[program], b, cancelled, forgotten
                )
                if code == "missed":
                    code = "threshold_missed" if eligible(program, attrs) else "not_eligible"
                tiers.append(
                    {
                        "program": program,
                        "subscriber_id": subscriber_id,
                        "evaluated_on": evaluated_on,
                        "qualified_level": qualified[program],
                        "previous_level": held.level if held else None,
                        "level": after.level if after else None,
                        "action": action,
                        "valid_from": after.valid_from if after else None,
                        "valid_until": after.valid_until if after else None,
                        "effective_on": effective_on,
                        "reason_code": code,
                    }
                )
                for event, reason, membership in events:
                    cards.append(
                        {
                            "program": program,
                            "subscriber_id": subscriber_id,
                            "level": membership.level,
                            "event": event,
                            "reason": reason,
                            "event_date": evaluated_on,
                            "effective_on": effective_on,
                            "valid_from": membership.valid_from,
                            "valid_until": membership.valid_until,
                        }
                    )
                if after is None:
                    known.memberships.pop(program, None)
                else:
                    known.memberships[program] = after
                risk = self._at_risk(program, after, qualified[program], b, attrs, known, billed_6m)
                if risk is not None and not (cancelled or forgotten):
                    at_risk.append({"program": program, "subscriber_id": subscriber_id, **risk})

            if not (cancelled or forgotten):
                next_state[subscriber_id] = known
        self.state = next_state
        return MonthResult(month, tiers, cards, at_risk)

    @staticmethod
    def _at_risk(
        program: str,
        after: Membership | None,
        qualified: str | None,
        b: int,
        attrs: dict[str, Any],
        known: Known,
        billed_6m_fen: int,
    ) -> dict[str, Any] | None:
        """SPEC 8: held after E(B), re-rated at E(B+k) for k in 1..3, qualified below the level."""
        if RETENTION[program] != "validity" or after is None or after.valid_until is None:
            return None
        rerating = index_of(after.valid_until) - 1  # month(E(B+k)) = B + k + 1
        k = rerating - (b + 1)
        if not 1 <= k <= AT_RISK_HORIZON_MONTHS or rank(program, qualified) >= rank(program, after.level):
            return None
        needed: int | None = None
        if eligible(program, attrs):
            if program == VIP and not (after.level == "supreme" and attrs["customer_type"] != "group"):
                oldest = known.billed_fen[-WINDOW_MONTHS] if len(known.billed_fen) >= WINDOW_MONTHS else 0
                needed = VIP_MIN_AVG_FEN[after.level][attrs["service_type"]] * WINDOW_MONTHS - (billed_6m_fen - oldest)
            elif program == STAR:
                min_cum, min_month = STAR_MIN_PAID_FEN[after.level]
                needed = max(min_month or 0, (min_cum or 0) - known.cum_paid_fen)
        return {
            "level": after.level,
            "valid_until": after.valid_until,
            "rerated_on": day_of(rerating, EVALUATION_DAY),
            "months_to_rerating": k,
            "qualified_level": qualified,
            "needed_next_month": None if needed is None else Decimal(max(needed, 0)) / 100,
        }

    def _carry(
        self,
        program: str,
        held: Membership | None,
        qualified: str | None,
        b: int,
        cancelled: bool,
        forgotten: bool,
    ) -> tuple[Membership | None, str, list[tuple[str, str, Membership]], dt.date | None, str | None]:
        """SPEC 5 as amended: (membership after, action, card events as (event, reason, membership),
        effective_on, reason code; "missed" stands for threshold_missed or not_eligible)."""
        cards = CARD_LEVELS[program]
        e_month = b + 1
        evaluated_on = day_of(e_month, EVALUATION_DAY)
        next_first = day_of(e_month + 1, 1)

        def void(reason: str) -> list[tuple[str, str, Membership]]:
            return [("void", reason, held)] if held is not None and held.level in cards else []

        def issue(reason: str, membership: Membership) -> list[tuple[str, str, Membership]]:
            return [("issue", reason, membership)] if membership.level in cards else []

        def swap(issue_reason: str, after: Membership, no_card_void: str) -> list[tuple[str, str, Membership]]:
            issued = issue(issue_reason, after)
            return void("replaced" if issued else no_card_void) + issued

        if cancelled:
            return (None, "terminate", void("cancelled"), evaluated_on, "cancelled") if held else (
                None, "none", [], None, None
            )  # fmt: skip
        if forgotten:
            return (None, "lapse", void("lapsed"), evaluated_on, "absent_too_long") if held else (
                None, "none", [], None, None
            )  # fmt: skip

        retention = RETENTION[program]
        if retention == "permanent":
            if held:
                return Membership(held.level), "retain", [], None, None
            return (Membership(qualified), "new", [], evaluated_on, "threshold_met") if qualified else (
                None, "none", [], None, None
            )  # fmt: skip

        if retention == "recompute":
            if held is None:
                return (Membership(qualified), "new", [], evaluated_on, "threshold_met") if qualified else (
                    None, "none", [], None, None
                )  # fmt: skip
            if qualified is None:
                return None, "lapse", [], evaluated_on, "missed"
            if rank(program, qualified) > rank(program, held.level):
                return Membership(qualified), "upgrade", [], evaluated_on, "threshold_met"
            if rank(program, qualified) < rank(program, held.level):
                return Membership(qualified), "downgrade", [], evaluated_on, "missed"
            return Membership(qualified), "retain", [], None, None

        assert retention == "validity"
        if held is None:
            if qualified is None:
                return None, "none", [], None, None
            new = Membership(qualified, evaluated_on, day_of(e_month + VALIDITY_MONTHS, EXPIRY_DAY))
            return new, "new", issue("new", new), evaluated_on, "threshold_met"
        assert held.valid_from is not None and held.valid_until is not None
        day_after_expiry = held.valid_until + dt.timedelta(days=1)
        if held.valid_until < evaluated_on:
            return None, "lapse", void("lapsed"), day_after_expiry, "validity_ended"
        if rank(program, qualified) > rank(program, held.level):
            assert qualified is not None
            up = Membership(qualified, evaluated_on, day_of(e_month + VALIDITY_MONTHS, EXPIRY_DAY))
            return up, "upgrade", swap("upgrade", up, "lapsed"), evaluated_on, "threshold_met"
        if e_month == index_of(held.valid_until) - 1:  # the re-rating one month before expiry
            if qualified is None:
                return None, "lapse", void("lapsed"), day_after_expiry, "missed"
            renewed_until = day_of(index_of(held.valid_until) + VALIDITY_MONTHS, held.valid_until.day)
            renewed = Membership(qualified, next_first, renewed_until)
            if qualified == held.level:
                return renewed, "renew", swap("renewal", renewed, "downgraded"), next_first, "threshold_met"
            return renewed, "downgrade", swap("downgrade", renewed, "downgraded"), next_first, "missed"
        return Membership(held.level, held.valid_from, held.valid_until), "retain", [], None, None
