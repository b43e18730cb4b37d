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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from billing_tiers import __version__
from billing_tiers.errors import PipelineError
from billing_tiers.extract_io import SplitFile, split_extract_file
from billing_tiers.health import table_damage
from billing_tiers.months import month_label
from billing_tiers.overrides import MonthOverrides
from billing_tiers.store import Store, extract_files, run_tag
from flows.bucket import BucketJob, BucketResult, MonthFigures, PartRef, evaluate_bucket
from rulebook import Rulebook
from schemas.contract import CARRIED_TABLES, ENGINE_OVERRIDE_COLUMNS, QUARANTINE, STORE_TABLES, TIER_ASSIGNMENTS
from schemas.manifest import (
    MANIFEST_FORMAT_VERSION,
    BuiltFrom,
    DamagedManifest,
    GuardRecord,
    InputFile,
    Manifest,
    OverridesRecord,
    RulebookRecord,
)
from transforms.buckets import bucket_numbers
from transforms.guards import GuardFigures

MapBuckets = Callable[[Callable[[BucketJob], BucketResult], Sequence[BucketJob]], list[BucketResult]]
"""Runs the bucket function over every job and returns the results in job order."""

ROWS_PER_BUCKET = 250_000
"""The automatic bucket count keeps about this many extract rows per bucket: a bucket of a million
subscribers evaluates in well under a gigabyte, and fewer buckets mean fewer, larger part files."""


BUCKETS_AT_ONCE = 2
"""Buckets evaluated at the same time in one process. Much of a bucket's time runs on one core
(Pandera, building plans, Polars' smaller steps), so a second bucket fills the other one: at 2M
subscribers on 2 cores it cut the month's bucket time by a third for about 0.6 GiB more peak
memory (each bucket holds about 250,000 subscribers whatever the base, so the peak stays flat)."""


def map_in_process(work: Callable[[BucketJob], BucketResult], jobs: Sequence[BucketJob]) -> list[BucketResult]:
    """:data:`BUCKETS_AT_ONCE` buckets at a time in this process, results in job order. When one
    fails, the buckets not started are cancelled and the running ones finish before it is raised."""
    if len(jobs) <= 1:
        return [work(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=BUCKETS_AT_ONCE, thread_name_prefix="bucket") as pool:
        futures = [pool.submit(work, job) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def automatic_buckets(rows: int) -> int:
    return max(1, math.ceil(rows / ROWS_PER_BUCKET))


def new_run_id(month: dt.date) -> str:
    return f"{month_label(month)}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _parts_by_bucket(
    store: Store,
    month: dt.date,
    manifest: Manifest,
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
        parts = [PartRef(path, sha256, month, table) for path, sha256 in store.part_paths(table, month, manifest)]
        if manifest.buckets == buckets and len(parts) == buckets:
            for bucket, part in enumerate(parts):
                per_bucket[bucket][table] = (part,)
            continue
        for index, part in enumerate(parts):
            frame = part.read()
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
            per_bucket[bucket][table] = tuple(PartRef(piece, None, month, table) for piece in pieces)
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


MISSING_SUBSCRIBERS_FILE = "missing_subscribers.parquet"
"""Beside the rejected rows: the previous extract's ids with no row this month (what the missing guard counted)."""


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
            folder / MISSING_SUBSCRIBERS_FILE
        )
    return target


CLI_OVERRIDE_HINT = "rerun with --override-guards to publish anyway"
DEPLOYMENT_OVERRIDE_HINT = "run the deployment again with the parameter override_guards set to true to publish anyway"


class GuardError(PipelineError):
    """A guard stopped the month; carries the figures for ``check`` to print. The message ends with
    how to publish anyway, in the words of where the run was started (the CLI's by default)."""

    def __init__(
        self,
        message: str,
        *,
        guards: GuardFigures,
        quarantine_by_rule: dict[str, int],
        rejected: Path,
        hint: str = CLI_OVERRIDE_HINT,
    ):
        super().__init__(f"{message} ({hint})")
        self.bare_message = message
        self.guards = guards
        self.quarantine_by_rule = quarantine_by_rule
        self.rejected = rejected

    def with_hint(self, hint: str) -> GuardError:
        return GuardError(
            self.bare_message,
            guards=self.guards,
            quarantine_by_rule=self.quarantine_by_rule,
            rejected=self.rejected,
            hint=hint,
        )


@dataclass(frozen=True)
class ReplacedVersion:
    """The published version of the month a run replaces: readable (its tier rows give ``changes``)
    or not, and then why; the rerun never depends on reading a damaged version (SPEC 8)."""

    manifest: Manifest | None
    run_id: str | None = None
    unreadable: str | None = None


def replaced_version(store: Store, month: dt.date) -> ReplacedVersion | None:
    """The month's published version, None when it was never published. Its manifest and its tier
    rows (what ``changes`` compares with) are checked, checksums included, before the run uses them."""
    loaded = store.load_manifest(month)
    if loaded is None:
        if any(any(store.month_dir(table, month).glob("*.parquet")) for table in STORE_TABLES):
            missing = store.manifest_file(month)
            return ReplacedVersion(None, unreadable=f"tables without a manifest ({missing} is missing)")
        return None
    if isinstance(loaded, DamagedManifest):
        return ReplacedVersion(None, unreadable=loaded.describe())
    damage = table_damage(store, month, loaded, tables=[TIER_ASSIGNMENTS.name])
    if damage is not None:
        return ReplacedVersion(None, run_id=loaded.run_id, unreadable=damage.problem.removeprefix("incomplete: "))
    return ReplacedVersion(loaded, run_id=loaded.run_id)


def previous_month(store: Store, month: dt.date, build_on: dt.date | None) -> Manifest | None:
    """The manifest of the published month the run builds on (None: an empty state)."""
    if build_on is None:
        return None
    manifest = store.read_manifest(build_on)  # a damaged one is refused, naming build_on and the file
    if manifest is None:
        raise PipelineError(f"month {month_label(month)}: the state of {month_label(build_on)} is not published")
    return manifest


@dataclass
class _Run:
    """One run of one month: where it reads and writes, its id, and the timings of its steps."""

    store: Store
    """The store the history is read from."""
    target: Store
    """The store the month is staged and published into (``store`` except for ``simulate``)."""
    month: dt.date
    run_id: str
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def label(self) -> str:
        return month_label(self.month)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - started, 3)


def _split_extract(run: _Run, extracts: Path, buckets: int | None) -> tuple[int, list[SplitFile]]:
    """Read the month's extract once, splitting its rows into each bucket's scratch folder."""
    files = extract_files(extracts, run.month)
    count = buckets or automatic_buckets(sum(pq.ParquetFile(p).metadata.num_rows for p in files))
    split = [
        split_extract_file(
            path,
            month=run.month,
            root=extracts,
            file_index=index,
            buckets=count,
            bucket_dir=lambda bucket: run.target.scratch_extract_dir(run.run_id, bucket),
        )
        for index, path in enumerate(files)
    ]
    if sum(f.rows for f in split) == 0:
        raise PipelineError(f"month {run.label}: the extract has no rows")
    return count, split


def _bucket_jobs(
    run: _Run,
    count: int,
    split: list[SplitFile],
    build_on: dt.date | None,
    previous: Manifest | None,
    replaced: ReplacedVersion | None,
    rulebook: Rulebook,
    overrides: MonthOverrides | None,
) -> list[BucketJob]:
    """One job per bucket, with its share of the previous month and of the version it replaces.
    Every folder a bucket writes to is made here: a bucket never makes one (see ``Store.discard``)."""
    target, run_id = run.target, run.run_id
    carried: list[dict[str, tuple[PartRef, ...]]] = [{} for _ in range(count)]
    if build_on is not None and previous is not None:
        carried = _parts_by_bucket(run.store, build_on, previous, CARRIED_TABLES, count, run_id, target)
    old_tiers: list[tuple[PartRef, ...]] | None = None
    if replaced is not None and replaced.manifest is not None:
        shares = _parts_by_bucket(
            run.store, run.month, replaced.manifest, [TIER_ASSIGNMENTS.name], count, run_id, target
        )
        old_tiers = [share.get(TIER_ASSIGNMENTS.name, ()) for share in shares]
    staged_dirs = {table: target.staged_table_dir(run_id, table) for table in STORE_TABLES}
    for folder in [*staged_dirs.values(), target.scratch_missing_dir(run_id)]:
        folder.mkdir(parents=True, exist_ok=True)
    override_files = _split_overrides(run, overrides, count)
    return [
        BucketJob(
            month=run.month,
            bucket=bucket,
            buckets=count,
            extract_dir=target.scratch_extract_dir(run_id, bucket),
            source_files=tuple(f.file for f in split),
            previous=carried[bucket],
            staged_dirs=staged_dirs,
            missing_dir=target.scratch_missing_dir(run_id),
            run_marker=target.run_marker(run_id),
            replaced=old_tiers[bucket] if old_tiers is not None else None,
            tag=run_tag(run_id),
            rulebook=rulebook,
            overrides=override_files.get(bucket),
        )
        for bucket in range(count)
    ]


def _split_overrides(run: _Run, overrides: MonthOverrides | None, count: int) -> dict[int, Path]:
    """The overrides in force, one scratch file per bucket that has any (a bucket reads only its own)."""
    if overrides is None or overrides.in_force.height == 0:
        return {}
    folder = run.target.staging_dir(run.run_id) / "overrides"
    folder.mkdir(parents=True, exist_ok=True)
    frame = overrides.in_force.select(ENGINE_OVERRIDE_COLUMNS)
    numbers = bucket_numbers(frame["subscriber_id"], count)
    files = {}
    for (bucket,), piece in (
        frame.with_columns(numbers.alias("_bucket")).partition_by("_bucket", as_dict=True, include_key=False).items()
    ):
        path = folder / f"bucket-{int(bucket):05d}.parquet"
        piece.write_parquet(path)
        files[int(bucket)] = path
    return files


def _check_guards(run: _Run, figures: MonthFigures, rulebook: Rulebook, override_guards: bool) -> GuardFigures:
    """The guard figures; a :class:`GuardError` (rows rejected for the operator) when one breaks and
    the operator did not override it."""
    guards = figures.guards(rulebook)
    breaches = guards.breaches()
    if breaches and not override_guards:
        rejected = _write_rejected(run.target, run.run_id, run.month)
        where = []
        if guards.quarantine_breached:
            where.append(f"the quarantined rows are in {rejected}")
        if guards.missing_breached:
            where.append(f"the missing subscribers' ids are in {rejected.parent / MISSING_SUBSCRIBERS_FILE}")
        raise GuardError(
            f"month {run.label}: guard failed, nothing published: {'; '.join(breaches)}; {'; '.join(where)}",
            guards=guards,
            quarantine_by_rule=figures.quarantine_rows_by_rule(),
            rejected=rejected,
        )
    shutil.rmtree(run.target.rejected_file(run.month).parent, ignore_errors=True)  # the guards hold now
    for breach in breaches:
        run.log.warning("month %s: guard overridden by the operator: %s", run.label, breach)
    return guards


def _manifest(
    run: _Run,
    *,
    extracts: Path,
    split: list[SplitFile],
    figures: MonthFigures,
    guards: GuardFigures,
    override_guards: bool,
    build_on: dt.date | None,
    previous: Manifest | None,
    replaced: ReplacedVersion | None,
    rulebook: Rulebook,
    rulebook_path: Path | None,
    dry_run: bool,
    flow_run_id: str | None,
    overrides: MonthOverrides | None,
) -> Manifest:
    """The month's manifest from what the run read and what its buckets reported; logs what an
    operator should notice (a changed rulebook, duplicates, ignored columns, an unreadable version)."""
    label = run.label
    rulebook_changed = previous is not None and previous.rulebook.sha256 != rulebook.checksum
    if rulebook_changed and previous is not None:
        run.log.warning("month %s: the rulebook differs from the one %s was built with", label, previous.billing_month)
    ignored = sorted({column for f in split for column in f.ignored_columns})
    if figures.duplicates_collapsed:
        run.log.warning("month %s: %s exact duplicate rows collapsed to one copy", label, figures.duplicates_collapsed)
    if ignored:
        run.log.warning("month %s: ignored columns not in the contract: %s", label, ", ".join(ignored))
    if replaced is not None and replaced.unreadable:
        run.log.warning(
            "month %s: the published version could not be read (%s): its changes are empty", label, replaced.unreadable
        )
    breaches = guards.breaches()
    applied = OverridesRecord(
        in_force=sorted(overrides.override_ids) if overrides is not None else [],
        ledger_sha256=overrides.checksum if overrides is not None else None,
    )
    before = replaced.manifest.overrides if replaced is not None and replaced.manifest is not None else None
    if before is not None and (before.in_force, before.ledger_sha256) != (applied.in_force, applied.ledger_sha256):
        applied = applied.model_copy(update={"changed_from_replaced": True})
        run.log.warning("month %s: the overrides in force differ from those of the version replaced", label)
    return Manifest(
        format_version=MANIFEST_FORMAT_VERSION,
        billing_month=label,
        run_id=run.run_id,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        code_version=code_version(),
        prefect_flow_run_id=flow_run_id,
        built_from=BuiltFrom(
            month=month_label(build_on) if build_on else None, run_id=previous.run_id if previous else None
        ),
        buckets=len(figures.buckets),
        extracts=str(extracts),
        rulebook=RulebookRecord(
            path=str(rulebook_path) if rulebook_path else "(bundled default)",
            sha256=rulebook.checksum,
            changed_from_previous=rulebook_changed,
        ),
        overrides=applied,
        inputs=[InputFile.model_validate(f.as_dict()) for f in split],
        ignored_columns=ignored,
        rows_read=figures.rows_read,
        duplicates_collapsed=figures.duplicates_collapsed,
        quarantine_by_rule=figures.quarantine_rows_by_rule(),
        guards=GuardRecord.model_validate(
            {
                **guards.as_dict(),
                "breached": breaches,
                "overridden": bool(breaches) and override_guards,
                "override_flag": override_guards,
            }
        ),
        summary=figures.summary_rows(),
        transitions=figures.transition_rows(),
        tables=figures.tables(),
        replaced_run_id=replaced.run_id if replaced else None,
        previous_version_unreadable=replaced.unreadable if replaced else None,
        changes_by_program=dict(sorted(figures.changes_by_program.items())) if replaced is not None else None,
        dry_run=dry_run,
        timings_seconds=dict(run.timings),
        bucket_seconds_summed=figures.seconds_summed(),
    )


def _publish(run: _Run, manifest: Manifest) -> Manifest:
    """Publish the staged month; the manifest written last carries the publish and total timings."""
    publish_started = time.perf_counter()

    def with_timings(ready: Manifest) -> Manifest:
        now = time.perf_counter()
        timings = {
            **run.timings,
            "publish": round(now - publish_started, 3),
            "total": round(now - run.started, 3),
        }
        return ready.model_copy(update={"timings_seconds": timings})

    staged = manifest.model_copy(update={"timings_seconds": {**run.timings, "publish": 0.0, "total": 0.0}})
    written = run.target.commit(run.month, run.run_id, staged, before_manifest=with_timings)
    tables = written.tables
    run.log.info(
        "month %s published in %s buckets: %s tier rows, %s card events, %s quarantined, %s duplicates collapsed",
        run.label,
        written.buckets,
        tables["tier_assignments"].rows,
        tables["card_issuance"].rows,
        tables["quarantine"].rows,
        written.duplicates_collapsed,
    )
    return written


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
    overrides: MonthOverrides | None = None,
) -> Manifest:
    """Evaluate and publish one month on top of the published ``build_on`` month (None: empty).

    Returns the manifest as published; with ``dry_run`` (``billing-tiers check``) everything but the
    publish, and the manifest it would have published. When a guard stops the month, the rejected
    rows go to ``<store>/_rejected/`` and :class:`GuardError` says where. ``publish_into`` (for
    ``simulate``) reads the history from ``store`` but stages and publishes into another store, so
    ``store`` is not written at all. The caller holds the store's writer lock. ``overrides`` are the
    approved overrides in force for the month (SPEC 9; None: none), joined per bucket like the state.

    A month published before is replaced: its ``changes`` compare with that version's tier rows,
    unless that version cannot be read (damaged), which is then recorded and never read."""
    run = _Run(
        store=store,
        target=publish_into or store,
        month=month,
        run_id=run_id or new_run_id(month),
        log=logger or logging.getLogger(__name__),
    )
    previous = previous_month(store, month, build_on)
    replaced = replaced_version(store, month)
    run.target.open_staging(run.run_id, month)
    try:
        with run.step("read_extract"):
            count, split = _split_extract(run, extracts, buckets)
        with run.step("load_previous_state"):
            jobs = _bucket_jobs(run, count, split, build_on, previous, replaced, rulebook, overrides)
        with run.step("evaluate_buckets"):
            figures = MonthFigures.total(map_buckets(evaluate_bucket, jobs))
        guards = _check_guards(run, figures, rulebook, override_guards)
        manifest = _manifest(
            run,
            extracts=extracts,
            split=split,
            figures=figures,
            guards=guards,
            override_guards=override_guards,
            build_on=build_on,
            previous=previous,
            replaced=replaced,
            rulebook=rulebook,
            rulebook_path=rulebook_path,
            dry_run=dry_run,
            flow_run_id=flow_run_id,
            overrides=overrides,
        )
    except BaseException:
        run.target.discard(run.run_id)
        raise
    if dry_run:
        run.target.discard(run.run_id)
        return manifest.model_copy(
            update={"timings_seconds": {**run.timings, "total": round(time.perf_counter() - run.started, 3)}}
        )
    return _publish(run, manifest)


def summary_frame(manifest: Manifest | dict[str, Any]) -> pl.DataFrame:
    """The manifest's level/action counts as a frame (for the CLI and the Prefect artifact)."""
    typed = manifest if isinstance(manifest, Manifest) else Manifest.model_validate(manifest)
    return pl.DataFrame(
        [row.model_dump() for row in typed.summary],
        schema={"program": pl.String, "level": pl.String, "action": pl.String, "subscribers": pl.Int64},
    )
