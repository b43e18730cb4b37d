"""Reading an extract file or a month's extract whole, unbucketed, in read order: only tests need it
(a run reads the extract once, batch by batch, and splits it into buckets with
:func:`billing_tiers.extract_io.split_extract_file`, through the same file checks and normalisation)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from billing_tiers import extract_io
from billing_tiers.store import extract_files
from schemas.contract import EXTRACT_COLUMNS, MONTH_COLUMN, ROW_ID, SOURCE_FILE, SOURCE_ROW


@dataclass(frozen=True)
class ExtractFile:
    """One file as read: its normalized rows and what the manifest would say about it."""

    path: Path
    rows: pl.DataFrame
    sha256: str
    ignored_columns: tuple[str, ...]


def read_extract_file(path: Path, *, month: dt.date, root: Path) -> ExtractFile:
    """Read and normalize one whole extract file, or raise PipelineError naming the file and column
    (the checks and normalisation a run applies to each batch it splits). The checksum is of the
    bytes parsed (one open, each byte read once), as a run's is."""
    where = extract_io._where(path, root)
    with extract_io._opened(path, where) as (parquet, source):
        schema = extract_io._check_schema(parquet.schema_arrow, where)
        wanted = [*EXTRACT_COLUMNS, *([MONTH_COLUMN] if MONTH_COLUMN in schema.names else [])]
        batches = [
            batch
            for _, batch in sorted(
                extract_io._batches(parquet, source, wanted, extract_io.BATCH_ROWS), key=lambda b: b[0]
            )
        ]
        table = (
            pa.Table.from_batches(batches) if batches else pa.schema([schema.field(c) for c in wanted]).empty_table()
        )
        rows = extract_io._normalize(table, month=month, where=where)
        sha256 = source.finish()
    return ExtractFile(
        path=path, rows=rows, sha256=sha256, ignored_columns=extract_io._ignored_columns(set(schema.names))
    )


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
