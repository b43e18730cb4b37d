"""Reading one month's extract files into the normalized frame, with file-level refusals.

File-level problems (SPEC section 2, step 1) stop the run with a message naming the file and the
column: an unreadable or non-Parquet file, a missing required column, a column whose type cannot be
read as the contract's type, or a ``billing_month`` column that disagrees with the folder. Money is
converted to integer fen here, exactly; row-level value rules are left to the Pandera schema.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label
from billing_tiers.store import sha256_file
from schemas.contract import (
    BOOL,
    BUCKET,
    DATE,
    EXTRACT_COLUMNS,
    INTEGER,
    MONEY,
    MONEY_FEN_COLUMN,
    MONTH_COLUMN,
    SOURCE_ROW,
    STRING,
)
from transforms.buckets import bucket_numbers

_STRING, _BOOL, _DATE, _MONEY, _INT = STRING, BOOL, DATE, MONEY, INTEGER


def _value_type(arrow_type: pa.DataType) -> pa.DataType:
    return arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type


def _readable(kind: str, arrow_type: pa.DataType) -> bool:
    arrow_type = _value_type(arrow_type)
    if pa.types.is_null(arrow_type):
        return True
    if kind == _STRING:
        return (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or (pa.types.is_string_view(arrow_type))
        )
    if kind == _BOOL:
        return pa.types.is_boolean(arrow_type)
    if kind == _DATE:
        return pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type)
    if kind == _MONEY:
        return pa.types.is_integer(arrow_type) or (pa.types.is_decimal(arrow_type) and arrow_type.scale <= 2)
    if kind == _INT:
        return pa.types.is_integer(arrow_type)
    raise AssertionError(kind)


def _to_date(column: pa.ChunkedArray, where: str) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type):
        as_date = pc.cast(column, pa.date32())
        if pc.all(pc.equal(pc.cast(as_date, column.type), column)).as_py() not in (True, None):
            raise PipelineError(f"{where}: activation_date has times of day; expected a date")
        return as_date
    return pc.cast(column, pa.date32())


def _money_to_fen(column: pa.ChunkedArray, where: str, name: str) -> pa.ChunkedArray:
    """Exact yuan -> integer fen: decimals are rescaled to scale 2 and read as their unscaled integer."""
    if pa.types.is_integer(column.type) or pa.types.is_null(column.type):
        as_int = pc.cast(column, pa.int64())
        try:
            return pc.multiply_checked(as_int, pa.scalar(100, pa.int64()))
        except pa.ArrowInvalid as exc:
            raise PipelineError(f"{where}: {name} holds a value too large for an amount") from exc
    if pa.types.is_decimal128(column.type) and column.type.scale == 2:
        chunks = [_unscaled_fen(chunk) for chunk in column.chunks]
        if all(chunk is not None for chunk in chunks):
            return pa.chunked_array(chunks, type=pa.int64())
    try:
        scaled = pc.cast(column, pa.decimal128(30, 2))
        fen = pc.cast(pc.multiply(scaled, pa.scalar(100, pa.decimal128(3, 0))), pa.decimal128(34, 0))
        return pc.cast(fen, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise PipelineError(f"{where}: {name} holds a value too large for an amount") from exc


def _unscaled_fen(chunk: pa.Array) -> pa.Array | None:
    """A decimal128(p, 2) array's unscaled integers are exactly its fen: read them from the buffer
    with no arithmetic (little-endian 128-bit words). None when that is not safe (a sliced array,
    or a value beyond 64 bits, which the checked path then reports)."""
    if chunk.offset != 0 or sys.byteorder != "little":
        return None
    validity, data = chunk.buffers()
    words = np.frombuffer(data, dtype=np.int64, count=2 * len(chunk))
    low, high = words[0::2], words[1::2]
    if not np.array_equal(high, low >> 63):
        return None
    return pa.Array.from_buffers(pa.int64(), len(chunk), [validity, pa.py_buffer(np.ascontiguousarray(low))])


def _where(path: Path, root: Path) -> str:
    return f"extract {path.relative_to(root) if path.is_relative_to(root) else path}"


def check_extract_schema(path: Path, *, root: Path) -> pa.Schema:
    """The file's schema if it is readable Parquet with every contract column of a readable type;
    else PipelineError naming the file and column. Reads only the footer, so it is cheap."""
    where = _where(path, root)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"{where}: not a readable Parquet file ({exc})") from exc
    names = set(schema.names)
    for column, kind in EXTRACT_COLUMNS.items():
        if column not in names:
            raise PipelineError(f"{where}: required column {column} is missing")
        if len(schema.get_all_field_indices(column)) > 1:
            raise PipelineError(f"{where}: column {column} appears more than once")
        if not _readable(kind, schema.field(column).type):
            raise PipelineError(
                f"{where}: column {column} has type {schema.field(column).type}, which cannot be read as {kind}"
            )
    return schema


def _normalize(table: pa.Table, *, month: dt.date, where: str) -> pl.DataFrame:
    """Contract columns of a batch read from one file -> the normalized frame (money in fen)."""
    if MONTH_COLUMN in table.column_names:
        _check_month_column(table.column(MONTH_COLUMN), month, where)
    columns: dict[str, pa.ChunkedArray] = {}
    for column, kind in EXTRACT_COLUMNS.items():
        values = table.column(column)
        if pa.types.is_dictionary(values.type):
            values = pc.cast(values, values.type.value_type)
        if kind == _STRING:  # Polars takes string, large_string or string_view as they come
            columns[column] = values if not pa.types.is_null(values.type) else pc.cast(values, pa.large_string())
        elif kind == _BOOL:
            columns[column] = pc.cast(values, pa.bool_())
        elif kind == _DATE:
            columns[column] = _to_date(values, where)
        elif kind == _MONEY:
            columns[MONEY_FEN_COLUMN[column]] = _money_to_fen(values, where, column)
        else:
            try:
                columns[column] = pc.cast(values, pa.int64())
            except pa.ArrowInvalid as exc:
                raise PipelineError(f"{where}: {column} holds a value too large for an integer") from exc
    rows = pl.from_arrow(pa.table(columns))
    assert isinstance(rows, pl.DataFrame)
    return rows


def _ignored_columns(names: set[str]) -> tuple[str, ...]:
    return tuple(sorted(names - set(EXTRACT_COLUMNS) - {MONTH_COLUMN}))


@dataclass(frozen=True)
class SplitFile:
    """What the manifest says about one extract file that was split into buckets."""

    file: str
    sha256: str
    rows: int
    ignored_columns: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "rows": self.rows,
            "ignored_columns": list(self.ignored_columns),
        }


BATCH_ROWS = 250_000
"""Rows normalized and split at a time: bounds the memory of reading an extract of any size."""
ROWS_PER_SCRATCH_FILE = 10_000
"""With many buckets, a batch grows so that each bucket's scratch file of a batch holds about this
many rows: at 50M subscribers (198 buckets) 250k-row batches wrote 40,000 tiny files."""
MAX_BATCH_ROWS = 2_000_000


def batch_rows(buckets: int) -> int:
    """How many rows to read and split at a time for ``buckets`` buckets."""
    return min(MAX_BATCH_ROWS, max(BATCH_ROWS, buckets * ROWS_PER_SCRATCH_FILE))


FILE_INDEX = "source_file_index"


def split_extract_file(
    path: Path, *, month: dt.date, root: Path, file_index: int, buckets: int, bucket_dir: Callable[[int], Path]
) -> SplitFile:
    """Read one extract file batch by batch, normalize it and write each batch's rows to its
    bucket's folder ``bucket_dir(bucket)`` (one scratch file per batch and bucket). Rows keep their
    file index and 0-based row number, so each bucket can restore the month's read order."""
    where = _where(path, root)
    names = set(check_extract_schema(path, root=root).names)
    wanted = [*EXTRACT_COLUMNS, *([MONTH_COLUMN] if MONTH_COLUMN in names else [])]
    rows_read = 0
    try:
        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=batch_rows(buckets), columns=wanted)
        for batch_number, batch in enumerate(batches):
            rows = _normalize(pa.Table.from_batches([batch]), month=month, where=where).with_columns(
                pl.lit(file_index, dtype=pl.Int32).alias(FILE_INDEX),
                pl.int_range(rows_read, rows_read + batch.num_rows, dtype=pl.Int64).alias(SOURCE_ROW),
            )
            rows_read += batch.num_rows
            rows = rows.with_columns(bucket_numbers(rows["subscriber_id"], buckets).alias(BUCKET))
            for (bucket,), part in rows.partition_by(BUCKET, as_dict=True, include_key=False).items():
                folder = bucket_dir(int(bucket))
                folder.mkdir(parents=True, exist_ok=True)
                part.write_parquet(folder / f"{file_index:05d}-{batch_number:05d}.parquet", compression="lz4")
    except (OSError, pa.ArrowException) as exc:
        raise PipelineError(f"{where}: not a readable Parquet file ({exc})") from exc
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return SplitFile(file=name, sha256=sha256_file(path), rows=rows_read, ignored_columns=_ignored_columns(names))


def _check_month_column(values: pa.ChunkedArray, month: dt.date, where: str) -> None:
    expected = month_label(month)
    if pa.types.is_dictionary(values.type):
        values = pc.cast(values, values.type.value_type)
    if pa.types.is_date(values.type) or pa.types.is_timestamp(values.type):
        text = pc.strftime(pc.cast(values, pa.timestamp("s")), format="%Y-%m")
    elif pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        text = values
    else:
        raise PipelineError(f"{where}: column billing_month has type {values.type}; expected the text {expected}")
    bad = pc.sum(pc.invert(pc.fill_null(pc.equal(text, expected), False))).as_py() or 0
    if bad:
        raise PipelineError(
            f"{where}: column billing_month disagrees with the folder month {expected} in {bad} rows; file refused"
        )
