"""Cleaning a month's extract (as each bucket does): duplicates, conflicts, value rules to quarantine, guards."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from billing_tiers.errors import PipelineError
from flows.bucket import CleanRows, clean_rows
from rulebook import load_rulebook
from tests.extract_factory import row, write_extract
from tests.extract_rows import read_month_rows
from transforms.guards import GuardFigures, missing_subscribers

MONTH = dt.date(2024, 3, 1)


def clean(tmp_path: Path, rows: list[dict[str, object]], **more_files: list[dict[str, object]]) -> CleanRows:
    write_extract(tmp_path, "2024-03", rows)
    for name, extra in more_files.items():
        write_extract(tmp_path, "2024-03", extra, name=f"{name}.parquet")
    return clean_rows(read_month_rows(tmp_path, MONTH), MONTH)


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
        read_month_rows(tmp_path, MONTH)
    (tmp_path / "billing_month=2024-03").mkdir()
    with pytest.raises(PipelineError, match="month 2024-03: no Parquet file"):
        read_month_rows(tmp_path, MONTH)


def guard_figures(clean: CleanRows, previous_ids: list[str]) -> GuardFigures:
    rulebook = load_rulebook()
    previous = pl.LazyFrame({"subscriber_id": previous_ids}, schema={"subscriber_id": pl.String})
    missing = missing_subscribers(previous_ids=previous, current_ids=clean.presence.lazy()).collect()
    return GuardFigures(
        rows_after_duplicates=clean.rows_after_duplicates,
        quarantined_rows=clean.quarantine.height,
        previous_subscribers=len(previous_ids),
        missing_subscribers=missing.height,
        max_quarantine_ratio=rulebook.guards.max_quarantine_ratio,
        max_missing_ratio=rulebook.guards.max_missing_ratio,
    )


def test_guards_are_exact_ratios(tmp_path: Path) -> None:
    rows = [row(f"s{i:03d}") for i in range(100)]
    one_bad = clean(tmp_path / "a", [*rows[:99], {**rows[99], "status": "x"}])
    figures = guard_figures(one_bad, [])
    assert (figures.quarantined_rows, figures.rows_after_duplicates) == (1, 100)
    assert figures.breaches() == []  # 1% is not more than 1%
    two_bad = clean(tmp_path / "b", [*rows[:98], {**rows[98], "status": "x"}, {**rows[99], "status": "x"}])
    assert "max_quarantine_ratio" in guard_figures(two_bad, []).breaches()[0]

    previous_ids = [f"s{i:03d}" for i in range(100)] + [f"gone{i}" for i in range(5)]
    five = guard_figures(one_bad, previous_ids)
    assert (five.missing_subscribers, five.previous_subscribers) == (5, 105)
    assert five.breaches() == []
    six = guard_figures(one_bad, [*previous_ids, "gone5", "gone6"])
    assert "max_missing_ratio" in six.breaches()[0]
