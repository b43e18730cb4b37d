"""Reading a month's extract whole, unbucketed, in read order: only tests need it (a run reads the
extract once and splits it into buckets, :func:`billing_tiers.extract_io.split_extract_file`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from billing_tiers.extract_io import read_extract_file
from billing_tiers.store import extract_files
from schemas.contract import ROW_ID, SOURCE_FILE, SOURCE_ROW


def read_month_rows(extracts: Path, month: dt.date) -> pl.DataFrame:
    """Every row of a month's extract in read order, unbucketed, with ``row_id``, ``source_file`` and
    ``source_row`` as a bucket's rows have them."""
    frames = []
    for path in extract_files(extracts, month):
        read = read_extract_file(path, month=month, root=extracts)
        frames.append(
            read.rows.with_columns(
                pl.lit(str(path.relative_to(extracts))).alias(SOURCE_FILE),
                pl.int_range(pl.len(), dtype=pl.Int64).alias(SOURCE_ROW),
            )
        )
    return pl.concat(frames).with_row_index(ROW_ID)
