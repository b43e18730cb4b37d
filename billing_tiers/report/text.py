"""How the report writes values and its run and guard lines, the same in Markdown and HTML."""

from __future__ import annotations

from typing import Any

import polars as pl

from billing_tiers.report.figures import ReportFigures


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)


def is_number(dtype: pl.DataType) -> bool:
    return dtype.is_numeric()


def run_line(figures: ReportFigures) -> str:
    run = figures.run
    built_from = (run.get("built_from") or {}).get("month") or "an empty state"
    rulebook = run.get("rulebook") or {}
    parts = [
        f"run `{run.get('run_id')}`",
        f"published {run.get('created_at')}",
        f"built from {built_from}",
        f"{run.get('buckets')} bucket(s)",
        f"{cell(run.get('rows_read'))} extract rows",
        f"code {run.get('code_version')}",
        f"rulebook {rulebook.get('path')} (sha256 {str(rulebook.get('sha256'))[:12]})",
    ]
    if rulebook.get("changed_from_previous"):
        parts.append("rulebook changed since the previous month")
    if run.get("replaced_run_id"):
        parts.append(f"replaced run `{run['replaced_run_id']}`")
    return " · ".join(parts)


def guard_note(figures: ReportFigures) -> str:
    flags = figures.guard_flags
    breached = flags.get("breached") or []
    if not breached:
        return "No guard breached."
    verdict = "published anyway: the operator overrode the guards" if flags.get("overridden") else "not overridden"
    return "Breached (" + verdict + "): " + "; ".join(str(b) for b in breached)
