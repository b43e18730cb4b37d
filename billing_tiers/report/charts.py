"""The report's charts: each figure drawn by matplotlib as a static SVG string (text as paths, stable
ids, no metadata), so the same figures always give the same bytes."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from billing_tiers.report.figures import NONE_LEVEL, ReportFigures, needed_bin_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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
RC: Any = {
    # Text stays text (the browser draws it in its sans-serif font): as paths it took a third of the
    # report's time, and the page stays self-contained either way.
    "svg.fonttype": "none",
    "svg.hashsalt": "billing-tiers-report",  # stable element ids: the same figures give the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "legend.frameon": False,
}


CHARACTER_INCHES = 0.075
"""The width of one character of 9-point text, a little above the average of a sans-serif font."""


def text_inches(texts: Iterable[str], size: float = 9) -> float:
    """About how wide the longest of ``texts`` is in inches, at ``size`` points."""
    return max((len(text) for text in texts), default=0) * CHARACTER_INCHES * size / 9


def count_inches(largest: float) -> float:
    """About how wide a tick label of a count up to ``largest`` is (with thousands separators)."""
    return text_inches([f"{int(largest * 1.2):,}"])


@dataclass(frozen=True)
class Margins:
    """Room around the axes, in inches: the charts are laid out from their texts' lengths, never by
    drawing them twice (matplotlib's constrained layout took 40 % of the report's time)."""

    left: float = 0.6
    right: float = 0.25
    top: float = 0.4
    bottom: float = 0.45
    between_columns: float = 0.0
    between_rows: float = 0.0


def _figure(
    width: float, height: float, rows: int = 1, cols: int = 1, margins: Margins | None = None
) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    room = margins or Margins()
    figure = Figure(figsize=(width, height))
    axes_width = (width - room.left - room.right - (cols - 1) * room.between_columns) / cols
    axes_height = (height - room.top - room.bottom - (rows - 1) * room.between_rows) / rows
    figure.subplots_adjust(
        left=room.left / width,
        right=1 - room.right / width,
        bottom=room.bottom / height,
        top=1 - room.top / height,
        wspace=room.between_columns / max(axes_width, 0.1),
        hspace=room.between_rows / max(axes_height, 0.1),
    )
    grid = figure.subplots(rows, cols, squeeze=False)
    return figure, [axes for row in grid for axes in row]


LEGEND_INCHES = 0.6
"""A legend's handle and padding, beside its longest text."""


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


def members_chart(figures: ReportFigures, program: str) -> str:
    from matplotlib import colormaps

    frame = figures.members_per_level.filter(pl.col("program") == program)
    months = figures.history_months
    held_levels = [level for level in figures.levels[program] if level != NONE_LEVEL]
    counts = {(row["level"], row["billing_month"]): row["members"] for row in frame.iter_rows(named=True)}
    totals = [sum(counts.get((level, m), 0) for level in held_levels) for m in months]
    figure, (axes,) = _figure(
        9.5,
        3.0,
        margins=Margins(
            left=0.35 + count_inches(max(totals, default=0)),
            right=LEGEND_INCHES + text_inches(["level", *held_levels]),
        ),
    )
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
    names = text_inches([name(r) for r in frame.iter_rows(named=True)]) + 0.15
    value_labels = count_inches(max(frame[count].max() or 0, 1))  # type: ignore[arg-type]
    figure, axes_list = _figure(
        9.5,
        0.6 + rows * (0.5 + 0.24 * longest) + (rows - 1) * 0.6,
        rows,
        cols,
        Margins(
            left=names,
            right=value_labels,
            top=0.65,
            bottom=0.4,
            between_columns=names + value_labels,
            between_rows=0.7,
        ),
    )
    figure.suptitle(title, x=0.0, ha="left", fontsize=10, fontweight="bold")
    for axes, program in zip(axes_list, programs, strict=False):
        part = list(frame.filter(pl.col("program") == program).iter_rows(named=True))
        _barh_counts(axes, [name(r) for r in part], [r[count] for r in part], [colour(r) for r in part])
        axes.set_title(program, loc="left", fontsize=9)
    for axes in axes_list[len(programs) :]:
        axes.set_visible(False)
    return _svg(figure)


def actions_chart(figures: ReportFigures) -> str:
    return _per_program_chart(
        figures,
        figures.actions,
        f"Actions {figures.label} (subscribers per program)",
        lambda r: r["action"],
        lambda r: _ACTION_COLOURS.get(r["action"], "#999999"),
        "subscribers",
        "no tier row this month",
    )


def cards_chart(figures: ReportFigures) -> str:
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


def _program_legend_margins(figures: ReportFigures, frame: pl.DataFrame) -> Margins:
    """Bars of members per program with the program legend on the right."""
    return Margins(
        left=0.35 + count_inches(int(frame["members"].sum()) if frame.height else 0),  # the total bounds any bar
        right=LEGEND_INCHES + text_inches(["program", *figures.programs]),
        bottom=0.65,
    )


def at_risk_chart(figures: ReportFigures) -> str:
    frame = figures.at_risk
    figure, (axes,) = _figure(9.5, 3.0, margins=_program_legend_margins(figures, frame))
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


def needed_chart(figures: ReportFigures) -> str:
    frame = figures.needed_next_month
    figure, (axes,) = _figure(9.5, 3.0, margins=_program_legend_margins(figures, frame))
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
