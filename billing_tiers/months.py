"""Billing-month values: parsing ``YYYY-MM`` and stepping between months."""

from __future__ import annotations

import datetime as dt
import re

from billing_tiers.errors import PipelineError

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def parse_month(text: str) -> dt.date:
    """``"2024-03"`` -> 2024-03-01; anything else is a PipelineError."""
    shape = re.match(r"^(\d{4})-(\d{2})$", text.strip())
    if shape and not 1 <= int(shape.group(2)) <= 12:
        raise PipelineError(f"month {text!r}: there is no month {int(shape.group(2))}; months run from 01 to 12")
    match = _MONTH.match(text.strip())
    if not match:
        raise PipelineError(f"month {text!r} is not of the form YYYY-MM")
    return dt.date(int(match.group(1)), int(match.group(2)), 1)


def month_label(month: dt.date) -> str:
    return f"{month.year:04d}-{month.month:02d}"


def add_months(month: dt.date, count: int) -> dt.date:
    """First day of the month ``count`` months after ``month`` (negative goes back)."""
    index = month.year * 12 + month.month - 1 + count
    return dt.date(index // 12, index % 12 + 1, 1)


def month_end(month: dt.date) -> dt.date:
    return add_months(month, 1) - dt.timedelta(days=1)
