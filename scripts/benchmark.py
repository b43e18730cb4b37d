"""Benchmark one month's steps on a synthetic extract of N subscribers (default 1,000,000).

Usage: python scripts/benchmark.py [--subscribers N] [--months M]

Writes M months of synthetic extracts to a temporary folder, then times each step of every month
(read, clean + validate, evaluate, validate outputs, publish) without Prefect, and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from billing_tiers.months import add_months, month_label
from billing_tiers.store import Store
from flows import steps
from rulebook import load_rulebook


def yuan(fen: np.ndarray) -> pa.Array:
    """Integer fen -> decimal(12,2) yuan, exactly."""
    return (pl.Series(fen).cast(pl.Decimal(20, 2)) / 100).cast(pl.Decimal(12, 2)).to_arrow()


def synthetic_month(count: int, month_index: int, rng: np.random.Generator) -> pa.Table:
    ids = np.char.add("1380", np.char.zfill(np.arange(count).astype(str), 8))
    billed_fen = rng.integers(0, 80_000, count) + month_index
    choice = rng.choice
    return pa.table(
        {
            "subscriber_id": pa.array(ids),
            "customer_type": pa.array(choice(["individual", "family", "group"], count, p=[0.85, 0.1, 0.05])),
            "service_type": pa.array(choice(["mobile", "fixed", "broadband"], count, p=[0.8, 0.1, 0.1])),
            "plan_category": pa.array(choice(["standard", "data_card", "wo_family"], count, p=[0.9, 0.05, 0.05])),
            "payment_type": pa.array(choice(["postpaid", "prepaid"], count, p=[0.8, 0.2])),
            "account_class": pa.array(np.full(count, "normal")),
            "real_name_verified": pa.array(rng.random(count) < 0.95),
            "brand": pa.array(choice(["gotone", "mzone", "easyown", None], count)),
            "activation_date": pa.array(
                (np.datetime64("2005-01-01") + rng.integers(0, 6000, count)).astype("datetime64[D]")
            ),
            "status": pa.array(choice(["active", "suspended"], count, p=[0.97, 0.03])),
            "billed_amount": yuan(billed_fen),
            "paid_amount": yuan(billed_fen),
            "suspension_count": pa.array(rng.integers(0, 2, count), pa.int32()),
            "points_balance": pa.array(rng.integers(0, 4000, count), pa.int64()),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--months", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(20261128)
    first = dt.date(2025, 1, 1)
    rulebook = load_rulebook()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        extracts, store = root / "extracts", Store(root / "store")
        for index in range(args.months):
            month_dir = extracts / f"billing_month={month_label(add_months(first, index))}"
            month_dir.mkdir(parents=True)
            pq.write_table(synthetic_month(args.subscribers, index, rng), month_dir / "part-0.parquet")
        print(f"{args.subscribers:,} subscribers x {args.months} months")
        print(f"{'month':8} {'read':>7} {'clean':>7} {'evaluate':>9} {'validate':>9} {'publish':>8} {'total':>7}")
        build_on = None
        for index in range(args.months):
            month = add_months(first, index)
            times = [time.perf_counter()]
            read = steps.read_extract(extracts, month)
            times.append(time.perf_counter())
            clean = steps.clean_extract(read, month)
            times.append(time.perf_counter())
            previous = steps.load_previous(store, build_on)
            tables = steps.evaluate(clean, previous, month, rulebook)
            times.append(time.perf_counter())
            steps.validate_outputs(tables, month)
            times.append(time.perf_counter())
            manifest = {
                "billing_month": month_label(month),
                "run_id": f"bench-{index}",
                "built_from": {
                    "month": month_label(build_on) if build_on else None,
                    "run_id": f"bench-{index - 1}" if build_on else None,
                },
            }
            store.publish(month, f"bench-{index}", tables, manifest)
            times.append(time.perf_counter())
            spans = [b - a for a, b in itertools.pairwise(times)]
            print(
                f"{month_label(month):8} " + " ".join(f"{s:>7.2f}s" for s in spans) + f" {times[-1] - times[0]:>6.2f}s"
            )
            build_on = month


if __name__ == "__main__":
    main()
