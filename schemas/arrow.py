"""The extract's Arrow schema, derived from the contract (:mod:`schemas.contract` imports only Polars).

The sample generator, the benchmark and the test factory write extract files with this schema, so
a column's type (``suspension_count`` is int32) is decided once, in
:data:`schemas.contract.EXTRACT_FILE_DTYPES`.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from schemas.contract import EXTRACT_COLUMNS, EXTRACT_FILE_DTYPES

_ARROW_TYPES: dict[type[pl.DataType], pa.DataType] = {
    pl.String: pa.string(),
    pl.Boolean: pa.bool_(),
    pl.Date: pa.date32(),
    pl.Int32: pa.int32(),
    pl.Int64: pa.int64(),
}


def arrow_type(dtype: pl.DataType) -> pa.DataType:
    """The Arrow type of an extract file column: plain ``string`` (not Polars' ``large_string`` or
    ``string_view``, which would change the bytes of the committed sample) and ``decimal128``."""
    if isinstance(dtype, pl.Decimal):
        assert dtype.precision is not None
        return pa.decimal128(dtype.precision, dtype.scale)
    return _ARROW_TYPES[dtype.base_type()]


def extract_arrow_schema() -> pa.Schema:
    """The extract's columns in contract order, each of its one written type."""
    return pa.schema([pa.field(name, arrow_type(EXTRACT_FILE_DTYPES[name])) for name in EXTRACT_COLUMNS])


EXTRACT_ARROW_SCHEMA = extract_arrow_schema()
