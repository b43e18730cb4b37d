"""Cleaning one month's rows before they are evaluated (SPEC section 2, steps 2 to 4).

Exact duplicates collapse to one row; a subscriber with different rows in the month is quarantined
whole (``conflicting_rows``); rows that broke a value rule are quarantined with the rule's name.
"""

from __future__ import annotations

import polars as pl

from schemas.contract import (
    CONFLICTING_ROWS,
    CONTRACT_COLUMNS,
    FEN_SOURCE_COLUMN,
    QUARANTINE,
    ROW_ID,
)
from transforms.money import fen_to_yuan


def collapse_duplicates(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Keep the first of each set of rows equal in every contract column (file order preserved).

    Only a subscriber with several rows can have duplicates, so the costly comparison of every
    column runs on those rows alone."""
    repeated = pl.col("subscriber_id").is_duplicated()
    single = rows.filter(~repeated)
    several = rows.filter(repeated).unique(subset=list(CONTRACT_COLUMNS), keep="first", maintain_order=True)
    return pl.concat([single, several]).sort(ROW_ID)


def conflicting_row_ids(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Row ids of every row whose subscriber has two or more different rows (after duplicates)."""
    return (
        rows.filter(pl.col("subscriber_id").is_not_null())
        .filter(pl.len().over("subscriber_id") > 1)
        .select(ROW_ID, pl.lit(CONFLICTING_ROWS).alias("rule"), pl.lit("").alias("detail"))
    )


_HIDDEN = r"[^\p{L}\p{M}\p{N}\p{P}\p{S} ]|^\s|\s$"
"""A text that holds a character a reader cannot see or a terminal would act on: anything but letters,
marks, digits, punctuation, symbols and the plain space, or whitespace at either end."""


def visible_text(text: str) -> str:
    """``text`` with every character that is not printable (control, format, separator other than the
    space, unassigned...) and whitespace at either end written as ``<U+XXXX>``: a quarantined value
    shown in ``broken_rules`` says exactly what was wrong with it, and prints as what it is."""
    last = len(text) - 1
    return "".join(
        f"<U+{ord(char):04X}>" if not char.isprintable() or (char.isspace() and index in (0, last)) else char
        for index, char in enumerate(text)
    )


def visible_details(details: pl.Series) -> pl.Series:
    """:func:`visible_text` on the values that need it (found by one regex pass), the rest as they are."""
    hidden = details.str.contains(_HIDDEN).fill_null(False).arg_true()
    if hidden.len() == 0:
        return details
    shown = [visible_text(text) for text in details.gather(hidden).to_list()]
    return details.scatter(hidden, pl.Series(shown, dtype=pl.String))


def quarantine_table(rows: pl.LazyFrame, *, failures: pl.LazyFrame) -> pl.LazyFrame:
    """One row per rejected input row: its file, position, columns and the rules it broke.

    ``failures`` has ``row_id, rule, detail`` (several per row possible); the first rule in
    ``failures`` order is the row's ``rule`` and all of them are listed in ``broken_rules``.
    """
    per_row = failures.group_by(ROW_ID, maintain_order=True).agg(
        pl.col("rule").first(),
        pl.concat_str([pl.col("rule"), pl.col("detail")], separator="=").str.join("; ").alias("broken_rules"),
    )
    money = [fen_to_yuan(pl.col(fen)).alias(yuan) for fen, yuan in FEN_SOURCE_COLUMN.items()]
    return rows.join(per_row, on=ROW_ID, how="inner").sort(ROW_ID).with_columns(money).select(list(QUARANTINE.columns))


def presence(rows: pl.LazyFrame) -> pl.LazyFrame:
    """Subscriber ids with any row in the month's extract, valid or not (for the missing guard),
    in read order."""
    return rows.select("subscriber_id").drop_nulls().unique(maintain_order=True)
