"""The data contract, written once: every column, dtype, enumerated value and name the pipeline shares.

This is the bottom layer. It imports only Polars, so the transforms, the Pandera models
(:mod:`schemas.outputs`, :mod:`schemas.extract`), the store and the rulebook all derive what they
need from it: the extract's input columns, the normalized extract, the carried state and
memberships, every published table with its grain, and the names of actions, card events and
reasons. Nothing here runs a rule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import polars as pl

# ----------------------------------------------------------------------------- enumerated values

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "customer_type": ("individual", "family", "group"),
    "service_type": ("mobile", "fixed", "broadband"),
    "plan_category": (
        "standard",
        "data_card",
        "wo_family",
        "employee_2g",
        "sms_card_2g",
        "high_data_2g",
        "payphone",
    ),
    "payment_type": ("postpaid", "prepaid"),
    "account_class": ("normal", "public_free", "test"),
    "brand": ("gotone", "mzone", "easyown"),
    "status": ("active", "suspended", "cancelled"),
}
"""The enumerated extract columns and their exact, case-sensitive values (SPEC section 2)."""

SERVICE_TYPES = ATTRIBUTE_VALUES["service_type"]

TERMINATE, LAPSE, NONE, NEW, UPGRADE, DOWNGRADE, RENEW, RETAIN = (
    "terminate",
    "lapse",
    "none",
    "new",
    "upgrade",
    "downgrade",
    "renew",
    "retain",
)
ACTIONS = (NONE, NEW, UPGRADE, RENEW, DOWNGRADE, RETAIN, LAPSE, TERMINATE)
REASONED_ACTIONS = (NEW, UPGRADE, RENEW, DOWNGRADE, LAPSE, TERMINATE)
"""Actions whose tier row carries a human-readable reason (every level change, and renewals)."""

ISSUE, VOID = "issue", "void"
CARD_EVENTS = (ISSUE, VOID)
CARD_REASONS = (
    "new", "upgrade", "renewal", "downgrade", "replaced", "downgraded", "lapsed", "cancelled", "blocked",
)  # fmt: skip
"""Issue: new, upgrade, renewal, downgrade. Void: replaced (a new card is issued in the same program by
the same evaluation), downgraded (re-rated to a level with no card), lapsed, cancelled, blocked (an
override blocks the member from the program, SPEC 9)."""

GRANT, BLOCK = "grant", "block"
OVERRIDE_KINDS = (GRANT, BLOCK)
"""Kinds of manual override (SPEC 9): a grant lifts the qualified level to at least its level; a block
terminates the program's level while it is in force."""

REASON_CODES = (
    "threshold_met",
    "threshold_missed",
    "not_eligible",
    "validity_ended",
    "absent_too_long",
    "cancelled",
    "override",
    "blocked",
)
"""The machine-readable ``reason_code`` of a tier row whose action changes the level (or renews it):
threshold_met (new, upgrade, renew), threshold_missed and not_eligible (downgrade, lapse at the
re-rating or on recompute), validity_ended (lapse after valid_until), absent_too_long (forgotten),
cancelled (terminate), override (a grant in force above the qualified level decided a new, upgrade,
renew or downgrade), blocked (terminate by a block in force)."""

Retention = Literal["validity", "recompute", "permanent"]
RETENTIONS: tuple[str, ...] = get_args(Retention)

CONFLICTING_ROWS = "conflicting_rows"
"""Quarantine rule of every row of a subscriber with two or more different rows in a month."""

# ----------------------------------------------------------------------------- the input extract

STRING, BOOL, DATE, MONEY, INTEGER = "string", "bool", "date", "decimal(12,2)", "integer"

EXTRACT_COLUMNS: dict[str, str] = {
    "subscriber_id": STRING,
    "customer_type": STRING,
    "service_type": STRING,
    "plan_category": STRING,
    "payment_type": STRING,
    "account_class": STRING,
    "real_name_verified": BOOL,
    "brand": STRING,
    "activation_date": DATE,
    "status": STRING,
    "billed_amount": MONEY,
    "paid_amount": MONEY,
    "suspension_count": INTEGER,
    "points_balance": INTEGER,
}
"""The extract as delivered: column -> the kind of type it must be readable as (SPEC section 2)."""

_ID_AND_ATTRIBUTE_DTYPES: dict[str, pl.DataType] = {
    "subscriber_id": pl.String(),
    "customer_type": pl.String(),
    "service_type": pl.String(),
    "plan_category": pl.String(),
    "payment_type": pl.String(),
    "account_class": pl.String(),
    "real_name_verified": pl.Boolean(),
    "brand": pl.String(),
    "activation_date": pl.Date(),
    "status": pl.String(),
}
"""The extract's id and attribute columns, typed the same in a written file and in the normalized rows."""

EXTRACT_FILE_DTYPES: dict[str, pl.DataType] = {
    **_ID_AND_ATTRIBUTE_DTYPES,
    "billed_amount": pl.Decimal(12, 2),
    "paid_amount": pl.Decimal(12, 2),
    "suspension_count": pl.Int32(),
    "points_balance": pl.Int64(),
}
"""The one concrete type of each extract column in the files this project writes (the bundled sample,
the benchmark, the tests): :func:`schemas.arrow.extract_arrow_schema` makes it an Arrow schema. A
delivered extract may use any type of the column's kind above."""

MONTH_COLUMN = "billing_month"
"""The hive partition column; in an extract file, if present, it must equal the folder's month."""

MONEY_FEN_COLUMN = {"billed_amount": "billed_fen", "paid_amount": "paid_fen"}
"""Extract money column (yuan) -> the integer-fen column the engine computes with."""
FEN_SOURCE_COLUMN = {fen: yuan for yuan, fen in MONEY_FEN_COLUMN.items()}

CONTRACT_COLUMNS: dict[str, pl.DataType] = {
    **_ID_AND_ATTRIBUTE_DTYPES,
    "billed_fen": pl.Int64(),
    "paid_fen": pl.Int64(),
    "suspension_count": pl.Int64(),
    "points_balance": pl.Int64(),
}
"""The normalized extract (money in fen). Equality on these columns defines an exact duplicate."""

NULLABLE_EXTRACT_COLUMNS = frozenset({"brand", "points_balance"})

SUBSCRIBER_ID_LENGTH = "subscriber_id_length"
"""Quarantine rule of a ``subscriber_id`` that is not 1 to 32 characters long."""
SUBSCRIBER_ID_CHARACTERS = "subscriber_id_characters"
"""Quarantine rule of a ``subscriber_id`` with a control or format character (Unicode categories Cc,
Cf) anywhere, or whitespace at either end (SPEC section 2)."""

QUARANTINE_RULES: tuple[str, ...] = (
    CONFLICTING_ROWS,
    *(f"{column}_required" for column in EXTRACT_COLUMNS if column not in NULLABLE_EXTRACT_COLUMNS),
    SUBSCRIBER_ID_LENGTH,
    SUBSCRIBER_ID_CHARACTERS,
    *(f"{column}_allowed_value" for column in ATTRIBUTE_VALUES),
    "activation_date_range",
    "billed_amount_range",
    "paid_amount_range",
    "suspension_count_negative",
    "points_balance_negative",
)
"""Every rule a quarantined row can name (``rule`` and the names in ``broken_rules``)."""

AMOUNT_MIN_FEN = -100_000 * 100
AMOUNT_MAX_FEN = 1_000_000 * 100
EARLIEST_ACTIVATION = dt.date(1990, 1, 1)

SOURCE_FILE, SOURCE_ROW, ROW_ID = "source_file", "source_row", "row_id"
"""Where an input row came from (file, 0-based row in it) and its position in the month's read order."""
BUCKET = "bucket"

# ----------------------------------------------------------------------------- carried between months

CARRIED_ATTRIBUTES = (
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
"""Attributes kept as last seen while a subscriber is absent."""


@dataclass(frozen=True)
class Column:
    """One column of a table: its Polars dtype, whether it may be null, and value checks.

    ``checks`` are data, not code: ``{"isin": [...]}``, ``{"ge": 0}``, ``{"str_length": (1, 32)}``.
    """

    dtype: pl.DataType
    nullable: bool = False
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """A published or carried table: its grain (one sentence), columns and unique key."""

    name: str
    grain: str
    columns: dict[str, Column]
    unique: tuple[str, ...] = ()

    @property
    def schema(self) -> dict[str, pl.DataType]:
        return {name: column.dtype for name, column in self.columns.items()}

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.schema)


_MONEY = pl.Decimal(18, 2)
_LEVEL = Column(pl.String(), nullable=True)
_NULL_DATE = Column(pl.Date(), nullable=True)
_NULL_STRING = Column(pl.String(), nullable=True)
_SUBSCRIBER = Column(pl.String(), checks={"str_length": (1, 32)})

METRIC_COLUMNS = (
    "eligible",
    "present",
    "months_absent",
    "billed_6m",
    "avg_billed_6m",
    "month_paid",
    "cum_paid",
    "tenure_years",
    "suspensions_6m",
    "points_balance",
    "score",
)
"""The program's metrics on every tier row, in table order (``explain`` prints them, in this order)."""

TIER_ASSIGNMENTS = Table(
    name="tier_assignments",
    grain="One row per enabled program per subscriber evaluated in the billing month.",
    columns={
        "program": Column(pl.String()),
        "subscriber_id": _SUBSCRIBER,
        "evaluated_on": Column(pl.Date()),
        "qualified_level": _LEVEL,
        "previous_level": _LEVEL,
        "level": _LEVEL,
        "action": Column(pl.String(), checks={"isin": list(ACTIONS)}),
        "valid_from": _NULL_DATE,
        "valid_until": _NULL_DATE,
        "effective_on": _NULL_DATE,
        "card_id": _NULL_STRING,
        "reason": _NULL_STRING,
        "reason_code": Column(pl.String(), nullable=True, checks={"isin": list(REASON_CODES)}),
        "eligible": Column(pl.Boolean()),
        "present": Column(pl.Boolean()),
        "months_absent": Column(pl.Int32(), checks={"ge": 0}),
        "billed_6m": Column(_MONEY),
        "avg_billed_6m": Column(_MONEY),
        "month_paid": Column(_MONEY),
        "cum_paid": Column(_MONEY),
        "tenure_years": Column(pl.Int32(), checks={"ge": 0}),
        "suspensions_6m": Column(pl.Int64(), checks={"ge": 0}),
        "points_balance": Column(pl.Int64(), nullable=True, checks={"ge": 0}),
        "score": Column(pl.Int64(), nullable=True),
        "override_id": _NULL_STRING,
    },
    unique=("program", "subscriber_id"),
)

CARD_ISSUANCE = Table(
    name="card_issuance",
    grain="One row per card event (issue or void) at the billing month's evaluation.",
    columns={
        "card_id": Column(pl.String()),
        "program": Column(pl.String()),
        "subscriber_id": Column(pl.String()),
        "level": Column(pl.String()),
        "event": Column(pl.String(), checks={"isin": list(CARD_EVENTS)}),
        "reason": Column(pl.String(), checks={"isin": list(CARD_REASONS)}),
        "event_date": Column(pl.Date()),
        "effective_on": Column(pl.Date()),
        "valid_from": _NULL_DATE,
        "valid_until": _NULL_DATE,
    },
    unique=("card_id", "event"),
)

QUARANTINE = Table(
    name="quarantine",
    grain="One row per rejected input row of the billing month's extract, with the rule it broke.",
    columns={
        SOURCE_FILE: Column(pl.String()),
        SOURCE_ROW: Column(pl.Int64(), checks={"ge": 0}),
        "rule": Column(pl.String(), checks={"isin": list(QUARANTINE_RULES)}),
        "broken_rules": Column(pl.String()),
        **{
            name: Column(dtype, nullable=True)
            for name, dtype in CONTRACT_COLUMNS.items()
            if name not in FEN_SOURCE_COLUMN
        },
        **{yuan: Column(_MONEY, nullable=True) for yuan in MONEY_FEN_COLUMN},
    },
    unique=(SOURCE_FILE, SOURCE_ROW),
)

BILLED_WINDOW, SUSPENSION_WINDOW = "billed_fen", "suspensions"
"""Prefixes of the state's monthly window columns: ``billed_fen_age0`` is month B, ``_age1`` B-1..."""


def window_columns(prefix: str, window_months: int) -> list[str]:
    """The state's fixed window columns, newest first (fixed columns slide far faster than a List)."""
    return [f"{prefix}_age{age}" for age in range(window_months)]


HELD_COLUMNS: dict[str, pl.DataType] = {
    "level": pl.String(),
    "valid_from": pl.Date(),
    "valid_until": pl.Date(),
    "card_id": pl.String(),
}
"""A membership held: the state carries one set per program as ``<program>__<column>``."""


def held_columns(program: str) -> dict[str, str]:
    """Membership column -> the state column that carries it for ``program``."""
    return {column: f"{program}__{column}" for column in HELD_COLUMNS}


def state_table(window_months: int, programs: tuple[str, ...] = ()) -> Table:
    """The carried state for a rulebook whose windows are ``window_months`` long and whose enabled
    programs are ``programs``. The memberships held ride in it, so the next month needs one join."""
    windows = {
        name: Column(pl.Int64(), nullable=True, checks=({"ge": 0} if prefix == SUSPENSION_WINDOW else {}))
        for prefix in (BILLED_WINDOW, SUSPENSION_WINDOW)
        for name in window_columns(prefix, window_months)
    }
    return Table(
        name="state",
        grain="One row per subscriber in the carry-forward state after the billing month's evaluation.",
        columns={
            "subscriber_id": Column(pl.String()),
            "entered_month": Column(pl.Date()),
            "last_seen_month": Column(pl.Date()),
            "months_in_state": Column(pl.Int32(), checks={"ge": 1}),
            "months_absent": Column(pl.Int32(), checks={"ge": 0}),
            "cum_paid_fen": Column(pl.Int64()),
            **windows,
            "customer_type": Column(pl.String()),
            "service_type": Column(pl.String()),
            "plan_category": Column(pl.String()),
            "payment_type": Column(pl.String()),
            "account_class": Column(pl.String()),
            "real_name_verified": Column(pl.Boolean()),
            "brand": _NULL_STRING,
            "activation_date": Column(pl.Date()),
            "status": Column(pl.String(), checks={"isin": ["active", "suspended"]}),
            "points_balance": Column(pl.Int64(), nullable=True),
            **{
                name: Column(HELD_COLUMNS[column], nullable=True)
                for program in programs
                for column, name in held_columns(program).items()
            },
        },
        unique=("subscriber_id",),
    )


DEFAULT_WINDOW_MONTHS = 6
STATE = state_table(DEFAULT_WINDOW_MONTHS)

MEMBERSHIPS = Table(
    name="memberships",
    grain="One row per subscriber per program with a level held after the billing month's evaluation.",
    columns={
        "subscriber_id": Column(pl.String()),
        "program": Column(pl.String()),
        "level": Column(pl.String()),
        "valid_from": _NULL_DATE,
        "valid_until": _NULL_DATE,
        "card_id": _NULL_STRING,
    },
    unique=("subscriber_id", "program"),
)

EXTRACT_PRESENCE = Table(
    name="extract_presence",
    grain="One row per subscriber id with any row (valid or quarantined) in the billing month's extract.",
    columns={"subscriber_id": Column(pl.String())},
    unique=("subscriber_id",),
)


AT_RISK = Table(
    name="at_risk",
    grain="One row per validity-program member whose level is re-rated within the horizon while its "
    "qualified level this month is below the level held.",
    columns={
        "program": Column(pl.String()),
        "subscriber_id": Column(pl.String()),
        "level": Column(pl.String()),
        "valid_until": Column(pl.Date()),
        "rerated_on": Column(pl.Date()),
        "months_to_rerating": Column(pl.Int32(), checks={"ge": 1}),
        "qualified_level": _LEVEL,
        "needed_next_month": Column(_MONEY, nullable=True, checks={"ge": 0}),
    },
    unique=("program", "subscriber_id"),
)

CHANGED_FIELDS = ("level", "action", "valid_from", "valid_until", "card_id")
"""A correction shows a member when any of these differs from what was published before (SPEC 8)."""

CHANGES = Table(
    name="changes",
    grain="One row per program and subscriber whose tier row of the billing month differs from the one "
    "published before this run replaced it.",
    columns={
        "program": Column(pl.String()),
        "subscriber_id": Column(pl.String()),
        "change": Column(pl.String(), checks={"isin": ["changed", "added", "removed"]}),
        **{
            f"{field}_{version}": Column(TIER_ASSIGNMENTS.columns[field].dtype, nullable=True)
            for field in CHANGED_FIELDS
            for version in ("before", "after")
        },
    },
    unique=("program", "subscriber_id"),
)


def published_tables(window_months: int = DEFAULT_WINDOW_MONTHS, programs: tuple[str, ...] = ()) -> dict[str, Table]:
    """Every table a month publishes, each hive-partitioned by ``billing_month`` and split in bucket parts."""
    state = state_table(window_months, programs)
    tables = (TIER_ASSIGNMENTS, CARD_ISSUANCE, AT_RISK, QUARANTINE, state, MEMBERSHIPS, EXTRACT_PRESENCE)
    return {table.name: table for table in tables}


PUBLISHED_TABLES = published_tables()

TABLES = tuple(PUBLISHED_TABLES)
"""The tables every month publishes."""
OPTIONAL_TABLES = (CHANGES.name,)
"""Tables a month publishes only sometimes: ``changes`` when a run replaces a published month."""
STORE_TABLES = (*TABLES, *OPTIONAL_TABLES)
CARRIED_TABLES = (STATE.name, EXTRACT_PRESENCE.name)
"""Tables the next month reads back (by bucket); ``memberships`` is published for readers only."""

MEMBERSHIP_SCHEMA = MEMBERSHIPS.schema

# ----------------------------------------------------------------------------- manual decisions (SPEC 9)

GRANT, BLOCK = "grant", "block"
OVERRIDE_KINDS = (GRANT, BLOCK)
"""A grant gives a level of the program (``level`` required); a block takes the program away (no level)."""

PENDING, APPROVED, REVOKED = "pending", "approved", "revoked"
OVERRIDE_STATUSES = (PENDING, APPROVED, REVOKED)
"""An override's current state: pending until approved; revoked once a revoke is recorded (whatever
it was before). Only an approved override applies, over its effective months."""

ADD, APPROVE, REVOKE = "add", "approve", "revoke"
LEDGER_ENTRY_TYPES = (ADD, APPROVE, REVOKE)
"""The entries of the override ledger: every add, approve and revoke is one row, never changed."""

OVERRIDE_ID_PATTERN = r"^OVR-[0-9]{6,}$"
"""Override ids are assigned by the store: ``OVR-`` and the override's number, six digits or more."""
MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
"""A billing month as the ledger writes it: the text ``YYYY-MM`` (as the ``billing_month`` folders)."""

OVERRIDE_IMPORT_HEADER = (
    "program",
    "subscriber_id",
    "kind",
    "level",
    "first_month",
    "last_month",
    "reason",
    "ticket",
)
"""The exact header of an ``override import`` CSV file (``level``, ``last_month`` and ``ticket`` may be empty)."""

_MONTH_TEXT = Column(pl.String(), checks={"str_matches": MONTH_PATTERN})
_NULL_MONTH_TEXT = Column(pl.String(), nullable=True, checks={"str_matches": MONTH_PATTERN})
_OVERRIDE_ID = Column(pl.String(), checks={"str_matches": OVERRIDE_ID_PATTERN})
_UTC = pl.Datetime("us", "UTC")

OVERRIDE_LEDGER = Table(
    name="override_ledger",
    grain="One row per ledger entry: add, approve or revoke.",
    columns={
        "entry_id": Column(pl.String(), checks={"str_length": (32, 32)}),
        "sequence": Column(pl.Int64(), checks={"ge": 1}),
        "entry": Column(pl.String(), checks={"isin": list(LEDGER_ENTRY_TYPES)}),
        "override_id": _OVERRIDE_ID,
        "program": Column(pl.String()),
        "subscriber_id": _SUBSCRIBER,
        "kind": Column(pl.String(), nullable=True, checks={"isin": list(OVERRIDE_KINDS)}),
        "level": _NULL_STRING,
        "first_month": _NULL_MONTH_TEXT,
        "last_month": _NULL_MONTH_TEXT,
        "revoke_from": _NULL_MONTH_TEXT,
        "reason": _NULL_STRING,
        "ticket": _NULL_STRING,
        "by": Column(pl.String()),
        "os_user": Column(pl.String()),
        "recorded_at": Column(_UTC),
    },
    unique=("entry_id",),
)
"""``<store>/overrides/entries/*.parquet``, one file per batch of entries (an ``add``, a whole
``import``, an ``approve`` of several ids, a ``revoke``), files never changed or removed.

Which columns an entry fills: ``add``: everything but ``revoke_from`` (``level`` only for a grant,
``last_month`` null for an open end, ``ticket`` optional); ``approve``: the override's ``override_id``,
``program`` and ``subscriber_id``, ``by``; ``revoke``: the same with ``revoke_from`` and ``reason``.
Months are ``YYYY-MM`` text; ``recorded_at`` is UTC; ``by`` is the name given, ``os_user`` the
operating-system user that wrote the entry."""

OVERRIDES = Table(
    name="overrides",
    grain="One row per override: its fields and its state after every entry of the ledger.",
    columns={
        "override_id": _OVERRIDE_ID,
        "program": Column(pl.String()),
        "subscriber_id": _SUBSCRIBER,
        "kind": Column(pl.String(), checks={"isin": list(OVERRIDE_KINDS)}),
        "level": _NULL_STRING,
        "first_month": _MONTH_TEXT,
        "last_month": _NULL_MONTH_TEXT,
        "reason": Column(pl.String()),
        "ticket": _NULL_STRING,
        "requested_by": Column(pl.String()),
        "approved_by": _NULL_STRING,
        "status": Column(pl.String(), checks={"isin": list(OVERRIDE_STATUSES)}),
        "requested_last_month": _NULL_MONTH_TEXT,
        "removed": Column(pl.Boolean()),
        "requested_at": Column(_UTC),
        "approved_at": Column(_UTC, nullable=True),
        "revoked_by": _NULL_STRING,
        "revoked_at": Column(_UTC, nullable=True),
        "revoke_from": _NULL_MONTH_TEXT,
        "revoke_reason": _NULL_STRING,
    },
    unique=("override_id",),
)
"""What ``current_overrides`` gives (:mod:`billing_tiers.overrides`). ``last_month`` is the effective
last month: the requested one (null: open), or after a revoke from M the earlier of it and M-1, so a
revoke from a month at or before ``first_month`` leaves ``last_month`` before ``first_month`` (no
effective month; ``removed`` is then true)."""

OVERRIDE_LIST_KEYS = ("override_id", *OVERRIDE_IMPORT_HEADER, "requested_by", "approved_by", "status")
"""The keys of ``override list --json`` and of ``status``'s pending overrides, in this order (SPEC 9)."""

OVERRIDES_IN_FORCE = Table(
    name="overrides_in_force",
    grain="One row per program and subscriber with an approved override whose effective months hold the month.",
    columns={
        "override_id": _OVERRIDE_ID,
        "program": Column(pl.String()),
        "subscriber_id": _SUBSCRIBER,
        "kind": OVERRIDES.columns["kind"],
        "level": _NULL_STRING,
        "reason": Column(pl.String()),
        "requested_by": Column(pl.String()),
        "approved_by": Column(pl.String()),
        "first_month": _MONTH_TEXT,
        "last_month": _NULL_MONTH_TEXT,
    },
    unique=("program", "subscriber_id"),
)
"""What the engine applies to a month (``overrides_in_force``); at most one per program and subscriber."""

ENGINE_OVERRIDE_COLUMNS = ("override_id", "program", "subscriber_id", "kind", "level", "reason")
"""The columns of :data:`OVERRIDES_IN_FORCE` the evaluation reads (the others are for people)."""
