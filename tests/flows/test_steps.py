"""Cleaning a month's extract: duplicates, conflicts, value rules to quarantine, guards."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from flows import steps
from rulebook import load_rulebook
from tests.extract_factory import row, write_extract

MONTH = dt.date(2024, 3, 1)


def clean(tmp_path: Path, rows: list[dict[str, object]], **more_files: list[dict[str, object]]) -> steps.CleanExtract:
    write_extract(tmp_path, "2024-03", rows)
    for name, extra in more_files.items():
        write_extract(tmp_path, "2024-03", extra, name=f"{name}.parquet")
    return steps.clean_extract(steps.read_extract(tmp_path, MONTH), MONTH)


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ({"subscriber_id": None}, "subscriber_id_required"),
        ({"subscriber_id": ""}, "subscriber_id_length"),
        ({"subscriber_id": "x" * 33}, "subscriber_id_length"),
        ({"customer_type": "VIP"}, "customer_type_allowed_value"),
        ({"service_type": "Mobile"}, "service_type_allowed_value"),
        ({"plan_category": "gold"}, "plan_category_allowed_value"),
        ({"payment_type": None}, "payment_type_required"),
        ({"account_class": "vip"}, "account_class_allowed_value"),
        ({"real_name_verified": None}, "real_name_verified_required"),
        ({"brand": "GoTone"}, "brand_allowed_value"),
        ({"activation_date": dt.date(1989, 12, 31)}, "activation_date_range"),
        ({"activation_date": dt.date(2024, 4, 1)}, "activation_date_range"),
        ({"status": "closed"}, "status_allowed_value"),
        ({"billed_amount": Decimal("1000000.01")}, "billed_amount_range"),
        ({"billed_amount": Decimal("-100000.01")}, "billed_amount_range"),
        ({"billed_amount": None}, "billed_amount_required"),
        ({"paid_amount": Decimal("-100000.01")}, "paid_amount_range"),
        ({"suspension_count": -1}, "suspension_count_negative"),
        ({"suspension_count": None}, "suspension_count_required"),
        ({"points_balance": -5}, "points_balance_negative"),
    ],
)
def test_each_value_rule_quarantines_the_row_with_its_name(
    tmp_path: Path, override: dict[str, object], rule: str
) -> None:
    result = clean(tmp_path, [row("good"), {**row("bad"), **override}])
    assert result.quarantine["rule"].to_list() == [rule]
    assert result.quarantine["source_file"].to_list() == ["billing_month=2024-03/part-0.parquet"]
    assert result.quarantine["source_row"].to_list() == [1]
    assert result.valid_rows["subscriber_id"].to_list() == ["good"]


def test_range_edges_are_valid(tmp_path: Path) -> None:
    result = clean(
        tmp_path,
        [
            row("a", "1000000.00", paid="-100000.00", activation_date=dt.date(1990, 1, 1), brand=None),
            row("b" * 32, "0.00", activation_date=dt.date(2024, 3, 31), points_balance=None),
        ],
    )
    assert result.quarantine.height == 0
    assert result.valid_rows.height == 2


def test_exact_duplicates_collapse_even_across_files(tmp_path: Path) -> None:
    result = clean(tmp_path, [row("a"), row("a"), row("b")], again=[row("a"), row("b")])
    assert (result.rows_read, result.rows_after_duplicates, result.duplicates_collapsed) == (5, 2, 3)
    assert result.quarantine.height == 0


def test_two_different_rows_quarantine_every_row_of_the_subscriber(tmp_path: Path) -> None:
    result = clean(tmp_path, [row("a", "1.00"), row("a", "2.00"), row("a", "2.00"), row("b")])
    assert result.quarantine["rule"].to_list() == ["conflicting_rows", "conflicting_rows"]
    assert result.valid_rows["subscriber_id"].to_list() == ["b"]
    assert sorted(result.presence["subscriber_id"].to_list()) == ["a", "b"]


def test_a_row_breaking_several_rules_is_quarantined_once_listing_all(tmp_path: Path) -> None:
    result = clean(tmp_path, [row("good"), {**row("bad"), "status": "x", "suspension_count": -2}])
    assert result.quarantine.height == 1
    assert result.quarantine["rule"].item() == "status_allowed_value"
    assert result.quarantine["broken_rules"].item() == "status_allowed_value=x; suspension_count_negative=-2"


def test_missing_month_folder_and_empty_folder_are_errors_naming_the_month(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="month 2024-03: no extract folder"):
        steps.read_extract(tmp_path, MONTH)
    (tmp_path / "billing_month=2024-03").mkdir()
    with pytest.raises(PipelineError, match="month 2024-03: no Parquet file"):
        steps.read_extract(tmp_path, MONTH)


def test_a_file_with_no_rows_is_an_error(tmp_path: Path) -> None:
    write_extract(tmp_path, "2024-03", [])
    with pytest.raises(PipelineError, match="month 2024-03: the extract has no rows"):
        steps.read_extract(tmp_path, MONTH)


def _previous(ids: list[str]) -> steps.Previous:
    return steps.Previous(
        state=pl.DataFrame(),
        memberships=pl.DataFrame(),
        presence=pl.DataFrame({"subscriber_id": ids}, schema={"subscriber_id": pl.String}),
        run_id="r",
    )


def test_guards_are_exact_ratios(tmp_path: Path) -> None:
    rulebook = load_rulebook()
    rows = [row(f"s{i:03d}") for i in range(100)]
    one_bad = clean(tmp_path / "a", [*rows[:99], {**rows[99], "status": "x"}])
    figures = steps.guard_figures(one_bad, _previous([]), rulebook)
    assert (figures.quarantined_rows, figures.rows_after_duplicates) == (1, 100)
    assert figures.breaches() == []  # 1% is not more than 1%
    two_bad = clean(tmp_path / "b", [*rows[:98], {**rows[98], "status": "x"}, {**rows[99], "status": "x"}])
    assert "max_quarantine_ratio" in steps.guard_figures(two_bad, _previous([]), rulebook).breaches()[0]

    previous_ids = [f"s{i:03d}" for i in range(100)] + [f"gone{i}" for i in range(5)]
    five = steps.guard_figures(one_bad, _previous(previous_ids), rulebook)
    assert (five.missing_subscribers, five.previous_subscribers) == (5, 105)
    assert five.breaches() == []
    six = steps.guard_figures(one_bad, _previous([*previous_ids, "gone5", "gone6"]), rulebook)
    assert "max_missing_ratio" in six.breaches()[0]
