"""Overrides end to end (SPEC 9): the ledger through the commands, applied by a run, recorded in the
manifest, shown by explain and history, and refused when the rulebook lacks their program or level."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from billing_tiers.errors import PipelineError
from billing_tiers.service import RunRequest, run_request
from billing_tiers.store import Store
from rulebook import default_rulebook_path
from tests.extract_factory import write_history

runner = CliRunner()
MONTHS = ["2024-01", "2024-02", "2024-03"]
KEY_ACCOUNT = "13800000001"  # 160.00 a month in write_history's seed 7: VIP silver at most


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def store(tmp_path: Path) -> Path:
    extracts = tmp_path / "extracts"
    write_history(extracts, MONTHS)
    root = tmp_path / "store"
    invoke("init", "--store", str(root), "--extracts", str(extracts))
    return root


def granted(store: Path) -> str:
    (override_id,) = invoke(
        "override", "add", "--store", str(store), "--program", "unicom_vip", "--subscriber", KEY_ACCOUNT,
        "--kind", "grant", "--level", "gold", "--from", "2024-02", "--reason", "key account [renegotiation]",
        "--by", "alice",
    ).split()  # fmt: skip
    return override_id


def backfill(store: Path, first: str = "2024-01", **options: object) -> list[dict[str, object]]:
    request = RunRequest(command="backfill", store=store, first=dt.date.fromisoformat(f"{first}-01"), **options)  # type: ignore[arg-type]
    return run_request(request)


def vip_row(store: Path, month: str) -> dict[str, object]:
    tiers = Store(store).read_table("tier_assignments", dt.date.fromisoformat(f"{month}-01"))
    return tiers.filter((pl.col("program") == "unicom_vip") & (pl.col("subscriber_id") == KEY_ACCOUNT)).row(
        0, named=True
    )


def test_a_pending_override_does_nothing_and_an_approved_one_applies_from_its_first_month(store: Path) -> None:
    override_id = granted(store)
    manifests = backfill(store)
    assert [m["overrides"]["in_force"] for m in manifests] == [[], [], []]  # pending: not applied
    assert vip_row(store, "2024-02")["override_id"] is None
    invoke("override", "approve", override_id, "--store", str(store), "--by", "bob")
    manifests = backfill(store)
    assert [m["overrides"]["in_force"] for m in manifests] == [[], [override_id], [override_id]]
    assert manifests[1]["overrides"]["changed_from_replaced"] is True
    assert manifests[0]["overrides"]["changed_from_replaced"] is False
    january, february = vip_row(store, "2024-01"), vip_row(store, "2024-02")
    assert january["override_id"] is None and january["level"] != "gold"
    assert (february["qualified_level"], february["level"], february["override_id"]) == (
        january["qualified_level"] if january["qualified_level"] != "gold" else february["qualified_level"],
        "gold",
        override_id,
    )
    assert february["reason_code"] == "override"
    assert february["reason"] == f"override {override_id} grants gold: key account [renegotiation]"
    changes = Store(store).read_table("changes", dt.date(2024, 2, 1))
    assert KEY_ACCOUNT in changes["subscriber_id"].to_list()  # the backfill published the correction


def test_explain_and_history_show_the_override_with_who_asked_and_who_approved(store: Path) -> None:
    override_id = granted(store)
    invoke("override", "approve", override_id, "--store", str(store), "--by", "bob")
    backfill(store)
    shown = invoke("explain", "--store", str(store), "--month", "2024-02", "--subscriber", KEY_ACCOUNT,
                   "--program", "unicom_vip")  # fmt: skip
    assert (
        f"  override {override_id}: grant gold in unicom_vip, 2024-02..open (approved); reason: key account "
        "[renegotiation]; requested by alice, approved by bob"
    ) in shown.splitlines()
    assert f"  reason [override]: override {override_id} grants gold: key account [renegotiation]" in shown
    history = json.loads(invoke("history", "--store", str(store), "--subscriber", KEY_ACCOUNT, "--json"))
    assert set(history["overrides"]) == {override_id}
    vip = [r for r in history["tier_assignments"] if r["program"] == "unicom_vip"]
    assert [r["override_id"] for r in vip] == [None, override_id, override_id]


def test_a_revoke_ends_the_override_and_the_rerun_is_flagged(store: Path) -> None:
    override_id = granted(store)
    invoke("override", "approve", override_id, "--store", str(store), "--by", "bob")
    backfill(store)
    invoke("override", "revoke", override_id, "--store", str(store), "--from", "2024-03", "--by", "carol",
           "--reason", "contract signed")  # fmt: skip
    manifests = backfill(store, "2024-03")
    assert manifests[0]["overrides"] == {"in_force": [], "ledger_sha256": manifests[0]["overrides"]["ledger_sha256"],
                                         "changed_from_replaced": True}  # fmt: skip
    march = vip_row(store, "2024-03")
    assert march["override_id"] is None
    assert march["level"] == "gold"  # within its validity a level granted stays (SPEC 9)


def test_an_override_the_rulebook_cannot_apply_is_refused_before_anything_runs(store: Path, tmp_path: Path) -> None:
    override_id = granted(store)
    invoke("override", "approve", override_id, "--store", str(store), "--by", "bob")
    text = default_rulebook_path().read_text(encoding="utf-8")
    no_gold = tmp_path / "no-gold.toml"
    no_gold.write_text(text.replace("[programs.unicom_vip]\nenabled = true", "[programs.unicom_vip]\nenabled = false"))
    with pytest.raises(PipelineError, match=override_id):
        backfill(store, rulebook=no_gold)
    assert not (store / "manifests").exists()


def test_the_same_rows_for_any_bucket_count(store: Path, tmp_path: Path) -> None:
    override_id = granted(store)
    invoke("override", "approve", override_id, "--store", str(store), "--by", "bob")
    blocked = invoke(
        "override", "add", "--store", str(store), "--program", "unicom_star", "--subscriber", "13800000002",
        "--kind", "block", "--from", "2024-02", "--to", "2024-02", "--reason", "fraud check", "--by", "alice",
    ).strip()  # fmt: skip
    invoke("override", "approve", blocked, "--store", str(store), "--by", "bob")
    backfill(store, buckets=1)
    one = {m: Store(store).read_table("tier_assignments", dt.date.fromisoformat(f"{m}-01")) for m in MONTHS}
    backfill(store, buckets=3)
    for month in MONTHS:
        three = Store(store).read_table("tier_assignments", dt.date.fromisoformat(f"{month}-01"))
        assert three.sort("program", "subscriber_id").equals(one[month].sort("program", "subscriber_id"))
    star = one["2024-02"].filter((pl.col("program") == "unicom_star") & (pl.col("subscriber_id") == "13800000002"))
    assert star.select("action", "reason_code", "override_id").row(0) == ("terminate", "blocked", blocked)
