"""File-level refusals when reading an extract (SPEC section 2, step 1)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from billing_tiers.errors import PipelineError
from tests.extract_factory import EXTRACT_SCHEMA, replace_when_parsed, row, write_extract
from tests.extract_rows import read_extract_file

MONTH = dt.date(2024, 3, 1)


def read(path: Path, root: Path) -> object:
    return read_extract_file(path, month=MONTH, root=root)


def test_a_good_file_reads_money_as_exact_fen(tmp_path: Path) -> None:
    path = write_extract(tmp_path, "2024-03", [row("a", "149.99", paid="-0.05")])
    extract = read_extract_file(path, month=MONTH, root=tmp_path)
    assert extract.rows["billed_fen"].to_list() == [14999]
    assert extract.rows["paid_fen"].to_list() == [-5]
    assert extract.ignored_columns == ()


def test_extra_columns_are_ignored_and_listed(tmp_path: Path) -> None:
    schema = EXTRACT_SCHEMA.append(pa.field("region", pa.string()))
    path = write_extract(tmp_path, "2024-03", [{**row("a"), "region": "north"}], schema=schema)
    extract = read_extract_file(path, month=MONTH, root=tmp_path)
    assert extract.ignored_columns == ("region",)
    assert "region" not in extract.rows.columns


def test_a_non_parquet_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "billing_month=2024-03" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    path.write_text("subscriber_id,billed\n1,2\n")
    with pytest.raises(PipelineError, match=r"billing_month=2024-03/part-0.parquet: not a readable Parquet file"):
        read(path, tmp_path)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = write_extract(tmp_path, "2024-03", [row(f"s{i}") for i in range(100)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="not a readable Parquet file"):
        read(path, tmp_path)


def test_a_missing_column_is_refused_naming_it(tmp_path: Path) -> None:
    schema = pa.schema([f for f in EXTRACT_SCHEMA if f.name != "paid_amount"])
    rows = [{k: v for k, v in row("a").items() if k != "paid_amount"}]
    path = write_extract(tmp_path, "2024-03", rows, schema=schema)
    with pytest.raises(PipelineError, match="required column paid_amount is missing"):
        read(path, tmp_path)


@pytest.mark.parametrize(
    ("column", "arrow_type", "value"),
    [
        ("billed_amount", pa.string(), "12.00"),
        ("billed_amount", pa.float64(), 12.0),
        ("billed_amount", pa.decimal128(12, 3), Decimal("1.234")),
        ("activation_date", pa.string(), "2020-01-01"),
        ("real_name_verified", pa.string(), "yes"),
        ("suspension_count", pa.float64(), 1.0),
        ("subscriber_id", pa.int64(), 138),
    ],
)
def test_a_mistyped_column_is_refused_naming_it(
    tmp_path: Path, column: str, arrow_type: pa.DataType, value: object
) -> None:
    schema = pa.schema([pa.field(column, arrow_type) if f.name == column else f for f in EXTRACT_SCHEMA])
    path = write_extract(tmp_path, "2024-03", [{**row("a"), column: value}], schema=schema)
    with pytest.raises(PipelineError, match=f"column {column} has type"):
        read(path, tmp_path)


def test_lenient_but_exact_types_are_accepted(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            pa.field("billed_amount", pa.int32())
            if f.name == "billed_amount"
            else pa.field("customer_type", pa.dictionary(pa.int8(), pa.string()))
            if f.name == "customer_type"
            else pa.field("activation_date", pa.timestamp("ms"))
            if f.name == "activation_date"
            else f
            for f in EXTRACT_SCHEMA
        ]
    )
    values = {**row("a"), "billed_amount": 150, "activation_date": dt.datetime(2020, 1, 1)}
    table = pa.Table.from_pylist([values], schema=schema)
    folder = tmp_path / "billing_month=2024-03"
    folder.mkdir()
    pq.write_table(table, folder / "p.parquet")
    extract = read(folder / "p.parquet", tmp_path)
    assert extract.rows["billed_fen"].to_list() == [15000]  # type: ignore[attr-defined]
    assert extract.rows["activation_date"].to_list() == [dt.date(2020, 1, 1)]  # type: ignore[attr-defined]


def test_a_billing_month_column_must_match_the_folder(tmp_path: Path) -> None:
    schema = EXTRACT_SCHEMA.append(pa.field("billing_month", pa.string()))
    good = write_extract(tmp_path, "2024-03", [{**row("a"), "billing_month": "2024-03"}], schema=schema)
    assert read_extract_file(good, month=MONTH, root=tmp_path).ignored_columns == ()
    bad = write_extract(
        tmp_path, "2024-03", [{**row("a"), "billing_month": "2024-02"}], schema=schema, name="other.parquet"
    )
    with pytest.raises(PipelineError, match="column billing_month disagrees with the folder month 2024-03"):
        read(bad, tmp_path)


def test_a_column_given_twice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "billing_month=2024-03"
    folder.mkdir()
    base = pa.Table.from_pylist([row("a")], schema=EXTRACT_SCHEMA)
    twice = base.append_column("status", pa.array(["active"]))
    pq.write_table(twice, folder / "p.parquet")
    with pytest.raises(PipelineError, match="column status appears more than once"):
        read(folder / "p.parquet", tmp_path)


@pytest.mark.parametrize("precision", [12, 18, 38])
def test_decimal_money_reads_as_exact_fen_negatives_and_nulls_included(precision: int) -> None:
    import pyarrow as pa

    from billing_tiers.extract_io import _money_to_fen

    values = [Decimal("-100000.00"), Decimal("-0.01"), None, Decimal("0.00"), Decimal("1000000.00"), Decimal("12.34")]
    column = pa.chunked_array([pa.array(values, pa.decimal128(precision, 2))])
    assert _money_to_fen(column, "x", "billed_amount").to_pylist() == [-10000000, -1, None, 0, 100000000, 1234]
    sliced = pa.chunked_array([pa.array(values, pa.decimal128(precision, 2)).slice(1, 3)])
    assert _money_to_fen(sliced, "x", "billed_amount").to_pylist() == [-1, None, 0]


def test_decimal_money_beyond_64_bits_is_refused_naming_the_column() -> None:
    import pyarrow as pa

    from billing_tiers.extract_io import _money_to_fen

    column = pa.chunked_array([pa.array([Decimal("1" + "0" * 30 + ".00")], pa.decimal128(38, 2))])
    with pytest.raises(PipelineError, match="billed_amount holds a value too large"):
        _money_to_fen(column, "x", "billed_amount")


def test_batches_grow_with_the_bucket_count_within_bounds() -> None:
    from billing_tiers.extract_io import batch_rows

    assert [batch_rows(k) for k in (1, 8, 25, 40, 198, 1000)] == [
        250_000, 250_000, 250_000, 400_000, 1_980_000, 2_000_000
    ]  # fmt: skip


# ----------------------------------------------------------------------------- checksums of the bytes read


def test_a_file_of_many_row_groups_reads_in_file_order_with_the_checksum_of_its_bytes(tmp_path: Path) -> None:
    import hashlib

    schema = EXTRACT_SCHEMA.append(pa.field("region", pa.string()))
    rows = [{**row(f"s{i:03d}", f"{i}.00"), "region": "north"} for i in range(250)]
    path = tmp_path / "billing_month=2024-03" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=40)
    assert pq.ParquetFile(path).metadata.num_row_groups == 7
    extract = read_extract_file(path, month=MONTH, root=tmp_path)
    assert extract.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert extract.rows["subscriber_id"].to_list() == [f"s{i:03d}" for i in range(250)]
    assert extract.rows["billed_fen"].to_list() == [i * 100 for i in range(250)]
    assert extract.ignored_columns == ("region",)
    empty = write_extract(tmp_path, "2024-03", [], name="empty.parquet")
    assert read_extract_file(empty, month=MONTH, root=tmp_path).rows.height == 0


@pytest.mark.parametrize(
    "write",
    [
        lambda table, path: pq.write_table(table, path, row_group_size=33, compression="none", write_page_index=True),
        lambda table, path: pq.write_table(table, path, row_group_size=50, use_dictionary=False, data_page_size=64),
        lambda table, path: pl.from_arrow(table).write_parquet(path, row_group_size=40),  # type: ignore[union-attr]
    ],
    ids=["pyarrow-page-index", "pyarrow-small-pages", "polars"],
)
def test_files_of_other_layouts_read_the_same_rows_with_the_checksum_of_their_bytes(
    tmp_path: Path, write: Callable[[pa.Table, Path], None]
) -> None:
    import hashlib

    table = pa.Table.from_pylist([row(f"s{i:03d}", f"{i}.25") for i in range(200)], schema=EXTRACT_SCHEMA)
    path = tmp_path / "billing_month=2024-03" / "part-0.parquet"
    path.parent.mkdir()
    write(table, path)
    extract = read_extract_file(path, month=MONTH, root=tmp_path)
    assert extract.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert extract.rows["subscriber_id"].to_list() == [f"s{i:03d}" for i in range(200)]
    assert extract.rows["billed_fen"].to_list() == [i * 100 + 25 for i in range(200)]


def two_versions(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """An extract file and the bytes of another version of it (other rows, other size)."""
    other = write_extract(tmp_path / "other", "2024-03", [row(f"new{i}", "7.00") for i in range(30)])
    path = write_extract(tmp_path, "2024-03", [row(f"old{i}") for i in range(20)])
    return path, path.read_bytes(), other.read_bytes()


def test_a_file_replaced_while_it_is_read_gives_the_checksum_of_the_bytes_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    path, old, new = two_versions(tmp_path)
    replace_when_parsed(monkeypatch, path, new, in_place=False)
    extract = read_extract_file(path, month=MONTH, root=tmp_path)
    assert extract.rows["subscriber_id"].to_list() == [f"old{i}" for i in range(20)]
    assert extract.sha256 == hashlib.sha256(old).hexdigest() != hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_rewritten_in_place_while_it_is_read_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, new = two_versions(tmp_path)
    replace_when_parsed(monkeypatch, path, new, in_place=True)
    with pytest.raises(PipelineError) as refused:
        read_extract_file(path, month=MONTH, root=tmp_path)
    assert str(refused.value) == "extract billing_month=2024-03/part-0.parquet: changed while it was read; rerun"
