"""The command line: one clear line and a non-zero exit for every refusal; the lock; status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from billing_tiers.cli import app
from tests.extract_factory import row, write_extract
from tests.stores import new_store, publish_frames, publish_months

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


def test_a_bad_month_is_refused(tmp_path: Path) -> None:
    code, output = invoke("run", "--month", "2024-13", "--store", str(tmp_path / "s"))
    assert code == 2
    assert one_error_line(output) == "error: month '2024-13': there is no month 13; months run from 01 to 12"
    code, output = invoke("run", "--month", "2024-1", "--store", str(tmp_path / "s"))
    assert one_error_line(output) == "error: month '2024-1' is not of the form YYYY-MM"


def test_a_missing_extract_month_is_refused_naming_it(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    code, output = invoke("run", "--month", "2024-01", "--extracts", str(tmp_path / "x"), "--store", str(store))
    assert code == 2
    assert "month 2024-01: no extract folder" in one_error_line(output)


def test_a_broken_rulebook_is_refused_naming_the_key(tmp_path: Path) -> None:
    write_extract(tmp_path / "x", "2024-01", [row("a")])
    rulebook = tmp_path / "r.toml"
    rulebook.write_text("[calendar]\nexpiry_day = 30\n[programs]\n")
    code, output = invoke(
        "run", "--month", "2024-01", "--extracts", str(tmp_path / "x"), "--store", str(tmp_path / "s"),
        "--rulebook", str(rulebook),
    )  # fmt: skip
    assert code == 2
    assert "calendar.expiry_day" in one_error_line(output)


def test_backfill_needs_every_month_folder(tmp_path: Path) -> None:
    write_extract(tmp_path, "2024-01", [row("a")])
    write_extract(tmp_path, "2024-03", [row("a")])
    store = new_store(tmp_path / "s")
    code, output = invoke("backfill", "--from", "2024-01", "--extracts", str(tmp_path), "--store", str(store))
    assert code == 2
    assert "month 2024-02: no extract folder" in one_error_line(output)


def _hold_lock(store: Path) -> subprocess.Popen[bytes]:
    code = (
        "import sys, time; from pathlib import Path; from billing_tiers.store import Store\n"
        "with Store(Path(sys.argv[1])).writer_lock('test holder'):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
    return holder


def test_a_second_writer_is_refused_at_once_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    from billing_tiers.store import Store

    write_extract(tmp_path / "x", "2024-01", [row("a")])
    store = new_store(tmp_path / "s")
    holder = _hold_lock(store)
    try:
        code, output = invoke("run", "--month", "2024-01", "--extracts", str(tmp_path / "x"), "--store", str(store))
        # refused while the holder still holds the lock: the run did not wait for it to be released
        # (a run that waited would have published once the holder's 60 s were over, exit 0)
        assert holder.poll() is None
        assert code == 2
        line = one_error_line(output)
        assert "is in use by another run" in line and "test holder" in line
        assert (Store(store).manifest_months(), Store(store).table_months()) == ([], [])  # nothing published
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with Store(store).writer_lock("after the holder died"):
        assert "after the holder died" in Store(store).lock_owner_file.read_text()


def test_status_on_an_empty_store(tmp_path: Path) -> None:
    code, output = invoke("status", "--store", str(new_store(tmp_path / "s")), "--extracts", str(tmp_path / "none"))
    assert code == 0
    assert "no month published yet" in output


def test_explain_needs_a_published_month(tmp_path: Path) -> None:
    code, output = invoke(
        "explain", "--month", "2024-01", "--subscriber", "a", "--store", str(new_store(tmp_path / "s"))
    )
    assert code == 2
    assert "month 2024-01: not published" in one_error_line(output)


def test_broken_files_are_refused_before_prefect_starts(tmp_path: Path) -> None:
    good = write_extract(tmp_path / "x", "2024-01", [row("a")])
    (good.parent / "part-1.parquet").write_bytes(good.read_bytes()[:100])
    code, output = invoke(
        "run", "--month", "2024-01", "--extracts", str(tmp_path / "x"), "--store", str(new_store(tmp_path / "s"))
    )
    assert code == 2
    assert "extract billing_month=2024-01/part-1.parquet: not a readable Parquet file" in one_error_line(output)
    write_extract(tmp_path / "y", "2024-01", [row("a")])
    write_extract(tmp_path / "y", "2024-02", [{k: v for k, v in row("a").items()}], name="p.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"subscriber_id": ["a"]}), tmp_path / "y" / "billing_month=2024-02" / "p.parquet")
    code, output = invoke(
        "backfill", "--from", "2024-01", "--extracts", str(tmp_path / "y"), "--store", str(new_store(tmp_path / "t"))
    )
    assert code == 2
    assert "billing_month=2024-02/p.parquet: required column customer_type is missing" in one_error_line(output)
    assert not (tmp_path / "t" / "tier_assignments").exists()


def test_status_reports_a_stale_month_and_check_makes_it_an_exit_code(tmp_path: Path) -> None:
    import datetime as dt

    import polars as pl

    from billing_tiers.store import Store

    store = Store(new_store(tmp_path / "s"))
    frame = pl.DataFrame({"subscriber_id": ["a"]})
    for month, run_id, built in (("2024-01", "a1", None), ("2024-02", "a2", "a1"), ("2024-01", "b1", None)):
        date = dt.date.fromisoformat(f"{month}-01")
        built_from = {"month": "2024-01" if built else None, "run_id": built}
        publish_frames(
            store, date, run_id, {"state": frame}, {"billing_month": month, "run_id": run_id, "built_from": built_from}
        )
    where = ["--store", str(store.root), "--extracts", str(tmp_path / "none")]
    code, output = invoke("status", *where)
    assert code == 0
    assert "2024-02" in output and "stale" in output
    code, _ = invoke("status", *where, "--check")
    assert code == 3
    code, output = invoke("status", *where, "--json")
    assert code == 0
    import json

    months = {m["billing_month"]: m["status"] for m in json.loads(output)["months"]}
    assert months == {"2024-01": "ok", "2024-02": "stale: 2024-01 was re-published after this month was built"}


def test_init_makes_a_store_on_purpose_and_every_command_refuses_a_folder_that_is_not_one(tmp_path: Path) -> None:
    write_extract(tmp_path / "x", "2024-01", [row("a")])
    typo = tmp_path / "stroe"
    for command in (
        ["run", "--month", "2024-01", "--extracts", str(tmp_path / "x")],
        ["backfill", "--from", "2024-01", "--extracts", str(tmp_path / "x")],
        ["check", "--month", "2024-01", "--extracts", str(tmp_path / "x")],
        ["status"],
        ["explain", "--month", "2024-01", "--subscriber", "a"],
    ):
        code, output = invoke(*command, "--store", str(typo))
        assert code == 2, command
        line = one_error_line(output)
        assert str(typo) in line and "billing-tiers init --store" in line, line
    assert not typo.exists()  # nothing was created
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    code, output = invoke("status", "--store", str(tmp_path / "other"))
    assert code == 2 and "not an initialised store" in one_error_line(output)
    code, output = invoke("init", "--store", str(tmp_path / "other"))
    assert code == 2 and "exists and is not empty" in one_error_line(output)
    code, output = invoke("init", "--store", str(tmp_path / "new"))
    assert code == 0 and "created" in output
    code, output = invoke("init", "--store", str(tmp_path / "new"))
    assert code == 0 and "already a store" in output


def test_status_check_exits_3_for_a_missing_store_and_a_store_that_is_behind(tmp_path: Path) -> None:
    code, output = invoke("status", "--store", str(tmp_path / "missing"), "--check")
    assert code == 3 and "does not exist" in one_error_line(output)
    store = new_store(tmp_path / "s")
    write_extract(tmp_path / "x", "2024-01", [row("a")])
    code, output = invoke("status", "--store", str(store), "--extracts", str(tmp_path / "x"), "--check")
    assert code == 3
    assert "behind: extracts under" in output and "2024-01" in output
    code, output = invoke("status", "--store", str(store), "--extracts", str(tmp_path / "x"), "--json")
    import json

    assert json.loads(output)["behind"] == ["2024-01"]


def test_version_and_flags_without_value_placeholders() -> None:
    code, output = invoke("--version")
    assert code == 0 and output.startswith("billing-tiers ")
    code, output = invoke("run", "--help")
    (line,) = [line for line in output.splitlines() if "--override-guards" in line]
    assert "<bool>" not in line


def test_a_prefect_server_that_does_not_answer_is_one_line(tmp_path: Path, monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    write_extract(tmp_path / "x", "2024-01", [row("a")])
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    code, output = invoke(
        "run", "--month", "2024-01", "--extracts", str(tmp_path / "x"), "--store", str(new_store(tmp_path / "s"))
    )
    assert code == 2
    assert "the Prefect server at http://127.0.0.1:9/api does not answer" in one_error_line(output)


def test_check_is_a_dry_run_exit_0_when_run_would_publish_2_when_a_guard_would_stop(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s")
    extracts = tmp_path / "x"
    write_extract(extracts, "2024-01", [row(f"s{i}") for i in range(50)] + [row("bad", status="closed")])
    before = sorted(p.name for p in store.rglob("*") if p.is_file())
    code, output = invoke("check", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store))
    assert code == 2
    assert "guards: 1 of 51 rows quarantined" in output and "quarantined by status_allowed_value: 1" in output
    assert f"the quarantined rows are in {store}/_rejected/billing_month=2024-01/quarantine.parquet" in output
    write_extract(extracts, "2024-01", [row(f"s{i}") for i in range(50)])
    code, output = invoke("check", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store))
    assert code == 0, output
    assert "check 2024-01: run would publish" in output and "unicom_vip" in output
    files = sorted(p.name for p in store.rglob("*") if p.is_file() and not p.name.startswith(".lock"))
    assert files == before  # nothing published, and the rejected rows of the failed attempt are gone


def test_a_rulebook_that_drops_a_held_level_or_program_is_refused_naming_it(tmp_path: Path) -> None:
    import datetime as dt

    from billing_tiers.store import Store
    from rulebook import default_rulebook_path

    store = new_store(tmp_path / "s")
    extracts = tmp_path / "x"
    write_extract(extracts, "2024-01", [row("rich", "1000.00"), row("poor", "1.00")])
    write_extract(extracts, "2024-02", [row("rich", "1000.00"), row("poor", "1.00")])
    publish_months(store, extracts, ["2024-01"])
    default = default_rulebook_path().read_text()
    no_vip = tmp_path / "no-vip.toml"
    no_vip.write_text(
        default.replace("[programs.unicom_vip]\nenabled = true", "[programs.unicom_vip]\nenabled = false", 1)
    )
    where = ["--extracts", str(extracts), "--store", str(store)]
    code, output = invoke("run", "--month", "2024-02", *where, "--rulebook", str(no_vip))
    assert code == 2
    line = one_error_line(output)
    assert "program unicom_vip (1 members hold silver) is not in the rulebook or disabled" in line, line
    code, output = invoke("check", "--month", "2024-02", *where, "--rulebook", str(no_vip))
    assert code == 2 and "unicom_vip" in one_error_line(output)
    assert Store(store).manifest_months() == [dt.date(2024, 1, 1)]


def test_explain_and_history_say_what_holds_a_level_what_fails_and_what_was_quarantined(tmp_path: Path) -> None:

    store = new_store(tmp_path / "s")
    extracts = tmp_path / "x"
    others = [row(f"o{i:03d}", "10.00") for i in range(120)]
    write_extract(extracts, "2024-01", [row("v", "900.00"), row("p", payment_type="prepaid"), *others])
    write_extract(
        extracts, "2024-02", [row("v", "10.00", customer_type="VIP"), row("p", payment_type="prepaid"), *others]
    )
    publish_months(store, extracts, ["2024-01", "2024-02"])
    where = ["--store", str(store)]
    code, output = invoke("explain", "--month", "2024-02", "--subscriber", "v", "--program", "unicom_vip", *where)
    assert code == 0, output
    assert "held until 2025-02-08 by its validity" in output and "qualifies for silver" in output
    assert "quarantined this month: rule customer_type_allowed_value in billing_month=2024-02/part-0.parquet" in output
    code, output = invoke("explain", "--month", "2024-02", "--subscriber", "p", "--program", "unicom_vip", *where)
    assert "not eligible: payment_type is prepaid, not in [postpaid]" in output
    code, output = invoke("history", "--subscriber", "v", "--program", "unicom_vip", *where)
    assert code == 0, output
    assert "2024-01" in output and "2024-02" in output and "card events" in output
    assert "2024-02: quarantined, rule customer_type_allowed_value" in output
    code, output = invoke("history", "--subscriber", "nobody", *where)
    assert code == 2 and "no published month has subscriber 'nobody'" in one_error_line(output)


def test_simulate_writes_nothing_to_the_store_and_shows_what_another_rulebook_would_change(tmp_path: Path) -> None:

    import polars as pl

    from rulebook import default_rulebook_path

    store = new_store(tmp_path / "s")
    extracts = tmp_path / "x"
    members = [row("low", "130.00"), row("high", "900.00"), *[row(f"o{i}", "10.00") for i in range(20)]]
    write_extract(extracts, "2024-01", members)
    publish_months(store, extracts, ["2024-01"])
    cheaper = tmp_path / "cheaper.toml"
    cheaper.write_text(default_rulebook_path().read_text().replace('mobile = "150.00"', 'mobile = "20.00"', 1))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code, output = invoke(
        "simulate", "--month", "2024-01", "--rulebook", str(cheaper), "--extracts", str(extracts),
        "--store", str(store), "--out", str(out),
    )  # fmt: skip
    assert code == 0, output
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in store.rglob("*") if p.is_file()}
    assert after == before and not (store / ".lock").exists()
    assert "level counts: published vs simulated" in output and "card events that would differ" in output
    diff = pl.read_parquet(out / "diff.parquet").filter(pl.col("program") == "unicom_vip")
    assert diff.select("subscriber_id", "level_before", "level_after").sort("subscriber_id").rows() == [
        ("low", None, "silver")
    ]
    simulated = pl.read_parquet(out / "tier_assignments.parquet")
    assert simulated.filter(pl.col("subscriber_id") == "low", pl.col("program") == "unicom_vip")["level"][0] == "silver"
