"""One member as the store recorded it: every published month's tier rows, card events and
quarantined rows, and why a level is held (for ``billing-tiers history`` and ``explain``).

Reads only the store, and only the part files each month's manifest lists, every one checked
against its checksum (:meth:`Store.scan_table`); a filter on the member then pushes down to its
row groups. A month that is damaged stops the reading with one error naming the month and file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import polars as pl

from billing_tiers.months import month_label
from billing_tiers.store import Store
from rulebook import Rulebook


@dataclass(frozen=True)
class MemberHistory:
    tiers: pl.DataFrame
    cards: pl.DataFrame
    quarantine: pl.DataFrame


def _member_rows(store: Store, table: str, subscriber: str, program: str | None) -> pl.DataFrame:
    """The member's rows of ``table`` in every published month, oldest first, with ``billing_month``."""
    frames = []
    for month in store.manifest_months():
        rows = store.scan_table(table, month).filter(pl.col("subscriber_id") == subscriber)
        if program is not None and table != "quarantine":
            rows = rows.filter(pl.col("program") == program)
        frames.append(rows.collect().with_columns(pl.lit(month_label(month)).alias("billing_month")))
    frames = [frame for frame in frames if frame.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def member_history(store: Store, subscriber: str, program: str | None = None) -> MemberHistory:
    """Every published month of one subscriber (optionally one program), oldest first."""
    return MemberHistory(
        tiers=_member_rows(store, "tier_assignments", subscriber, program),
        cards=_member_rows(store, "card_issuance", subscriber, program),
        quarantine=_member_rows(store, "quarantine", subscriber, None),
    )


def last_seen_attributes(store: Store, month: dt.date, subscriber: str) -> dict[str, Any] | None:
    """The subscriber's attributes in the month's state (None when it is not in the state)."""
    rows = store.scan_table("state", month).filter(pl.col("subscriber_id") == subscriber).collect()
    return rows.row(0, named=True) if rows.height else None


def quarantined_rows(store: Store, month: dt.date, subscriber: str) -> pl.DataFrame:
    """The subscriber's rows of the month's extract that were quarantined, and the rule each broke."""
    return store.scan_table("quarantine", month).filter(pl.col("subscriber_id") == subscriber).collect()


def failing_condition(rulebook: Rulebook, program: str, attributes: dict[str, Any]) -> str | None:
    """The first eligibility condition of ``program`` that ``attributes`` fail, with the value."""
    rules = rulebook.enabled_programs().get(program)
    if rules is None:
        return None
    for attribute, allowed in rules.eligible.conditions().items():
        value = attributes.get(attribute)
        if value not in allowed:
            shown = ", ".join(str(a).lower() for a in allowed)
            return f"{attribute} is {str(value).lower() if value is not None else 'null'}, not in [{shown}]"
    return None


def why_held(row: dict[str, Any]) -> str | None:
    """For a retained level: what holds it ("held until 2026-07-08; qualifies for silver")."""
    if row["action"] != "retain" or row["level"] is None:
        return None
    qualifies = f"qualifies for {row['qualified_level'] or 'nothing'}"
    if row["valid_until"] is not None:
        return f"held until {row['valid_until']} by its validity (re-rated the month before); {qualifies}"
    return f"held: {qualifies}"
