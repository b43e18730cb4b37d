"""End to end: the Prefect flows over the bundled sample data, reruns, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from billing_tiers.health import store_status
from billing_tiers.store import Store
from flows.monthly import backfill_tiers, monthly_tiers
from schemas.contract import CARD_REASONS, TABLES
from tests.stores import new_store

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "extracts"
FIRST, LAST = "2024-01", "2026-03"

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = new_store(tmp_path_factory.mktemp("store"))
    before = _fingerprint(SAMPLE)
    backfill_tiers(start=FIRST, extracts=str(SAMPLE), store=str(store))
    assert _fingerprint(SAMPLE) == before, "the extracts folder must never be written to"
    return store


def _fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def read_all(store: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(store / table, hive_partitioning=True)


def test_backfill_publishes_every_month_healthy(sample_store: Path) -> None:
    statuses = store_status(Store(sample_store))
    assert [s.problem for s in statuses] == [None] * 27
    assert statuses[-1].manifest is not None
    assert statuses[-1].manifest.built_from.month == "2026-02"


def test_every_action_of_every_retention_occurs_in_the_sample(sample_store: Path) -> None:
    tiers = read_all(sample_store, "tier_assignments")
    actions = tiers.group_by("program").agg(pl.col("action").unique()).rows()
    seen = {program: set(found) for program, found in actions}
    validity = {"none", "new", "upgrade", "renew", "downgrade", "retain", "lapse", "terminate"}
    assert seen["unicom_vip"] == validity
    assert seen["unicom_star"] == validity
    assert seen["cmcc_credit"] == {"none", "new", "upgrade", "downgrade", "retain", "lapse", "terminate"}
    assert seen["points_redemption"] == {"none", "new", "retain", "terminate", "lapse"}
    cards = read_all(sample_store, "card_issuance")
    assert set(cards["reason"].unique()) == set(CARD_REASONS) - {"blocked"}  # no override in the sample
    assert cards.filter(pl.col("event") == "issue")["card_id"].is_unique().all()
    levels = tiers.filter(pl.col("program") == "unicom_vip")["level"].unique().drop_nulls()
    assert set(levels) == {"silver", "gold", "diamond", "supreme"}


def test_sample_boundary_subscribers(sample_store: Path) -> None:
    tiers = read_all(sample_store, "tier_assignments").filter(pl.col("program") == "unicom_vip")

    def best(subscriber: str) -> set[str]:
        return set(tiers.filter(pl.col("subscriber_id") == subscriber)["qualified_level"].drop_nulls())

    assert "silver" in best("13900000101")  # exactly 900.00 over six months
    assert best("13900000102") == set()  # 899.98
    assert best("13900000104") == set()  # average 149.9967 must not round up
    assert "supreme" in best("13900000201") and "supreme" not in best("13900000202")


def test_readers_see_billing_month_from_the_partition(sample_store: Path) -> None:
    import duckdb

    months = duckdb.sql(
        f"select count(distinct billing_month) from read_parquet('{sample_store}/tier_assignments/**/*.parquet',"
        " hive_partitioning=true)"
    ).fetchall()
    assert months == [(27,)]
    import pandas

    frame = pandas.read_parquet(sample_store / "quarantine")
    assert frame["billing_month"].astype(str).nunique() == 27
    lazy = pl.scan_parquet(sample_store / "card_issuance").filter(pl.col("billing_month") == LAST).collect()
    assert lazy.height > 0


def test_a_rerun_of_the_latest_month_gives_identical_tables(sample_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "copy"
    shutil.copytree(sample_store, store)
    before = {t: pl.read_parquet(Store(store).month_dir(t, _month(LAST))) for t in TABLES}
    monthly_tiers(month=LAST, extracts=str(SAMPLE), store=str(store))
    for table in TABLES:
        after = pl.read_parquet(Store(store).month_dir(table, _month(LAST)))
        assert after.equals(before[table]), table
    assert all(s.healthy for s in store_status(Store(store)))


def test_backfill_of_a_middle_month_reproduces_the_same_history(sample_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "copy"
    shutil.copytree(sample_store, store)
    backfill_tiers(start="2025-10", extracts=str(SAMPLE), store=str(store))
    for table in ("tier_assignments", "card_issuance", "state", "memberships"):
        assert read_all(store, table).equals(read_all(sample_store, table)), table


def test_run_refuses_out_of_order_months(sample_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "copy"
    shutil.copytree(sample_store, store)
    with pytest.raises(PipelineError, match="earlier than the latest published month 2026-03; use `billing-tiers"):
        monthly_tiers(month="2025-01", extracts=str(SAMPLE), store=str(store))
    with pytest.raises(PipelineError, match="month 2026-04 is missing"):
        monthly_tiers(month="2026-05", extracts=str(SAMPLE), store=str(store))


def _month(label: str):  # type: ignore[no-untyped-def]
    from billing_tiers.months import parse_month

    return parse_month(label)


def test_a_quarantined_subscriber_counts_as_absent_and_as_present_for_the_guard(tmp_path: Path) -> None:
    from tests.extract_factory import row, write_extract

    extracts, store = tmp_path / "x", new_store(tmp_path / "s")
    others = [row(f"o{i:03d}", "10.00") for i in range(150)]
    write_extract(extracts, "2024-01", [row("q", "900.00"), *others])
    write_extract(extracts, "2024-02", [row("q", "900.00", customer_type="VIP"), *others])
    manifests = backfill_tiers(start="2024-01", extracts=str(extracts), store=str(store))
    assert manifests[1]["guards"]["missing_subscribers"] == 0
    assert manifests[1]["guards"]["quarantined_rows"] == 1
    tiers = pl.read_parquet(Store(store).month_dir("tier_assignments", _month("2024-02")))
    vip = tiers.filter((pl.col("subscriber_id") == "q") & (pl.col("program") == "unicom_vip")).row(0, named=True)
    assert (vip["present"], vip["months_absent"], vip["action"], vip["level"]) == (False, 1, "retain", "silver")
    assert str(vip["billed_6m"]) == "900.00"
    quarantine = pl.read_parquet(Store(store).month_dir("quarantine", _month("2024-02")))
    assert quarantine.select("subscriber_id", "rule").rows() == [("q", "customer_type_allowed_value")]


def test_a_backfill_outside_a_terminal_reports_each_month_with_the_time_left(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from billing_tiers.cli import app

    store = new_store(tmp_path / "s")
    result = CliRunner().invoke(
        app, ["backfill", "--from", "2024-01", "--to", "2024-03", "--extracts", str(SAMPLE), "--store", str(store)]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("backfill: month")]
    assert [line.split(" (")[0] for line in lines] == [f"backfill: month {i} of 3" for i in (1, 2, 3)]
    assert "2024-03) published" in lines[-1] and "s left" in lines[-1]


def test_a_member_is_never_without_a_card_between_two_cards(sample_store: Path) -> None:
    """SPEC 5 effective dates: the old card's void takes effect the day the new card does."""
    cards = read_all(sample_store, "card_issuance")
    swaps = cards.group_by("billing_month", "program", "subscriber_id").agg(
        pl.col("effective_on").n_unique().alias("days"), pl.col("event").n_unique().alias("events")
    )
    assert swaps.filter(pl.col("events") == 2)["days"].unique().to_list() == [1]
    tiers = read_all(sample_store, "tier_assignments")
    renewed = tiers.filter(pl.col("action").is_in(["renew", "downgrade"]) & (pl.col("program") == "unicom_vip"))
    assert (renewed["effective_on"] == renewed["valid_from"]).all()  # the first of the month after E
    assert (
        tiers.filter(pl.col("action").is_in(["none", "retain"]))["effective_on"].null_count()
        == tiers.filter(pl.col("action").is_in(["none", "retain"])).height
    )
    coded = tiers.filter(pl.col("reason").is_not_null())
    assert coded["reason_code"].null_count() == 0
    assert (
        tiers.filter(pl.col("reason").is_null())["reason_code"].null_count()
        == tiers.filter(pl.col("reason").is_null()).height
    )


def test_a_backfill_writes_the_html_report_of_its_last_month_beside_the_manifest(sample_store: Path) -> None:
    last = sample_store / "manifests" / f"billing_month={LAST}" / "report.html"
    assert last.is_file() and "<script" not in last.read_text(encoding="utf-8")
    assert not (sample_store / "manifests" / f"billing_month={FIRST}" / "report.html").exists()


def test_a_correction_shows_its_changes_per_program_in_the_flow_log_and_the_report_artifact(tmp_path: Path) -> None:
    """A month that replaced a published one: the flow log and the ``tier-report-<month>`` markdown
    artifact say how many tier rows changed per program (the manifest's ``changes_by_program``),
    read back from the Prefect server, not only the command line's summary."""
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    from flows.monthly import changes_line, changes_markdown
    from tests.extract_factory import row, write_extract

    extracts, store = tmp_path / "x", new_store(tmp_path / "s")
    others = [row(f"o{i}", "10.00") for i in range(30)]
    write_extract(extracts, "2024-01", [row("up", "100.00"), row("same", "100.00"), row("gone", "5.00"), *others])
    (first,) = monthly_tiers(month="2024-01", extracts=str(extracts), store=str(store))
    assert first["changes_by_program"] is None and changes_line(first) is None and changes_markdown(first) is None
    assert "Changes from the version replaced" not in _artifact_markdown(Artifact, "tier-report-2024-01")

    # A corrected extract: "up" now qualifies for silver, "gone" was never there, "new" was missing.
    write_extract(extracts, "2024-01", [row("up", "900.00"), row("same", "100.00"), row("new", "5.00"), *others])
    (second,) = monthly_tiers(month="2024-01", extracts=str(extracts), store=str(store))
    changes = second["changes_by_program"]
    assert changes["unicom_vip"] == 3 and set(changes) <= {r["program"] for r in second["summary"]}
    expected = {program: changes.get(program, 0) for program in sorted({r["program"] for r in second["summary"]})}

    # The flow log on the server.
    APILogWorker.drain_all(timeout=30)  # the log lines still queued for the server
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[second["prefect_flow_run_id"]]))
        )
    (line,) = [log.message for log in logs if "tier rows changed" in log.message]
    assert line == (
        f"month 2024-01 replaced run {first['run_id']}: {sum(expected.values())} tier rows changed (table "
        f"`changes`); per program: " + ", ".join(f"{program} {count}" for program, count in expected.items())
    )

    # The markdown artifact of the month, as the server has it.
    markdown = _artifact_markdown(Artifact, "tier-report-2024-01")
    section = markdown[markdown.index("## Changes from the version replaced 2024-01") :]
    section = section[: section.index("\n## ")]
    assert f"This run replaced run `{first['run_id']}`" in section
    table = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert table == ["| program | rows_changed |", *[f"| {p} | {c} |" for p, c in expected.items()]]
    assert markdown.index("## Changes") < markdown.index("## Members per level")  # near the top


def _artifact_markdown(artifact: type, key: str) -> str:
    found = artifact.get(key)  # type: ignore[attr-defined]
    assert found is not None, key
    return str(found.data)


def test_the_changes_section_shows_every_program_and_zero_for_an_unchanged_one() -> None:
    from flows.monthly import _with_changes, changes_line, changes_markdown

    manifest = {
        "billing_month": "2024-05",
        "replaced_run_id": "2024-05-old",
        "changes_by_program": {"unicom_vip": 2},
        "summary": [{"program": p} for p in ("unicom_vip", "cmcc_credit", "unicom_vip")],
    }
    assert changes_line(manifest) == (
        "month 2024-05 replaced run 2024-05-old: 2 tier rows changed (table `changes`); per program: "
        "cmcc_credit 0, unicom_vip 2"
    )
    section = changes_markdown(manifest)
    assert section is not None and section.endswith("| cmcc_credit | 0 |\n| unicom_vip | 2 |\n")
    report = "# Month report 2024-05\n\nrun line\n\n## Members per level\n\ntable\n"
    with_changes = f"# Month report 2024-05\n\nrun line\n\n{section}\n## Members per level\n\ntable\n"
    assert _with_changes(report, manifest) == with_changes
    rerun = {**manifest, "changes_by_program": {}}  # a rerun with the same inputs changes nothing
    assert changes_line(rerun) is not None and "0 tier rows changed" in str(changes_line(rerun))
    first = {**manifest, "changes_by_program": None}
    assert changes_line(first) is None and _with_changes(report, first) == report
