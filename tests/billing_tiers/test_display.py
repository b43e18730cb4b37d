"""User data is printed literally: no markup, control and format characters escaped, full values in pipes."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from billing_tiers import display


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("13800000000", "13800000000"),
        ("[bold red]RED[/bold red]", "[bold red]RED[/bold red]"),
        ("[/]", "[/]"),
        ("用户-01", "用户-01"),
        ("a b", "a b"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("line\nbreak", "line\\nbreak"),
        ("nul\x00", "nul\\x00"),
        ("tab\there", "tab\\there"),
        ("\u202eevil", "\\u202eevil"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("\ufeffbom", "\\ufeffbom"),
        (None, "-"),
    ],
)
def test_literal_escapes_control_and_format_characters_only(value: str | None, shown: str) -> None:
    assert display.literal(value) == shown


def test_a_listing_in_a_pipe_is_tab_separated_and_never_cut(capsys: pytest.CaptureFixture[str]) -> None:
    long_id = "x" * 32
    display.table("t [b]title[/b]", ("subscriber_id", "reason"), [(long_id, "avg " + "9" * 150), ("[/]", None)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "# t [b]title[/b]",
        "subscriber_id\treason",
        f"{long_id}\tavg {'9' * 150}",
        "[/]\t-",
    ]


def test_json_keeps_decimals_exact_and_dates_iso(capsys: pytest.CaptureFixture[str]) -> None:
    display.print_json({"amount": Decimal("977.97"), "on": dt.date(2026, 5, 5), "id": "[/]\n"})
    assert capsys.readouterr().out == '{\n  "amount": "977.97",\n  "on": "2026-05-05",\n  "id": "[/]\\n"\n}\n'
