"""What the month report reads from the store, and nothing else: B's manifest, the manifests of the
11 published months before B, and at most four columns of two of B's tables (three for a manifest
written before the run counted transitions), from the part files B's manifest lists, each checked
against its checksum. A month's report costs the same however long the history is.

A month whose part files do not match its manifest is refused, naming the file: its figures could
be wrong even where they come from the manifest.
"""

from __future__ import annotations

import datetime as dt

import polars as pl

from billing_tiers.errors import PipelineError
from billing_tiers.health import table_damage
from billing_tiers.months import month_label
from billing_tiers.report.figures import HISTORY_MONTHS, ReportFigures, ReportInputs, report_figures
from billing_tiers.store import Store, repair_hint
from schemas.contract import AT_RISK, CARD_ISSUANCE, TIER_ASSIGNMENTS, Table
from schemas.manifest import Manifest


def _manifest(store: Store, month: dt.date) -> Manifest:
    manifest = store.read_manifest(month)
    if manifest is None:
        raise PipelineError(f"month {month_label(month)}: not published (no manifest in {store.root})")
    return manifest


def _refuse_damaged(store: Store, month: dt.date, manifest: Manifest) -> None:
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


def read_report_inputs(store: Store, month: dt.date) -> ReportInputs:
    """What the figures of ``month`` are computed from (see the module docstring)."""
    manifest = _manifest(store, month)
    _refuse_damaged(store, month, manifest)
    window = [m for m in store.manifest_months() if m < month][-(HISTORY_MONTHS - 1) :]
    earlier = [(m, found) for m in window if (found := store.read_manifest(m)) is not None]
    tier_transitions = None
    if manifest.transitions is None:
        tier_transitions = _month_columns(
            store, manifest, TIER_ASSIGNMENTS, month, ["program", "previous_level", "level"]
        )
    return ReportInputs(
        month=month,
        manifest=manifest,
        earlier=earlier,
        cards=_month_columns(store, manifest, CARD_ISSUANCE, month, ["program", "event", "reason"]),
        at_risk=_month_columns(
            store, manifest, AT_RISK, month, ["program", "level", "months_to_rerating", "needed_next_month"]
        ),
        tier_transitions=tier_transitions,
    )


def month_report_figures(store: Store, month: dt.date) -> ReportFigures:
    """The month's report figures, read from the store only."""
    return report_figures(read_report_inputs(store, month))
