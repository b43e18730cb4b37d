"""The extract's value rules (schemas/extract.py): the subscriber_id character rule of SPEC section 2
and the closed set of quarantine rule names in the contract."""

from __future__ import annotations

import datetime as dt
import sys
import unicodedata
from pathlib import Path

import polars as pl
import pytest

from flows.bucket import CleanRows, clean_rows
from schemas.contract import CONFLICTING_ROWS, CONTRACT_COLUMNS, NULLABLE_EXTRACT_COLUMNS, QUARANTINE_RULES
from schemas.extract import extract_rules, printable_subscriber_id, required_rule
from tests.extract_factory import row, write_extract
from tests.extract_rows import read_month_rows
from transforms.extract import visible_text

MONTH = dt.date(2024, 3, 1)


def clean(tmp_path: Path, rows: list[dict[str, object]]) -> CleanRows:
    write_extract(tmp_path, "2024-03", rows)
    return clean_rows(read_month_rows(tmp_path, MONTH), MONTH)


@pytest.mark.parametrize(
    ("subscriber_id", "shown"),
    [
        ("\x00", "<U+0000>"),
        ("138\x0000", "138<U+0000>00"),
        ("\n", "<U+000A>"),
        ("1380\n", "1380<U+000A>"),
        ("\x1b[31m", "<U+001B>[31m"),
        ("\u202e1380", "<U+202E>1380"),
        ("13\u200b80", "13<U+200B>80"),
        ("\ufeff1380", "<U+FEFF>1380"),
        ("13\u200d80", "13<U+200D>80"),
        ("\x7f", "<U+007F>"),
        (" 1380", "<U+0020>1380"),
        ("1380\t", "1380<U+0009>"),
        ("\u30001380", "<U+3000>1380"),
        ("1380\u00a0", "1380<U+00A0>"),
    ],
)
def test_an_id_with_a_control_or_format_character_or_edge_whitespace_is_quarantined(
    tmp_path: Path, subscriber_id: str, shown: str
) -> None:
    result = clean(tmp_path, [row("good"), row(subscriber_id)])
    assert result.quarantine["rule"].to_list() == ["subscriber_id_characters"]
    # the id is kept as it was read; broken_rules shows the offending characters as code points
    assert result.quarantine["subscriber_id"].to_list() == [subscriber_id]
    assert result.quarantine["broken_rules"].to_list() == [f"subscriber_id_characters={shown}"]
    assert result.valid_rows["subscriber_id"].to_list() == ["good"]


@pytest.mark.parametrize(
    "subscriber_id",
    ["13800000000", "用户-01", "a b", "[bold red]x[/bold red]", "[/]", "x" * 32, "F0755-9000 01", "é", "a\u3000b"],
)
def test_ids_that_stay_valid(tmp_path: Path, subscriber_id: str) -> None:
    result = clean(tmp_path, [row(subscriber_id)])
    assert result.quarantine.height == 0
    assert result.valid_rows["subscriber_id"].to_list() == [subscriber_id]


def test_length_is_still_its_own_rule_and_a_row_lists_every_rule_it_breaks(tmp_path: Path) -> None:
    long_bad = "x" * 32 + "\x00"
    result = clean(
        tmp_path,
        [row("good"), row("x" * 33), row(""), {**row(long_bad), "status": "closed"}, row(" ", suspension_count=-1)],
    )
    assert result.quarantine.select("rule", "broken_rules").rows() == [
        ("subscriber_id_length", f"subscriber_id_length={'x' * 33}"),
        ("subscriber_id_length", "subscriber_id_length="),
        (
            "subscriber_id_length",
            f"subscriber_id_length={'x' * 32}<U+0000>; subscriber_id_characters={'x' * 32}<U+0000>; "
            "status_allowed_value=closed",
        ),
        ("subscriber_id_characters", "subscriber_id_characters=<U+0020>; suspension_count_negative=-1"),
    ]
    assert result.quarantine_by_rule == {"subscriber_id_characters": 1, "subscriber_id_length": 3}


def test_the_character_rule_is_exactly_unicode_categories_cc_and_cf_and_whitespace_at_the_ends() -> None:
    """Every code point, inside an id and at either end, against Python's Unicode database. Code
    points Python's database does not assign yet (category Cn) are left out: Polars' regex engine may
    know a newer Unicode version (U+13439..U+1343F became Cf in Unicode 15)."""
    points = [p for p in range(sys.maxunicode + 1) if unicodedata.category(chr(p)) not in ("Cs", "Cn")]
    chars = pl.Series([chr(p) for p in points], dtype=pl.String)
    ids = pl.DataFrame({"inner": "a" + chars + "b", "first": chars + "a", "last": "a" + chars})
    printable = ids.select(printable_subscriber_id(pl.col(c)) for c in ids.columns)
    for point, inner, first, last in zip(points, *printable.get_columns(), strict=True):
        char = chr(point)
        control_or_format = unicodedata.category(char) in ("Cc", "Cf")
        # Unicode White_Space; Python's str.isspace() also counts U+001C..U+001F, which are Cc anyway
        white = char.isspace()
        assert inner is not control_or_format, f"U+{point:04X} inside"
        assert first is not (control_or_format or white), f"U+{point:04X} first"
        assert last is not (control_or_format or white), f"U+{point:04X} last"


def test_a_null_id_breaks_only_the_required_rule(tmp_path: Path) -> None:
    result = clean(tmp_path, [row("good"), row(None)])  # type: ignore[arg-type]
    assert result.quarantine["broken_rules"].to_list() == ["subscriber_id_required=null"]


def test_the_contract_lists_every_quarantine_rule_the_extract_rules_can_name() -> None:
    named = set(extract_rules(month_end=dt.date(2024, 3, 31)).rule_names.values())
    required = {required_rule(c) for c in CONTRACT_COLUMNS if c not in NULLABLE_EXTRACT_COLUMNS}
    assert "subscriber_id_characters" in named
    assert sorted(QUARANTINE_RULES) == sorted({CONFLICTING_ROWS, *required, *named})
    assert len(set(QUARANTINE_RULES)) == len(QUARANTINE_RULES)


def test_visible_text_writes_hidden_characters_as_code_points() -> None:
    assert visible_text("a b") == "a b"
    assert visible_text(" a\u3000b\t") == "<U+0020>a<U+3000>b<U+0009>"
    assert visible_text("用户\U000e0001") == "用户<U+E0001>"
    assert visible_text("") == ""
