"""Reading one month's extract files into the normalized frame, with file-level refusals.

File-level problems (SPEC section 2, step 1) stop the run with a message naming the file and the
column: an unreadable or non-Parquet file, a missing required column, a column whose type cannot be
read as the contract's type, or a ``billing_month`` column that disagrees with the folder. Money is
converted to integer fen here, exactly; row-level value rules are left to the Pandera schema.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label
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
    return _check_schema(schema, where)


def _check_schema(schema: pa.Schema, where: str) -> pa.Schema:
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


class _Changed(OSError):
    """The file's bytes differ from those read before: it is being written while it is read."""


_HASH_BLOCK = 8 << 20


class ReadOnce(io.RawIOBase):
    """One extract file read through one open descriptor, front to back, each byte once: every byte is
    hashed as it is read, and the Parquet reader is served exactly those bytes, so the checksum is of
    the bytes parsed (SPEC 8) even if the file is replaced or rewritten meanwhile.

    The Parquet reader first reads the footer at the end of the file; those bytes are kept and compared
    with the same bytes when the front-to-back pass reaches them. Row groups are then parsed one at a
    time (:meth:`row_group`): the pass reads up to the group's end and keeps only the bytes from its
    start, so memory holds one row group's compressed bytes, as the Parquet reader needs anyway. A
    difference found on the way (a footer that changed, a file that shrank, or a size or modification
    time other than at open) makes :meth:`changed` true; :meth:`finish` then refuses."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._fd = handle.fileno()
        self._opened = os.fstat(self._fd)
        self.size = self._opened.st_size
        self._digest = hashlib.sha256()
        self._next = 0  # bytes [0, _next) are read and hashed
        self._kept: list[tuple[int, bytes]] = []  # (offset, bytes) read by the pass and still needed
        self._tail_from, self._tail = self.size, b""  # the end of the file, read first for the footer
        self._footer_read = False
        self._position = 0
        self._lock = threading.Lock()
        self._differs = False

    # -- what the Parquet reader calls
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            start = self._position
            end = self.size if size < 0 else min(self.size, start + size)
            data = self._serve(start, end) if end > start else b""
            self._position = end if end > start else start
            return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    # -- the front-to-back pass
    def _serve(self, start: int, end: int) -> bytes:
        if not self._footer_read:
            if start < self._tail_from:  # the reader wants more of the end: read it and keep it
                self._tail = self._pread(start, self._tail_from) + self._tail
                self._tail_from = start
            return self._tail[start - self._tail_from : end - self._tail_from]
        if end > self._next:
            if start >= self._tail_from and self._next <= self._tail_from:
                return self._tail[start - self._tail_from : end - self._tail_from]
            self._advance(end, keep=True)
        for offset, chunk in self._kept:
            if offset <= start and end <= offset + len(chunk):
                return chunk[start - offset : end - offset]
        pieces = [
            chunk[max(start, offset) - offset : min(end, offset + len(chunk)) - offset]
            for offset, chunk in self._kept
            if offset < end and start < offset + len(chunk)
        ]
        if sum(len(piece) for piece in pieces) != end - start:  # the kept chunks are contiguous
            raise OSError(f"bytes {start}..{end} were asked for after the pass had left them")
        return b"".join(pieces)

    def _pread(self, start: int, end: int) -> bytes:
        data = os.pread(self._fd, end - start, start)
        while len(data) < end - start:
            more = os.pread(self._fd, end - start - len(data), start + len(data))
            if not more:
                self._differs = True
                raise _Changed(f"the file ends at {start + len(data)}, not at {self.size}")
            data += more
        return data

    def _advance(self, end: int, *, keep: bool) -> None:
        """Read, hash and check bytes [_next, end); keep them when ``keep``."""
        while self._next < end:
            stop = end if keep else min(end, self._next + _HASH_BLOCK)
            data = self._pread(self._next, stop)
            self._digest.update(data)
            if stop > self._tail_from:  # the pass reached the footer the reader was given
                low = max(self._next, self._tail_from)
                if data[low - self._next :] != self._tail[low - self._tail_from : stop - self._tail_from]:
                    self._differs = True
                    raise _Changed("its footer changed")
            if keep:
                self._kept.append((self._next, data))
            self._next = stop

    def row_group(self, start: int, end: int) -> None:
        """The reader is about to parse the row group whose bytes are [start, end): read the file up
        to its end, and forget what came before its start."""
        with self._lock:
            self._footer_read = True
            self._kept = [(offset, chunk) for offset, chunk in self._kept if offset + len(chunk) > start]
            if self._next < start:
                self._advance(start, keep=False)
            self._advance(end, keep=True)

    def changed(self) -> bool:
        """Whether the file was seen to change since it was opened."""
        now = os.fstat(self._fd)
        return self._differs or (now.st_size, now.st_mtime_ns) != (self._opened.st_size, self._opened.st_mtime_ns)

    def finish(self) -> str:
        """Read the rest of the file and return the SHA-256 of all its bytes (those parsed among them);
        _Changed when the file changed while it was read."""
        with self._lock:
            self._footer_read = True
            self._kept = []
            self._advance(self.size, keep=False)
        if self.changed():
            raise _Changed("its size or modification time changed")
        return self._digest.hexdigest()


def _row_group_span(group: pq.RowGroupMetaData) -> tuple[int, int]:
    """The bytes [start, end) of a row group's column chunks (dictionary pages included)."""
    starts, ends = [], []
    for index in range(group.num_columns):
        column = group.column(index)
        start = column.data_page_offset
        if column.has_dictionary_page and 0 < column.dictionary_page_offset < start:
            start = column.dictionary_page_offset
        starts.append(start)
        ends.append(start + column.total_compressed_size)
    return (min(starts), max(ends)) if starts else (0, 0)


@contextmanager
def _opened(path: Path, where: str) -> Iterator[tuple[pq.ParquetFile, ReadOnce]]:
    """The file opened once: its Parquet reader served by a :class:`ReadOnce`. Any failure names the
    file: as changed while it was read when it was, else as not readable Parquet."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise PipelineError(f"{where}: not a readable Parquet file ({exc})") from exc
    with handle:
        source = ReadOnce(handle)
        try:
            yield pq.ParquetFile(source, pre_buffer=False), source
        except (OSError, pa.ArrowException, PipelineError) as exc:
            if source.changed():
                raise PipelineError(f"{where}: changed while it was read; rerun") from exc
            if isinstance(exc, PipelineError):
                raise
            raise PipelineError(f"{where}: not a readable Parquet file ({exc})") from exc


def _batches(
    parquet: pq.ParquetFile, source: ReadOnce, columns: list[str], batch_size: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Every batch of ``columns`` with the file row number of its first row, row group by row group in
    the order they lie in the file (so the file is read front to back once)."""
    metadata = parquet.metadata
    first_rows = [0]
    for index in range(metadata.num_row_groups):
        first_rows.append(first_rows[-1] + metadata.row_group(index).num_rows)
    spans = {index: _row_group_span(metadata.row_group(index)) for index in range(metadata.num_row_groups)}
    for index in sorted(spans, key=lambda i: spans[i]):
        source.row_group(*spans[index])
        row = first_rows[index]
        for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[index], columns=columns):
            yield row, batch
            row += batch.num_rows


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
    file index and 0-based row number, so each bucket can restore the month's read order.

    The file is opened once and read front to back once (:class:`ReadOnce`): its schema, its rows and
    the manifest's checksum all come from the same bytes. A file that changes meanwhile is refused."""
    where = _where(path, root)
    rows_read = 0
    with _opened(path, where) as (parquet, source):
        names = set(_check_schema(parquet.schema_arrow, where).names)
        wanted = [*EXTRACT_COLUMNS, *([MONTH_COLUMN] if MONTH_COLUMN in names else [])]
        for batch_number, (first_row, batch) in enumerate(_batches(parquet, source, wanted, batch_rows(buckets))):
            rows = _normalize(pa.Table.from_batches([batch]), month=month, where=where).with_columns(
                pl.lit(file_index, dtype=pl.Int32).alias(FILE_INDEX),
                pl.int_range(first_row, first_row + batch.num_rows, dtype=pl.Int64).alias(SOURCE_ROW),
            )
            rows_read += batch.num_rows
            rows = rows.with_columns(bucket_numbers(rows["subscriber_id"], buckets).alias(BUCKET))
            for (bucket,), part in rows.partition_by(BUCKET, as_dict=True, include_key=False).items():
                folder = bucket_dir(int(bucket))
                folder.mkdir(parents=True, exist_ok=True)
                part.write_parquet(folder / f"{file_index:05d}-{batch_number:05d}.parquet", compression="lz4")
        sha256 = source.finish()
    name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    return SplitFile(file=name, sha256=sha256, rows=rows_read, ignored_columns=_ignored_columns(names))


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
