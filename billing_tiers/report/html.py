"""The report page: one self-contained HTML document (inline SVG charts, tables, no script, and a
Content-Security-Policy that forbids every fetch)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

import polars as pl

from billing_tiers.report import charts
from billing_tiers.report.figures import (
    NOT_ELIGIBLE,
    ReportFigures,
    guard_display,
    members_matrix,
    needed_matrix,
    transition_matrix,
)
from billing_tiers.report.text import cell, guard_note, is_number, run_line

_STYLE = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1120px; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.run { color: #555; font-size: 13px; } .run code { font-size: 12px; }
nav a { margin-right: 12px; font-size: 13px; }
figure.chart { margin: 12px 0; padding: 0; }
figure.chart svg { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8d8d8; padding: 3px 8px; } th { background: #f3f4f6; text-align: left; }
td.n { text-align: right; } tr.total td { font-weight: 600; background: #fafafa; }
td.zero { color: #bbb; } td.diag { background: #eef6ff; }
.matrices { display: flex; flex-wrap: wrap; gap: 8px 32px; }
details summary { cursor: pointer; color: #2455a4; font-size: 13px; }
.ok { color: #1a7a3c; } .breached { color: #b3261e; font-weight: 600; }
"""


def _html_table(
    frame: pl.DataFrame,
    *,
    caption: str | None = None,
    total_label: str | None = None,
    diagonal: bool = False,
    status_column: str | None = None,
) -> str:
    """A frame as an HTML table; the row whose first cell is ``total_label`` is styled as a total."""
    head = "".join(f'<th scope="col">{html.escape(name)}</th>' for name in frame.columns)
    body = []
    for row in frame.iter_rows():
        cells = []
        for index, (name, value, dtype) in enumerate(zip(frame.columns, row, frame.dtypes, strict=True)):
            classes = []
            if is_number(dtype):
                classes.append("n")
                if value == 0 and dtype.is_integer():
                    classes.append("zero")
            if diagonal and index > 0 and name == row[0]:
                classes.append("diag")
            if status_column and name == status_column:
                classes.append("ok" if value == "ok" else "breached")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(cell(value))}</td>")
        is_total = total_label is not None and row[0] == total_label
        row_class = ' class="total"' if is_total else ""
        body.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{max(1, frame.width)}">(none)</td></tr>')
    caption_html = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{caption_html}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _with_total(frame: pl.DataFrame, label_column: str, count_columns: Iterable[str]) -> pl.DataFrame:
    totals: dict[str, Any] = dict.fromkeys(frame.columns)
    totals[label_column] = "total"
    for column in count_columns:
        totals[column] = int(frame[column].sum()) if frame.height else 0
    return pl.concat([frame, pl.DataFrame([totals], schema=frame.schema, orient="row")])


def _chart(name: str, svg: str, caption: str) -> str:
    return (
        f'<figure class="chart" data-chart="{html.escape(name)}" aria-label="{html.escape(caption)}">{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _data(frame: pl.DataFrame, **options: Any) -> str:
    return f"<details><summary>Data</summary>{_html_table(frame, **options)}</details>"


def month_report_html(figures: ReportFigures) -> str:
    """The report page for ``figures``: one self-contained HTML document (inline SVG, no script)."""
    import matplotlib

    label = figures.label
    run = figures.run
    window = f"{figures.history_months[0]} .. {figures.history_months[-1]}"
    sections: list[tuple[str, str, list[str]]] = []
    with matplotlib.rc_context(charts.RC):
        members = [
            _chart(
                f"members-{program}",
                charts.members_chart(figures, program),
                f"{program}: members per level held after each month's evaluation, {window}",
            )
            for program in figures.programs
        ]
        members.append(_data(members_matrix(figures)))
        sections.append(("members", f"1. Members per level per program, {window}", members))
        matrices = [
            f"<div><h3>{html.escape(program)}</h3>"
            + _html_table(
                transition_matrix(figures, program),
                caption="rows: previous level; columns: level after this month",
                total_label="total",
                diagonal=True,
            )
            + "</div>"
            for program in figures.programs
        ]
        sections.append(
            (
                "transitions",
                f"2. Transitions {label}: previous level → level",
                ['<div class="matrices">', *matrices, "</div>"],
            )
        )
        sections.append(
            (
                "actions",
                f"3. Actions {label}",
                [
                    _chart("actions", charts.actions_chart(figures), f"Tier rows by action and program, {label}"),
                    _data(figures.actions),
                ],
            )
        )
        sections.append(
            (
                "cards",
                f"4. Cards issued and voided {label}",
                [
                    _chart("cards", charts.cards_chart(figures), f"Card events by event and reason, {label}"),
                    _data(_with_total(figures.cards, "program", ["cards"]), total_label="total"),
                ],
            )
        )
        sections.append(
            (
                "at-risk",
                f"5. Members at risk {label}",
                [
                    "<p>Members of validity programs whose level is re-rated at one of the coming evaluations "
                    "while they qualify for less this month, and how much they would need to spend next month "
                    f"to keep it (<code>{NOT_ELIGIBLE}</code>: no amount would).</p>",
                    _chart(
                        "at-risk", charts.at_risk_chart(figures), f"Members at risk by months to the re-rating, {label}"
                    ),
                    _data(_with_total(figures.at_risk, "program", ["members"]), total_label="total"),
                    _chart(
                        "needed-next-month",
                        charts.needed_chart(figures),
                        f"Distribution of needed_next_month in yuan bins, {label}",
                    ),
                    _data(needed_matrix(figures)),
                ],
            )
        )
    sections.append(
        (
            "quarantine",
            f"6. Quarantine by rule {label}",
            [_html_table(_with_total(figures.quarantine_by_rule, "rule", ["rows"]), total_label="total")],
        )
    )
    sections.append(
        (
            "guards",
            f"7. Guards {label}",
            [
                _html_table(guard_display(figures), status_column="status"),
                f"<p>{html.escape(guard_note(figures))}</p>",
            ],
        )
    )
    sections.append(("timings", f"8. Step timings {label} (seconds)", [_html_table(figures.timings)]))

    title = f"Billing tiers: month report {label}"
    nav = "".join(f'<a href="#{anchor}">{html.escape(heading.split(" ", 1)[1])}</a>' for anchor, heading, _ in sections)
    body = "".join(
        f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{"".join(parts)}</section>'
        for anchor, heading, parts in sections
    )
    run_text = html.escape(run_line(figures)).replace(
        html.escape(f"`{run.get('run_id')}`"), f"<code>{html.escape(str(run.get('run_id')))}</code>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} (run {html.escape(str(run.get('run_id')))})</title>"
        f"<style>{_STYLE}</style></head><body>"
        f'<header><h1>{html.escape(title)}</h1><p class="run" id="run">{run_text}</p><nav>{nav}</nav></header>'
        f"<main>{body}</main></body></html>\n"
    )
