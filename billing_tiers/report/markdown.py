"""The month report as Markdown tables with named columns (the Prefect markdown artifact)."""

from __future__ import annotations

import polars as pl

from billing_tiers.report.figures import (
    NONE_LEVEL,
    NOT_ELIGIBLE,
    ReportFigures,
    guard_display,
    members_matrix,
    needed_matrix,
    transition_matrix,
)
from billing_tiers.report.text import cell, guard_note, is_number, run_line


def markdown_table(frame: pl.DataFrame) -> str:
    """A frame as a Markdown table with its column names as the header (numbers right-aligned)."""
    if frame.width == 0:
        return "(nothing)\n"

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(escape(name) for name in frame.columns) + " |"
    rule = "|" + "|".join("---:" if is_number(dtype) else "---" for dtype in frame.dtypes) + "|"
    lines = [header, rule]
    lines += ["| " + " | ".join(escape(cell(value)) for value in row) + " |" for row in frame.iter_rows()]
    if frame.height == 0:
        lines.append("| " + " | ".join("" for _ in frame.columns) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(figures: ReportFigures) -> str:
    label = figures.label
    window = f"{figures.history_months[0]} .. {figures.history_months[-1]}"
    out = [
        f"# Month report {label}\n",
        run_line(figures) + "\n",
        f"## Members per level per program, {window}\n",
        f"Subscribers evaluated in each program by level held after the month's evaluation; `{NONE_LEVEL}`: "
        "no level.\n",
        markdown_table(members_matrix(figures)),
        f"## Transitions {label}: previous_level → level\n",
    ]
    for program in figures.programs:
        out += [f"### {program}\n", markdown_table(transition_matrix(figures, program))]
    out += [
        f"## Actions {label}\n",
        markdown_table(figures.actions),
        f"## Cards issued and voided {label}\n",
        markdown_table(figures.cards) if figures.cards.height else "No card event this month.\n",
        f"## Members at risk {label}\n",
        "Members whose level is re-rated within the horizon while they qualify for less this month.\n",
        markdown_table(figures.at_risk) if figures.at_risk.height else "No member at risk this month.\n",
    ]
    if figures.at_risk.height:
        out += [
            f"### needed_next_month: the spend next month that would keep the level (yuan; "
            f"`{NOT_ELIGIBLE}`: no amount would)\n",
            markdown_table(needed_matrix(figures)),
        ]
    out += [
        f"## Quarantine by rule {label}\n",
        markdown_table(figures.quarantine_by_rule) if figures.quarantine_by_rule.height else "No row quarantined.\n",
        f"## Guards {label}\n",
        markdown_table(guard_display(figures)),
        guard_note(figures) + "\n",
        f"## Step timings {label} (seconds)\n",
        markdown_table(figures.timings),
    ]
    return "\n".join(out)
