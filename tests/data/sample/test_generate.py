"""The sample-data generator (data/sample/generate.py) and the committed sample extracts.

The generator must be deterministic, the committed extracts must be its output, every month must
follow the extract contract (SPEC section 2), and every month must stay inside the two input guards
(quarantined rows <= 1%, previous month's subscribers missing <= 5%). The guard figures are
recomputed here from the files with a small independent reading of the value rules.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import importlib.util
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = ROOT / "data" / "sample" / "generate.py"
COMMITTED = ROOT / "data" / "sample" / "extracts"
MONTHS = [f"{2024 + i // 12}-{i % 12 + 1:02d}" for i in range(27)]  # 2024-01 .. 2026-03

CONTRACT_TYPES: dict[str, pa.DataType] = {
    "subscriber_id": pa.string(),
    "customer_type": pa.string(),
    "service_type": pa.string(),
    "plan_category": pa.string(),
    "payment_type": pa.string(),
    "account_class": pa.string(),
    "real_name_verified": pa.bool_(),
    "brand": pa.string(),
    "activation_date": pa.date32(),
    "status": pa.string(),
    "billed_amount": pa.decimal128(12, 2),
    "paid_amount": pa.decimal128(12, 2),
    "suspension_count": pa.int32(),
    "points_balance": pa.int64(),
}
CONTRACT = list(CONTRACT_TYPES)
ALLOWED = {
    "customer_type": {"individual", "family", "group"},
    "service_type": {"mobile", "fixed", "broadband"},
    "plan_category": {
        "standard",
        "data_card",
        "wo_family",
        "employee_2g",
        "sms_card_2g",
        "high_data_2g",
        "payphone",
    },
    "payment_type": {"postpaid", "prepaid"},
    "account_class": {"normal", "public_free", "test"},
    "status": {"active", "suspended", "cancelled"},
}
NULLABLE = {"brand", "points_balance"}
BRANDS = ["easyown", "gotone", "mzone"]
MAX_QUARANTINE_RATIO = 0.01
MAX_MISSING_RATIO = 0.05


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def generated(generator: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generator.generate(out)
    return out


@pytest.fixture(scope="module")
def tables(generated: Path) -> dict[str, pa.Table]:
    return {month: pq.read_table(generated / f"billing_month={month}" / "part-0.parquet") for month in MONTHS}


def test_two_generations_are_byte_identical(generator: ModuleType, generated: Path, tmp_path: Path) -> None:
    generator.generate(tmp_path)
    first, second = parquet_bytes(generated), parquet_bytes(tmp_path)
    assert list(first) == [f"billing_month={month}/part-0.parquet" for month in MONTHS]
    assert first == second


def test_committed_extracts_match_a_fresh_generation(generated: Path) -> None:
    # Compare contents, not bytes: the file footer names the pyarrow version that wrote it.
    committed = sorted(p.relative_to(COMMITTED).as_posix() for p in COMMITTED.rglob("*.parquet"))
    fresh = sorted(p.relative_to(generated).as_posix() for p in generated.rglob("*.parquet"))
    assert committed == fresh
    stale = [name for name in fresh if not pq.read_table(COMMITTED / name).equals(pq.read_table(generated / name))]
    assert not stale, f"stale sample files, rerun `python data/sample/generate.py`: {stale}"


def test_every_month_follows_the_contract(generated: Path) -> None:
    for month in MONTHS:
        path = generated / f"billing_month={month}" / "part-0.parquet"
        schema = pq.read_schema(path)
        for column, type_ in CONTRACT_TYPES.items():
            assert schema.field(column).type == type_, (month, column)
        table = pq.read_table(path, columns=["billing_month"])
        assert set(table.column("billing_month").to_pylist()) == {month}


def value_rule_breaks(table: pa.Table, month_end: dt.date) -> pa.BooleanArray:
    """SPEC section 2's value rules, read independently of the engine: True where a row breaks one."""
    money = pa.decimal128(12, 2)
    length = pc.utf8_length(table["subscriber_id"])
    holds = [pc.is_valid(table[column]) for column in CONTRACT if column not in NULLABLE]
    holds += [pc.is_in(table[column], value_set=pa.array(sorted(allowed))) for column, allowed in ALLOWED.items()]
    holds += [
        pc.greater_equal(length, 1),
        pc.less_equal(length, 32),
        # no control or format character, no whitespace at either end (every White_Space character
        # that is not Cc is a separator, Z)
        pc.invert(pc.match_substring_regex(table["subscriber_id"], r"[\p{Cc}\p{Cf}]|^\p{Z}|\p{Z}$")),
        pc.or_kleene(pc.is_null(table["brand"]), pc.is_in(table["brand"], value_set=pa.array(BRANDS))),
        pc.greater_equal(table["activation_date"], pa.scalar(dt.date(1990, 1, 1))),
        pc.less_equal(table["activation_date"], pa.scalar(month_end)),
        pc.greater_equal(table["suspension_count"], 0),
        pc.or_kleene(pc.is_null(table["points_balance"]), pc.greater_equal(table["points_balance"], 0)),
    ]
    for column in ("billed_amount", "paid_amount"):
        holds.append(pc.greater_equal(table[column], pa.scalar(Decimal("-100000.00"), money)))
        holds.append(pc.less_equal(table[column], pa.scalar(Decimal("1000000.00"), money)))
    return pc.invert(pc.fill_null(functools.reduce(pc.and_kleene, holds), False))


def quarantine_count(table: pa.Table, month: str) -> tuple[int, int]:
    """(quarantined rows, rows after exact duplicates are collapsed) of one month's extract."""
    year, number = (int(part) for part in month.split("-"))
    month_end = dt.date(year, number, calendar.monthrange(year, number)[1])
    distinct = table.select(CONTRACT).group_by(CONTRACT, use_threads=False).aggregate([])
    ids = distinct["subscriber_id"].to_pylist()
    rows_per_id = Counter(ids)
    breaks = value_rule_breaks(distinct, month_end).to_pylist()
    quarantined = sum(1 for sid, bad in zip(ids, breaks, strict=True) if bad or rows_per_id[sid] > 1)
    return quarantined, distinct.num_rows


def test_every_month_stays_inside_both_guards(tables: dict[str, pa.Table]) -> None:
    previous_ids: set[str] = set()
    for month in MONTHS:
        quarantined, kept = quarantine_count(tables[month], month)
        assert 0 < quarantined <= MAX_QUARANTINE_RATIO * kept, (month, quarantined, kept)
        ids = set(tables[month]["subscriber_id"].drop_null().to_pylist())
        if previous_ids:
            missing = len(previous_ids - ids)
            assert missing <= MAX_MISSING_RATIO * len(previous_ids), (month, missing, len(previous_ids))
        previous_ids = ids


def test_sample_holds_duplicates_conflicts_and_turnover(tables: dict[str, pa.Table]) -> None:
    duplicates = conflicts = 0
    for table in tables.values():
        distinct = table.select(CONTRACT).group_by(CONTRACT, use_threads=False).aggregate([])
        duplicates += table.num_rows - distinct.num_rows
        conflicts += sum(1 for count in Counter(distinct["subscriber_id"].to_pylist()).values() if count > 1)
    assert duplicates >= 5 and conflicts >= 10
    subscribers = {sid for table in tables.values() for sid in table["subscriber_id"].to_pylist()}
    assert tables["2024-01"].num_rows >= 1900 and len(subscribers) > tables["2026-03"].num_rows
