"""A guard's refusal names the file that holds what it counted, and the way to publish anyway in the
words of where the run was started: the CLI's flag, or the deployment's parameter."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from billing_tiers.errors import PipelineError
from flows.monthly import monthly_tiers
from tests.extract_factory import row, write_extract
from tests.stores import new_store, publish_months


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """2024-01 has 40 subscribers; 2024-02 drops 4 of them (10% > 5%)."""
    extracts = tmp_path / "extracts"
    write_extract(extracts, "2024-01", [row(f"s{i:02d}") for i in range(40)])
    write_extract(extracts, "2024-02", [row(f"s{i:02d}") for i in range(4, 40)])
    root = new_store(tmp_path / "store")
    publish_months(root, extracts, ["2024-01"])
    from billing_tiers.store import Store

    Store(root).record_extracts(extracts)
    return root


def test_the_cli_names_the_missing_ids_file_and_its_flag(store: Path) -> None:
    result = CliRunner().invoke(app, ["check", "--month", "2024-02", "--store", str(store)])
    assert result.exit_code == 2
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    missing = store / "_rejected" / "billing_month=2024-02" / "missing_subscribers.parquet"
    assert error == [
        "error: month 2024-02: guard failed, nothing published: 4 of 40 subscribers of the previous extract have "
        f"no row (10.00% > max_missing_ratio 5.00%); the missing subscribers' ids are in {missing} "
        "(rerun with --override-guards to publish anyway)"
    ]
    assert pl.read_parquet(missing)["subscriber_id"].to_list() == ["s00", "s01", "s02", "s03"]


@pytest.mark.usefixtures("prefect_harness")
def test_a_deployment_run_names_its_parameter(store: Path) -> None:
    with pytest.raises(PipelineError) as refused:
        monthly_tiers(month="2024-02", store=str(store))
    assert str(refused.value).endswith(
        "(run the deployment again with the parameter override_guards set to true to publish anyway)"
    )
    assert "--override-guards" not in str(refused.value)
