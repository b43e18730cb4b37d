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
from billing_tiers.history import refuse_rulebook_change
from billing_tiers.months import add_months, month_label
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


def _month_table(store: Store, table: str, month: dt.date) -> pl.LazyFrame:
    return pl.scan_parquet(store.month_dir(table, month) / "*.parquet")


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
    published = store.read_manifest(month) is not None
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
        )
        simulated_tiers = _month_table(scratch, "tier_assignments", month).collect()
        simulated_cards = _month_table(scratch, "card_issuance", month).collect()
        if published:
            published_tiers = _month_table(store, "tier_assignments", month).collect()
            published_cards = _month_table(store, "card_issuance", month).collect()
        else:
            published_tiers, published_cards = simulated_tiers.clear(), simulated_cards.clear()
        changed = _month_table(scratch, "changes", month).collect() if published else simulated_tiers.clear()
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            for table in STORE_TABLES:
                source = scratch.month_dir(table, month)
                if source.is_dir():
                    pl.scan_parquet(source / "*.parquet").sink_parquet(out / f"{table}.parquet")
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
