"""Expressions that turn integer fen into yuan for output and for human-readable reasons."""

from __future__ import annotations

import polars as pl

MONEY_DTYPE = pl.Decimal(18, 2)
"""Yuan amounts in published tables."""


def fen_to_yuan(fen: pl.Expr) -> pl.Expr:
    """Exact integer fen -> Decimal(18, 2) yuan (an integer divided by 100 is exact at scale 2)."""
    return (fen.cast(pl.Decimal(20, 2)) / 100).cast(MONEY_DTYPE)


def format_yuan(fen: pl.Expr) -> pl.Expr:
    """Integer fen -> text such as ``"-1234.05"``."""
    magnitude = fen.abs()
    cents = (magnitude % 100).cast(pl.String).str.zfill(2)
    sign = pl.when(fen < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.concat_str([sign, (magnitude // 100).cast(pl.String), pl.lit("."), cents])


def yuan_text(fen: int) -> str:
    """A rulebook amount in fen as text for reasons (``15000`` -> ``"150.00"``)."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
