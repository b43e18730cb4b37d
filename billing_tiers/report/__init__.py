"""The month report: one month's figures from the store, as a self-contained HTML page and as Markdown.

- :mod:`~billing_tiers.report.reading` reads what the figures need from the store (manifests and a
  few columns of the month's tables, checksums verified) into :class:`ReportInputs`;
- :mod:`~billing_tiers.report.figures` computes the figures as small frames from those inputs only
  (pure: tested on frames made by hand);
- :mod:`~billing_tiers.report.markdown`, :mod:`~billing_tiers.report.charts` (matplotlib, static SVG)
  and :mod:`~billing_tiers.report.html` render them; :mod:`~billing_tiers.report.files` writes them.

The HTML page needs nothing else: the charts are SVG inlined in the page, there is no script, and a
Content-Security-Policy forbids every fetch, so opening it makes no network request. Each chart sits
in a ``<figure class="chart">``; tables hold the transition matrices, quarantine, guards and timings,
and the data behind every chart. The Markdown gives the same figures as tables with named columns.
"""

from billing_tiers.report.figures import (
    HISTORY_MONTHS,
    NEEDED_BIN_EDGES_YUAN,
    NONE_LEVEL,
    NOT_ELIGIBLE,
    ReportFigures,
    ReportInputs,
    members_matrix,
    needed_bin_labels,
    needed_matrix,
    report_figures,
    transition_matrix,
)
from billing_tiers.report.files import (
    default_report_path,
    month_report_markdown,
    write_month_report,
    write_report_and_markdown,
)
from billing_tiers.report.html import month_report_html
from billing_tiers.report.markdown import markdown_report, markdown_table
from billing_tiers.report.reading import month_report_figures, read_report_inputs

__all__ = [
    "HISTORY_MONTHS",
    "NEEDED_BIN_EDGES_YUAN",
    "NONE_LEVEL",
    "NOT_ELIGIBLE",
    "ReportFigures",
    "ReportInputs",
    "default_report_path",
    "markdown_report",
    "markdown_table",
    "members_matrix",
    "month_report_figures",
    "month_report_html",
    "month_report_markdown",
    "needed_bin_labels",
    "needed_matrix",
    "read_report_inputs",
    "report_figures",
    "transition_matrix",
    "write_month_report",
    "write_report_and_markdown",
]
