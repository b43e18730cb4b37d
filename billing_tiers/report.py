"""The month report: one month's figures from the store, as a self-contained HTML page and as Markdown.

:func:`month_report_figures` gathers, for a published billing month B, reading only the store:

1. members per level per program over the last 12 published months up to B (each manifest's
   ``summary``; a null level is ``(none)``: evaluated in the program, holding no level);
2. B's transition matrix ``previous_level -> level`` per program (``tier_assignments`` of B);
3. actions per program (B's manifest ``summary``);
4. cards issued and voided by reason per program (``card_issuance`` of B);
5. members at risk by program, level and months to the re-rating, and the distribution of
   ``needed_next_month`` in fixed yuan bins (null: ``not eligible``) (``at_risk`` of B);
6. quarantined rows by rule, 7. the guard figures and 8. the step timings (B's manifest).

It reads B's manifest, the manifests of the 11 published months before B, and at most four columns
of three of B's tables (only the part files B's manifest lists): a month's report costs the same
however long the history is.

:func:`write_month_report` renders the figures as one HTML file that needs nothing else: the charts
are static SVG drawn by matplotlib and inlined in the page, there is no script, and a
Content-Security-Policy forbids every fetch, so opening it makes no network request.
Each chart sits in a ``<figure class="chart">``; tables hold the transition matrices, quarantine,
guards and timings, and the data behind every chart. :func:`month_report_markdown` gives the same
figures as Markdown tables with named columns (for a Prefect markdown artifact).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import io
import itertools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from billing_tiers.errors import PipelineError
from billing_tiers.health import table_damage
from billing_tiers.months import month_label
from billing_tiers.store import Store, repair_hint
from schemas.contract import ACTIONS, AT_RISK, CARD_EVENTS, CARD_ISSUANCE, CARD_REASONS, TIER_ASSIGNMENTS, Table
from schemas.manifest import Manifest

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

HISTORY_MONTHS = 12
"""Members per level are shown for this many published months, ending with the report's month."""
NONE_LEVEL = "(none)"
"""How a null level (or previous level) is shown: the subscriber holds no level in the program."""
NOT_ELIGIBLE = "not eligible"
"""The ``needed_next_month`` bin of members for whom no amount would do (a null in ``at_risk``)."""
NEEDED_BIN_EDGES_YUAN = (0, 50, 100, 200, 300, 500, 1000, 2000, 5000)
"""Fixed yuan bins of ``needed_next_month``: [0, 50), [50, 100), ..., [2000, 5000), then >= 5000."""


def needed_bin_labels() -> list[str]:
    """The ``needed_next_month`` bins in order, the last one for the members who are not eligible."""
    edges = NEEDED_BIN_EDGES_YUAN
    labels = [f"{low}–{high}" for low, high in itertools.pairwise(edges)]
    return [*labels, f"≥ {edges[-1]}", NOT_ELIGIBLE]


@dataclass(frozen=True)
class ReportFigures:
    """Everything the month report shows, as small frames (a few hundred rows at most).

    Frames use named columns only; ``(none)`` stands for a null level."""

    month: dt.date
    run: dict[str, Any]
    """The month's run: run_id, created_at, code_version, built_from, buckets, rulebook, rows_read, ..."""
    programs: list[str]
    """Programs in display order (rulebook order for the programs the bundled rulebook knows)."""
    levels: dict[str, list[str]]
    """Per program, the levels seen in the figures in display order (lowest first, ``(none)`` first)."""
    history_months: list[str]
    """The published months of ``members_per_level``, oldest first (at most 12, ending with the month)."""
    members_per_level: pl.DataFrame
    """billing_month, program, level, members: every (month, program, level) of the window, zeros included."""
    transitions: pl.DataFrame
    """program, previous_level, level, members: the month's tier rows counted by transition."""
    actions: pl.DataFrame
    """program, action, subscribers."""
    cards: pl.DataFrame
    """program, event, reason, cards."""
    at_risk: pl.DataFrame
    """program, level, months_to_rerating, members."""
    needed_next_month: pl.DataFrame
    """program, needed_next_month (a bin of :func:`needed_bin_labels`), members: zeros included for the
    programs with members at risk."""
    quarantine_by_rule: pl.DataFrame
    """rule, rows (most rows first)."""
    guards: pl.DataFrame
    """guard, count, out_of, ratio, limit, status."""
    guard_flags: dict[str, Any] = field(default_factory=dict)
    """breached (the messages), overridden, override_flag, as in the manifest."""
    timings: pl.DataFrame = field(default_factory=pl.DataFrame)
    """scope (``run`` or ``buckets (summed)``), step, seconds."""

    @property
    def label(self) -> str:
        return month_label(self.month)

    @property
    def chart_count(self) -> int:
        """Charts in the HTML report: one per program for the levels, then actions, cards, at risk,
        and the ``needed_next_month`` distribution."""
        return len(self.programs) + 4


# ---------------------------------------------------------------------------------------- figures


@functools.cache
def _display_order() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """Programs and their levels in the bundled rulebook's order: a display hint only (lowest level
    first). Levels or programs it does not know are shown after, alphabetically."""
    from rulebook import RulebookError, load_rulebook

    try:
        rulebook = load_rulebook()
    except RulebookError:
        return (), {}
    return tuple(rulebook.programs), {name: tuple(program.levels) for name, program in rulebook.programs.items()}


def _program_key(program: str) -> tuple[int, str]:
    known = _display_order()[0]
    return (known.index(program), "") if program in known else (len(known), program)


def _level_key(program: str, level: str) -> tuple[int, int, str]:
    if level == NONE_LEVEL:
        return (0, 0, "")
    known = _display_order()[1].get(program, ())
    return (1, known.index(level), "") if level in known else (2, 0, level)


def _rank(values: Sequence[str], value: str) -> tuple[int, str]:
    return (values.index(value), "") if value in values else (len(values), value)


def _sorted(frame: pl.DataFrame, key: Callable[[dict[str, Any]], Any]) -> pl.DataFrame:
    """A small frame's rows in a display order computed in Python (levels in rulebook order)."""
    return pl.DataFrame(sorted(frame.iter_rows(named=True), key=key), schema=frame.schema, orient="row")


def _manifest(store: Store, month: dt.date) -> Manifest:
    manifest = store.read_manifest(month)
    if manifest is None:
        raise PipelineError(f"month {month_label(month)}: not published (no manifest in {store.root})")
    return manifest


def _refuse_damaged(store: Store, month: dt.date, manifest: Manifest) -> None:
    """A report of a month whose part files do not match its manifest is refused, naming the file:
    its figures could be wrong even where they come from the manifest."""
    damage = table_damage(store, month, manifest)
    if damage is not None:
        problem = damage.problem.removeprefix("incomplete: ")
        raise PipelineError(f"month {month_label(month)}: {problem}; {repair_hint(month)}")


def _month_columns(store: Store, manifest: Manifest, table: Table, month: dt.date, columns: list[str]) -> pl.DataFrame:
    """``columns`` of one published table-month, from the part files its manifest lists, each checked
    against its checksum (an empty frame when the month has none, e.g. ``at_risk`` in a store made
    before that table existed)."""
    if table.name not in manifest.tables or not manifest.tables[table.name].parts:
        return pl.DataFrame(schema={name: table.schema[name] for name in columns})
    return store.scan_table(table.name, month, manifest).select(columns).collect()


def _summary_rows(manifest: Manifest) -> pl.DataFrame:
    return pl.DataFrame(
        [row.model_dump() for row in manifest.summary],
        schema={"program": pl.String, "level": pl.String, "action": pl.String, "subscribers": pl.Int64},
    ).with_columns(pl.col("level").fill_null(NONE_LEVEL))


def _ratio(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


def _guard_frame(guards: Mapping[str, Any]) -> pl.DataFrame:
    rows = []
    for name, count, out_of, ratio, limit in (
        ("quarantined rows / rows after duplicates", "quarantined_rows", "rows_after_duplicates", "quarantine_ratio",
         "max_quarantine_ratio"),
        ("previous subscribers with no row / previous subscribers", "missing_subscribers", "previous_subscribers",
         "missing_ratio", "max_missing_ratio"),
    ):  # fmt: skip
        value, bound = _ratio(guards.get(ratio)), _ratio(guards.get(limit))
        breached = value is not None and bound is not None and value > bound
        status = "ok" if not breached else ("breached, overridden" if guards.get("overridden") else "breached")
        rows.append(
            {
                "guard": name,
                "count": guards.get(count),
                "out_of": guards.get(out_of),
                "ratio": value,
                "limit": bound,
                "status": status,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "guard": pl.String,
            "count": pl.Int64,
            "out_of": pl.Int64,
            "ratio": pl.Float64,
            "limit": pl.Float64,
            "status": pl.String,
        },
    )


def _timing_frame(manifest: Manifest) -> pl.DataFrame:
    rows = [
        {"scope": scope, "step": step, "seconds": float(seconds)}
        for scope, timings in (("run", manifest.timings_seconds), ("buckets (summed)", manifest.bucket_seconds_summed))
        for step, seconds in timings.items()
    ]
    return pl.DataFrame(rows, schema={"scope": pl.String, "step": pl.String, "seconds": pl.Float64})


def _levels_of(program: str, members: pl.DataFrame, transitions: pl.DataFrame) -> list[str]:
    """The levels of a program seen in the figures, lowest first, ``(none)`` always included."""
    seen = {NONE_LEVEL, *members.filter(pl.col("program") == program)["level"]}
    mine = transitions.filter(pl.col("program") == program)
    seen |= {*mine["previous_level"], *mine["level"]}
    return sorted(seen, key=lambda level: _level_key(program, level))


def month_report_figures(store: Store, month: dt.date) -> ReportFigures:
    """The month's report figures, read from the store only (see the module docstring for what is read)."""
    manifest = _manifest(store, month)
    _refuse_damaged(store, month, manifest)
    window = [m for m in store.manifest_months() if m < month][-(HISTORY_MONTHS - 1) :]
    manifests = {m: store.read_manifest(m) for m in window}
    history = [(m, found) for m, found in manifests.items() if found is not None] + [(month, manifest)]
    history_months = [month_label(m) for m, _ in history]

    # (1) members per level: every month's summary, summed over actions; a complete grid of zeros
    held = pl.concat([_summary_rows(found).with_columns(billing_month=pl.lit(month_label(m))) for m, found in history])
    held = held.group_by("billing_month", "program", "level").agg(members=pl.col("subscribers").sum())
    pairs = held.select("program", "level").unique()
    grid = pl.DataFrame({"billing_month": history_months}).join(pairs, how="cross")
    members = grid.join(held, on=["billing_month", "program", "level"], how="left").with_columns(
        pl.col("members").fill_null(0)
    )
    members = _sorted(
        members.select("billing_month", "program", "level", "members"),
        lambda r: (_program_key(r["program"]), _level_key(r["program"], r["level"]), r["billing_month"]),
    )

    # (2) transitions: counted by the run itself (manifest), else from the month's tier rows
    if manifest.transitions is not None:
        counted = pl.DataFrame(
            [row.model_dump() for row in manifest.transitions],
            schema={"program": pl.String, "previous_level": pl.String, "level": pl.String, "members": pl.Int64},
        )
    else:
        counted = (
            _month_columns(store, manifest, TIER_ASSIGNMENTS, month, ["program", "previous_level", "level"])
            .group_by("program", "previous_level", "level")
            .agg(members=pl.len().cast(pl.Int64))
        )
    transitions = (
        counted.with_columns(pl.col("previous_level", "level").fill_null(NONE_LEVEL))
        .group_by("program", "previous_level", "level")
        .agg(pl.col("members").sum().cast(pl.Int64))
    )
    transitions = _sorted(
        transitions,
        lambda r: (
            _program_key(r["program"]),
            _level_key(r["program"], r["previous_level"]),
            _level_key(r["program"], r["level"]),
        ),
    )

    # (3) actions from the month's summary
    actions = _summary_rows(manifest).group_by("program", "action").agg(subscribers=pl.col("subscribers").sum())
    actions = _sorted(actions, lambda r: (_program_key(r["program"]), _rank(ACTIONS, r["action"])))

    # (4) card events
    card_rows = _month_columns(store, manifest, CARD_ISSUANCE, month, ["program", "event", "reason"])
    cards = card_rows.group_by("program", "event", "reason").agg(cards=pl.len().cast(pl.Int64))
    cards = _sorted(
        cards,
        lambda r: (_program_key(r["program"]), _rank(CARD_EVENTS, r["event"]), _rank(CARD_REASONS, r["reason"])),
    )

    # (5) members at risk and what they need next month
    risk_rows = _month_columns(
        store, manifest, AT_RISK, month, ["program", "level", "months_to_rerating", "needed_next_month"]
    )
    at_risk = risk_rows.group_by("program", "level", "months_to_rerating").agg(members=pl.len().cast(pl.Int64))
    at_risk = _sorted(
        at_risk,
        lambda r: (_program_key(r["program"]), _level_key(r["program"], r["level"]), r["months_to_rerating"]),
    )
    labels = needed_bin_labels()
    amount = pl.col("needed_next_month").cast(pl.Float64)  # exact: cents against whole-yuan edges
    index = pl.sum_horizontal([(amount >= edge).cast(pl.Int32) for edge in NEEDED_BIN_EDGES_YUAN[1:]])
    binned = (
        pl.when(amount.is_null())
        .then(pl.lit(NOT_ELIGIBLE))
        .otherwise(index.replace_strict(dict(enumerate(labels[:-1])), return_dtype=pl.String))
    )
    counted = (
        risk_rows.with_columns(binned.alias("bin")).group_by("program", "bin").agg(members=pl.len().cast(pl.Int64))
    )
    risk_programs = sorted(set(risk_rows["program"].to_list()), key=_program_key)
    needed = (
        pl.DataFrame({"program": risk_programs}, schema={"program": pl.String})
        .join(pl.DataFrame({"bin": labels}), how="cross")
        .join(counted, on=["program", "bin"], how="left")
        .with_columns(pl.col("members").fill_null(0))
        .rename({"bin": "needed_next_month"})
    )
    needed = _sorted(needed, lambda r: (_program_key(r["program"]), labels.index(r["needed_next_month"])))

    # (6)-(8) from the manifest
    quarantine = pl.DataFrame(
        [{"rule": rule, "rows": rows} for rule, rows in manifest.quarantine_by_rule.items()],
        schema={"rule": pl.String, "rows": pl.Int64},
    ).sort(["rows", "rule"], descending=[True, False])
    guards = manifest.guards.model_dump()

    programs = sorted(
        set(members["program"].to_list())
        | set(transitions["program"].to_list())
        | set(cards["program"].to_list())
        | set(risk_programs),
        key=_program_key,
    )
    levels = {program: _levels_of(program, members, transitions) for program in programs}
    run = manifest.model_dump(
        mode="json",
        include={
            "run_id",
            "created_at",
            "code_version",
            "prefect_flow_run_id",
            "built_from",
            "buckets",
            "extracts",
            "rulebook",
            "rows_read",
            "duplicates_collapsed",
            "ignored_columns",
            "replaced_run_id",
            "previous_version_unreadable",
            "changes_by_program",
        },
    )
    return ReportFigures(
        month=month,
        run=run,
        programs=programs,
        levels=levels,
        history_months=history_months,
        members_per_level=members,
        transitions=transitions,
        actions=actions,
        cards=cards,
        at_risk=at_risk,
        needed_next_month=needed,
        quarantine_by_rule=quarantine,
        guards=_guard_frame(guards),
        guard_flags={key: guards.get(key) for key in ("breached", "overridden", "override_flag")},
        timings=_timing_frame(manifest),
    )


def transition_matrix(figures: ReportFigures, program: str) -> pl.DataFrame:
    """One program's transitions as a matrix: a row per previous level, a column per level, totals."""
    levels = figures.levels.get(program, [NONE_LEVEL])
    counts = {
        (row["previous_level"], row["level"]): row["members"]
        for row in figures.transitions.filter(pl.col("program") == program).iter_rows(named=True)
    }
    rows = []
    for previous in levels:
        cells = {level: counts.get((previous, level), 0) for level in levels}
        rows.append({"previous_level": previous, **cells, "total": sum(cells.values())})
    totals = {level: sum(counts.get((previous, level), 0) for previous in levels) for level in levels}
    rows.append({"previous_level": "total", **totals, "total": sum(totals.values())})
    schema = {"previous_level": pl.String, **dict.fromkeys(levels, pl.Int64), "total": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def members_matrix(figures: ReportFigures) -> pl.DataFrame:
    """Members per level as program, level and one column per month of the window."""
    frame = figures.members_per_level
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in frame.iter_rows(named=True):
        key = (row["program"], row["level"])
        rows.setdefault(key, {"program": row["program"], "level": row["level"]})[row["billing_month"]] = row["members"]
    schema = {"program": pl.String, "level": pl.String, **dict.fromkeys(figures.history_months, pl.Int64)}
    return pl.DataFrame(list(rows.values()), schema=schema, orient="row")


def needed_matrix(figures: ReportFigures) -> pl.DataFrame:
    """The ``needed_next_month`` distribution as a bin per row and a column per program, with a total."""
    frame = figures.needed_next_month
    programs = sorted(set(frame["program"].to_list()), key=_program_key)
    counts = {(row["program"], row["needed_next_month"]): row["members"] for row in frame.iter_rows(named=True)}
    rows = []
    for bin_label in needed_bin_labels():
        cells = {program: counts.get((program, bin_label), 0) for program in programs}
        rows.append({"needed_next_month (yuan)": bin_label, **cells, "total": sum(cells.values())})
    schema = {"needed_next_month (yuan)": pl.String, **dict.fromkeys(programs, pl.Int64), "total": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _guard_display(figures: ReportFigures) -> pl.DataFrame:
    return figures.guards.with_columns(
        pl.col("ratio").map_elements(_percent, return_dtype=pl.String),
        pl.col("limit").map_elements(_percent, return_dtype=pl.String),
    )


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"


# --------------------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return str(value)


def _is_number(dtype: pl.DataType) -> bool:
    return dtype.is_numeric()


def markdown_table(frame: pl.DataFrame) -> str:
    """A frame as a Markdown table with its column names as the header (numbers right-aligned)."""
    if frame.width == 0:
        return "(nothing)\n"

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(escape(name) for name in frame.columns) + " |"
    rule = "|" + "|".join("---:" if _is_number(dtype) else "---" for dtype in frame.dtypes) + "|"
    lines = [header, rule]
    lines += ["| " + " | ".join(escape(_cell(value)) for value in row) + " |" for row in frame.iter_rows()]
    if frame.height == 0:
        lines.append("| " + " | ".join("" for _ in frame.columns) + " |")
    return "\n".join(lines) + "\n"


def _run_line(figures: ReportFigures) -> str:
    run = figures.run
    built_from = (run.get("built_from") or {}).get("month") or "an empty state"
    rulebook = run.get("rulebook") or {}
    parts = [
        f"run `{run.get('run_id')}`",
        f"published {run.get('created_at')}",
        f"built from {built_from}",
        f"{run.get('buckets')} bucket(s)",
        f"{_cell(run.get('rows_read'))} extract rows",
        f"code {run.get('code_version')}",
        f"rulebook {rulebook.get('path')} (sha256 {str(rulebook.get('sha256'))[:12]})",
    ]
    if rulebook.get("changed_from_previous"):
        parts.append("rulebook changed since the previous month")
    if run.get("replaced_run_id"):
        parts.append(f"replaced run `{run['replaced_run_id']}`")
    return " · ".join(parts)


def _markdown_figures(figures: ReportFigures) -> str:
    label = figures.label
    window = f"{figures.history_months[0]} .. {figures.history_months[-1]}"
    out = [
        f"# Month report {label}\n",
        _run_line(figures) + "\n",
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
        markdown_table(_guard_display(figures)),
        _guard_note(figures) + "\n",
        f"## Step timings {label} (seconds)\n",
        markdown_table(figures.timings),
    ]
    return "\n".join(out)


def _guard_note(figures: ReportFigures) -> str:
    flags = figures.guard_flags
    breached = flags.get("breached") or []
    if not breached:
        return "No guard breached."
    verdict = "published anyway: the operator overrode the guards" if flags.get("overridden") else "not overridden"
    return "Breached (" + verdict + "): " + "; ".join(str(b) for b in breached)


def month_report_markdown(store: Store, month: dt.date) -> str:
    """The month report as Markdown tables with named columns (for a Prefect markdown artifact)."""
    return _markdown_figures(month_report_figures(store, month))


# ------------------------------------------------------------------------------------------ charts

_PROGRAM_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_ACTION_COLOURS = {
    "none": "#c7c7c7",
    "retain": "#7f7f7f",
    "new": "#2ca02c",
    "upgrade": "#1a7a3c",
    "renew": "#17becf",
    "downgrade": "#ff7f0e",
    "lapse": "#d62728",
    "terminate": "#8c1c13",
}
_EVENT_COLOURS = {"issue": "#2a9d8f", "void": "#e76f51"}
_SVG_PROLOGUE = re.compile(r"^.*?(?=<svg\b)", re.S)
_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_RC: Any = {
    "svg.fonttype": "path",  # text drawn as paths: the page looks the same without any font installed
    "svg.hashsalt": "billing-tiers-report",  # stable element ids: the same figures give the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}


def _figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    grid = figure.subplots(rows, cols, squeeze=False)
    return figure, [axes for row in grid for axes in row]


def _svg(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue().decode("utf-8")
    return _SVG_METADATA.sub("", _SVG_PROLOGUE.sub("", text, count=1), count=1).strip()


def _empty(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#555555")
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)


def _integer_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _barh_counts(axes: Axes, names: list[str], values: list[int], colours: list[str]) -> None:
    positions = list(range(len(names)))
    axes.barh(positions, values, color=colours)
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    top = max(values, default=0) or 1
    for position, value in zip(positions, values, strict=True):
        axes.text(value + top * 0.01, position, f"{value:,}", va="center", fontsize=8)
    axes.set_xlim(0, top * 1.15)
    _integer_ticks(axes.xaxis)


def _members_chart(figures: ReportFigures, program: str) -> str:
    from matplotlib import colormaps

    frame = figures.members_per_level.filter(pl.col("program") == program)
    months = figures.history_months
    held_levels = [level for level in figures.levels[program] if level != NONE_LEVEL]
    counts = {(row["level"], row["billing_month"]): row["members"] for row in frame.iter_rows(named=True)}
    figure, (axes,) = _figure(9.5, 3.0)
    without = counts.get((NONE_LEVEL, figures.label), 0)
    axes.set_title(
        f"{program}: members per level ({without:,} evaluated without a level in {figures.label})", loc="left"
    )
    if not held_levels or not any(counts.get((level, m), 0) for level in held_levels for m in months):
        _empty(axes, "no member holds a level in these months")
        return _svg(figure)
    cmap = colormaps["viridis_r"]
    bottoms = [0] * len(months)
    positions = list(range(len(months)))
    for index, level in enumerate(held_levels):
        values = [counts.get((level, m), 0) for m in months]
        shade = 0.15 + 0.75 * (index / max(1, len(held_levels) - 1)) if len(held_levels) > 1 else 0.5
        axes.bar(positions, values, bottom=bottoms, label=level, color=cmap(shade), width=0.75)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for position, total in zip(positions, bottoms, strict=True):
        axes.text(position, total, f"{total:,}", ha="center", va="bottom", fontsize=7)
    axes.set_xticks(positions, months)
    axes.set_ylabel("members")
    axes.set_ylim(0, max(bottoms) * 1.12 or 1)
    _integer_ticks(axes.yaxis)
    axes.legend(title="level", loc="upper left", bbox_to_anchor=(1.0, 1.0), reverse=True)
    return _svg(figure)


def _per_program_chart(
    figures: ReportFigures,
    frame: pl.DataFrame,
    title: str,
    name: Callable[[dict[str, Any]], str],
    colour: Callable[[dict[str, Any]], str],
    count: str,
    empty: str,
) -> str:
    programs = [p for p in figures.programs if p in set(frame["program"].to_list())]
    if not programs:
        figure, (axes,) = _figure(9.5, 1.6)
        axes.set_title(title, loc="left")
        _empty(axes, empty)
        return _svg(figure)
    cols = 2 if len(programs) > 1 else 1
    rows = (len(programs) + cols - 1) // cols
    longest = max(frame.filter(pl.col("program") == p).height for p in programs)
    figure, axes_list = _figure(9.5, 0.6 + rows * (0.5 + 0.24 * longest), rows, cols)
    figure.suptitle(title, x=0.0, ha="left", fontsize=10, fontweight="bold")
    for axes, program in zip(axes_list, programs, strict=False):
        part = list(frame.filter(pl.col("program") == program).iter_rows(named=True))
        _barh_counts(axes, [name(r) for r in part], [r[count] for r in part], [colour(r) for r in part])
        axes.set_title(program, loc="left", fontsize=9)
    for axes in axes_list[len(programs) :]:
        axes.set_visible(False)
    return _svg(figure)


def _actions_chart(figures: ReportFigures) -> str:
    return _per_program_chart(
        figures,
        figures.actions,
        f"Actions {figures.label} (subscribers per program)",
        lambda r: r["action"],
        lambda r: _ACTION_COLOURS.get(r["action"], "#999999"),
        "subscribers",
        "no tier row this month",
    )


def _cards_chart(figures: ReportFigures) -> str:
    return _per_program_chart(
        figures,
        figures.cards,
        f"Cards issued and voided {figures.label}, by reason",
        lambda r: f"{r['event']}: {r['reason']}",
        lambda r: _EVENT_COLOURS.get(r["event"], "#999999"),
        "cards",
        "no card issued or voided this month",
    )


def _grouped_bars(axes: Axes, categories: list[str], series: dict[str, list[int]], stacked: bool) -> None:
    positions = list(range(len(categories)))
    width = 0.8 if stacked else 0.8 / max(1, len(series))
    bottoms = [0] * len(categories)
    for index, (program, values) in enumerate(series.items()):
        colour = _PROGRAM_COLOURS[index % len(_PROGRAM_COLOURS)]
        if stacked:
            axes.bar(positions, values, width=width, bottom=bottoms, label=program, color=colour)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        else:
            offset = (index - (len(series) - 1) / 2) * width
            bars = axes.bar([p + offset for p in positions], values, width=width, label=program, color=colour)
            axes.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], fontsize=7)
    if stacked:
        for position, total in zip(positions, bottoms, strict=True):
            if total:
                axes.text(position, total, f"{total:,}", ha="center", va="bottom", fontsize=7)
    highest = max(bottoms if stacked else [v for values in series.values() for v in values], default=0)
    axes.set_ylim(0, highest * 1.15 or 1)
    _integer_ticks(axes.yaxis)
    axes.set_xticks(positions, categories)
    axes.set_ylabel("members")
    axes.legend(title="program", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _at_risk_chart(figures: ReportFigures) -> str:
    frame = figures.at_risk
    figure, (axes,) = _figure(9.5, 3.0)
    total = int(frame["members"].sum()) if frame.height else 0
    axes.set_title(f"Members at risk {figures.label}: {total:,}, by months to the re-rating", loc="left")
    if frame.height == 0:
        _empty(axes, "no member at risk this month")
        return _svg(figure)
    months = list(range(1, int(frame["months_to_rerating"].max() or 1) + 1))  # type: ignore[arg-type]
    by_program = frame.group_by("program", "months_to_rerating").agg(pl.col("members").sum())
    counts = {(r["program"], r["months_to_rerating"]): r["members"] for r in by_program.iter_rows(named=True)}
    programs = [p for p in figures.programs if any(counts.get((p, m)) for m in months)]
    series = {p: [counts.get((p, m), 0) for m in months] for p in programs}
    _grouped_bars(axes, [f"{m} month{'s' if m > 1 else ''}" for m in months], series, stacked=False)
    axes.set_xlabel("months to the re-rating")
    return _svg(figure)


def _needed_chart(figures: ReportFigures) -> str:
    frame = figures.needed_next_month
    figure, (axes,) = _figure(9.5, 3.0)
    axes.set_title(f"Members at risk {figures.label}: spend needed next month to keep the level (yuan)", loc="left")
    if frame.height == 0:
        _empty(axes, "no member at risk this month")
        return _svg(figure)
    labels = needed_bin_labels()
    counts = {(r["program"], r["needed_next_month"]): r["members"] for r in frame.iter_rows(named=True)}
    programs = [p for p in figures.programs if any(counts.get((p, b)) for b in labels)]
    _grouped_bars(axes, labels, {p: [counts.get((p, b), 0) for b in labels] for p in programs}, stacked=True)
    axes.set_xlabel("needed_next_month (yuan, lower bound included)")
    axes.tick_params(axis="x", labelsize=8)
    return _svg(figure)


# -------------------------------------------------------------------------------------------- HTML

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
            if _is_number(dtype):
                classes.append("n")
                if value == 0 and dtype.is_integer():
                    classes.append("zero")
            if diagonal and index > 0 and name == row[0]:
                classes.append("diag")
            if status_column and name == status_column:
                classes.append("ok" if value == "ok" else "breached")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(_cell(value))}</td>")
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
    with matplotlib.rc_context(_RC):
        members = [
            _chart(
                f"members-{program}",
                _members_chart(figures, program),
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
                    _chart("actions", _actions_chart(figures), f"Tier rows by action and program, {label}"),
                    _data(figures.actions),
                ],
            )
        )
        sections.append(
            (
                "cards",
                f"4. Cards issued and voided {label}",
                [
                    _chart("cards", _cards_chart(figures), f"Card events by event and reason, {label}"),
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
                    _chart("at-risk", _at_risk_chart(figures), f"Members at risk by months to the re-rating, {label}"),
                    _data(_with_total(figures.at_risk, "program", ["members"]), total_label="total"),
                    _chart(
                        "needed-next-month",
                        _needed_chart(figures),
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
                _html_table(_guard_display(figures), status_column="status"),
                f"<p>{html.escape(_guard_note(figures))}</p>",
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
    run_line = html.escape(_run_line(figures)).replace(
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
        f'<header><h1>{html.escape(title)}</h1><p class="run" id="run">{run_line}</p><nav>{nav}</nav></header>'
        f"<main>{body}</main></body></html>\n"
    )


def write_month_report(store: Store, month: dt.date, out: Path) -> Path:
    """Write the month's report to ``out`` (one self-contained HTML file, replaced atomically)."""
    page = month_report_html(month_report_figures(store, month))
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, out)
    return out


def write_report_and_markdown(store: Store, month: dt.date, out: Path | None) -> tuple[Path | None, str]:
    """The HTML report at ``out`` (when given) and the Markdown, from one reading of the figures."""
    figures = month_report_figures(store, month)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp")
        temporary.write_text(month_report_html(figures), encoding="utf-8")
        os.replace(temporary, out)
    return out, _markdown_figures(figures)


def default_report_path(store: Store, month: dt.date) -> Path:
    """Where a run leaves the month's report: beside its manifest."""
    return store.manifest_file(month).parent / "report.html"


__all__ = [
    "HISTORY_MONTHS",
    "NONE_LEVEL",
    "NOT_ELIGIBLE",
    "ReportFigures",
    "default_report_path",
    "members_matrix",
    "month_report_figures",
    "month_report_html",
    "month_report_markdown",
    "needed_bin_labels",
    "needed_matrix",
    "transition_matrix",
    "write_month_report",
]
