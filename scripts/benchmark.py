"""Benchmark: one month's ``billing-tiers run``, as a whole process, against a DuckDB peer.

Usage::

    make bench                                   # 2,000,000 subscribers x 7 months
    make bench BENCH_ARGS="--subscribers 200000 --months 7 --json bench.json"
    .venv/bin/python scripts/benchmark.py --subscribers 10000000 --months 2 --measure backfill

One invocation:

1. generates N subscribers x M months of synthetic billing extracts (SPEC section 2) in
   ``<workdir>/extracts/billing_month=YYYY-MM/part-XXXX.parquet``, deterministically from ``--seed``,
   one chunk of at most ``--rows-per-file`` subscriber slots at a time so memory does not grow with
   N. A marker file lets a later invocation with the same (N, M, seed, first month) reuse them;
2. builds the store through month M-1 with ``billing-tiers backfill`` (``--reuse-store`` skips this
   when the store already holds those months, built from the same extracts and ``--buckets``);
3. times ``billing-tiers run --month <M>`` as a subprocess: wall time, CPU time (user + sys) and
   peak RSS, all from ``os.wait4``. The commands report to a ``prefect server`` that the benchmark
   starts and stops itself (``--no-prefect-server``: each command starts Prefect's temporary
   server instead, as in production without PREFECT_API_URL). ``--measure backfill`` times
   ``backfill --from <M-1> --to <M>`` instead (on a store holding the months before M-1);
4. times the DuckDB peer, "recompute it in SQL every month": one query over all the extracts
   giving, per subscriber of month M, the 6-month bill, cumulative and monthly paid, and the
   unicom_vip and unicom_star levels, written to one Parquet file; it runs as a subprocess measured
   the same way, with 2 DuckDB threads;
5. prints machine, versions, a results table with each target met or missed, the CPU other
   processes used meanwhile (with a warning when the machine was not idle), and a sanity check of
   the peer's levels against the run's ``tier_assignments``. ``--json FILE`` saves all of it.

Only the ``billing-tiers`` command line is used, never the engine's modules (the extracts take the
contract's Arrow schema from ``schemas/arrow.py``): the benchmark measures what an operator runs.
numpy, pyarrow and polars are imported inside the functions that need them so that the DuckDB
peer, which runs this same file, loads nothing but duckdb.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

REPO_ROOT = Path(__file__).resolve().parent.parent
# The interpreter running this script is the project's virtualenv (make bench runs .venv/bin/python),
# so the CLI installed beside it is the one under test.
CLI = Path(sys.executable).parent / "billing-tiers"
PREFECT = Path(sys.executable).parent / "prefect"

GIB = 1024**3
MIB = 1024**2
DUCKDB_THREADS = 2

# ------------------------------------------------------------------------------------ targets
RUN_TARGET_SUBSCRIBERS = 2_000_000  # the time ratios are targets at this size (issue 14)
PEAK_RSS_TARGET_BYTES = 2 * GIB  # at every size, summed over the command's process tree
ENGINE_TO_DUCKDB_TARGET = 1.0  # engine time / DuckDB wall
ENGINE_TO_DUCKDB_AIM = 0.5
RUN_TO_DUCKDB_TARGET = 1.5  # run wall (Prefect server running, report included) / DuckDB wall
RUN_TO_DUCKDB_AIM = 1.0
MEMORY_SAMPLE_SECONDS = 0.05

# ------------------------------------------------------------------------- synthetic extracts
GENERATOR_VERSION = 2  # bump whenever the generated data changes, so stale extracts are not reused
# (2: suspension_count is int32, the contract's type)
ID_PREFIX = "138"
CUSTOMER_TYPES = ("individual", "family", "group")
CUSTOMER_TYPE_SHARES = (0.85, 0.10, 0.05)
SERVICE_TYPES = ("mobile", "fixed", "broadband")
SERVICE_TYPE_SHARES = (0.80, 0.07, 0.13)
PLAN_CATEGORIES = ("standard", "data_card", "wo_family", "employee_2g", "sms_card_2g", "high_data_2g", "payphone")
MOBILE_PLAN_SHARES = (0.86, 0.04, 0.05, 0.01, 0.01, 0.03, 0.0)
FIXED_PAYPHONE_SHARE = 0.03  # fixed lines are standard or payphone; broadband is always standard
PAYMENT_TYPES = ("postpaid", "prepaid")
MOBILE_POSTPAID_SHARE = 0.70
WIRED_POSTPAID_SHARE = 0.95
ACCOUNT_CLASSES = ("normal", "public_free", "test")
ACCOUNT_CLASS_SHARES = (0.97, 0.02, 0.01)
BRANDS = ("gotone", "mzone", "easyown")  # China Mobile brands: only some mobile lines carry one
BRAND_SHARES = (0.40, 0.35, 0.25)
MOBILE_BRANDED_SHARE = 0.35
STATUSES = ("active", "suspended", "cancelled")
REAL_NAME_SHARE = 0.96
POINTS_MEMBER_SHARE = 0.85  # the rest have a null points_balance
# A line's typical bill is lognormal around 60 yuan; the wide spread gives the long tail that
# reaches the VIP averages (about 15% of mobile lines at >= 150 yuan, 1-2% at >= 450).
MEDIAN_BILL_FEN = 6_000
LINE_SPEND_SIGMA = 0.85
MONTH_SPEND_SIGMA = 0.25  # month-to-month noise around the line's typical bill
SERVICE_SPEND_SHIFT = (0.0, -0.4, 0.35)  # log shift per service type: fixed cheaper, broadband dearer
GROUP_SPEND_SHIFT = 0.6
ADJUSTMENT_SHARE = 0.003  # a negative bill (a credit note) instead of the usual one
POSTPAID_UNPAID_SHARE = 0.03  # paid nothing this month
POSTPAID_ODD_PAYMENT_SHARE = 0.03  # paid 80-130% of the bill (arrears, advance payments)
PREPAID_TOPUP_FEN = 5_000  # prepaid lines top up in steps of 50 yuan
CHURN_SHARE = 0.005  # lines cancelled in a month; the slot gets a new line (a new id) the month after
ABSENT_SHARE = 0.01  # lines with no row at all in a month
SUSPENDED_SHARE = 0.02
RESUMED_SUSPENSION_SHARE = 0.005  # active at month end but suspended once during the month
POINTS_REDEEM_SHARE = 0.02
POINTS_REDEEM_AMOUNT = 2_000
MIN_BILL_FEN, MAX_BILL_FEN = -10_000_000, 99_999_999  # SPEC range [-100000, 1000000] yuan
EARLIEST_ACTIVATION = dt.date(1990, 1, 1)
MEAN_LINE_AGE_DAYS = 6 * 365
EPOCH = dt.date(1970, 1, 1)

EXTRACT_MARKER = "extracts.json"
STORE_MARKER = "store.json"


class BenchmarkError(Exception):
    """A step of the benchmark failed; the message says which and where its log is."""


# ------------------------------------------------------------------------------------- months
def parse_month(text: str) -> dt.date:
    match = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise argparse.ArgumentTypeError(f"not a month YYYY-MM: {text!r}")
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


def add_months(month: dt.date, count: int) -> dt.date:
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def month_label(month: dt.date) -> str:
    return f"{month:%Y-%m}"


def epoch_day(day: dt.date) -> int:
    return (day - EPOCH).days


# ------------------------------------------------------------------------ synthetic extracts
@dataclass(frozen=True)
class DataSpec:
    """What the generated extracts are: same spec, same bytes."""

    subscribers: int
    months: int
    seed: int
    first_month: dt.date
    rows_per_file: int

    def month(self, index: int) -> dt.date:
        return add_months(self.first_month, index)

    @property
    def last_month(self) -> dt.date:
        return self.month(self.months - 1)

    def slot_ranges(self) -> list[tuple[int, int]]:
        """Subscriber slots per file: equal chunks of at most ``rows_per_file``."""
        chunks = math.ceil(self.subscribers / self.rows_per_file)
        return [(c * self.subscribers // chunks, (c + 1) * self.subscribers // chunks) for c in range(chunks)]

    @property
    def id_digits(self) -> int:
        # Ids are generation * N + slot; a slot changes line at most once a month.
        return max(8, len(str(self.subscribers * (self.months + 1) - 1)))

    def marker(self) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "subscribers": self.subscribers,
            "months": self.months,
            "seed": self.seed,
            "first_month": month_label(self.first_month),
            "rows_per_file": self.rows_per_file,
        }


# Random streams: one for the lines a chunk starts with, one per (chunk, month) for everything
# that happens in that month. Keys have one shape, [seed, stream, chunk, month], so none collide.
PROFILE_STREAM, MONTH_STREAM = 0, 1


@dataclass
class Lines:
    """The lines occupying one chunk of subscriber slots, carried from one month to the next."""

    generation: npt.NDArray[np.int64]  # times the slot's line was replaced: part of the id
    customer_type: npt.NDArray[np.int8]
    service_type: npt.NDArray[np.int8]
    plan_category: npt.NDArray[np.int8]
    payment_type: npt.NDArray[np.int8]
    account_class: npt.NDArray[np.int8]
    real_name_verified: npt.NDArray[np.bool_]
    brand: npt.NDArray[np.int8]  # -1: no brand (null)
    activation_day: npt.NDArray[np.int32]  # days since 1970-01-01
    log_typical_bill_fen: npt.NDArray[np.float64]
    has_points: npt.NDArray[np.bool_]
    points: npt.NDArray[np.int64]
    cancelled: npt.NDArray[np.bool_]  # cancelled this month: replaced by a new line next month

    def replace_slots(self, slots: npt.NDArray[np.intp], new: Lines) -> None:
        for field in dataclasses.fields(self):
            getattr(self, field.name)[slots] = getattr(new, field.name)


def draw_lines(rng: np.random.Generator, activation_day: npt.NDArray[np.int32]) -> Lines:
    """New lines with a realistic mix of attributes; one per activation day given."""
    import numpy as np

    count = len(activation_day)
    service = rng.choice(len(SERVICE_TYPES), count, p=SERVICE_TYPE_SHARES).astype(np.int8)
    mobile = service == SERVICE_TYPES.index("mobile")
    fixed = service == SERVICE_TYPES.index("fixed")
    plan = rng.choice(len(PLAN_CATEGORIES), count, p=MOBILE_PLAN_SHARES).astype(np.int8)
    plan[~mobile] = PLAN_CATEGORIES.index("standard")
    plan[fixed & (rng.random(count) < FIXED_PAYPHONE_SHARE)] = PLAN_CATEGORIES.index("payphone")
    postpaid = rng.random(count) < np.where(mobile, MOBILE_POSTPAID_SHARE, WIRED_POSTPAID_SHARE)
    brand = rng.choice(len(BRANDS), count, p=BRAND_SHARES).astype(np.int8)
    brand[~(mobile & (rng.random(count) < MOBILE_BRANDED_SHARE))] = -1
    customer = rng.choice(len(CUSTOMER_TYPES), count, p=CUSTOMER_TYPE_SHARES).astype(np.int8)
    log_bill = (
        math.log(MEDIAN_BILL_FEN)
        + LINE_SPEND_SIGMA * rng.standard_normal(count)
        + np.asarray(SERVICE_SPEND_SHIFT)[service]
        + np.where(customer == CUSTOMER_TYPES.index("group"), GROUP_SPEND_SHIFT, 0.0)
    )
    return Lines(
        generation=np.zeros(count, np.int64),
        customer_type=customer,
        service_type=service,
        plan_category=plan,
        payment_type=np.where(postpaid, 0, 1).astype(np.int8),
        account_class=rng.choice(len(ACCOUNT_CLASSES), count, p=ACCOUNT_CLASS_SHARES).astype(np.int8),
        real_name_verified=rng.random(count) < REAL_NAME_SHARE,
        brand=brand,
        activation_day=activation_day,
        log_typical_bill_fen=log_bill,
        has_points=rng.random(count) < POINTS_MEMBER_SHARE,
        points=rng.integers(0, 3_000, count),
        cancelled=np.zeros(count, np.bool_),
    )


def initial_lines(spec: DataSpec, chunk: int, slots: int) -> Lines:
    """The lines a chunk holds before the first month: activated in the years before it."""
    import numpy as np

    rng = np.random.default_rng([spec.seed, PROFILE_STREAM, chunk, 0])
    latest = epoch_day(spec.first_month) - 1
    oldest_age = latest - epoch_day(EARLIEST_ACTIVATION)
    age = np.minimum(rng.exponential(MEAN_LINE_AGE_DAYS, slots).astype(np.int32), oldest_age)
    return draw_lines(rng, (latest - age).astype(np.int32))


def yuan_from_fen(fen: npt.NDArray[np.int64]) -> pa.Array:
    """Integer fen -> decimal(12,2) yuan, exactly: decimal(19,0) fen x 0.01 is decimal arithmetic,
    never a float; the final cast checks every value fits."""
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.compute as pc

    whole_fen = pa.array(fen, pa.int64()).cast(pa.decimal128(19, 0))
    return pc.multiply(whole_fen, pa.scalar(Decimal("0.01"), pa.decimal128(3, 2))).cast(pa.decimal128(12, 2))


def enum_strings(values: Sequence[str], codes: npt.NDArray[np.int8]) -> pa.Array:
    """Codes -> their strings as a plain (not dictionary) string column; a negative code is null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    indices = pa.array(codes, pa.int8(), mask=codes < 0)
    return pc.take(pa.array(values, pa.string()), indices)


def extract_schema() -> pa.Schema:
    """The contract's extract schema, as the sample and the tests write it (``suspension_count`` int32)."""
    from schemas.arrow import extract_arrow_schema

    return extract_arrow_schema()


def month_rows(spec: DataSpec, chunk: int, first_slot: int, lines: Lines, month_index: int) -> pa.Table:
    """Advance one chunk's lines by a month and return the month's extract rows for them."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    rng = np.random.default_rng([spec.seed, MONTH_STREAM, chunk, month_index])
    month = spec.month(month_index)
    count = len(lines.generation)

    # Lines cancelled last month are gone: their slots now hold new lines, activated this month.
    replaced = np.flatnonzero(lines.cancelled)
    if len(replaced):
        first_day, next_first_day = epoch_day(month), epoch_day(add_months(month, 1))
        new = draw_lines(rng, rng.integers(first_day, next_first_day, len(replaced)).astype(np.int32))
        new.generation = lines.generation[replaced] + 1
        new.points[:] = 0
        lines.replace_slots(replaced, new)

    # A line joining this month always has its first row; an old one is sometimes missing.
    new_this_month = np.zeros(count, np.bool_)
    new_this_month[replaced] = True
    present = (rng.random(count) >= ABSENT_SHARE) | new_this_month
    lines.cancelled = present & ~new_this_month & (rng.random(count) < CHURN_SHARE)
    suspended = present & ~lines.cancelled & (rng.random(count) < SUSPENDED_SHARE)
    status = np.where(lines.cancelled, 2, np.where(suspended, 1, 0)).astype(np.int8)
    suspension_count = np.where(
        suspended,
        rng.integers(1, 4, count),
        (rng.random(count) < RESUMED_SUSPENSION_SHARE).astype(np.int64),
    )

    billed = np.rint(np.exp(lines.log_typical_bill_fen + MONTH_SPEND_SIGMA * rng.standard_normal(count)))
    adjusted = rng.random(count) < ADJUSTMENT_SHARE
    billed = np.where(adjusted, -rng.integers(100, 5_000, count), billed)
    billed_fen = np.clip(billed, MIN_BILL_FEN, MAX_BILL_FEN).astype(np.int64)

    postpaid = lines.payment_type == 0
    payment_draw = rng.random(count)
    odd_payment = np.rint(billed_fen * rng.uniform(0.8, 1.3, count)).astype(np.int64)
    postpaid_fen = np.where(
        payment_draw < POSTPAID_UNPAID_SHARE,
        0,
        np.where(payment_draw < POSTPAID_UNPAID_SHARE + POSTPAID_ODD_PAYMENT_SHARE, odd_payment, billed_fen),
    )
    prepaid_fen = -(-billed_fen // PREPAID_TOPUP_FEN) * PREPAID_TOPUP_FEN  # bill rounded up to a top-up
    paid_fen = np.clip(np.where(postpaid, postpaid_fen, prepaid_fen), 0, MAX_BILL_FEN)

    # Points: one per whole yuan billed; sometimes 2,000 are redeemed (never below zero).
    earned = np.where(present, np.maximum(billed_fen, 0) // 100, 0)
    lines.points += earned
    redeem = present & (lines.points >= POINTS_REDEEM_AMOUNT) & (rng.random(count) < POINTS_REDEEM_SHARE)
    lines.points[redeem] -= POINTS_REDEEM_AMOUNT

    rows = np.flatnonzero(present)
    schema = extract_schema()
    id_numbers = lines.generation[rows] * spec.subscribers + first_slot + rows
    subscriber_id = (ID_PREFIX + pl.Series(id_numbers).cast(pl.String).str.zfill(spec.id_digits)).to_arrow()
    return pa.table(
        [
            subscriber_id.cast(pa.string()),
            enum_strings(CUSTOMER_TYPES, lines.customer_type[rows]),
            enum_strings(SERVICE_TYPES, lines.service_type[rows]),
            enum_strings(PLAN_CATEGORIES, lines.plan_category[rows]),
            enum_strings(PAYMENT_TYPES, lines.payment_type[rows]),
            enum_strings(ACCOUNT_CLASSES, lines.account_class[rows]),
            pa.array(lines.real_name_verified[rows], pa.bool_()),
            enum_strings(BRANDS, lines.brand[rows]),
            pa.array(lines.activation_day[rows], pa.int32()).view(pa.date32()),
            enum_strings(STATUSES, status[rows]),
            yuan_from_fen(billed_fen[rows]),
            yuan_from_fen(paid_fen[rows]),
            pa.array(suspension_count[rows], schema.field("suspension_count").type),
            pa.array(lines.points[rows], schema.field("points_balance").type, mask=~lines.has_points[rows]),
        ],
        schema=schema,
    )


def generate_extracts(spec: DataSpec, extracts: Path) -> None:
    """Write every month's files, chunk by chunk: only one chunk's lines are ever in memory."""
    import pyarrow.parquet as pq

    ranges = spec.slot_ranges()
    for chunk, (first_slot, end_slot) in enumerate(ranges):
        started = time.perf_counter()
        lines = initial_lines(spec, chunk, end_slot - first_slot)
        for month_index in range(spec.months):
            folder = extracts / f"billing_month={month_label(spec.month(month_index))}"
            folder.mkdir(parents=True, exist_ok=True)
            table = month_rows(spec, chunk, first_slot, lines, month_index)
            pq.write_table(table, folder / f"part-{chunk:04d}.parquet")
            del table
        say(
            f"  file {chunk + 1}/{len(ranges)}: slots {first_slot:,}..{end_slot - 1:,} x {spec.months} months "
            f"in {time.perf_counter() - started:.1f} s"
        )


def ensure_extracts(spec: DataSpec, workdir: Path) -> Path:
    """The extracts for ``spec`` in ``workdir``: reused when its marker matches, else regenerated."""
    extracts, marker = workdir / "extracts", workdir / EXTRACT_MARKER
    if marker.is_file() and read_json(marker) == spec.marker() and extracts.is_dir():
        say(f"reusing the extracts in {extracts} (same subscribers, months, seed and first month)")
        return extracts
    # Different or half-written data: neither it nor a store built on it may be reused.
    marker.unlink(missing_ok=True)
    (workdir / STORE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(extracts, ignore_errors=True)
    say(
        f"generating {spec.subscribers:,} subscribers x {spec.months} months "
        f"({month_label(spec.first_month)} .. {month_label(spec.last_month)}) in {extracts}"
    )
    started = time.perf_counter()
    generate_extracts(spec, extracts)
    write_json(marker, spec.marker())  # last: its presence means the extracts are complete
    say(f"generated in {time.perf_counter() - started:.1f} s")
    return extracts


def extract_rows(extracts: Path, month: dt.date) -> int:
    """Rows of a month's extract, from the Parquet footers."""
    import pyarrow.parquet as pq

    folder = extracts / f"billing_month={month_label(month)}"
    try:
        return sum(pq.ParquetFile(path).metadata.num_rows for path in sorted(folder.glob("*.parquet")))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise BenchmarkError(f"cannot read the extract footers in {folder}: {exc}") from exc


# --------------------------------------------------------------------- measured subprocesses
@dataclass(frozen=True)
class Measurement:
    """One child process, measured by ``os.wait4`` (wall, CPU, and ``peak_rss_kib``: the largest single
    process of its tree) and by :class:`TreeMemory` (``peak_tree_rss_kib``: the largest sum of the
    resident memory of the child and all its descendants, e.g. Prefect's temporary server or Dask
    workers, sampled every 50 ms; shared pages count once per process, so it errs high)."""

    label: str
    command: list[str]
    wall_seconds: float
    user_seconds: float
    system_seconds: float
    peak_rss_kib: int  # ru_maxrss is in KiB on Linux
    peak_tree_rss_kib: int
    exit_code: int
    log: str
    machine_busy_seconds: float  # CPU time all processes of the machine used meanwhile, this one included

    @property
    def cpu_seconds(self) -> float:
        return self.user_seconds + self.system_seconds

    @property
    def peak_rss_bytes(self) -> int:
        return self.peak_rss_kib * 1024

    @property
    def peak_tree_rss_bytes(self) -> int:
        return max(self.peak_tree_rss_kib, self.peak_rss_kib) * 1024  # a sample may miss a short peak

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "peak_rss_mib": round(self.peak_rss_bytes / MIB, 1),
            "peak_tree_rss_mib": round(self.peak_tree_rss_bytes / MIB, 1),
        }


def _resident_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError, IndexError):  # the process ended meanwhile
        return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                found.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def tree_resident_kib(root: int) -> int:
    """Resident memory of ``root`` and every process descending from it, summed."""
    total, pending, seen = 0, [root], set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _resident_kib(pid)
        pending.extend(_children(pid))
    return total


class TreeMemory(threading.Thread):
    """Samples :func:`tree_resident_kib` of a process until :meth:`stop`; ``peak_kib`` is the largest."""

    def __init__(self, root: int) -> None:
        super().__init__(name="tree-memory", daemon=True)
        self.root = root
        self.peak_kib = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.peak_kib = max(self.peak_kib, tree_resident_kib(self.root))
            self._stopped.wait(MEMORY_SAMPLE_SECONDS)

    def stop(self) -> int:
        self._stopped.set()
        self.join()
        return self.peak_kib


def run_measured(label: str, command: list[str], env: dict[str, str], log: Path) -> Measurement:
    """Run ``command`` to completion with its output in ``log``; wall, CPU and peak RSS of it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    say(f"{label}: {' '.join(command)}")
    with log.open("wb") as output:
        busy_before = machine_busy_seconds()
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        memory = TreeMemory(child.pid)
        memory.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            memory.stop()
            # Ctrl-C reached the child too (same process group); give it time to stop cleanly.
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        wall = time.perf_counter() - started
        busy = machine_busy_seconds() - busy_before
        peak_tree_kib = memory.stop()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    measurement = Measurement(
        label=label,
        command=command,
        wall_seconds=round(wall, 3),
        user_seconds=round(usage.ru_utime, 3),
        system_seconds=round(usage.ru_stime, 3),
        peak_rss_kib=usage.ru_maxrss,
        peak_tree_rss_kib=peak_tree_kib,
        exit_code=child.returncode,
        log=str(log),
        machine_busy_seconds=round(busy, 2),
    )
    say(
        f"  {wall:.1f} s wall, {measurement.cpu_seconds:.1f} s CPU, "
        f"{measurement.peak_tree_rss_bytes / MIB:,.0f} MiB peak RSS (process tree), exit {child.returncode}"
    )
    if child.returncode != 0:
        raise BenchmarkError(f"{label} failed with exit code {child.returncode}; last lines of {log}:\n{tail(log)}")
    return measurement


def run_checked(command: list[str], env: dict[str, str]) -> str:
    """A quick command whose output we need (``--help``, ``init``)."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    if result.returncode != 0:
        raise BenchmarkError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


# ---------------------------------------------------------------------------- Prefect server
@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    process_group: int
    home: Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def prefect_env(base: dict[str, str], prefect_home: Path | None) -> dict[str, str]:
    env = dict(base)
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # Local calls must never go through a proxy, if one is configured for the package registries.
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    if prefect_home is not None:
        env["PREFECT_HOME"] = str(prefect_home)
    return env


@contextlib.contextmanager
def prefect_server(log: Path, startup_timeout: float = 180.0) -> Iterator[PrefectServer]:
    """A ``prefect server start`` of our own, in its own process group with a temporary
    PREFECT_HOME; stopped (the whole group) when the block ends, however it ends."""
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix="billing-tiers-bench-prefect-"))
    env = prefect_env(dict(os.environ), home)
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_UI_ENABLED"] = "false"  # nobody looks at it, and serving it slows the start
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    say(f"starting a Prefect server on 127.0.0.1:{port} (log {log})")
    with log.open("wb") as output:
        # A new session: Ctrl-C does not reach it, and it is stopped by its own process group id.
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        started = time.perf_counter()
        wait_until_healthy(f"http://127.0.0.1:{port}/api/health", server, log, startup_timeout)
        say(f"  healthy after {time.perf_counter() - started:.1f} s")
        yield PrefectServer(api_url=f"http://127.0.0.1:{port}/api", process_group=server.pid, home=home)
    finally:
        stop_process_group(server)
        shutil.rmtree(home, ignore_errors=True)
        say("Prefect server stopped")


def wait_until_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchmarkError(
                f"the Prefect server exited with {server.returncode}; last lines of {log}:\n{tail(log)}"
            )
        with contextlib.suppress(OSError), no_proxy.open(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    raise BenchmarkError(f"the Prefect server did not answer {url} within {timeout:.0f} s; see {log}")


def stop_process_group(process: subprocess.Popen[bytes], grace_seconds: float = 20.0) -> None:
    """SIGTERM to the group the process leads, then SIGKILL if it has not exited in time."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Workers of the group may outlive their leader for a moment.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, all cores (from /proc/stat)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, line.split()[1:9])
                return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return math.nan


def process_group_cpu_seconds(process_group: int) -> float:
    """CPU seconds used so far by the live processes of a group (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            # After the command name: state, ppid, pgrp, ... utime and stime are the 12th and 13th.
            if int(fields[2]) == process_group:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


# ------------------------------------------------------------------------------ billing-tiers
@dataclass(frozen=True)
class Cli:
    """The ``billing-tiers`` command line as installed: what it offers decides what we pass."""

    env: dict[str, str]
    has_init: bool
    buckets: int | None

    @staticmethod
    def probe(env: dict[str, str], buckets: int | None) -> Cli:
        help_env = {**env, "COLUMNS": "200", "NO_COLOR": "1"}  # one command per line, no wrapping
        overview = run_checked([str(CLI), "--help"], help_env)
        # A command is listed as the first word of a line inside rich's box (│ init  Create ...).
        has_init = any(re.match(r"^[\s│|]*init\s", line) for line in overview.splitlines())
        if buckets is not None:
            for command in ("backfill", "run"):
                if "--buckets" not in run_checked([str(CLI), command, "--help"], help_env):
                    raise BenchmarkError(f"this billing-tiers has no `{command} --buckets` option yet")
        return Cli(env=env, has_init=has_init, buckets=buckets)

    def common(self, extracts: Path, store: Path) -> list[str]:
        options = ["--extracts", str(extracts), "--store", str(store)]
        return [*options, "--buckets", str(self.buckets)] if self.buckets is not None else options

    def backfill(self, first: dt.date, last: dt.date, extracts: Path, store: Path) -> list[str]:
        return [
            str(CLI),
            "backfill",
            "--from",
            month_label(first),
            "--to",
            month_label(last),
            *self.common(extracts, store),
        ]

    def run(self, month: dt.date, extracts: Path, store: Path) -> list[str]:
        return [str(CLI), "run", "--month", month_label(month), *self.common(extracts, store)]


def manifest_path(store: Path, month: dt.date) -> Path:
    return store / "manifests" / f"billing_month={month_label(month)}" / "manifest.json"


def prepare_store(
    cli: Cli, spec: DataSpec, workdir: Path, through: dt.date | None, reuse: bool
) -> tuple[Path, Measurement | None]:
    """A store holding every month from the first through ``through`` (None: an empty store)."""
    store, marker = workdir / "store", workdir / STORE_MARKER
    identity = {"extracts": spec.marker(), "buckets": cli.buckets}
    needed = [] if through is None else [m for m in map(spec.month, range(spec.months)) if m <= through]
    if reuse:
        missing = [month_label(m) for m in needed if not manifest_path(store, m).is_file()]
        if not marker.is_file():
            why = f"{store} was not built by this benchmark"
        elif read_json(marker) != identity:
            why = f"{store} was built from other extracts or another --buckets"
        elif missing:
            why = f"{store} lacks {', '.join(missing)}"
        else:
            say(f"reusing the store {store}" + (f" (published through {month_label(through)})" if through else ""))
            return store, None
        say(f"cannot reuse the store: {why}; building it again")
    marker.unlink(missing_ok=True)
    shutil.rmtree(store, ignore_errors=True)
    if cli.has_init:
        run_checked([str(CLI), "init", "--store", str(store)], cli.env)
    preparation = None
    if through is not None:
        preparation = run_measured(
            f"backfill {month_label(spec.first_month)}..{month_label(through)} (preparation, not compared)",
            cli.backfill(spec.first_month, through, workdir / "extracts", store),
            cli.env,
            workdir / "logs" / f"prepare-backfill-{month_label(through)}.log",
        )
    write_json(marker, identity)
    return store, preparation


def approve_overrides_for(store: Path, extracts: Path, month: dt.date, count: int) -> None:
    """Record ``count`` approved, open-ended overrides from ``month`` on its first subscribers through the
    override commands' own functions (one add batch, one approve batch): what a run then applies."""
    import pyarrow.dataset as ds

    from billing_tiers.overrides import add_overrides, approve_overrides, parse_request, read_ledger
    from billing_tiers.store import Store
    from rulebook import load_rulebook

    the_store = Store(store)
    if read_ledger(the_store).height:
        say(f"the ledger of {store} already has overrides: not adding more")
        return
    folder = extracts / f"billing_month={month_label(month)}"
    ids = ds.dataset(folder, format="parquet").head(count, columns=["subscriber_id"]).column(0).to_pylist()
    rulebook = load_rulebook()
    requests = [
        parse_request(
            {
                "program": "unicom_vip" if index % 2 == 0 else "unicom_star",
                "subscriber_id": subscriber,
                "kind": "grant" if index % 2 == 0 else "block",
                "level": "gold" if index % 2 == 0 else None,
                "first_month": month_label(month),
                "last_month": None,
                "reason": "benchmark",
            },
            rulebook,
            "bundled rulebook",
        )
        for index, subscriber in enumerate(ids)
    ]
    started = time.perf_counter()
    added = add_overrides(the_store, requests, by="benchmark requester")
    approve_overrides(the_store, added, by="benchmark approver")
    say(f"{len(added)} overrides added and approved in {time.perf_counter() - started:.1f} s")


def engine_timings(store: Path, month: dt.date) -> dict[str, Any]:
    """The month's manifest timings: each step, the engine time and the bucket count if any."""
    path = manifest_path(store, month)
    manifest = read_json(path)
    steps = {k: v for k, v in (manifest.get("timings_seconds") or {}).items() if isinstance(v, int | float)}
    if not steps:
        raise BenchmarkError(f"{path} has no timings_seconds")
    engine = steps["total"] if "total" in steps else sum(steps.values())
    return {"month": month_label(month), "steps": steps, "engine_seconds": engine, "buckets": manifest.get("buckets")}


# ------------------------------------------------------------------------------- DuckDB peer
def peer_query(extracts: Path, month: dt.date, output: Path) -> str:
    """One statement: every month's extract is re-read and re-aggregated (no state is kept).

    Money stays decimal: SUM of decimal(12,2) is an exact decimal, and "avg >= 150" is tested as
    "6-month sum >= 900" so no rounded average is ever compared. Attributes come from the month-B row.
    """
    b, window_start = month_label(month), month_label(add_months(month, -5))
    source = str(extracts / "*" / "*.parquet").replace("'", "''")
    target = str(output).replace("'", "''")
    return f"""
COPY (
    WITH per_subscriber AS (
        SELECT
            subscriber_id,
            SUM(billed_amount) FILTER (WHERE billing_month >= '{window_start}') AS billed_6m,
            SUM(paid_amount) AS cum_paid,
            COUNT(*) FILTER (WHERE billing_month = '{b}') AS rows_this_month,
            ANY_VALUE(paid_amount) FILTER (WHERE billing_month = '{b}') AS month_paid,
            ANY_VALUE(customer_type) FILTER (WHERE billing_month = '{b}') AS customer_type,
            ANY_VALUE(service_type) FILTER (WHERE billing_month = '{b}') AS service_type,
            ANY_VALUE(plan_category) FILTER (WHERE billing_month = '{b}') AS plan_category,
            ANY_VALUE(payment_type) FILTER (WHERE billing_month = '{b}') AS payment_type,
            ANY_VALUE(account_class) FILTER (WHERE billing_month = '{b}') AS account_class,
            ANY_VALUE(real_name_verified) FILTER (WHERE billing_month = '{b}') AS real_name_verified,
            ANY_VALUE(status) FILTER (WHERE billing_month = '{b}') AS status
        FROM read_parquet('{source}', hive_partitioning = true, hive_types = {{'billing_month': VARCHAR}})
        WHERE billing_month <= '{b}'
        GROUP BY subscriber_id
        HAVING rows_this_month > 0
    ),
    metrics AS (
        SELECT *, CAST(billed_6m * 100 AS BIGINT) AS billed_6m_fen FROM per_subscriber
    )
    SELECT
        '{b}' AS billing_month,
        subscriber_id,
        billed_6m,
        -- billed_6m / 6 floored to the cent, in integers (DuckDB divides decimals as doubles)
        CAST((billed_6m_fen - ((billed_6m_fen % 6) + 6) % 6) // 6 AS DECIMAL(18, 0)) * 0.01 AS avg_billed_6m,
        month_paid,
        cum_paid,
        CASE
            WHEN status = 'cancelled' OR payment_type <> 'postpaid' OR account_class <> 'normal'
                OR plan_category <> 'standard' THEN NULL
            WHEN customer_type = 'group' AND billed_6m >= 6000 THEN 'supreme'                      -- avg >= 1000
            WHEN billed_6m >= CASE WHEN service_type = 'mobile' THEN 2700 ELSE 1800 END THEN 'diamond'  -- 450 / 300
            WHEN billed_6m >= CASE WHEN service_type = 'mobile' THEN 1800 ELSE 900 END THEN 'gold'      -- 300 / 150
            WHEN billed_6m >= CASE WHEN service_type = 'mobile' THEN 900 ELSE 600 END THEN 'silver'     -- 150 / 100
        END AS unicom_vip,
        CASE
            WHEN status = 'cancelled' OR service_type <> 'mobile' OR NOT real_name_verified THEN NULL
            WHEN cum_paid >= 20000 AND month_paid >= 2000 THEN 'diamond'
            WHEN cum_paid >= 10000 AND month_paid >= 1000 THEN 'platinum'
            WHEN cum_paid >= 3000 AND month_paid >= 500 THEN 'gold'
            WHEN cum_paid >= 1000 AND month_paid >= 50 THEN 'silver'
            ELSE 'normal'
        END AS unicom_star
    FROM metrics
) TO '{target}' (FORMAT parquet)
"""


def run_peer(extracts: Path, month: dt.date, output: Path, threads: int, temp_dir: Path) -> int:
    """The peer's process body (``--duckdb-peer-only``): run the query, return the rows written."""
    import duckdb

    output.parent.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect()
    connection.execute(f"SET threads = {int(threads)}")
    connection.execute(f"SET temp_directory = '{str(temp_dir).replace(chr(39), chr(39) * 2)}'")
    written = connection.execute(peer_query(extracts, month, output)).fetchone()
    return int(written[0]) if written else -1


# ------------------------------------------------------------------------- sanity comparison
PEER_PROGRAMS = ("unicom_vip", "unicom_star")


def compare_levels(store: Path, month: dt.date, peer_output: Path) -> dict[str, Any]:
    """Level counts of the peer beside the run's qualified_level (present subscribers) and level
    (after carry-forward), and how many present subscribers' peer level differs from qualified_level.
    The qualified level should agree exactly on this data (no quarantine, ids never recycled); the
    held level differs by design (levels only go up within validity). Only aggregates are collected,
    on Polars' streaming engine: at 50M subscribers the rows compared are 100M a side."""
    import polars as pl

    tiers = (
        pl.scan_parquet(f"{store}/tier_assignments/billing_month={month_label(month)}/**/*.parquet")
        .filter(pl.col("program").cast(pl.String).is_in(PEER_PROGRAMS))
        .select(
            pl.col("program").cast(pl.String),
            pl.col("subscriber_id").cast(pl.String),
            pl.col("qualified_level").cast(pl.String),
            pl.col("level").cast(pl.String),
            pl.col("present"),
        )
    )
    peer = (
        pl.scan_parquet(peer_output)
        .select("subscriber_id", *PEER_PROGRAMS)
        .unpivot(index="subscriber_id", on=list(PEER_PROGRAMS), variable_name="program", value_name="peer_level")
    )
    present = tiers.filter("present")
    joined = peer.join(present, on=["program", "subscriber_id"], how="left")

    def per_level(frame: pl.LazyFrame, column: str) -> pl.LazyFrame:
        return frame.group_by("program", pl.col(column).fill_null("(none)").alias("level")).agg(pl.len())

    peer_counts, qualified_counts, held_counts, differing_rows = pl.collect_all(
        [
            per_level(peer, "peer_level"),
            per_level(present, "qualified_level"),
            per_level(tiers, "level"),
            joined.group_by("program").agg(
                pl.len().alias("subscribers"),
                pl.col("present").is_null().sum().alias("not_in_run"),
                pl.col("peer_level").ne_missing(pl.col("qualified_level")).sum().alias("qualified_level_differs"),
            ),
        ],
        engine="streaming",
    )

    def lookup(frame: pl.DataFrame) -> dict[tuple[str, str], int]:
        return {(program, level): n for program, level, n in frame.iter_rows()}

    peer_by, qualified_by, held_by = lookup(peer_counts), lookup(qualified_counts), lookup(held_counts)
    counts: list[dict[str, Any]] = []
    for program in PEER_PROGRAMS:
        levels = {level for (p, level) in [*peer_by, *qualified_by, *held_by] if p == program}
        for level in sorted(levels, key=level_order(program)):
            counts.append(
                {
                    "program": program,
                    "level": level,
                    "peer": peer_by.get((program, level), 0),
                    "engine_qualified_present": qualified_by.get((program, level), 0),
                    "engine_level": held_by.get((program, level), 0),
                }
            )
    differing = {
        row["program"]: {key: int(row[key]) for key in ("subscribers", "not_in_run", "qualified_level_differs")}
        for row in differing_rows.iter_rows(named=True)
    }
    return {"month": month_label(month), "counts": counts, "peer_vs_qualified": differing}


def level_order(program: str) -> Any:
    ladder = {
        "unicom_vip": ["(none)", "silver", "gold", "diamond", "supreme"],
        "unicom_star": ["(none)", "normal", "silver", "gold", "platinum", "diamond"],
    }[program]
    return lambda level: (ladder.index(level) if level in ladder else len(ladder), level)


# ------------------------------------------------------------------------------------ report
def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_bytes = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_bytes = int(line.split()[1]) * 1024
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_bytes / GIB, 1) if memory_bytes else None,
        "system": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("billing-tiers", "polars", "pyarrow", "duckdb", "prefect", "pandera", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


BUSY_MACHINE_SHARE = 0.05  # other processes using more than this share of the cores spoil a timing


def other_processes_cpu(measurement: Measurement, accounted_seconds: float) -> dict[str, Any]:
    """CPU the rest of the machine used while ``measurement`` ran (beyond it and ``accounted_seconds``)."""
    available = measurement.wall_seconds * (os.cpu_count() or 1)
    other = max(0.0, measurement.machine_busy_seconds - measurement.cpu_seconds - accounted_seconds)
    return {
        "seconds": round(other, 2),
        "available_seconds": round(available, 2),
        "busy": other > BUSY_MACHINE_SHARE * available,
    }


def verdict(value: float, target: float, applies: bool) -> str:
    if not applies:
        return "n/a at this size"
    return "met" if value <= target else "MISSED"


def target_checks(
    mode: str, spec: DataSpec, measured: Measurement, engine_seconds: float, peer: Measurement | None
) -> list[dict[str, Any]]:
    """Issue 14's targets: at 2M subscribers, engine and whole run against the peer; at every size,
    the peak summed over the command's process tree. (Engine seconds per million subscribers are
    reported for comparing sizes, which takes runs at several sizes.)"""
    checks: list[dict[str, Any]] = []
    at_target_size = spec.subscribers == RUN_TARGET_SUBSCRIBERS
    if mode == "run" and peer is not None:
        for name, value, target, aim in (
            (
                "engine time / DuckDB wall",
                engine_seconds / peer.wall_seconds,
                ENGINE_TO_DUCKDB_TARGET,
                ENGINE_TO_DUCKDB_AIM,
            ),
            (
                "run wall / DuckDB wall",
                measured.wall_seconds / peer.wall_seconds,
                RUN_TO_DUCKDB_TARGET,
                RUN_TO_DUCKDB_AIM,
            ),
        ):
            result = verdict(value, target, at_target_size)
            if at_target_size and value > target:
                result += f" by {value / target:.2f}x"
            checks.append(
                {
                    "check": name,
                    "value": round(value, 2),
                    "display": f"{value:.2f}",
                    "target": f"<= {target} (aim {aim}) at {RUN_TARGET_SUBSCRIBERS:,} subscribers",
                    "result": result,
                }
            )
    rss = measured.peak_tree_rss_bytes
    checks.append(
        {
            "check": "peak RSS, process tree" + (" (2-month backfill)" if mode == "backfill" else ""),
            "value": round(rss / GIB, 3),
            "display": f"{rss / GIB:.2f} GiB",
            "target": f"<= {PEAK_RSS_TARGET_BYTES // GIB} GiB at every size",
            "result": verdict(rss, PEAK_RSS_TARGET_BYTES, True),
        }
    )
    return checks


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    machine, found, spec = report["machine"], report["versions"], report["data"]
    print()
    print(f"## billing-tiers benchmark, {report['date']} (commit {report['commit']})")
    print()
    print(
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"{machine['system']}"
    )
    print("- versions: " + ", ".join(f"{name} {version}" for name, version in found.items()))
    print(
        f"- data: {spec['subscribers']:,} subscribers x {spec['months']} months "
        f"({spec['first_month']} .. {spec['last_month']}), seed {spec['seed']}; "
        f"measured month(s) {', '.join(report['measured_months'])}: {report['rows']:,} extract rows"
    )
    print(f"- Prefect: {report['prefect']}; buckets: {report['buckets'] or 'engine default'}")
    print()
    rows = []
    for entry in report["processes"]:
        rows.append(
            [
                entry["label"],
                f"{entry['wall_seconds']:.2f}",
                f"{entry['cpu_seconds']:.2f}" if entry["cpu_seconds"] is not None else "",
                f"{entry['peak_rss_mib']:,.0f}" if entry["peak_rss_mib"] is not None else "",
                f"{entry['peak_tree_rss_mib']:,.0f}" if entry["peak_tree_rss_mib"] is not None else "",
                f"{entry['rows_per_second']:,.0f}",
            ]
        )
    print(
        markdown_table(
            ["measured", "wall s", "CPU s", "peak RSS MiB (largest process)", "peak RSS MiB (process tree)", "rows/s"],
            rows,
            [False, True, True, True, True, True],
        )
    )
    print()
    print(
        f"- engine seconds per million subscribers and month: {report['engine_seconds_per_million']:.2f} "
        "(flat or falling with the base size is the target)"
    )
    print()
    for timing in report["engine_timings"]:
        steps = ", ".join(f"{step} {seconds:.2f}" for step, seconds in timing["steps"].items())
        buckets = f"; buckets {timing['buckets']}" if timing.get("buckets") is not None else ""
        print(f"- engine steps {timing['month']} (manifest timings_seconds): {steps}{buckets}")
    if report.get("prefect_server_cpu_seconds") is not None:
        print(
            f"- Prefect server CPU during the measured command (not in its CPU s): "
            f"{report['prefect_server_cpu_seconds']:.2f} s"
        )
    for name, other in report["other_processes_cpu"].items():
        line = (
            f"- CPU used by other processes while timing the {name}: {other['seconds']:.1f} s "
            f"of {other['available_seconds']:.1f} s available"
        )
        if other["busy"]:
            line += " -- WARNING: the machine was not idle, these timings are not representative"
        print(line)
    print()
    print(
        markdown_table(
            ["check", "value", "target", "result"],
            [[c["check"], c["display"], c["target"], c["result"]] for c in report["targets"]],
            [False, True, False, False],
        )
    )
    sanity = report.get("sanity")
    if isinstance(sanity, dict):
        print()
        print(
            f"Sanity: DuckDB peer levels against the run's tier_assignments ({sanity['month']}); "
            "qualified_level counts present subscribers, level counts every evaluated one:"
        )
        print()
        print(
            markdown_table(
                ["program", "level", "DuckDB peer", "engine qualified_level", "engine level"],
                [
                    [
                        c["program"],
                        c["level"],
                        f"{c['peer']:,}",
                        f"{c['engine_qualified_present']:,}",
                        f"{c['engine_level']:,}",
                    ]
                    for c in sanity["counts"]
                ],
                [False, False, True, True, True],
            )
        )
        print()
        for program, figures in sanity["peer_vs_qualified"].items():
            print(
                f"- {program}: peer level differs from the engine's qualified_level for "
                f"{figures['qualified_level_differs']:,} of {figures['subscribers']:,} subscribers "
                f"({figures['not_in_run']:,} not evaluated as present by the run)"
            )
    elif sanity:
        print(f"\nSanity check skipped: {sanity}")


# -------------------------------------------------------------------------------- utilities
def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read {path}: {exc}") from exc
    return loaded


def write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(content, indent=2, default=str) + "\n")
    os.replace(temporary, path)


def remove_workdir(workdir: Path, is_default: bool) -> None:
    """``--clean``: our default folder goes whole; in a folder the user named, only what we made."""
    if is_default:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    for name in ("extracts", "store", "logs", "duckdb-peer", EXTRACT_MARKER, STORE_MARKER):
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()  # only if now empty


def positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one month's `billing-tiers run` (or a 2-month backfill) against a DuckDB peer.",
        epilog="The extracts and the store stay in the work folder for the next invocation unless --clean.",
    )
    parser.add_argument("--subscribers", type=positive_int, default=2_000_000, help="subscribers N (2000000)")
    parser.add_argument("--months", type=positive_int, default=7, help="months of extracts M (7)")
    parser.add_argument("--first-month", type=parse_month, default="2023-01", help="month 1, YYYY-MM (2023-01)")
    parser.add_argument("--seed", type=int, default=20261129, help="seed of the synthetic data (20261129)")
    parser.add_argument(
        "--rows-per-file", type=positive_int, default=5_000_000, help="most rows per extract file (5000000)"
    )
    parser.add_argument("--buckets", type=positive_int, help="pass --buckets K to billing-tiers (default: not passed)")
    parser.add_argument(
        "--measure",
        choices=("run", "backfill"),
        default="run",
        help="what is timed: `run --month <M>` (run, the default) or `backfill --from <M-1> --to <M>` (backfill)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="folder of the extracts and the store (/tmp/billing-tiers-bench-<N>x<M>-seed<S>)"
    )
    parser.add_argument(
        "--reuse-store",
        action="store_true",
        help="skip the preparing backfill if the store already holds those months, built from these extracts "
        "(only while the engine's store format is unchanged: the store is not checked against the code)",
    )
    parser.add_argument(
        "--no-prefect-server",
        action="store_true",
        help="start no `prefect server`: each command starts Prefect's temporary server",
    )
    parser.add_argument("--no-duckdb-peer", action="store_true", help="do not run the DuckDB peer")
    parser.add_argument(
        "--overrides",
        type=int,
        default=0,
        help="approve this many overrides in force for the measured month first (half VIP grants, half star "
        "blocks, on the month's first subscribers; the store's ledger keeps them) (0)",
    )
    parser.add_argument("--clean", action="store_true", help="remove the work folder at the end")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    internal = parser.add_argument_group("DuckDB peer process (internal: the benchmark runs itself with these)")
    internal.add_argument("--duckdb-peer-only", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--peer-extracts", type=Path, help=argparse.SUPPRESS)
    internal.add_argument("--peer-month", type=parse_month, help=argparse.SUPPRESS)
    internal.add_argument("--peer-output", type=Path, help=argparse.SUPPRESS)
    internal.add_argument("--peer-temp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duckdb_peer_only and not (args.peer_extracts and args.peer_month and args.peer_output):
        parser.error("--duckdb-peer-only needs --peer-extracts, --peer-month and --peer-output")
    if args.measure == "backfill" and args.months < 2:
        parser.error("--measure backfill needs --months 2 or more")
    return args


# -------------------------------------------------------------------------------------- main
def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    spec = DataSpec(args.subscribers, args.months, args.seed, args.first_month, args.rows_per_file)
    extracts = ensure_extracts(spec, workdir)
    logs = workdir / "logs"
    last = spec.last_month
    measured_months = [add_months(last, -1), last] if args.measure == "backfill" else [last]
    rows = sum(extract_rows(extracts, month) for month in measured_months)
    # Run mode builds on M-1; backfill mode re-does M-1 and M on a store holding what comes before.
    before_measured = add_months(measured_months[0], -1)
    prepare_through = before_measured if before_measured >= spec.first_month else None

    server_cpu: float | None = None
    with contextlib.ExitStack() as cleanup:
        if args.no_prefect_server:
            env = prefect_env(dict(os.environ), None)
            env.pop("PREFECT_API_URL", None)
            prefect_description = "temporary server started by each command (--no-prefect-server)"
        else:
            server = cleanup.enter_context(prefect_server(logs / "prefect-server.log"))
            env = prefect_env(dict(os.environ), server.home)
            env["PREFECT_API_URL"] = server.api_url
            prefect_description = f"local `prefect server` at {server.api_url}, started by the benchmark"
        cli = Cli.probe(env, args.buckets)
        store, _ = prepare_store(cli, spec, workdir, prepare_through, args.reuse_store)
        if args.overrides:
            approve_overrides_for(store, extracts, measured_months[0], args.overrides)
        if args.measure == "backfill":
            label = f"billing-tiers backfill {month_label(measured_months[0])}..{month_label(last)}"
            command = cli.backfill(measured_months[0], last, extracts, store)
        else:
            label = f"billing-tiers run --month {month_label(last)}"
            command = cli.run(last, extracts, store)
        cpu_before = None if args.no_prefect_server else process_group_cpu_seconds(server.process_group)
        measured = run_measured(f"{label} (whole process)", command, env, logs / f"measured-{args.measure}.log")
        if cpu_before is not None:
            server_cpu = round(process_group_cpu_seconds(server.process_group) - cpu_before, 2)
    # The server is stopped before the peer runs, so the peer has the machine to itself too.

    timings = [engine_timings(store, month) for month in measured_months]
    engine_seconds = round(sum(t["engine_seconds"] for t in timings), 3)

    peer: Measurement | None = None
    peer_output = workdir / "duckdb-peer" / f"levels-{month_label(last)}.parquet"
    if not args.no_duckdb_peer:
        peer_command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--duckdb-peer-only",
            "--peer-extracts",
            str(extracts),
            "--peer-month",
            month_label(last),
            "--peer-output",
            str(peer_output),
            "--peer-temp",
            str(workdir / "duckdb-peer" / "tmp"),
        ]
        peer = run_measured(
            f"DuckDB peer {month_label(last)} (threads={DUCKDB_THREADS})",
            peer_command,
            dict(os.environ),
            logs / "duckdb-peer.log",
        )

    processes: list[dict[str, Any]] = [
        {**measured.as_dict(), "rows_per_second": rows / measured.wall_seconds},
        {
            "label": "engine time (sum of the manifest's step timings"
            + (", both months)" if len(timings) > 1 else ")"),
            "wall_seconds": engine_seconds,
            "cpu_seconds": None,
            "peak_rss_mib": None,
            "peak_tree_rss_mib": None,
            "rows_per_second": rows / engine_seconds if engine_seconds else math.inf,
        },
    ]
    if peer is not None:
        peer_rows = extract_rows(extracts, last)
        processes.append({**peer.as_dict(), "rows_per_second": peer_rows / peer.wall_seconds})

    # Timings are only worth pasting if nothing else ran meanwhile: what did other processes use?
    other_cpu = {"billing-tiers command": other_processes_cpu(measured, server_cpu or 0.0)}
    if peer is not None:
        other_cpu["DuckDB peer"] = other_processes_cpu(peer, 0.0)

    sanity: dict[str, Any] | str | None = None
    if peer is not None:
        try:
            sanity = compare_levels(store, last, peer_output)
        except Exception as exc:  # the engine's output layout may change under us: report, don't fail
            sanity = f"{type(exc).__name__}: {exc}"

    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_revision(),
        "machine": machine_info(),
        "versions": versions(),
        "data": {**spec.marker(), "last_month": month_label(last), "workdir": str(workdir)},
        "mode": args.measure,
        "measured_months": [month_label(m) for m in measured_months],
        "rows": rows,
        "prefect": prefect_description,
        "buckets": args.buckets,
        "processes": processes,
        "engine_seconds": engine_seconds,
        "engine_seconds_per_million": round(engine_seconds / len(timings) / (spec.subscribers / 1e6), 3),
        "engine_timings": timings,
        "prefect_server_cpu_seconds": server_cpu,
        "other_processes_cpu": other_cpu,
        "targets": target_checks(args.measure, spec, measured, engine_seconds, peer),
        "sanity": sanity,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.duckdb_peer_only:
        written = run_peer(
            args.peer_extracts,
            args.peer_month,
            args.peer_output,
            DUCKDB_THREADS,
            args.peer_temp or args.peer_output.parent / "tmp",
        )
        print(f"{written} rows written to {args.peer_output}")
        return 0

    is_default_workdir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.gettempdir()) / (
        f"billing-tiers-bench-{args.subscribers}x{args.months}-seed{args.seed}"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = benchmark(args, workdir)
        print_report(report)
        if args.json:
            write_json(args.json, report)
            say(f"results written to {args.json}")
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.clean:
            remove_workdir(workdir, is_default_workdir)
            say(f"removed {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
