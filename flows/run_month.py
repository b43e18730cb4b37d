"""One month's run, with no Prefect in it: the Prefect flows, the benchmark and the tests all call it.

The run reads the month's extract once and splits it into buckets, hands each bucket to
``map_buckets`` (in this process, on Prefect's task runner, or on a Dask cluster), sums what the
buckets report into the guards and the manifest, and, when the guards hold, publishes every
table-month at once. A run that stops before publishing removes its staging and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from billing_tiers import __version__
from billing_tiers.errors import PipelineError
from billing_tiers.extract_io import SplitFile, split_extract_file
from billing_tiers.months import month_label
from billing_tiers.store import Store, extract_files, read_verified, run_tag
from flows.bucket import BucketJob, BucketResult, PartRef, evaluate_bucket
from rulebook import Rulebook
from schemas.contract import CARRIED_TABLES, QUARANTINE, STORE_TABLES, TIER_ASSIGNMENTS
from transforms.buckets import bucket_numbers
from transforms.guards import GuardFigures

MapBuckets = Callable[[Callable[[BucketJob], BucketResult], Sequence[BucketJob]], list[BucketResult]]
"""Runs the bucket function over every job and returns the results in job order."""

ROWS_PER_BUCKET = 250_000
"""The automatic bucket count keeps about this many extract rows per bucket: a bucket of a million
subscribers evaluates in well under a gigabyte, and fewer buckets mean fewer, larger part files."""


def map_in_process(work: Callable[[BucketJob], BucketResult], jobs: Sequence[BucketJob]) -> list[BucketResult]:
    """One bucket after another in this process (Polars already uses every core inside a bucket)."""
    return [work(job) for job in jobs]


def automatic_buckets(rows: int) -> int:
    return max(1, math.ceil(rows / ROWS_PER_BUCKET))


def new_run_id(month: dt.date) -> str:
    return f"{month_label(month)}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _parts_by_bucket(
    store: Store,
    month: dt.date,
    manifest: dict[str, Any],
    tables: Sequence[str],
    buckets: int,
    run_id: str,
    scratch: Store,
) -> list[dict[str, tuple[PartRef, ...]]]:
    """For each bucket, the parts of a published month's ``tables`` that belong to it.

    With the same bucket count, part i is bucket i. With another count, each old part is read
    (checked against its checksum) and split by the new count into this run's scratch, one old part
    at a time, so a change of bucket count costs one pass and no more memory than a part."""
    per_bucket: list[dict[str, tuple[PartRef, ...]]] = [{} for _ in range(buckets)]
    for table in tables:
        parts = store.part_paths(table, month, manifest)
        if manifest.get("buckets") == buckets and len(parts) == buckets:
            for bucket, (path, sha256) in enumerate(parts):
                per_bucket[bucket][table] = (PartRef(path, sha256),)
            continue
        for index, (path, sha256) in enumerate(parts):
            frame = read_verified(path, sha256, table=table, month=month)
            numbers = bucket_numbers(frame["subscriber_id"], buckets)
            split = frame.with_columns(numbers.alias("_bucket")).partition_by(
                "_bucket", as_dict=True, include_key=False
            )
            for (bucket,), piece in split.items():
                folder = scratch.scratch_previous_dir(run_id, table, int(bucket))
                folder.mkdir(parents=True, exist_ok=True)
                piece.write_parquet(folder / f"{index:05d}.parquet", compression="lz4")
        for bucket in range(buckets):
            folder = scratch.scratch_previous_dir(run_id, table, bucket)
            pieces = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
            per_bucket[bucket][table] = tuple(PartRef(piece, None) for piece in pieces)
    return per_bucket


@functools.cache
def code_version() -> str:
    """The package version, with the git commit when the code runs from a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" if commit else __version__


def _write_rejected(store: Store, run_id: str, month: dt.date) -> Path:
    """Gather the rows a guard rejected (and the missing ids) where the operator can read them."""
    target = store.rejected_file(month)
    folder = target.parent
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    quarantine = sorted(store.staged_table_dir(run_id, "quarantine").glob("*.parquet"))
    frames = [pl.read_parquet(path) for path in quarantine]
    rows = pl.concat(frames) if frames else QUARANTINE.empty()
    rows.sort("source_file", "source_row").write_parquet(target)
    missing = sorted(store.scratch_missing_dir(run_id).glob("*.parquet"))
    if missing:
        pl.concat([pl.read_parquet(path) for path in missing]).sort("subscriber_id").write_parquet(
            folder / "missing_subscribers.parquet"
        )
    return target


class GuardError(PipelineError):
    """A guard stopped the month; carries the figures for ``check`` to print."""

    def __init__(self, message: str, *, guards: GuardFigures, quarantine_by_rule: dict[str, int], rejected: Path):
        super().__init__(message)
        self.guards = guards
        self.quarantine_by_rule = quarantine_by_rule
        self.rejected = rejected


def _quarantine_by_rule(results: list[BucketResult]) -> dict[str, int]:
    by_rule: Counter[str] = Counter()
    for result in results:
        by_rule.update(result.quarantine_by_rule)
    return dict(sorted(by_rule.items()))


def _transitions(results: list[BucketResult]) -> list[dict[str, Any]]:
    """Members per (program, previous level, level), summed over buckets (the report's matrix)."""
    counts: Counter[tuple[str, str | None, str | None]] = Counter()
    for result in results:
        for row in result.transitions:
            counts[(row["program"], row["previous_level"], row["level"])] += row["members"]
    order = lambda key: (key[0], key[1] or "", key[2] or "")  # noqa: E731
    return [
        {"program": program, "previous_level": before, "level": after, "members": counts[(program, before, after)]}
        for program, before, after in sorted(counts, key=order)
    ]


def _summary(results: list[BucketResult]) -> list[dict[str, Any]]:
    counts: Counter[tuple[str, str | None, str]] = Counter()
    for result in results:
        for row in result.summary:
            counts[(row["program"], row["level"], row["action"])] += row["subscribers"]
    order = lambda key: (key[0], key[1] is None, key[1] or "", key[2])  # noqa: E731 - nulls last, like Polars
    return [
        {"program": program, "level": level, "action": action, "subscribers": counts[(program, level, action)]}
        for program, level, action in sorted(counts, key=order)
    ]


def run_month(
    *,
    store: Store,
    extracts: Path,
    month: dt.date,
    build_on: dt.date | None,
    rulebook: Rulebook,
    rulebook_path: Path | None,
    override_guards: bool,
    buckets: int | None = None,
    map_buckets: MapBuckets = map_in_process,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    flow_run_id: str | None = None,
    publish_into: Store | None = None,
) -> dict[str, Any]:
    """Evaluate and publish one month on top of the published ``build_on`` month (None: empty).

    Returns the manifest as published; with ``dry_run`` (``billing-tiers check``) everything but the
    publish, and the manifest it would have published. When a guard stops the month, the rejected
    rows go to ``<store>/_rejected/`` and :class:`GuardError` says where. ``publish_into`` (for
    ``simulate``) reads the history from ``store`` but stages and publishes into another store, so
    ``store`` is not written at all. The caller holds the store's writer lock."""
    target = publish_into or store
    log = logger or logging.getLogger(__name__)
    label = month_label(month)
    run_id = run_id or new_run_id(month)
    tag = run_tag(run_id)
    timings: dict[str, float] = {}
    run_started = time.perf_counter()

    @contextmanager
    def step(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - started, 3)

    previous_manifest = store.read_manifest(build_on) if build_on else None
    if build_on is not None and previous_manifest is None:
        raise PipelineError(f"month {label}: the state of {month_label(build_on)} is not published")
    replaced_manifest = store.read_manifest(month)
    try:
        with step("read_extract"):
            files = extract_files(extracts, month)
            count = buckets or automatic_buckets(sum(pq.ParquetFile(p).metadata.num_rows for p in files))
            split: list[SplitFile] = [
                split_extract_file(
                    path,
                    month=month,
                    root=extracts,
                    file_index=index,
                    buckets=count,
                    bucket_dir=lambda bucket: target.scratch_extract_dir(run_id, bucket),
                )
                for index, path in enumerate(files)
            ]
            if sum(f.rows for f in split) == 0:
                raise PipelineError(f"month {label}: the extract has no rows")
        with step("load_previous_state"):
            previous: list[dict[str, tuple[PartRef, ...]]] = [{} for _ in range(count)]
            if build_on is not None and previous_manifest is not None:
                previous = _parts_by_bucket(store, build_on, previous_manifest, CARRIED_TABLES, count, run_id, target)
            replaced = (
                _parts_by_bucket(store, month, replaced_manifest, [TIER_ASSIGNMENTS.name], count, run_id, target)
                if replaced_manifest is not None
                else None
            )
        jobs = [
            BucketJob(
                month=month,
                bucket=bucket,
                buckets=count,
                extract_dir=target.scratch_extract_dir(run_id, bucket),
                source_files=tuple(f.file for f in split),
                previous=previous[bucket],
                staged_dirs={table: target.staged_table_dir(run_id, table) for table in STORE_TABLES},
                missing_dir=target.scratch_missing_dir(run_id),
                replaced=replaced[bucket].get(TIER_ASSIGNMENTS.name, ()) if replaced is not None else None,
                tag=tag,
                rulebook=rulebook,
            )
            for bucket in range(count)
        ]
        with step("evaluate_buckets"):
            results = sorted(map_buckets(evaluate_bucket, jobs), key=lambda r: r.bucket)
        guards = GuardFigures(
            rows_after_duplicates=sum(r.rows_after_duplicates for r in results),
            quarantined_rows=sum(r.quarantined_rows for r in results),
            previous_subscribers=sum(r.previous_subscribers for r in results),
            missing_subscribers=sum(r.missing_subscribers for r in results),
            max_quarantine_ratio=rulebook.guards.max_quarantine_ratio,
            max_missing_ratio=rulebook.guards.max_missing_ratio,
        )
        breaches = guards.breaches()
        if breaches and not override_guards:
            rejected = _write_rejected(target, run_id, month)
            raise GuardError(
                f"month {label}: guard failed, nothing published: {'; '.join(breaches)}; "
                f"rejected rows in {rejected} (rerun with --override-guards to publish anyway)",
                guards=guards,
                quarantine_by_rule=_quarantine_by_rule(results),
                rejected=rejected,
            )
    except BaseException:
        target.discard(run_id)
        raise
    shutil.rmtree(target.rejected_file(month).parent, ignore_errors=True)  # the guards hold now
    for breach in breaches:
        log.warning("month %s: guard overridden by the operator: %s", label, breach)
    rulebook_changed = (
        previous_manifest is not None and (previous_manifest.get("rulebook") or {}).get("sha256") != rulebook.checksum
    )
    if rulebook_changed:
        previous_label = previous_manifest["billing_month"] if previous_manifest else "?"
        log.warning("month %s: the rulebook differs from the one %s was built with", label, previous_label)
    rows_read = sum(r.rows_read for r in results)
    duplicates = rows_read - guards.rows_after_duplicates
    ignored = sorted({column for f in split for column in f.ignored_columns})
    if duplicates:
        log.warning("month %s: %s exact duplicate rows collapsed to one copy", label, duplicates)
    if ignored:
        log.warning("month %s: ignored columns not in the contract: %s", label, ", ".join(ignored))
    bucket_seconds: Counter[str] = Counter()
    for result in results:
        bucket_seconds.update(result.seconds)
    changes_by_program: Counter[str] | None = None
    if replaced_manifest is not None:
        changes_by_program = Counter()
        for result in results:
            changes_by_program.update(result.changes_by_program or {})
    manifest: dict[str, Any] = {
        "billing_month": label,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "prefect_flow_run_id": flow_run_id,
        "built_from": {
            "month": month_label(build_on) if build_on else None,
            "run_id": previous_manifest["run_id"] if previous_manifest else None,
        },
        "buckets": count,
        "rulebook": {
            "path": str(rulebook_path) if rulebook_path else "(bundled default)",
            "sha256": rulebook.checksum,
            "changed_from_previous": rulebook_changed,
        },
        "inputs": [f.as_dict() for f in split],
        "ignored_columns": ignored,
        "rows_read": rows_read,
        "duplicates_collapsed": duplicates,
        "quarantine_by_rule": _quarantine_by_rule(results),
        "guards": {
            **guards.as_dict(),
            "breached": breaches,
            "overridden": bool(breaches) and override_guards,
            "override_flag": override_guards,
        },
        "summary": _summary(results),
        "transitions": _transitions(results),
        "tables": {
            table: {
                "rows": sum(r.parts[table]["rows"] for r in results),
                "parts": [r.parts[table] for r in results],
            }
            for table in STORE_TABLES
            if table in results[0].parts
        },
        "replaced_run_id": replaced_manifest["run_id"] if replaced_manifest else None,
        "changes_by_program": dict(sorted(changes_by_program.items())) if changes_by_program is not None else None,
        "dry_run": dry_run,
        "timings_seconds": timings,
        "bucket_seconds_summed": {name: round(value, 3) for name, value in sorted(bucket_seconds.items())},
    }
    if dry_run:
        target.discard(run_id)
        timings["total"] = round(time.perf_counter() - run_started, 3)
        return manifest
    publish_started = time.perf_counter()
    timings["publish"] = 0.0
    timings["total"] = 0.0
    written = target.commit(
        month, run_id, manifest, before_manifest=_finish_timings(timings, publish_started, run_started)
    )
    tables = written["tables"]
    log.info(
        "month %s published in %s buckets: %s tier rows, %s card events, %s quarantined, %s duplicates collapsed",
        label,
        count,
        tables["tier_assignments"]["rows"],
        tables["card_issuance"]["rows"],
        tables["quarantine"]["rows"],
        duplicates,
    )
    return written


def _finish_timings(timings: dict[str, float], publish_started: float, run_started: float) -> Callable[[], None]:
    """Called by the publish just before it writes the manifest: the publish and total are then known."""

    def finish() -> None:
        now = time.perf_counter()
        timings["publish"] = round(now - publish_started, 3)
        timings["total"] = round(now - run_started, 3)

    return finish


def summary_frame(manifest: dict[str, Any]) -> pl.DataFrame:
    """The manifest's level/action counts as a frame (for the CLI and the Prefect artifact)."""
    return pl.DataFrame(
        manifest["summary"],
        schema={"program": pl.String, "level": pl.String, "action": pl.String, "subscribers": pl.Int64},
    )
