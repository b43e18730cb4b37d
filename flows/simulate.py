"""``billing-tiers simulate``: evaluate a month on its published history with another rulebook,
writing nothing to the store, and compare with what was published (SPEC 8).

The month is run by :func:`flows.run_month.run_month` reading the store but staging and publishing
into a temporary store, so the real one is never written (not even a lock file). The comparison
reads both versions; ``--out`` keeps the simulated tables and the row diff as Parquet.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from billing_tiers.errors import PipelineError
from billing_tiers.months import add_months, month_label
from billing_tiers.planning import refuse_rulebook_change
from billing_tiers.service import month_overrides
from billing_tiers.store import Store
from flows.run_month import run_month
from rulebook import Rulebook
from schemas.contract import STORE_TABLES
from transforms.compare import card_differences, level_counts, transition_matrix


@dataclass(frozen=True)
class Simulation:
    month: dt.date
    published: bool
    level_counts: pl.DataFrame
    transitions: pl.DataFrame
    card_differences: pl.DataFrame
    changed_rows: int


def simulate_month(
    *,
    store: Store,
    extracts: Path,
    month: dt.date,
    rulebook: Rulebook,
    rulebook_path: Path | None,
    buckets: int | None = None,
    out: Path | None = None,
) -> Simulation:
    """Evaluate ``month`` on the published state of the month before with ``rulebook``."""
    previous = add_months(month, -1)
    published_months = store.manifest_months()
    build_on = previous if previous in published_months else None
    if build_on is None and published_months and published_months[0] < month:
        raise PipelineError(f"month {month_label(month)} needs the published state of {month_label(previous)}")
    refuse_rulebook_change(store, build_on, rulebook)
    published_manifest = store.read_manifest(month)  # a damaged one is refused, naming the file
    published = published_manifest is not None
    with tempfile.TemporaryDirectory(prefix="billing-tiers-simulate-") as folder:
        scratch = Store(Path(folder) / "store")
        scratch.initialise()
        run_month(
            store=store,
            extracts=extracts,
            month=month,
            build_on=build_on,
            rulebook=rulebook,
            rulebook_path=rulebook_path,
            override_guards=True,  # the month is simulated, not published: show it whatever the guards say
            buckets=buckets,
            publish_into=scratch,
            overrides=month_overrides(store, [month], rulebook)[month],  # the same overrides as a run applies
        )
        simulated_tiers = scratch.read_table("tier_assignments", month)
        simulated_cards = scratch.read_table("card_issuance", month)
        if published_manifest is not None:
            published_tiers = store.read_table("tier_assignments", month, published_manifest)
            published_cards = store.read_table("card_issuance", month, published_manifest)
            changed = scratch.read_table("changes", month)
        else:
            published_tiers, published_cards = simulated_tiers.clear(), simulated_cards.clear()
            changed = simulated_tiers.clear()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            written = scratch.manifest(month)
            for table in STORE_TABLES:
                if table in written.tables:
                    scratch.scan_table(table, month, written).sink_parquet(out / f"{table}.parquet")
            if published:
                shutil.copyfile(out / "changes.parquet", out / "diff.parquet")
        return Simulation(
            month=month,
            published=published,
            level_counts=level_counts(published=published_tiers.lazy(), simulated=simulated_tiers.lazy()).collect(),
            transitions=transition_matrix(published=published_tiers.lazy(), simulated=simulated_tiers.lazy()).collect(),
            card_differences=card_differences(
                published=published_cards.lazy(), simulated=simulated_cards.lazy()
            ).collect(),
            changed_rows=changed.height,
        )
