"""A subscriber's bucket: a stable hash of ``subscriber_id``, the same on every machine and version.

The bucket of an id is ``fnv1a_64(utf8(subscriber_id)) mod K``, where FNV-1a 64 is the public
Fowler-Noll-Vo hash (offset basis 0xcbf29ce484222325, prime 0x100000001b3: for each byte,
``h = (h xor byte) * prime mod 2**64``). It is computed here from the Arrow string buffers with
NumPy, because ``pl.Expr.hash`` changes between Polars versions and a bucket number must never
change under a published state. A null id (a quarantined row) goes to bucket 0.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

FNV_OFFSET_BASIS = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a_64(ids: pl.Series) -> pl.Series:
    """FNV-1a 64 of each string's UTF-8 bytes, as UInt64 (null for a null string)."""
    array = ids.cast(pl.String).rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_string())
    count = len(array)
    if count == 0:
        return pl.Series(ids.name, [], dtype=pl.UInt64)
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64, count=count + 1, offset=array.offset * 8)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, dtype=np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    hashes = np.full(count, FNV_OFFSET_BASIS, dtype=np.uint64)
    longest = int(lengths.max())
    for position in range(longest):
        if int(lengths.min()) > position:  # every id is this long: no mask needed
            hashes ^= data[starts + position]
            hashes *= FNV_PRIME
        else:
            longer = lengths > position
            selected = hashes[longer] ^ data[starts[longer] + position]
            hashes[longer] = selected * FNV_PRIME
    result = pl.Series(ids.name, hashes, dtype=pl.UInt64)
    if ids.null_count():
        result = pl.select(pl.when(ids.is_null()).then(None).otherwise(result)).to_series().alias(ids.name)
    return result


def bucket_numbers(ids: pl.Series, buckets: int) -> pl.Series:
    """The bucket (0 .. buckets-1, UInt32) of each id; a null id goes to bucket 0."""
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    if buckets == 1:
        return pl.Series(ids.name, np.zeros(len(ids), dtype=np.uint32), dtype=pl.UInt32)
    return (fnv1a_64(ids) % buckets).fill_null(0).cast(pl.UInt32)
