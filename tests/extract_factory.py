"""Builds extract rows and writes them as contract-typed Parquet files for tests."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.arrow import EXTRACT_ARROW_SCHEMA

EXTRACT_SCHEMA = EXTRACT_ARROW_SCHEMA
"""The contract's extract schema (:mod:`schemas.arrow`): test files are written as the sample is."""


def row(
    subscriber_id: str, billed: str | Decimal = "100.00", paid: str | Decimal | None = None, **overrides: Any
) -> dict[str, Any]:
    """One extract row: an eligible individual mobile postpaid line unless overridden."""
    base: dict[str, Any] = {
        "subscriber_id": subscriber_id,
        "customer_type": "individual",
        "service_type": "mobile",
        "plan_category": "standard",
        "payment_type": "postpaid",
        "account_class": "normal",
        "real_name_verified": True,
        "brand": "gotone",
        "activation_date": dt.date(2010, 1, 15),
        "status": "active",
        "billed_amount": Decimal(billed),
        "paid_amount": Decimal(paid if paid is not None else billed),
        "suspension_count": 0,
        "points_balance": 0,
    }
    base.update(overrides)
    return base


def write_extract(
    extracts: Path,
    month: str,
    rows: list[dict[str, Any]],
    *,
    name: str = "part-0.parquet",
    schema: pa.Schema = EXTRACT_SCHEMA,
) -> Path:
    folder = extracts / f"billing_month={month}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_history(extracts: Path, months: list[str], subscribers: int = 40, seed: int = 7) -> None:
    """A small deterministic history: rising and falling bills, some absences and a cancellation."""
    import random

    rng = random.Random(seed)
    levels = [rng.choice(["40.00", "160.00", "320.00", "480.00"]) for _ in range(subscribers)]
    for index, month in enumerate(months):
        rows = []
        for number in range(subscribers):
            if number == 5 and index % 4 == 2:
                continue  # one absence now and then, inside the 5% missing guard
            status = "cancelled" if number == 3 and index == len(months) - 2 else "active"
            if number == 3 and index == len(months) - 1:
                continue
            billed = levels[number] if (index + number) % 5 else "0.00"
            rows.append(row(f"1380000{number:04d}", billed, points_balance=500 * index, status=status))
        write_extract(extracts, month, rows)


def replace_when_parsed(monkeypatch: pytest.MonkeyPatch, path: Path, new_bytes: bytes, *, in_place: bool) -> None:
    """Replace ``path`` right after the reader has parsed its first rows: by a rename onto the path (as a
    delivery tool does) or by rewriting the file where it is (as ``cp`` does). A reader that hashed the
    path again after parsing would record the checksum of the new file, not of the rows it read."""
    import billing_tiers.extract_io as extract_io

    normalize = extract_io._normalize
    done: list[bool] = []

    def normalize_then_replace(*args: object, **kwargs: object) -> object:
        rows = normalize(*args, **kwargs)  # type: ignore[arg-type]
        if not done:
            done.append(True)
            if in_place:
                with path.open("r+b") as handle:
                    handle.write(new_bytes)
                    handle.truncate()
            else:
                other = path.with_name("incoming.tmp")
                other.write_bytes(new_bytes)
                os.replace(other, path)
        return rows

    monkeypatch.setattr(extract_io, "_normalize", normalize_then_replace)
