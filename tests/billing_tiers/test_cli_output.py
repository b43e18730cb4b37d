"""What the reading commands print: ids literally, full values in pipes, --json, and explain on a member at risk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from tests.extract_factory import row, write_extract
from tests.stores import new_store, publish_months

runner = CliRunner()
MONTHS = [f"2024-{m:02d}" for m in range(1, 10)]
HOSTILE = ("[/]", "[bold red]RED[/bold red]", "x" * 32)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """r: VIP silver from E(2024-01) (900.00 once), then nothing billed: at risk from 2024-09 (re-rated on
    2025-01-05, k = 3). The hostile ids are ordinary members."""
    root = tmp_path_factory.mktemp("output")
    extracts = root / "extracts"
    for index, month in enumerate(MONTHS):
        rows = [row("r", "900.00" if index == 0 else "0.00", "0.00")]
        rows += [row(subscriber, "1800.00", "60.00") for subscriber in HOSTILE]
        write_extract(extracts, month, rows)
    store = new_store(root / "store")
    publish_months(store, extracts, MONTHS)
    return store


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_explain_says_a_member_is_at_risk_by_when_and_how_much(store: Path) -> None:
    code, output = invoke("explain", "--store", str(store), "--month", "2024-09", "--subscriber", "r",
                          "--program", "unicom_vip")  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    assert lines[0] == "unicom_vip r 2024-09 (evaluated 2024-10-05)"
    assert lines[1] == "  action retain: silver -> silver (qualified: none), effective -"
    assert lines[2] == "  valid 2024-02-05 .. 2025-02-08, card VIP-20240205-r"
    assert lines[3] == (
        "  reason: held until 2025-02-08 by its validity (re-rated the month before); qualifies for nothing"
    )
    assert lines[4] == (
        "  at risk: re-rated on 2025-01-05; needs 900.00 in 2024-10 to keep silver; "
        "misses avg_billed_6m 0.00 < 150.00 (silver, mobile)"
    )
    assert "None" not in output


def test_explain_json_carries_the_row_and_the_risk(store: Path) -> None:
    code, output = invoke("explain", "--store", str(store), "--month", "2024-09", "--subscriber", "r", "--json")
    assert code == 0, output
    rows = {item["program"]: item for item in json.loads(output)}
    assert set(rows) == {"unicom_vip", "unicom_star", "cmcc_credit", "points_redemption"}
    assert rows["unicom_vip"]["at_risk"]["needed_next_month"] == "900.00"
    assert rows["unicom_vip"]["at_risk"]["rerated_on"] == "2025-01-05"
    assert rows["unicom_vip"]["billed_6m"] == "0.00"
    assert rows["points_redemption"]["at_risk"] is None


@pytest.mark.parametrize("subscriber", HOSTILE)
def test_ids_that_look_like_markup_are_printed_literally(store: Path, subscriber: str) -> None:
    code, output = invoke("explain", "--store", str(store), "--month", "2024-09", "--subscriber", subscriber,
                          "--program", "unicom_vip")  # fmt: skip
    assert code == 0, output
    assert output.splitlines()[0] == f"unicom_vip {subscriber} 2024-09 (evaluated 2024-10-05)"
    code, output = invoke("history", "--store", str(store), "--subscriber", subscriber, "--program", "unicom_vip")
    assert code == 0, output
    assert output.splitlines()[0] == f"# {subscriber} in unicom_vip"
    assert output.splitlines()[2].split("\t")[:4] == ["2024-01", "new", "-", "gold"]


def test_an_unknown_id_with_control_characters_is_refused_with_them_escaped(store: Path) -> None:
    code, output = invoke("explain", "--store", str(store), "--month", "2024-09", "--subscriber", "\x1b[31mX\n")
    assert code == 2
    assert output == "error: month 2024-09: no tier row for subscriber '\\x1b[31mX\\n'\n"


def test_history_in_a_pipe_prints_full_values_and_json_on_request(store: Path) -> None:
    long_id = HOSTILE[2]
    code, output = invoke("history", "--store", str(store), "--subscriber", long_id)
    assert code == 0
    assert f"VIP-20240205-{long_id}" in output  # a card id of 45 characters, whole
    assert "…" not in output
    code, output = invoke("history", "--store", str(store), "--subscriber", long_id, "--json")
    document = json.loads(output)
    assert [r["billing_month"] for r in document["tier_assignments"] if r["program"] == "unicom_vip"] == MONTHS
    assert document["card_issuance"][0]["card_id"] == f"VIP-20240205-{long_id}"


def test_status_json_and_pipe(store: Path) -> None:
    code, output = invoke("status", "--store", str(store), "--json")
    assert code == 0
    document = json.loads(output)
    assert [m["billing_month"] for m in document["months"]] == MONTHS
    assert document["extracts"] is None
    code, output = invoke("status", "--store", str(store))
    assert output.splitlines()[1] == "billing_month\tstatus\tbuilt_from\trun_id\tbuckets\ttier_rows\tquarantined"
