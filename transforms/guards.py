"""The two input guards of SPEC section 2, computed exactly (fractions, not floats)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import polars as pl


@dataclass(frozen=True)
class GuardFigures:
    rows_after_duplicates: int
    quarantined_rows: int
    previous_subscribers: int
    missing_subscribers: int
    max_quarantine_ratio: Decimal
    max_missing_ratio: Decimal

    @property
    def quarantine_ratio(self) -> Fraction:
        if self.rows_after_duplicates == 0:
            return Fraction(0)
        return Fraction(self.quarantined_rows, self.rows_after_duplicates)

    @property
    def missing_ratio(self) -> Fraction:
        if self.previous_subscribers == 0:
            return Fraction(0)
        return Fraction(self.missing_subscribers, self.previous_subscribers)

    def breaches(self) -> list[str]:
        """One sentence per guard that the month breaks (empty when both hold)."""
        found = []
        if self.quarantine_breached:
            found.append(
                f"{self.quarantined_rows} of {self.rows_after_duplicates} rows quarantined "
                f"({float(self.quarantine_ratio):.2%} > max_quarantine_ratio {float(self.max_quarantine_ratio):.2%})"
            )
        if self.missing_breached:
            found.append(
                f"{self.missing_subscribers} of {self.previous_subscribers} subscribers of the previous "
                f"extract have no row ({float(self.missing_ratio):.2%} > max_missing_ratio "
                f"{float(self.max_missing_ratio):.2%})"
            )
        return found

    @property
    def quarantine_breached(self) -> bool:
        return self.quarantine_ratio > Fraction(self.max_quarantine_ratio)

    @property
    def missing_breached(self) -> bool:
        return self.missing_ratio > Fraction(self.max_missing_ratio)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows_after_duplicates": self.rows_after_duplicates,
            "quarantined_rows": self.quarantined_rows,
            "quarantine_ratio": float(self.quarantine_ratio),
            "max_quarantine_ratio": str(self.max_quarantine_ratio),
            "previous_subscribers": self.previous_subscribers,
            "missing_subscribers": self.missing_subscribers,
            "missing_ratio": float(self.missing_ratio),
            "max_missing_ratio": str(self.max_missing_ratio),
        }


def missing_subscribers(*, previous_ids: pl.LazyFrame, current_ids: pl.LazyFrame) -> pl.LazyFrame:
    """Ids present in the previous month's extract with no row at all in this month's."""
    return previous_ids.join(current_ids, on="subscriber_id", how="anti")
