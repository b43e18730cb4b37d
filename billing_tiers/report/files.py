"""Writing the month report: the HTML file (replaced atomically) and the Markdown, from one reading."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from billing_tiers.report.html import month_report_html
from billing_tiers.report.markdown import markdown_report
from billing_tiers.report.reading import month_report_figures
from billing_tiers.store import Store


def _write_atomically(out: Path, page: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, out)


def write_month_report(store: Store, month: dt.date, out: Path) -> Path:
    """Write the month's report to ``out`` (one self-contained HTML file, replaced atomically)."""
    _write_atomically(out, month_report_html(month_report_figures(store, month)))
    return out


def write_report_and_markdown(store: Store, month: dt.date, out: Path | None) -> tuple[Path | None, str]:
    """The HTML report at ``out`` (when given) and the Markdown, from one reading of the figures."""
    figures = month_report_figures(store, month)
    if out is not None:
        _write_atomically(out, month_report_html(figures))
    return out, markdown_report(figures)


def month_report_markdown(store: Store, month: dt.date) -> str:
    """The month report as Markdown tables with named columns (for a Prefect markdown artifact)."""
    return markdown_report(month_report_figures(store, month))


def default_report_path(store: Store, month: dt.date) -> Path:
    """Where a run leaves the month's report: beside its manifest."""
    return store.manifest_file(month).parent / "report.html"
