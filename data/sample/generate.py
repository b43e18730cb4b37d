"""Deterministic sample billing extracts for billing-tiers.

Writes one Parquet file per billing month, ``<out>/billing_month=YYYY-MM/part-0.parquet``, for the
27 months 2024-01 .. 2026-03, following the extract contract of SPEC section 2 with the contract's
Arrow schema (``schemas/arrow.py``, so the project must be installed) plus a ``billing_month``
column equal to the folder's month. Usage::

    .venv/bin/python data/sample/generate.py [--out DIR]      # default: data/sample/extracts

The output is byte-for-byte identical on every run: all randomness comes from ``random.Random``
seeded with fixed strings (string seeds are hashed with SHA-512, so ``PYTHONHASHSEED`` does not
matter), nothing reads the clock, rows are written in a fixed order and the Parquet files carry no
timestamps (only the schema and pyarrow's ``created_by`` string; a different pyarrow version may
therefore write different bytes).

Population (about 2,000 lines a month):

* filler lines: a realistic random mix of customer, service, plan, payment and account types
  with per-line spend levels, trends (flat, rising, falling, a bump) and noise; late or
  missed payments, prepaid top-ups, negative adjustments, suspensions, points that grow and are
  sometimes redeemed, cancellations (some numbers recycled later as new people), short absences,
  a few lines forgotten for 12+ months (some come back), new lines joining every month;
* scripted lines (``SCRIPTS``; ids ``139000xxxxx``, ``F07559000xx``, ``BB75590000xx`` and one
  32-character id): exact-cent threshold cases and level histories, each with a note saying what
  it is for. Scripted lines never receive injected anomalies;
* anomalies injected into filler lines (``inject_anomalies``): a few value-rule breaks per
  month, one subscriber with conflicting rows in odd months, an exact duplicate row in every
  third month. The quarantined share stays well below 1% of a month's rows and the share of the
  previous month's subscribers missing from a month stays well below 5%.
"""

from __future__ import annotations

import argparse
import calendar
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import EXTRACT_ARROW_SCHEMA

SEED = "billing-tiers-sample-v1"
FIRST_YEAR, FIRST_MONTH = 2024, 1
MONTH_COUNT = 27  # 2024-01 .. 2026-03
DEFAULT_OUT = Path(__file__).resolve().parent / "extracts"

SCHEMA = EXTRACT_ARROW_SCHEMA.append(pa.field("billing_month", pa.string()))
"""The contract's extract schema (``suspension_count`` int32 ...) plus the ``billing_month`` column."""

Row = dict[str, object]
"""One extract row: column name -> Python value (money as ``Decimal``)."""

FenByMonth = Callable[[int], int]
"""Amount in fen (cents) for a month index (0 = 2024-01)."""


# --------------------------------------------------------------------------------------------
# Months and money


def _label(index: int) -> str:
    year, month0 = divmod(FIRST_YEAR * 12 + FIRST_MONTH - 1 + index, 12)
    return f"{year:04d}-{month0 + 1:02d}"


LABELS = tuple(_label(index) for index in range(MONTH_COUNT))
_INDEX = {label: index for index, label in enumerate(LABELS)}


def month_label(index: int) -> str:
    """Month index -> ``YYYY-MM`` (0 is 2024-01)."""
    return LABELS[index]


def month_index(label: str) -> int:
    """``YYYY-MM`` -> month index (inverse of ``month_label``)."""
    return _INDEX[label]


def month_start(index: int) -> date:
    year, month = (int(part) for part in month_label(index).split("-"))
    return date(year, month, 1)


def month_end(index: int) -> date:
    first = month_start(index)
    return first.replace(day=calendar.monthrange(first.year, first.month)[1])


def fen(yuan: str) -> int:
    """``"149.99"`` -> 14999 (exact)."""
    return int(Decimal(yuan) * 100)


def money(amount_fen: int) -> Decimal:
    """14999 -> ``Decimal("149.99")`` (exact, two places)."""
    return Decimal(amount_fen).scaleb(-2)


# --------------------------------------------------------------------------------------------
# Lines


@dataclass(frozen=True)
class Profile:
    """The attributes of one line as one person holds it."""

    subscriber_id: str
    customer_type: str = "individual"
    service_type: str = "mobile"
    plan_category: str = "standard"
    payment_type: str = "postpaid"
    account_class: str = "normal"
    real_name_verified: bool = True
    brand: str | None = None
    activation_date: date = date(2015, 6, 10)


def make_row(
    profile: Profile,
    month: int,
    *,
    status: str,
    billed: int,
    paid: int,
    suspension_count: int,
    points: int | None,
) -> Row:
    """An extract row for ``profile`` in month index ``month`` (amounts in fen)."""
    return {
        "subscriber_id": profile.subscriber_id,
        "customer_type": profile.customer_type,
        "service_type": profile.service_type,
        "plan_category": profile.plan_category,
        "payment_type": profile.payment_type,
        "account_class": profile.account_class,
        "real_name_verified": profile.real_name_verified,
        "brand": profile.brand,
        "activation_date": profile.activation_date,
        "status": status,
        "billed_amount": money(billed),
        "paid_amount": money(paid),
        "suspension_count": suspension_count,
        "points_balance": points,
        "billing_month": month_label(month),
    }


# --------------------------------------------------------------------------------------------
# Scripted lines: exact amounts and histories the engine's rules must get right


def constant(yuan: str) -> FenByMonth:
    """The same amount every month."""
    amount = fen(yuan)
    return lambda _month: amount


def cycle(*yuan: str) -> FenByMonth:
    """Amounts repeating with period ``len(yuan)``: with 6 amounts every full 6-month window has
    the same sum (month 2024-01 takes the first amount)."""
    amounts = [fen(y) for y in yuan]
    return lambda month: amounts[month % len(amounts)]


def phases(*steps: tuple[str, str]) -> FenByMonth:
    """Piecewise-constant amounts: ``("2024-09", "320.00")`` = 320.00 from 2024-09 on."""
    starts = [(month_index(label), fen(yuan)) for label, yuan in steps]

    def amount(month: int) -> int:
        current = starts[0][1]
        for start, value in starts:
            if month >= start:
                current = value
        return current

    return amount


def span(first: str, last: str = "2026-03") -> range:
    """Month indexes from ``first`` to ``last`` inclusive."""
    return range(month_index(first), month_index(last) + 1)


def spans(*ranges: range) -> tuple[int, ...]:
    return tuple(month for months in ranges for month in months)


ALL_MONTHS = range(MONTH_COUNT)


@dataclass(frozen=True)
class Script:
    """One person's hold on a scripted line: its rows are fully determined by these fields."""

    note: str
    profile: Profile
    billed: FenByMonth
    months: Sequence[int] = ALL_MONTHS
    paid: FenByMonth | None = None  # default: the bill (0 for a negative bill)
    status: Mapping[str, str] = field(default_factory=dict)  # month label -> status
    suspensions: Mapping[str, int] = field(default_factory=dict)  # month label -> count
    points: Callable[[int], int | None] = lambda _month: None
    profile_from: Mapping[str, Profile] = field(default_factory=dict)  # attribute changes

    def rows(self) -> list[Row]:
        rows = []
        profile = self.profile
        for month in self.months:
            label = month_label(month)
            profile = self.profile_from.get(label, profile)
            billed = self.billed(month)
            paid = self.paid(month) if self.paid is not None else max(billed, 0)
            rows.append(
                make_row(
                    profile,
                    month,
                    status=self.status.get(label, "active"),
                    billed=billed,
                    paid=paid,
                    suspension_count=self.suspensions.get(label, 0),
                    points=self.points(month),
                )
            )
        return rows


def mobile(number: int, **attributes: Any) -> Profile:
    """Scripted mobile line ``139000xxxxx`` (individual, standard, postpaid, normal, real name)."""
    return replace(Profile(f"139{number:08d}"), **attributes)


def fixed(number: int, **attributes: Any) -> Profile:
    return replace(Profile(f"F0755{number:06d}", service_type="fixed"), **attributes)


def broadband(number: int, **attributes: Any) -> Profile:
    return replace(Profile(f"BB755{number:07d}", service_type="broadband"), **attributes)


def lumpy_payment(month: int) -> int:
    """Pays nothing for five months, then 900.00 (six bills of 150.00) in the sixth."""
    return fen("900.00") if month % 6 == 5 else 0


LONG_ID = "BB755" + "1".zfill(27)  # exactly 32 characters: the longest valid id

SCRIPTS: tuple[Script, ...] = (
    # --- unicom_vip thresholds, exact cents (mobile: 900/1800/2700 per 6 months) -------------
    Script("150.00 a month: 6m sum exactly 900.00, silver; steady, renewed", mobile(101), constant("150.00")),
    Script(
        "6m sum always 899.98 (one 149.98 per window): never silver",
        mobile(102),
        cycle("150.00", "150.00", "150.00", "150.00", "150.00", "149.98"),
    ),
    Script(
        "uneven cents, 6m sum exactly 900.00: silver (float sums miss this)",
        mobile(103),
        cycle("149.90", "150.10", "149.95", "150.05", "149.99", "150.01"),
    ),
    Script(
        "uneven cents, 6m sum 899.98, avg 149.9967 rounds to 150.00: never silver",
        mobile(104),
        cycle("149.90", "150.10", "149.95", "150.05", "149.99", "149.99"),
    ),
    Script(
        "a -100.00 adjustment in every window (2024-01 first), 6m sum exactly 900.00: silver 2024-06",
        mobile(105),
        cycle("-100.00", "200.00", "200.00", "200.00", "200.00", "200.00"),
    ),
    Script("300.00 a month: silver 2024-03, gold 2024-06 at exactly 1800.00", mobile(106), constant("300.00")),
    Script(
        "6m sum 1799.99: silver, not gold",
        mobile(107),
        cycle("300.00", "300.00", "300.00", "300.00", "300.00", "299.99"),
    ),
    Script("450.00 a month: diamond 2024-06 at exactly 2700.00", mobile(108), constant("450.00")),
    Script(
        "6m sum 2699.99: gold, not diamond",
        mobile(109),
        cycle("450.00", "450.00", "450.00", "450.00", "450.00", "449.99"),
    ),
    # --- fixed and broadband (600/900/1800 per 6 months) --------------------------------------
    Script("fixed, 100.00 a month: 6m sum 600.00, silver", fixed(900001), constant("100.00")),
    Script(
        "fixed, 6m sum 599.99: never silver",
        fixed(900002),
        cycle("100.00", "100.00", "100.00", "100.00", "100.00", "99.99"),
    ),
    Script("fixed, 150.00 a month: 6m sum 900.00, gold", fixed(900003), constant("150.00")),
    Script("fixed, 300.00 a month: 6m sum 1800.00, diamond", fixed(900004), constant("300.00")),
    Script("broadband, 100.00 a month: 6m sum 600.00, silver", broadband(9000001), constant("100.00")),
    Script(
        "broadband, 6m sum 899.99: silver, not gold",
        broadband(9000002),
        cycle("150.00", "150.00", "150.00", "150.00", "150.00", "149.99"),
    ),
    Script(
        "broadband, valid id of exactly 32 characters, 60.00 a month",
        Profile(LONG_ID, service_type="broadband", activation_date=date(2018, 3, 1)),
        constant("60.00"),
    ),
    # --- group customers: supreme at 6m sum >= 6000.00 ----------------------------------------
    Script(
        "group mobile, 1000.00 a month: 6000.00, supreme",
        mobile(201, customer_type="group"),
        constant("1000.00"),
    ),
    Script(
        "group mobile, 6m sum 5999.99: diamond, not supreme",
        mobile(202, customer_type="group"),
        cycle("1000.00", "1000.00", "1000.00", "1000.00", "1000.00", "999.99"),
    ),
    Script(
        "group mobile, 2500.00 a month: supreme; star diamond from 2024-08 (cum 20000.00)",
        mobile(203, customer_type="group", brand="gotone"),
        constant("2500.00"),
    ),
    Script(
        "group fixed, 1000.00 a month: supreme",
        fixed(900201, customer_type="group", activation_date=date(2009, 9, 9)),
        constant("1000.00"),
    ),
    # --- unicom_star: cum_paid and month_paid thresholds --------------------------------------
    Script(
        "pays 50.00 a month: cum_paid exactly 1000.00 in 2025-08 with month_paid 50.00, star silver",
        mobile(301),
        constant("50.00"),
    ),
    Script(
        "pays 49.99 a month: cum_paid passes 1000 but month_paid < 50: star normal",
        mobile(302),
        constant("49.99"),
    ),
    Script(
        "pays 600.00 a month: star silver 2024-02, gold 2024-05 (cum exactly 3000.00)",
        mobile(303),
        constant("600.00"),
    ),
    Script(
        "pays 1200.00 a month: star silver, gold 2024-03, platinum 2024-09 (cum 10800.00)",
        mobile(304),
        constant("1200.00"),
    ),
    Script(
        "2500.00 a month but not real-name verified: no star level at all",
        mobile(305, real_name_verified=False),
        constant("2500.00"),
    ),
    Script(
        "billed 150.00, pays 900.00 every 6th month only: star silver 2024-12, re-rated to normal"
        " 2025-11 (month_paid 0), gold 2025-12",
        mobile(306),
        constant("150.00"),
        paid=lumpy_payment,
    ),
    # --- unicom_vip histories: upgrades, renewals, downgrades, lapses -------------------------
    Script(
        "silver 2024-06, gold 2025-02, bills fall: lapse at the 2026-01 re-rating",
        mobile(401),
        phases(("2024-01", "160.00"), ("2024-09", "320.00"), ("2025-06", "100.00")),
    ),
    Script(
        "silver 2024-03, gold 2024-06, bills fall to 160.00: downgrade to silver at the 2025-05 re-rating",
        mobile(402),
        phases(("2024-01", "310.00"), ("2024-12", "160.00")),
    ),
    Script(
        "silver 2024-06, bills fall to 50.00: lapse at the 2025-05 re-rating",
        mobile(403),
        phases(("2024-01", "155.00"), ("2024-12", "50.00")),
    ),
    Script("480.00 a month: diamond 2024-06, renewed at 2025-05", mobile(404), constant("480.00")),
    Script(
        "rising bills: silver 2024-06, gold 2024-12, diamond 2025-05",
        mobile(405),
        phases(("2024-01", "160.00"), ("2024-07", "320.00"), ("2025-01", "500.00")),
    ),
    Script(
        "gold 2024-06, absent 2025-03..2025-05 over the re-rating: downgrade to silver, gold again later",
        mobile(406),
        constant("350.00"),
        months=spans(span("2024-01", "2025-02"), span("2025-06")),
    ),
    Script(
        "silver 2024-05, points unlocked 2024-10, cancelled 2025-02 (terminate), number recycled 2025-07",
        mobile(407, brand="gotone", activation_date=date(2011, 8, 31)),
        constant("200.00"),
        months=span("2024-01", "2025-02"),
        status={"2025-02": "cancelled"},
        points=lambda month: 1500 + 60 * month,
    ),
    Script(
        "recycled number 13900000407: a new family person from 2025-07, starts from nothing",
        mobile(407, customer_type="family", brand="mzone", activation_date=date(2025, 7, 12)),
        constant("40.00"),
        months=span("2025-07"),
        points=lambda month: 10 * (month - month_index("2025-07")),
    ),
    Script(
        "absent 2024-06..2025-06 (13 months): forgotten at 2025-05, back 2025-07 from nothing",
        mobile(408, brand="mzone", activation_date=date(2016, 4, 18)),
        constant("180.00"),
        months=spans(span("2024-01", "2024-05"), span("2025-07")),
        points=lambda _month: 2500,
    ),
    Script(
        "absent 2024-07..2025-05 (11 months): not forgotten, back 2025-06 with its history",
        mobile(409),
        constant("120.00"),
        months=spans(span("2024-01", "2024-06"), span("2025-06")),
        points=lambda _month: 2200,
    ),
    Script(
        "absent 2024-07..2025-06 (12 months): forgotten at 2025-06, back 2025-07 from nothing",
        mobile(410),
        constant("120.00"),
        months=spans(span("2024-01", "2024-06"), span("2025-07")),
        points=lambda _month: 2200,
    ),
    Script(
        "last row 2024-08, never seen again: forgotten at 2025-08",
        mobile(411, brand="easyown"),
        constant("90.00"),
        months=span("2024-01", "2024-08"),
        points=lambda _month: 3000,
    ),
    Script(
        "1100.00 a month, individual -> group from 2025-01: diamond 2024-06, supreme 2025-01",
        mobile(412),
        constant("1100.00"),
        profile_from={"2025-01": mobile(412, customer_type="group")},
    ),
    Script(
        "activated 2020-02-29, easyown, 100.00 a month: credit tenure 4 on 2025-02-28 (score 370,"
        " star_3) and 5 on 2025-03-31 (score 420, star_4)",
        mobile(413, brand="easyown", activation_date=date(2020, 2, 29)),
        constant("100.00"),
    ),
    Script(
        "gotone, 120.00 a month: suspended 2024-11 (count 1) and 2024-12 (count 0); credit star_4"
        " (450) drops to star_3 (350) for 2024-11..2025-04",
        mobile(414, brand="gotone", activation_date=date(2012, 10, 31)),
        constant("120.00"),
        status={"2024-11": "suspended", "2024-12": "suspended"},
        suspensions={"2024-11": 1},
    ),
    Script(
        "two suspensions in one month (2025-03, still active at month end): credit -200",
        mobile(415, brand="mzone", activation_date=date(2014, 1, 31)),
        constant("260.00"),
        suspensions={"2025-03": 2},
    ),
    # --- cmcc_credit spend-band edges: tenure fixed for 2024-12..2025-11 ----------------------
    Script(
        "credit: mzone, tenure 2, avg exactly 20.00 -> spend 0, score 180, star_1",
        mobile(501, brand="mzone", activation_date=date(2022, 12, 15)),
        constant("20.00"),
    ),
    Script(
        "credit: mzone, tenure 2, 6m sum 120.01 -> spend 20, score 200, star_2",
        mobile(502, brand="mzone", activation_date=date(2022, 12, 15)),
        cycle("20.00", "20.00", "20.00", "20.00", "20.00", "20.01"),
    ),
    Script(
        "credit: gotone, tenure 3, avg exactly 50.00 -> spend 20, score 270, star_2",
        mobile(503, brand="gotone", activation_date=date(2021, 12, 15)),
        constant("50.00"),
    ),
    Script(
        "credit: gotone, tenure 3, 6m sum 300.01 -> spend 50, score 300, star_3",
        mobile(504, brand="gotone", activation_date=date(2021, 12, 15)),
        cycle("50.00", "50.00", "50.00", "50.00", "50.00", "50.01"),
    ),
    Script(
        "credit: easyown, tenure >= 5, avg exactly 80.00 -> spend 50, score 370, star_3",
        mobile(505, brand="easyown", activation_date=date(2012, 5, 20)),
        constant("80.00"),
    ),
    Script(
        "credit: easyown, tenure >= 5, 6m sum 480.01 -> spend 100, score 420, star_4",
        mobile(506, brand="easyown", activation_date=date(2012, 5, 20)),
        cycle("80.00", "80.00", "80.00", "80.00", "80.00", "80.01"),
    ),
    Script(
        "credit: gotone, tenure 3, avg exactly 120.00 -> spend 100, score 350, star_3",
        mobile(507, brand="gotone", activation_date=date(2021, 12, 15)),
        constant("120.00"),
    ),
    Script(
        "credit: gotone, tenure 3, 6m sum 720.01 -> spend 150, score 400, star_4",
        mobile(508, brand="gotone", activation_date=date(2021, 12, 15)),
        cycle("120.00", "120.00", "120.00", "120.00", "120.00", "120.01"),
    ),
    Script(
        "credit: mzone, tenure 3, avg exactly 200.00 -> spend 150, score 380, star_3",
        mobile(509, brand="mzone", activation_date=date(2021, 12, 15)),
        constant("200.00"),
    ),
    Script(
        "credit: mzone, tenure 3, 6m sum 1200.01 -> spend 200, score 430, star_4",
        mobile(510, brand="mzone", activation_date=date(2021, 12, 15)),
        cycle("200.00", "200.00", "200.00", "200.00", "200.00", "200.01"),
    ),
    Script(
        "credit: easyown, tenure 4, avg exactly 400.00 -> spend 200, score 470, star_4",
        mobile(511, brand="easyown", activation_date=date(2020, 12, 15)),
        constant("400.00"),
    ),
    Script(
        "credit: easyown, tenure 4, 6m sum 2400.01 -> spend 250, score 520, star_5",
        mobile(512, brand="easyown", activation_date=date(2020, 12, 15)),
        cycle("400.00", "400.00", "400.00", "400.00", "400.00", "400.01"),
    ),
    # --- points_redemption ---------------------------------------------------------------------
    Script(
        "points 1990 + 1 a month: exactly 2000 in 2024-11, unlocked",
        mobile(601),
        constant("60.00"),
        points=lambda month: 1990 + month,
    ),
    Script(
        "points 2000 in 2024-05 (unlocked), redeemed down to 100 from 2024-07: stays unlocked",
        mobile(602),
        constant("60.00"),
        points=lambda month: 1600 + 100 * month if month <= 5 else 100,
    ),
    Script("points always null: never unlocked", mobile(603), constant("60.00")),
    Script("points always 1999: never unlocked", mobile(604), constant("60.00"), points=lambda _month: 1999),
    # --- cancellation and recycling without levels, activation-date edges ----------------------
    Script(
        "prepaid, cancelled 2024-04, recycled 2024-10",
        mobile(702, payment_type="prepaid", activation_date=date(2019, 7, 7)),
        constant("30.00"),
        months=span("2024-01", "2024-04"),
        status={"2024-04": "cancelled"},
    ),
    Script(
        "recycled 13900000702: new postpaid group person activated 2024-10-01",
        mobile(702, customer_type="group", activation_date=date(2024, 10, 1)),
        constant("700.00"),
        months=span("2024-10"),
    ),
    Script(
        "new line activated on 2025-03-31, the last day of its first billing month",
        mobile(801, activation_date=date(2025, 3, 31)),
        constant("88.00"),
        months=span("2025-03"),
    ),
    Script(
        "new line activated on 2024-02-29, the last day of its first billing month",
        mobile(802, brand="gotone", activation_date=date(2024, 2, 29)),
        constant("66.00"),
        months=span("2024-02"),
    ),
    Script(
        "activated 2019-01-31 (month end)",
        mobile(803, brand="mzone", activation_date=date(2019, 1, 31)),
        constant("75.00"),
    ),
    Script(
        "activated 2021-04-30 (month end)",
        fixed(900803, activation_date=date(2021, 4, 30)),
        constant("45.00"),
    ),
    Script(
        "activated 1990-01-01, the earliest valid date",
        mobile(805, brand="gotone", activation_date=date(1990, 1, 1)),
        constant("95.00"),
    ),
    # --- amount range edges (valid, inclusive) -------------------------------------------------
    Script(
        "group mobile, a -100000.00 refund in 2025-04 (the lowest valid amount)",
        mobile(901, customer_type="group"),
        lambda month: fen("-100000.00") if month == month_index("2025-04") else fen("1500.00"),
    ),
    Script(
        "group mobile, billed and paid 1000000.00 in 2025-04 (the highest valid amount)",
        mobile(902, customer_type="group"),
        lambda month: fen("1000000.00") if month == month_index("2025-04") else fen("1500.00"),
    ),
)


# --------------------------------------------------------------------------------------------
# Filler lines: the realistic random population

INITIAL_FILLER = 1940
JOINERS_PER_MONTH = (6, 12)
P_CANCEL = 0.006  # per line and month
P_RECYCLE = 0.3  # a cancelled filler number comes back as a new person
P_ABSENCE = 0.007  # per line and month: missing for 1-3 months
FORGOTTEN_LINES = 10  # filler lines absent for 12-16 months (some come back)


def pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class IdAllocator:
    """Unique filler ids by service type, never colliding with scripted ids."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def new(self, service_type: str) -> str:
        while True:
            if service_type == "mobile":
                prefix = self.rng.choice(("130", "131", "132", "138", "156", "186"))  # 139: scripted
                candidate = f"{prefix}{self.rng.randrange(10**8):08d}"
            elif service_type == "fixed":
                candidate = f"F0755{self.rng.randrange(100_000, 900_000)}"
            else:
                candidate = f"BB755{self.rng.randrange(1_000_000, 9_000_000)}"
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate


def random_activation(rng: random.Random) -> date:
    """Activation date of a line already in service in 2024-01: 1996..2023, mostly recent."""
    year = max(1996, 2023 - int(rng.expovariate(1 / 6)))
    return date(year, 1, 1) + timedelta(days=rng.randrange(365))


def draw_profile(rng: random.Random, ids: IdAllocator, activation: date, sid: str | None = None) -> Profile:
    """A random line: service and id first, then the other attributes."""
    service = pick(rng, {"mobile": 0.74, "fixed": 0.12, "broadband": 0.14})
    if sid is not None:  # a recycled number keeps its kind
        service = "fixed" if sid.startswith("F") else "broadband" if sid.startswith("BB") else "mobile"
    customer = pick(rng, {"individual": 0.78, "family": 0.18, "group": 0.04})
    if service == "mobile":
        payment = pick(rng, {"postpaid": 0.86, "prepaid": 0.14})
        plan = pick(
            rng,
            {
                "standard": 0.84,
                "data_card": 0.04,
                "wo_family": 0.05,
                "employee_2g": 0.02,
                "sms_card_2g": 0.02,
                "high_data_2g": 0.03,
            },
        )
        brand = pick(rng, {"gotone": 0.35, "mzone": 0.35, "easyown": 0.3}) if rng.random() < 0.4 else None
    else:
        payment = pick(rng, {"postpaid": 0.97, "prepaid": 0.03})
        plan = pick(rng, {"standard": 0.9, "payphone": 0.1}) if service == "fixed" else "standard"
        brand = None
    return Profile(
        subscriber_id=sid or ids.new(service),
        customer_type=customer,
        service_type=service,
        plan_category=plan,
        payment_type=payment,
        account_class=pick(rng, {"normal": 0.96, "public_free": 0.025, "test": 0.015}),
        real_name_verified=rng.random() < 0.93,
        brand=brand,
        activation_date=activation,
    )


def base_bill(rng: random.Random, profile: Profile) -> float:
    """A line's typical monthly bill in yuan."""
    if profile.account_class == "public_free":
        return 0.0
    if profile.account_class == "test":
        return rng.uniform(0, 10)
    median = {"mobile": 95.0, "fixed": 70.0, "broadband": 110.0}[profile.service_type]
    if profile.plan_category in ("data_card", "sms_card_2g", "payphone"):
        median = 30.0
    if profile.customer_type == "family":
        median *= 1.3
    if profile.customer_type == "group":
        return min(4000.0, max(60.0, 380.0 * math.exp(rng.gauss(0, 0.75))))
    return min(600.0, max(15.0, median * math.exp(rng.gauss(0, 0.6))))


def trend(rng: random.Random, start: int) -> Callable[[int], float]:
    """A multiplier by month: flat, rising, falling or a bump, so levels come and go."""
    kind = pick(rng, {"flat": 0.6, "rising": 0.15, "falling": 0.1, "bump": 0.15})
    if kind == "rising":
        growth = rng.uniform(0.015, 0.04)
        return lambda month: (1 + growth) ** (month - start)
    if kind == "falling":
        decay = rng.uniform(0.015, 0.04)
        return lambda month: max(0.3, (1 - decay) ** (month - start))
    if kind == "bump":
        centre, width, height = rng.uniform(0, MONTH_COUNT), rng.uniform(2, 6), rng.uniform(0.8, 2.0)
        return lambda month: 1 + height * math.exp(-(((month - centre) / width) ** 2))
    return lambda _month: 1.0


@dataclass
class FillerLife:
    """One person's hold on a filler line from ``start``: absences, maybe a cancellation."""

    profile: Profile
    start: int
    forgotten: range = range(0)  # a long absence
    returns: bool = True  # back after the long absence (else the line ends there)
    cancelled_at: int | None = None
    rows: list[Row] = field(default_factory=list)

    def simulate(self) -> None:
        rng = random.Random(f"{SEED}/line/{self.profile.subscriber_id}/{self.start}")
        base = base_bill(rng, self.profile)
        factor = trend(rng, self.start)
        profile = self.profile
        type_change = rng.randrange(self.start + 1, MONTH_COUNT + 1) if rng.random() < 0.015 else None
        points: int | None = None
        if profile.account_class == "normal" and rng.random() < 0.88:
            points = int(rng.triangular(0, 2400, 100))
        points_rate = rng.choice((0.1, 0.2, 0.5, 1.0))  # points per yuan billed
        arrears = 0
        prepaid_balance = rng.randrange(0, 5000)
        absent_left = 0
        suspended_left = 0
        for month in range(self.start, MONTH_COUNT):
            if month in self.forgotten:
                if not self.returns:
                    return
                continue
            if month > self.start and absent_left == 0 and rng.random() < P_ABSENCE:
                absent_left = rng.choice((1, 1, 1, 2, 2, 3))
            if absent_left:
                absent_left -= 1
                continue
            if month == type_change and profile.customer_type == "individual":
                profile = replace(profile, customer_type="family")

            status, suspensions = "active", 0
            if suspended_left:
                status, suspended_left = "suspended", suspended_left - 1
            elif rng.random() < 0.008:
                status, suspensions, suspended_left = "suspended", 1, rng.choice((0, 0, 0, 1))
            elif rng.random() < 0.005:
                suspensions = 1  # suspended and resumed within the month
            cancel = month > self.start and rng.random() < P_CANCEL

            noise = min(1.5, max(0.6, rng.gauss(1, 0.12)))
            billed = round(base * factor(month) * noise * (0.35 if status == "suspended" else 1) * 100)
            if billed > 0 and rng.random() < 0.003:
                billed = -rng.randrange(500, 8000)  # adjustment / refund

            if profile.payment_type == "prepaid":
                prepaid_balance -= billed
                paid = 0
                while prepaid_balance + paid < 2000:
                    paid += rng.choice((5000, 10000))
                prepaid_balance += paid
            elif billed <= 0:
                paid = 0
            else:
                arrears += billed
                draw = rng.random()
                if draw < 0.025:
                    paid = 0  # missed a payment; pays it later
                elif draw < 0.04:
                    paid = -(-arrears // 1000) * 1000  # rounds up to 10 yuan
                else:
                    paid = arrears
                arrears = max(0, arrears - paid)

            if points is not None:
                points += int(max(billed, 0) / 100 * points_rate)
                if points >= 2000 and rng.random() < 0.02:
                    points -= rng.randrange(1000, points + 1)

            self.rows.append(
                make_row(
                    profile,
                    month,
                    status="cancelled" if cancel else status,
                    billed=billed,
                    paid=paid,
                    suspension_count=suspensions,
                    points=points,
                )
            )
            if cancel:
                self.cancelled_at = month
                return


def filler_lives() -> list[FillerLife]:
    """The random population: initial lines, joiners, recycled numbers and forgotten lines."""
    rng = random.Random(f"{SEED}/population")
    ids = IdAllocator(random.Random(f"{SEED}/ids"))
    for script in SCRIPTS:
        ids.used.add(script.profile.subscriber_id)

    pending = [FillerLife(draw_profile(rng, ids, random_activation(rng)), 0) for _ in range(INITIAL_FILLER)]
    for month in range(1, MONTH_COUNT):
        for _ in range(rng.randint(*JOINERS_PER_MONTH)):
            joined = month_start(month) + timedelta(days=rng.randrange(month_end(month).day))
            pending.append(FillerLife(draw_profile(rng, ids, joined), month))
    for life in rng.sample(pending[:INITIAL_FILLER], FORGOTTEN_LINES):
        first = rng.randrange(2, 12)
        life.forgotten = range(first, first + rng.randint(12, 16))
        life.returns = rng.random() < 0.6

    lives: list[FillerLife] = []
    while pending:
        life = pending.pop(0)
        life.simulate()
        lives.append(life)
        if life.cancelled_at is not None and rng.random() < P_RECYCLE:
            comeback = life.cancelled_at + rng.randint(3, 9)
            if comeback < MONTH_COUNT:
                joined = month_start(comeback) + timedelta(days=rng.randrange(month_end(comeback).day))
                profile = draw_profile(rng, ids, joined, sid=life.profile.subscriber_id)
                pending.append(FillerLife(profile, comeback))
    return lives


# --------------------------------------------------------------------------------------------
# Anomalies: what the engine must quarantine, collapse or refuse to be fooled by


def _next_month_first(row: Row) -> date:
    return month_end(month_index(str(row["billing_month"]))) + timedelta(days=1)


BAD_VALUES: tuple[tuple[str, Callable[[Row], Row]], ...] = (
    ("customer_type not allowed", lambda r: {**r, "customer_type": "VIP"}),
    ("service_type wrong case", lambda r: {**r, "service_type": "Mobile"}),
    ("plan_category wrong case", lambda r: {**r, "plan_category": "Standard"}),
    ("payment_type not allowed", lambda r: {**r, "payment_type": "POSTPAID"}),
    ("account_class not allowed", lambda r: {**r, "account_class": "vip"}),
    ("status not allowed", lambda r: {**r, "status": "closed"}),
    ("brand not allowed", lambda r: {**r, "brand": "cmcc"}),
    ("billed_amount above range", lambda r: {**r, "billed_amount": Decimal("1000000.01")}),
    ("paid_amount below range", lambda r: {**r, "paid_amount": Decimal("-100000.01")}),
    ("billed_amount far above range", lambda r: {**r, "billed_amount": Decimal("2500000.00")}),
    ("suspension_count negative", lambda r: {**r, "suspension_count": -1}),
    ("points_balance negative", lambda r: {**r, "points_balance": -20}),
    ("real_name_verified null", lambda r: {**r, "real_name_verified": None}),
    ("billed_amount null", lambda r: {**r, "billed_amount": None}),
    ("activation_date null", lambda r: {**r, "activation_date": None}),
    ("customer_type null", lambda r: {**r, "customer_type": None}),
    ("status null", lambda r: {**r, "status": None}),
    ("activation_date after month end", lambda r: {**r, "activation_date": _next_month_first(r)}),
    ("activation_date before 1990", lambda r: {**r, "activation_date": date(1989, 12, 31)}),
)
"""Value-rule breaks that replace a filler line's row (the line is present but quarantined)."""

BAD_IDS: tuple[tuple[str, Callable[[Row], Row]], ...] = (
    ("subscriber_id 40 characters", lambda r: {**r, "subscriber_id": str(r["subscriber_id"]).ljust(40, "X")}),
    ("subscriber_id 33 characters", lambda r: {**r, "subscriber_id": str(r["subscriber_id"]).ljust(33, "0")}),
    ("subscriber_id empty", lambda r: {**r, "subscriber_id": ""}),
    ("subscriber_id null", lambda r: {**r, "subscriber_id": None}),
)
"""Bad ids: added as extra rows copied from a filler line (the line keeps its own good row)."""


def inject_anomalies(month: int, rows: list[Row], protected: set[str]) -> list[Row]:
    """Break a few filler rows of ``month`` (never a scripted line's)."""
    rng = random.Random(f"{SEED}/anomalies/{month}")
    candidates = [
        index for index, row in enumerate(rows) if row["subscriber_id"] not in protected and row["status"] == "active"
    ]
    victims = iter(rng.sample(candidates, 8))
    rows = list(rows)

    for k in range(3):  # three value-rule breaks a month, rotating through all kinds
        _, breaks = BAD_VALUES[(3 * month + k) % len(BAD_VALUES)]
        index = next(victims)
        rows[index] = breaks(rows[index])
    if month % 2 == 0:  # a bad id in even months
        _, breaks = BAD_IDS[(month // 2) % len(BAD_IDS)]
        rows.append(breaks(rows[next(victims)]))
    if month % 2 == 1 or month == 20:  # conflicting rows: same subscriber, different values
        row = rows[next(victims)]
        rows.append({**row, "billed_amount": cast(Decimal, row["billed_amount"]) + Decimal("10.00")})
        if month == 20:  # ... and one of them twice: still conflicting after duplicates collapse
            rows.append(dict(row))
    if month % 3 == 0:  # an exact duplicate
        rows.append(dict(rows[next(victims)]))
    return rows


# --------------------------------------------------------------------------------------------
# Assembly and writing


def build_months() -> list[list[Row]]:
    """Every month's rows, in write order (sorted by subscriber id, nulls first)."""
    months: list[list[Row]] = [[] for _ in range(MONTH_COUNT)]
    for script in SCRIPTS:
        for row in script.rows():
            months[month_index(str(row["billing_month"]))].append(row)
    for life in filler_lives():
        for row in life.rows:
            months[month_index(str(row["billing_month"]))].append(row)

    protected = {script.profile.subscriber_id for script in SCRIPTS}
    built = []
    for month, rows in enumerate(months):
        rows = inject_anomalies(month, rows, protected)
        rows.sort(key=lambda row: (row["subscriber_id"] is not None, str(row["subscriber_id"])))
        built.append(rows)
    return built


def to_table(rows: Iterable[Row]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=SCHEMA)


def write_month(table: pa.Table, path: Path) -> None:
    """Write one month deterministically: one row group, zstd, no timestamps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=3,
        row_group_size=max(1, table.num_rows),
        write_statistics=True,
    )


def generate(out: Path) -> list[Path]:
    """Write all months under ``out``; returns the files written, oldest month first."""
    paths = []
    for month, rows in enumerate(build_months()):
        path = out / f"billing_month={month_label(month)}" / "part-0.parquet"
        write_month(to_table(rows), path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    paths = generate(args.out)
    total = sum(path.stat().st_size for path in paths)
    print(f"wrote {len(paths)} months under {args.out} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
