"""The application layer: extracts are never implicit, a session is opened once, and months run in order."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from billing_tiers.errors import PipelineError
from billing_tiers.service import RunRequest, open_session, run_request, run_session
from billing_tiers.store import Store
from tests.extract_factory import row, write_extract, write_history
from tests.stores import new_store

PROJECT = Path(__file__).resolve().parents[2]
MONTHS = ["2024-01", "2024-02", "2024-03"]
runner = CliRunner()


@pytest.fixture
def extracts(tmp_path: Path) -> Path:
    folder = tmp_path / "extracts"
    write_history(folder, MONTHS)
    return folder


def test_init_records_the_extracts_folder_and_runs_use_it(tmp_path: Path, extracts: Path) -> None:
    store = tmp_path / "store"
    result = runner.invoke(app, ["init", "--store", str(store), "--extracts", str(extracts)])
    assert result.exit_code == 0, result.output
    assert result.output == f"store {store} created; extracts folder {extracts.resolve()}\n"
    assert Store(store).recorded_extracts() == extracts.resolve()
    manifests = run_request(RunRequest(command="backfill", store=store, first=dt.date(2024, 1, 1)))
    assert [m["billing_month"] for m in manifests] == MONTHS


def test_a_store_without_recorded_extracts_is_refused_naming_the_flag_and_nothing_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = new_store(tmp_path / "store")
    monkeypatch.chdir(PROJECT)  # the bundled sample folder is right there: it must not be picked up
    assert (PROJECT / "data" / "sample" / "extracts").is_dir()
    for command in (
        ["run", "--month", "2024-01"],
        ["backfill", "--from", "2024-01"],
        ["check", "--month", "2024-01"],
        ["simulate", "--month", "2024-01", "--rulebook", str(PROJECT / "rulebook" / "default.toml")],
    ):
        result = runner.invoke(app, [*command, "--store", str(store)])
        assert result.exit_code == 2, (command, result.output)
        assert result.output == (
            f"error: store {store} has no extracts folder recorded: give --extracts DIR, or record one with "
            f"`billing-tiers init --store {store} --extracts DIR`\n"
        )
    assert sorted(p.name for p in store.iterdir()) == ["billing-tiers-store.json"]


def test_init_on_an_existing_store_records_a_new_extracts_folder(tmp_path: Path, extracts: Path) -> None:
    store = new_store(tmp_path / "store")
    result = runner.invoke(app, ["init", "--store", str(store), "--extracts", str(extracts)])
    assert result.exit_code == 0
    assert result.output == f"store {store} is already a store; recorded; extracts folder {extracts.resolve()}\n"
    marker = json.loads((store / "billing-tiers-store.json").read_text())
    assert marker["extracts"] == str(extracts.resolve())
    missing = runner.invoke(app, ["init", "--store", str(store), "--extracts", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_a_given_extracts_folder_wins_over_the_recorded_one(tmp_path: Path, extracts: Path) -> None:
    other = tmp_path / "other"
    write_extract(other, "2024-01", [row("o1"), row("o2")])
    store = tmp_path / "store"
    Store(store).initialise(extracts)
    request = RunRequest(command="run", store=store, first=dt.date(2024, 1, 1), extracts=other)
    with open_session(request) as session:
        assert session.extracts == other
        assert session.months == [dt.date(2024, 1, 1)]
        (manifest,) = run_session(session)
    assert manifest["tables"]["tier_assignments"]["rows"] == 2 * 4  # two subscribers, four programs


def test_the_session_holds_the_lock_until_it_closes(tmp_path: Path, extracts: Path) -> None:
    store = tmp_path / "store"
    Store(store).initialise(extracts)
    request = RunRequest(command="run", store=store, first=dt.date(2024, 1, 1))
    with open_session(request):
        blocked = open_session(request)
        with pytest.raises(PipelineError, match="is in use by another run"):
            blocked.__enter__()
    with open_session(request) as session:  # released: it opens again
        assert session.label == "tiers-2024-01"


def test_backfill_session_label_names_its_range(tmp_path: Path, extracts: Path) -> None:
    store = tmp_path / "store"
    Store(store).initialise(extracts)
    with open_session(RunRequest(command="backfill", store=store, first=dt.date(2024, 1, 1))) as session:
        assert session.label == "backfill-2024-01-to-2024-03"
        assert session.request.label == "backfill --from 2024-01 --to latest"
