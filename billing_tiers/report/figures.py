"""The month report's figures: small frames computed from what was read (:class:`ReportInputs`),
with no reading, writing or drawing here, so each one is tested on frames made by hand.

1. members per level per program over the last 12 published months up to B (each manifest's
   ``summary``; a null level is ``(none)``: evaluated in the program, holding no level);
2. B's transition matrix ``previous_level -> level`` per program (counted by the run into B's
   manifest; for an older manifest, from B's tier rows);
3. actions per program (B's manifest ``summary``);
4. cards issued and voided by reason per program (``card_issuance`` of B);
5. members at risk by program, level and months to the re-rating, and the distribution of
   ``needed_next_month`` in fixed yuan bins (null: ``not eligible``) (``at_risk`` of B);
6. quarantined rows by rule, 7. the guard figures and 8. the step timings (B's manifest).
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import polars as pl

from billing_tiers.months import month_label
from schemas.contract import ACTIONS, CARD_EVENTS, CARD_REASONS
from schemas.manifest import Manifest

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


@dataclass(frozen=True)
class ReportInputs:
    """Everything the figures are computed from: what :func:`billing_tiers.report.reading.read_report_inputs`
    reads from the store (manifests, and a few columns of three of the month's tables)."""

    month: dt.date
    manifest: Manifest
    """The month's manifest."""
    earlier: list[tuple[dt.date, Manifest]]
    """The manifests of the published months before it in the window (at most 11), oldest first."""
    cards: pl.DataFrame
    """program, event, reason: the month's card events."""
    at_risk: pl.DataFrame
    """program, level, months_to_rerating, needed_next_month: the month's members at risk."""
    tier_transitions: pl.DataFrame | None = None
    """program, previous_level, level of every tier row; only for a manifest without ``transitions``."""


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


def program_key(program: str) -> tuple[int, str]:
    known = _display_order()[0]
    return (known.index(program), "") if program in known else (len(known), program)


def level_key(program: str, level: str) -> tuple[int, int, str]:
    if level == NONE_LEVEL:
        return (0, 0, "")
    known = _display_order()[1].get(program, ())
    return (1, known.index(level), "") if level in known else (2, 0, level)


def _rank(values: Sequence[str], value: str) -> tuple[int, str]:
    return (values.index(value), "") if value in values else (len(values), value)


def _sorted(frame: pl.DataFrame, key: Callable[[dict[str, Any]], Any]) -> pl.DataFrame:
    """A small frame's rows in a display order computed in Python (levels in rulebook order)."""
    return pl.DataFrame(sorted(frame.iter_rows(named=True), key=key), schema=frame.schema, orient="row")


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
    return sorted(seen, key=lambda level: level_key(program, level))


def report_figures(inputs: ReportInputs) -> ReportFigures:
    """The month's report figures, from ``inputs`` only (see the module docstring)."""
    month, manifest = inputs.month, inputs.manifest
    history = [*inputs.earlier, (month, manifest)]
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
        lambda r: (program_key(r["program"]), level_key(r["program"], r["level"]), r["billing_month"]),
    )

    # (2) transitions: counted by the run itself (manifest), else from the month's tier rows
    if manifest.transitions is not None:
        counted = pl.DataFrame(
            [row.model_dump() for row in manifest.transitions],
            schema={"program": pl.String, "previous_level": pl.String, "level": pl.String, "members": pl.Int64},
        )
    else:
        rows = inputs.tier_transitions
        assert rows is not None, "a manifest without transitions needs the month's tier rows"
        counted = rows.group_by("program", "previous_level", "level").agg(members=pl.len().cast(pl.Int64))
    transitions = (
        counted.with_columns(pl.col("previous_level", "level").fill_null(NONE_LEVEL))
        .group_by("program", "previous_level", "level")
        .agg(pl.col("members").sum().cast(pl.Int64))
    )
    transitions = _sorted(
        transitions,
        lambda r: (
            program_key(r["program"]),
            level_key(r["program"], r["previous_level"]),
            level_key(r["program"], r["level"]),
        ),
    )

    # (3) actions from the month's summary
    actions = _summary_rows(manifest).group_by("program", "action").agg(subscribers=pl.col("subscribers").sum())
    actions = _sorted(actions, lambda r: (program_key(r["program"]), _rank(ACTIONS, r["action"])))

    # (4) card events
    cards = inputs.cards.group_by("program", "event", "reason").agg(cards=pl.len().cast(pl.Int64))
    cards = _sorted(
        cards,
        lambda r: (program_key(r["program"]), _rank(CARD_EVENTS, r["event"]), _rank(CARD_REASONS, r["reason"])),
    )

    # (5) members at risk and what they need next month
    risk_rows = inputs.at_risk
    at_risk = risk_rows.group_by("program", "level", "months_to_rerating").agg(members=pl.len().cast(pl.Int64))
    at_risk = _sorted(
        at_risk,
        lambda r: (program_key(r["program"]), level_key(r["program"], r["level"]), r["months_to_rerating"]),
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
    risk_programs = sorted(set(risk_rows["program"].to_list()), key=program_key)
    needed = (
        pl.DataFrame({"program": risk_programs}, schema={"program": pl.String})
        .join(pl.DataFrame({"bin": labels}), how="cross")
        .join(counted, on=["program", "bin"], how="left")
        .with_columns(pl.col("members").fill_null(0))
        .rename({"bin": "needed_next_month"})
    )
    needed = _sorted(needed, lambda r: (program_key(r["program"]), labels.index(r["needed_next_month"])))

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
        key=program_key,
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
    programs = sorted(set(frame["program"].to_list()), key=program_key)
    counts = {(row["program"], row["needed_next_month"]): row["members"] for row in frame.iter_rows(named=True)}
    rows = []
    for bin_label in needed_bin_labels():
        cells = {program: counts.get((program, bin_label), 0) for program in programs}
        rows.append({"needed_next_month (yuan)": bin_label, **cells, "total": sum(cells.values())})
    schema = {"needed_next_month (yuan)": pl.String, **dict.fromkeys(programs, pl.Int64), "total": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def guard_display(figures: ReportFigures) -> pl.DataFrame:
    return figures.guards.with_columns(
        pl.col("ratio").map_elements(percent, return_dtype=pl.String),
        pl.col("limit").map_elements(percent, return_dtype=pl.String),
    )


def percent(value: float | None) -> str:
    return "" if value is None else f"{value:.2%}"
