"""The extract's Arrow schema is written once (schemas/contract.py, made Arrow by schemas/arrow.py) and
every writer of extract files in the project uses it: the sample generator, the benchmark, the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq

from billing_tiers.extract_io import check_extract_schema
from schemas.arrow import EXTRACT_ARROW_SCHEMA, extract_arrow_schema
from schemas.contract import EXTRACT_COLUMNS, EXTRACT_FILE_DTYPES
from tests.extract_factory import EXTRACT_SCHEMA, row, write_extract

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_schema_has_every_extract_column_in_contract_order_with_one_type_each() -> None:
    assert list(EXTRACT_FILE_DTYPES) == list(EXTRACT_COLUMNS)
    assert EXTRACT_ARROW_SCHEMA.names == list(EXTRACT_COLUMNS)
    assert EXTRACT_ARROW_SCHEMA.field("suspension_count").type == pa.int32()
    assert EXTRACT_ARROW_SCHEMA.field("subscriber_id").type == pa.string()
    assert EXTRACT_ARROW_SCHEMA.field("billed_amount").type == pa.decimal128(12, 2)
    assert extract_arrow_schema().equals(EXTRACT_ARROW_SCHEMA)


def test_a_file_of_the_schema_passes_the_readers_type_checks(tmp_path: Path) -> None:
    path = write_extract(tmp_path, "2024-03", [row("a")], schema=EXTRACT_ARROW_SCHEMA)
    assert pq.read_schema(path).equals(EXTRACT_ARROW_SCHEMA)
    assert check_extract_schema(path, root=tmp_path).names == list(EXTRACT_COLUMNS)


def test_the_sample_generator_the_benchmark_and_the_test_factory_write_the_same_schema() -> None:
    generator = load(ROOT / "data" / "sample" / "generate.py", "sample_generate_schema")
    benchmark = load(ROOT / "scripts" / "benchmark.py", "benchmark_schema")
    assert EXTRACT_SCHEMA.equals(EXTRACT_ARROW_SCHEMA)
    assert generator.SCHEMA.equals(EXTRACT_ARROW_SCHEMA.append(pa.field("billing_month", pa.string())))
    assert benchmark.extract_schema().equals(EXTRACT_ARROW_SCHEMA)
