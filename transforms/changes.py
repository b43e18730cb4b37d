"""What a correction changed (SPEC 8): the tier rows of a month before and after it was replaced."""

from __future__ import annotations

import polars as pl

from schemas.contract import CHANGED_FIELDS, CHANGES

_KEYS = ["program", "subscriber_id"]


def tier_changes(*, before: pl.LazyFrame, after: pl.LazyFrame) -> pl.LazyFrame:
    """One row per (program, subscriber) whose level, action, validity or card differs between the
    published tier rows (``before``) and the new ones (``after``), both versions side by side.
    ``change`` says ``changed``, ``added`` (only in the new rows) or ``removed`` (only in the old)."""
    old = before.select(*_KEYS, *[pl.col(f).alias(f"{f}_before") for f in CHANGED_FIELDS], pl.lit(True).alias("_old"))
    new = after.select(*_KEYS, *[pl.col(f).alias(f"{f}_after") for f in CHANGED_FIELDS], pl.lit(True).alias("_new"))
    joined = new.join(old, on=_KEYS, how="full", coalesce=True, maintain_order="left_right")
    differs = pl.any_horizontal([pl.col(f"{f}_before").ne_missing(pl.col(f"{f}_after")) for f in CHANGED_FIELDS])
    change = (
        pl.when(pl.col("_old").is_null())
        .then(pl.lit("added"))
        .when(pl.col("_new").is_null())
        .then(pl.lit("removed"))
        .otherwise(pl.lit("changed"))
    )
    return joined.filter(differs).with_columns(change.alias("change")).select(list(CHANGES.columns))
