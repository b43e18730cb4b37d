"""The rulebook parses strictly: every bad setting is an error naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rulebook import RulebookError, default_rulebook_path, load_rulebook, parse_rulebook

DEFAULT = default_rulebook_path().read_text(encoding="utf-8")


def test_default_rulebook_holds_the_spec_values() -> None:
    rulebook = load_rulebook()
    assert (rulebook.calendar.evaluation_day, rulebook.calendar.expiry_day, rulebook.calendar.validity_months) == (
        5,
        8,
        12,
    )
    assert rulebook.metrics.average_divisor == "window"
    assert rulebook.metrics.forget_after_months == 12
    vip = rulebook.programs["unicom_vip"]
    assert vip.thresholds["silver"].min_avg_billed == {"mobile": 15000, "fixed": 10000, "broadband": 10000}
    assert list(rulebook.enabled_programs()) == ["unicom_vip", "unicom_star", "cmcc_credit", "points_redemption"]
    assert len(rulebook.checksum) == 64


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("expiry_day = 8", "expiry_dya = 8", "calendar.expiry_dya: unknown key"),
        ("expiry_day = 8", "expiry_day = 29", "calendar.expiry_day"),
        ("evaluation_day = 5", "evaluation_day = 0", "calendar.evaluation_day"),
        ('min_cum_paid = "3000.00"', 'min_cum_paid = "900.00"', "min_cum_paid: threshold of 'gold' does not increase"),
        (
            'min_avg_billed = { mobile = "300.00"',
            'min_avg_billed = { mobile = "150.00"',
            "min_avg_billed.mobile: threshold of 'gold'",
        ),
        ("star_3 = 300", "star_3 = 200", "min_score: threshold of 'star_3'"),
        ('card_levels = ["silver", "gold", "platinum"', 'card_levels = ["silverx", "gold", "platinum"', "silverx"),
        ('"150.00", fixed', "150.5, fixed", "floats are inexact"),
        ('"150.00", fixed', '"150.005", fixed', "at most two decimals"),
        ('kind = "credit_score"', 'kind = "eval"', "programs.cmcc_credit"),
        ('retention = "permanent"', 'retention = "forever"', "retention"),
        ('payment_type = ["postpaid"]', 'payment_type = ["Postpaid"]', "unknown value 'Postpaid'"),
        ('average_divisor = "window"', 'average_divisor = "__import__(os)"', "average_divisor"),
        ('max_quarantine_ratio = "0.01"', 'max_quarantine_ratio = "1.5"', "max_quarantine_ratio"),
        ("[programs.points_redemption.min_points]\n", "[programs.points_redemption.min_point]\n", "min_point"),
        ("unlocked = 2000", "unlocked = 2000\nlocked = 1", "unknown level 'locked'"),
        ('levels = ["unlocked"]\ncard_levels = []', 'levels = ["unlocked"]\ncard_levels = ["unlocked"]', "cards need"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(old: str, new: str, message: str) -> None:
    assert old in DEFAULT, old
    with pytest.raises(RulebookError) as error:
        parse_rulebook(DEFAULT.replace(old, new, 1), source="test.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("rulebook test.toml: ")


def test_not_toml_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulebookError, match="not valid TOML"):
        parse_rulebook("[calendar\n")
    with pytest.raises(RulebookError, match="cannot read"):
        load_rulebook(tmp_path / "missing.toml")


def test_a_rulebook_with_every_program_disabled_is_refused() -> None:
    text = DEFAULT.replace("enabled = true", "enabled = false")
    with pytest.raises(RulebookError, match="no program is enabled"):
        parse_rulebook(text)


def test_disabling_a_program_removes_it() -> None:
    text = DEFAULT.replace("[programs.cmcc_credit]\nenabled = true", "[programs.cmcc_credit]\nenabled = false")
    assert "cmcc_credit" not in parse_rulebook(text).enabled_programs()
