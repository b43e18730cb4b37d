"""The output contract check: every value rule of schemas/contract.py is enforced, one pass per bucket."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
import pytest
from pandera.errors import SchemaErrors

from schemas.contract import ACTIONS, CARD_ISSUANCE, REASON_CODES, TIER_ASSIGNMENTS, Column, Table, published_tables
from schemas.outputs import VALUE_RULES, check_evaluated_subscribers, check_table, table_schema

TABLE_MODELS = {name: table_schema(table) for name, table in published_tables().items()}
"""Every published table's Pandera schema (default rulebook windows), by table name."""


def tier_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "program": "unicom_vip",
        "subscriber_id": "s1",
        "evaluated_on": dt.date(2024, 2, 5),
        "qualified_level": "silver",
        "previous_level": None,
        "level": "silver",
        "action": "new",
        "valid_from": dt.date(2024, 2, 5),
        "valid_until": dt.date(2025, 2, 8),
        "effective_on": dt.date(2024, 2, 5),
        "card_id": "VIP-20240205-s1",
        "reason": "avg_billed_6m 150.00 >= 150.00 (silver, mobile)",
        "reason_code": "threshold_met",
        "eligible": True,
        "present": True,
        "months_absent": 0,
        "billed_6m": Decimal("900.00"),
        "avg_billed_6m": Decimal("150.00"),
        "month_paid": Decimal("150.00"),
        "cum_paid": Decimal("900.00"),
        "tenure_years": 3,
        "suspensions_6m": 0,
        "points_balance": 10,
        "score": None,
    }
    return {**row, **overrides}


def tiers(*rows: dict[str, object]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=TIER_ASSIGNMENTS.schema)


def test_a_good_table_has_no_problem_and_passes_the_full_pandera_model_too() -> None:
    frame = tiers(tier_row(), tier_row(subscriber_id="s2", card_id="VIP-20240205-s2"))
    assert check_table(frame, TIER_ASSIGNMENTS) == []
    TABLE_MODELS["tier_assignments"].validate(frame)


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"action": "promote"}, f"action: isin {list(ACTIONS)}"),
        ({"reason_code": "because"}, f"reason_code: isin {list(REASON_CODES)}"),
        ({"program": None}, "program: null"),
        ({"subscriber_id": ""}, "subscriber_id: str_length (1, 32)"),
        ({"subscriber_id": "x" * 33}, "subscriber_id: str_length (1, 32)"),
        ({"months_absent": -1}, "months_absent: ge 0"),
        ({"points_balance": -5}, "points_balance: ge 0"),
        ({"level": None, "card_id": None}, "validity_only_with_a_level"),
    ],
)
def test_each_broken_value_rule_is_named(overrides: dict[str, object], rule: str) -> None:
    # the one rule the row breaks, with its argument and the count of rows breaking it
    assert check_table(tiers(tier_row(**overrides)), TIER_ASSIGNMENTS) == [f"{rule}: 1 rows"]


BROKEN_ROWS = [
    {"action": "promote"},
    {"reason_code": "because"},
    {"program": None},
    {"subscriber_id": ""},
    {"subscriber_id": "x" * 33},
    {"months_absent": -1},
    {"points_balance": -5},
    {"level": None, "card_id": None},
    {"months_absent": -1, "tenure_years": -2, "action": "x", "reason_code": None},
]


@pytest.mark.parametrize("overrides", BROKEN_ROWS)
def test_the_pandera_model_and_the_one_pass_check_name_the_same_broken_rules(overrides: dict[str, object]) -> None:
    """Both output checks come from one table of rules: the full Pandera model of a table finds what
    check_table finds, rule for rule and in the same words."""
    frame = tiers(tier_row(), tier_row(**{"subscriber_id": "s2", "card_id": "VIP-20240205-s2", **overrides}))
    with pytest.raises(SchemaErrors) as failed:
        TABLE_MODELS["tier_assignments"].validate(frame, lazy=True)
    cases = failed.value.failure_cases
    pandera = [
        check if context == "DataFrameSchema" else f"{column}: {'null' if check == 'not_nullable' else check}"
        for context, column, check in cases.select("schema_context", "column", "check").rows()
    ]
    one_pass = [problem.removesuffix(": 1 rows") for problem in check_table(frame, TIER_ASSIGNMENTS)]
    assert sorted(pandera) == sorted(one_pass)


def test_one_table_of_value_rules_drives_both_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind of check added to VALUE_RULES is enforced by the Pandera model and by check_table alike."""
    monkeypatch.setitem(VALUE_RULES, "le", lambda values, high: values <= high)
    table = Table("t", "One row per test value.", {"x": Column(pl.Int64(), nullable=True, checks={"ge": 0, "le": 5})})
    frame = pl.DataFrame({"x": [3, 7, -1, None, 9]}, schema={"x": pl.Int64})
    assert check_table(frame, table) == ["x: ge 0: 1 rows", "x: le 5: 2 rows"]
    with pytest.raises(SchemaErrors) as failed:
        table_schema(table).validate(frame, lazy=True)
    assert sorted(failed.value.failure_cases.select("check", "failure_case").rows()) == [
        ("ge 0", "-1"),
        ("le 5", "7"),
        ("le 5", "9"),
    ]
    with pytest.raises(ValueError, match=r"table t: unknown check \['lt'\]"):
        check_table(frame, Table("t", "", {"x": Column(pl.Int64(), checks={"lt": 1})}))


def test_a_wrong_column_set_or_dtype_is_a_schema_problem() -> None:
    frame = tiers(tier_row())
    assert check_table(frame.drop("reason"), TIER_ASSIGNMENTS) == ["column 'reason' not in dataframe"]
    assert check_table(frame.with_columns(pl.col("months_absent").cast(pl.Int64)), TIER_ASSIGNMENTS) == [
        "expected column 'months_absent' to have type Int32, got Int64"
    ]
    # Pandera's strict-schema message names the extra column, then lists the schema's columns
    assert check_table(frame.with_columns(pl.lit(1).alias("extra")), TIER_ASSIGNMENTS) == [
        f"column 'extra' not in DataFrameSchema {TABLE_MODELS['tier_assignments'].columns}"
    ]


def test_a_repeated_key_is_found_in_tables_not_unique_by_construction() -> None:
    event = {
        "card_id": "VIP-20240205-s1",
        "program": "unicom_vip",
        "subscriber_id": "s1",
        "level": "silver",
        "event": "issue",
        "reason": "new",
        "event_date": dt.date(2024, 2, 5),
        "effective_on": dt.date(2024, 2, 5),
        "valid_from": dt.date(2024, 2, 5),
        "valid_until": dt.date(2025, 2, 8),
    }
    cards = pl.DataFrame([event, event], schema=CARD_ISSUANCE.schema)
    assert check_table(cards, CARD_ISSUANCE) == ["card_id, event not unique: 2 rows"]


def test_evaluated_subscribers_must_be_distinct_and_the_same_in_every_program() -> None:
    assert check_evaluated_subscribers(tiers(tier_row(), tier_row(program="unicom_star"))) == []
    assert check_evaluated_subscribers(tiers(tier_row(), tier_row())) == ["subscriber_id repeated within a program"]
    assert check_evaluated_subscribers(tiers(tier_row(), tier_row(subscriber_id="s2"), tier_row(program="x"))) == [
        "programs have different row counts: {'unicom_vip': 2, 'x': 1}"
    ]
    interleaved = tiers(tier_row(), tier_row(program="unicom_star"), tier_row(subscriber_id="s2"))
    assert check_evaluated_subscribers(interleaved) == ["the rows of a program are not contiguous"]


def test_the_state_contract_follows_the_window_and_the_programs() -> None:
    state = published_tables(3, ("unicom_vip",))["state"]
    assert [c for c in state.columns if c.startswith("billed_fen_age")] == [f"billed_fen_age{i}" for i in range(3)]
    assert "unicom_vip__card_id" in state.columns
    assert "unicom_star__level" not in state.columns
