"""The Prefect-free month run: buckets never change a row, a state built with another bucket count
is read back, and a month with no rows is refused. Runs the sample without Prefect."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.store import Store, extract_months
from flows.run_month import automatic_buckets, run_month
from rulebook import load_rulebook
from schemas.contract import CHANGES, TABLES
from schemas.manifest import Manifest
from tests.extract_factory import row, write_extract

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "extracts"
SAMPLE_MONTHS = extract_months(SAMPLE)


def backfill(store: Path, months: list[dt.date], buckets: list[int], extracts: Path = SAMPLE) -> list[Manifest]:
    """Run ``months`` in order, month i with ``buckets[i % len(buckets)]`` buckets."""
    rulebook = load_rulebook()
    manifests = []
    build_on = None
    for index, month in enumerate(months):
        manifests.append(
            run_month(
                store=Store(store),
                extracts=extracts,
                month=month,
                build_on=build_on,
                rulebook=rulebook,
                rulebook_path=None,
                override_guards=False,
                buckets=buckets[index % len(buckets)],
            )
        )
        build_on = month
    return manifests


def every_table(store: Path) -> dict[str, pl.DataFrame]:
    return {t: pl.read_parquet(store / t, hive_partitioning=True).sort(pl.all()) for t in TABLES}


@pytest.fixture(scope="module")
def one_bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("k1")
    backfill(store, SAMPLE_MONTHS, [1])
    return store


def test_the_sample_with_one_or_seven_buckets_gives_identical_rows(one_bucket: Path, tmp_path: Path) -> None:
    manifests = backfill(tmp_path, SAMPLE_MONTHS, [7])
    assert {m.buckets for m in manifests} == {7}
    assert all(len(list((tmp_path / t / "billing_month=2026-03").iterdir())) == 7 for t in TABLES)
    seven, one = every_table(tmp_path), every_table(one_bucket)
    for table in TABLES:
        assert seven[table].equals(one[table]), table
    # the guards and counts are sums over buckets
    ones = [Store(one_bucket).read_manifest(m) for m in SAMPLE_MONTHS]
    for mine, theirs in zip(manifests, ones, strict=True):
        assert theirs is not None
        for key in ("guards", "summary", "transitions", "quarantine_by_rule", "rows_read", "duplicates_collapsed"):
            assert getattr(mine, key) == getattr(theirs, key), key


def test_a_month_built_on_a_state_with_another_bucket_count_is_the_same(one_bucket: Path, tmp_path: Path) -> None:
    months = SAMPLE_MONTHS[:8]
    backfill(tmp_path, months, [1, 4, 4, 2, 5])
    mixed, one = every_table(tmp_path), every_table(one_bucket)
    last = f"{months[-1]:%Y-%m}"
    assert all(mixed[t].equals(one[t].filter(pl.col("billing_month") <= last)) for t in TABLES)
    assert all(s.healthy for s in store_status(Store(tmp_path)))


def test_manifest_times_every_step_and_the_total(one_bucket: Path) -> None:
    manifest = Store(one_bucket).read_manifest(SAMPLE_MONTHS[-1])
    assert manifest is not None
    timings = manifest.timings_seconds
    assert {"read_extract", "load_previous_state", "evaluate_buckets", "publish", "total"} <= set(timings)
    assert timings["total"] >= sum(v for k, v in timings.items() if k != "total") - 0.01
    assert {"clean_extract", "evaluate", "validate_outputs", "write_parts"} <= set(manifest.bucket_seconds_summed)


def test_a_month_whose_files_hold_no_rows_is_refused_and_leaves_no_staging(tmp_path: Path) -> None:
    write_extract(tmp_path / "x", "2024-03", [])
    with pytest.raises(PipelineError, match="month 2024-03: the extract has no rows"):
        backfill(tmp_path / "s", [dt.date(2024, 3, 1)], [3], extracts=tmp_path / "x")
    assert Store(tmp_path / "s").pending_publishes() == []


def test_a_guard_failure_publishes_nothing_and_leaves_no_staging(tmp_path: Path) -> None:
    extracts = tmp_path / "x"
    write_extract(extracts, "2024-01", [row(f"s{i}") for i in range(20)])
    write_extract(extracts, "2024-02", [row(f"s{i}") for i in range(10)])
    store = tmp_path / "s"
    backfill(store, [dt.date(2024, 1, 1)], [2], extracts=extracts)
    with pytest.raises(PipelineError, match="10 of 20 subscribers of the previous extract have no row"):
        run_month(
            store=Store(store),
            extracts=extracts,
            month=dt.date(2024, 2, 1),
            build_on=dt.date(2024, 1, 1),
            rulebook=load_rulebook(),
            rulebook_path=None,
            override_guards=False,
            buckets=3,
        )
    assert Store(store).manifest_months() == [dt.date(2024, 1, 1)]
    assert Store(store).pending_publishes() == []


def test_the_automatic_bucket_count_grows_with_the_extract() -> None:
    assert [automatic_buckets(n) for n in (1, 250_000, 250_001, 10_000_000)] == [1, 1, 2, 40]


def _run(store: Path, extracts: Path, month: str, build_on: str | None, **options: Any) -> Manifest:
    return run_month(
        store=Store(store),
        extracts=extracts,
        month=dt.date.fromisoformat(f"{month}-01"),
        build_on=dt.date.fromisoformat(f"{build_on}-01") if build_on else None,
        rulebook_path=None,
        **{"override_guards": False, "rulebook": load_rulebook(), **options},
    )


def test_a_month_that_replaces_a_published_one_publishes_what_changed(tmp_path: Path) -> None:
    extracts = tmp_path / "x"
    others = [row(f"o{i}", "10.00") for i in range(30)]
    write_extract(extracts, "2024-01", [row("up", "100.00"), row("same", "100.00"), row("gone", "5.00"), *others])
    first = _run(tmp_path / "s", extracts, "2024-01", None, buckets=2)
    # every month has changes/: empty, with its schema and a part per bucket, when nothing was replaced
    assert first.changes_by_program is None and first.replaced_run_id is None
    assert first.tables["changes"].rows == 0 and len(first.tables["changes"].parts) == 2
    empty = Store(tmp_path / "s").read_table("changes", dt.date(2024, 1, 1))
    assert empty.height == 0 and empty.schema == CHANGES.schema
    # a corrected extract: "up" billed enough for silver, "gone" was never there, "new" was missing
    write_extract(extracts, "2024-01", [row("up", "900.00"), row("same", "100.00"), row("new", "5.00"), *others])
    second = _run(tmp_path / "s", extracts, "2024-01", None, buckets=3)
    changes = pl.read_parquet(Store(tmp_path / "s").month_dir("changes", dt.date(2024, 1, 1)))
    vip = changes.filter(pl.col("program") == "unicom_vip").sort("subscriber_id")
    assert vip.select(
        "subscriber_id", "change", "level_before", "level_after", "action_before", "action_after"
    ).rows() == [
        ("gone", "removed", None, None, "none", None),
        ("new", "added", None, None, None, "none"),
        ("up", "changed", None, "silver", "none", "new"),
    ]
    assert second.changes_by_program is not None and second.changes_by_program["unicom_vip"] == 3
    assert second.replaced_run_id == first.run_id and second.previous_version_unreadable is None
    assert "same" not in changes["subscriber_id"].to_list()
    assert all(s.healthy for s in store_status(Store(tmp_path / "s")))


def test_a_dry_run_publishes_nothing_and_a_guard_stop_leaves_the_rejected_rows(tmp_path: Path) -> None:
    extracts = tmp_path / "x"
    store = tmp_path / "s"
    write_extract(extracts, "2024-01", [row(f"s{i}") for i in range(20)])
    write_extract(extracts, "2024-02", [row(f"s{i}") for i in range(10)] + [row("bad", customer_type="VIP")])
    manifest = _run(store, extracts, "2024-01", None, dry_run=True)
    assert manifest.dry_run and manifest.tables["tier_assignments"].rows == 80
    assert Store(store).manifest_months() == [] and Store(store).pending_publishes() == []
    _run(store, extracts, "2024-01", None, buckets=2)
    from flows.run_month import GuardError

    with pytest.raises(
        GuardError, match=r"the quarantined rows are in .*_rejected/billing_month=2024-02/quarantine.parquet"
    ) as stop:
        _run(store, extracts, "2024-02", "2024-01", buckets=2, dry_run=True)
    assert stop.value.quarantine_by_rule == {"customer_type_allowed_value": 1}
    rejected = pl.read_parquet(stop.value.rejected)
    assert rejected.select("subscriber_id", "rule").rows() == [("bad", "customer_type_allowed_value")]
    missing = pl.read_parquet(stop.value.rejected.parent / "missing_subscribers.parquet")
    assert missing.height == 10
    assert Store(store).rejected_months() == [dt.date(2024, 2, 1)]
    assert Store(store).manifest_months() == [dt.date(2024, 1, 1)]
    write_extract(extracts, "2024-02", [row(f"s{i}") for i in range(20)])
    _run(store, extracts, "2024-02", "2024-01")
    assert Store(store).rejected_months() == []  # the next attempt that passes the guards clears it


def test_the_manifest_flags_a_rulebook_that_differs_from_the_previous_months(tmp_path: Path) -> None:
    from rulebook import default_rulebook_path, parse_rulebook

    extracts = tmp_path / "x"
    for month in ("2024-01", "2024-02", "2024-03"):
        write_extract(extracts, month, [row("a"), row("b")])
    changed = parse_rulebook(default_rulebook_path().read_text() + "\n# a comment changes the checksum\n")
    first = _run(tmp_path / "s", extracts, "2024-01", None)
    second = _run(tmp_path / "s", extracts, "2024-02", "2024-01", rulebook=changed)
    third = _run(tmp_path / "s", extracts, "2024-03", "2024-02", rulebook=changed)
    flags = [m.rulebook.changed_from_previous for m in (first, second, third)]
    assert flags == [False, True, False]


def test_ids_with_hidden_characters_are_quarantined_in_every_bucket_and_odd_looking_ids_are_evaluated(
    tmp_path: Path,
) -> None:
    """SPEC 2's subscriber_id character rule, end to end over several buckets: the bad ids are published
    in quarantine exactly as read, the odd-looking but valid ones are evaluated like any other."""
    bad = ["\x00", "\n", "\x1b[31m", "\u202e", "\u200b", "\ufeff", " 1380", "1380\t"]
    odd = ["13800000000", "用户-01", "a b", "[bold red]x[/bold red]", "[/]"]
    filler = [row(f"f{i:04d}") for i in range(1000)]  # 9 of 1014 rows quarantined: inside the 1% guard
    write_extract(tmp_path / "x", "2024-01", [*[row(i) for i in [*bad, *odd]], row("x" * 33), *filler])
    manifest = _run(tmp_path / "s", tmp_path / "x", "2024-01", None, buckets=3)
    assert manifest.quarantine_by_rule == {"subscriber_id_characters": 8, "subscriber_id_length": 1}
    store = Store(tmp_path / "s")
    quarantine = pl.read_parquet(store.month_dir("quarantine", dt.date(2024, 1, 1))).sort("source_row")
    assert quarantine.select("subscriber_id", "rule").rows() == [
        *[(i, "subscriber_id_characters") for i in bad],
        ("x" * 33, "subscriber_id_length"),
    ]
    assert quarantine["source_row"].to_list() == [*range(8), 13]
    assert len(set(quarantine["subscriber_id"].map_elements(lambda i: bucket_of(i, 3), return_dtype=pl.Int64))) > 1
    tiers = pl.read_parquet(store.month_dir("tier_assignments", dt.date(2024, 1, 1)))
    vip = tiers.filter(pl.col("program") == "unicom_vip")
    assert vip.height == 1000 + len(odd)
    assert set(odd) <= set(vip["subscriber_id"])
    assert not set(bad) & set(tiers["subscriber_id"])


def bucket_of(subscriber_id: str, buckets: int) -> int:
    from transforms.buckets import bucket_numbers

    return int(bucket_numbers(pl.Series([subscriber_id]), buckets)[0])


def test_the_manifest_checksum_is_of_the_extract_bytes_the_run_read_even_if_the_file_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 8: checksums in the manifest are of the bytes actually read. The extract is replaced by
    a rename while the run splits it; the run goes on with the file it opened."""
    import hashlib

    from tests.extract_factory import replace_when_parsed

    path = write_extract(tmp_path / "x", "2024-01", [row(f"old{i:02d}") for i in range(40)])
    old = path.read_bytes()
    new = write_extract(tmp_path / "y", "2024-01", [row(f"new{i:02d}") for i in range(40)]).read_bytes()
    replace_when_parsed(monkeypatch, path, new, in_place=False)
    manifest = _run(tmp_path / "s", tmp_path / "x", "2024-01", None, buckets=3)
    assert path.read_bytes() == new
    assert [f.sha256 for f in manifest.inputs] == [hashlib.sha256(old).hexdigest()]
    tiers = pl.read_parquet(Store(tmp_path / "s").month_dir("tier_assignments", dt.date(2024, 1, 1)))
    assert sorted(set(tiers["subscriber_id"])) == [f"old{i:02d}" for i in range(40)]


def test_a_run_refuses_an_extract_rewritten_while_it_is_read_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.extract_factory import replace_when_parsed

    path = write_extract(tmp_path / "x", "2024-01", [row(f"old{i:02d}") for i in range(40)])
    new = write_extract(tmp_path / "y", "2024-01", [row(f"new{i:02d}") for i in range(41)]).read_bytes()
    replace_when_parsed(monkeypatch, path, new, in_place=True)
    with pytest.raises(PipelineError) as refused:
        _run(tmp_path / "s", tmp_path / "x", "2024-01", None, buckets=3)
    assert str(refused.value) == "extract billing_month=2024-01/part-0.parquet: changed while it was read; rerun"
    assert Store(tmp_path / "s").manifest_months() == []
    assert Store(tmp_path / "s").pending_publishes() == []


def test_the_manifest_records_its_format_the_extracts_used_and_reads_back_typed(tmp_path: Path) -> None:
    from schemas.manifest import MANIFEST_FORMAT_VERSION

    extracts = tmp_path / "x"
    write_extract(extracts, "2024-01", [row("a"), row("b")])
    written = _run(tmp_path / "s", extracts, "2024-01", None, buckets=2)
    assert written.format_version == MANIFEST_FORMAT_VERSION and written.extracts == str(extracts)
    assert Store(tmp_path / "s").manifest(dt.date(2024, 1, 1)) == written
    assert [p.rows for p in written.tables["tier_assignments"].parts] == [
        len(pl.read_parquet(Store(tmp_path / "s").month_dir("tier_assignments", dt.date(2024, 1, 1)) / p.file))
        for p in written.tables["tier_assignments"].parts
    ]


def test_bucket_results_sum_into_the_month_figures() -> None:
    from flows.bucket import BucketResult, MonthFigures
    from schemas.manifest import PartEntry

    def result(bucket: int, rows: int, vip: int) -> BucketResult:
        return BucketResult(
            bucket=bucket,
            rows_read=rows + 1,
            rows_after_duplicates=rows,
            quarantined_rows=1,
            quarantine_by_rule={"status_allowed_value": 1},
            previous_subscribers=rows,
            missing_subscribers=0,
            summary={("unicom_vip", "silver", "new"): vip, ("unicom_vip", None, "none"): rows - vip},
            transitions={("unicom_vip", None, "silver"): vip},
            parts={
                "changes": PartEntry(file=f"c{bucket}", rows=0, sha256="0"),
                "tier_assignments": PartEntry(file=f"t{bucket}", rows=rows, sha256="0"),
            },
            changes_by_program={"unicom_vip": vip} if vip else {},
            seconds={"evaluate": 0.5},
        )

    figures = MonthFigures.total([result(1, 10, 2), result(0, 5, 0)])  # results come in any order
    assert figures.buckets == (0, 1)
    assert (figures.rows_read, figures.rows_after_duplicates, figures.duplicates_collapsed) == (17, 15, 2)
    assert figures.quarantine_rows_by_rule() == {"status_allowed_value": 2}
    assert [(r.level, r.action, r.subscribers) for r in figures.summary_rows()] == [
        ("silver", "new", 2),
        (None, "none", 13),
    ]
    assert [(r.previous_level, r.level, r.members) for r in figures.transition_rows()] == [(None, "silver", 2)]
    tables = figures.tables()
    assert list(tables) == ["tier_assignments", "changes"]  # the published tables' order
    assert [p.file for p in tables["tier_assignments"].parts] == ["t0", "t1"]  # bucket order
    assert tables["tier_assignments"].rows == 15
    assert figures.changes_by_program == {"unicom_vip": 2}
    assert figures.seconds_summed() == {"evaluate": 1.0}
    assert figures.guards(load_rulebook()).missing_subscribers == 0


def test_after_one_bucket_fails_the_buckets_still_running_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bucket 0 fails while bucket 1 is evaluating; the run stops and removes its staging, and
    bucket 1, going on afterwards, writes nothing: no part, no staging folder made again."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from flows import bucket
    from flows import run_month as run_month_module
    from tests.faults import InjectedFault

    extracts = tmp_path / "x"
    write_extract(extracts, "2024-01", [row(f"s{i:03d}") for i in range(60)])
    store = tmp_path / "s"
    entered, release = threading.Event(), threading.Event()
    real_evaluate, real_validate = bucket.evaluate_bucket, bucket.validate_tables

    def evaluate(job: bucket.BucketJob) -> bucket.BucketResult:
        if job.bucket == 0:
            assert entered.wait(60)
            raise InjectedFault("bucket 0 failed")
        return real_evaluate(job)

    def slow_validate(*args: Any) -> None:
        entered.set()  # bucket 1 started (its run was live) and is evaluating
        assert release.wait(60)
        real_validate(*args)

    pool = ThreadPoolExecutor(max_workers=2)
    futures = []

    def map_threads(work: Any, jobs: Any) -> list[Any]:
        futures.extend(pool.submit(work, job) for job in jobs)
        return [future.result() for future in futures]  # the first failure stops the run, as Prefect's do

    monkeypatch.setattr(run_month_module, "evaluate_bucket", evaluate)
    monkeypatch.setattr(bucket, "validate_tables", slow_validate)
    with pytest.raises(InjectedFault):
        _run(store, extracts, "2024-01", None, buckets=2, map_buckets=map_threads)
    assert Store(store).pending_publishes() == []
    release.set()
    pool.shutdown(wait=True)
    with pytest.raises(bucket.RunCancelled, match="bucket 1 stopped: the run was cancelled"):
        futures[1].result()
    assert Store(store).pending_publishes() == []
    assert not list((store / "_staging").rglob("*"))
