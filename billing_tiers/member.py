"""One member as the store recorded it: every published month's tier rows, card events and
quarantined rows, and why a level is held (for ``billing-tiers history`` and ``explain``).

Reads only the store: the published table folders (predicate push-down keeps it to the member's row
groups) and the month's state for the last-seen attributes.
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


def _scan(store: Store, table: str, subscriber: str, program: str | None) -> pl.DataFrame:
    folder = store.table_dir(table)
    if not folder.is_dir() or not any(folder.glob("billing_month=*/*.parquet")):
        return pl.DataFrame()
    rows = pl.scan_parquet(folder / "billing_month=*" / "*.parquet", hive_partitioning=True).filter(
        pl.col("subscriber_id") == subscriber
    )
    if program is not None and table != "quarantine":
        rows = rows.filter(pl.col("program") == program)
    return rows.collect().sort("billing_month")


def member_history(store: Store, subscriber: str, program: str | None = None) -> MemberHistory:
    """Every published month of one subscriber (optionally one program), oldest first."""
    published = {month_label(m) for m in store.manifest_months()}

    def only_published(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("billing_month").cast(pl.String).is_in(published)) if frame.height else frame

    return MemberHistory(
        tiers=only_published(_scan(store, "tier_assignments", subscriber, program)),
        cards=only_published(_scan(store, "card_issuance", subscriber, program)),
        quarantine=only_published(_scan(store, "quarantine", subscriber, None)),
    )


def last_seen_attributes(store: Store, month: dt.date, subscriber: str) -> dict[str, Any] | None:
    """The subscriber's attributes in the month's state (None when it is not in the state)."""
    folder = store.month_dir("state", month)
    if not folder.is_dir():
        return None
    rows = pl.scan_parquet(folder / "*.parquet").filter(pl.col("subscriber_id") == subscriber).collect()
    return rows.row(0, named=True) if rows.height else None


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
