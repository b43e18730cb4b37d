"""The differential test over what a store publishes: random histories are written as extract files,
approved overrides written to the store's ledger by the override commands' functions, published by
the application layer's backfill (as the CLI and the flows run it) in 3 buckets, read back through
the store's verified reader, and compared month by month with the reference model
(every column of tier rows, card events, members at risk, state and memberships). Reading, cleaning,
bucketing and publishing are inside the comparison.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings

from billing_tiers.months import parse_month
from billing_tiers.overrides import add_overrides, approve_overrides, parse_request
from billing_tiers.service import RunRequest, run_request
from billing_tiers.store import Store
from rulebook import load_rulebook
from tests.differential import FIXED_CASES, Case, Coverage, compare_month, histories, rulebook_toml
from tests.extract_factory import row, write_extract
from tests.reference_model import ReferenceModel, month_index, month_label
from tests.stores import new_store

EXAMPLES = int(os.environ.get("BT_PUBLISHED_EXAMPLES", "3"))
"""Random histories published per run (each a whole backfill, several seconds); search deeper with 50."""

BUCKETS = 3
COMPARED = ("tier_assignments", "card_issuance", "at_risk", "state", "memberships")


def with_filler(monthly: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Every month gets one steady subscriber, so no month's extract is empty (an empty extract is
    refused by design); engine and reference see the same rows."""
    return [[*rows, row("zz-steady", "10.00")] for rows in monthly]


def record_overrides(case: Case, store: Store, labels: list[str]) -> Case:
    """Write the case's overrides to the store's ledger through the commands' own functions (added by
    one person, approved by another) and return the case with the ids the ledger assigned."""
    if not case.overrides:
        return case
    rulebook = load_rulebook()
    requests = [
        parse_request(
            {
                "program": p.override.program,
                "subscriber_id": p.override.subscriber_id,
                "kind": p.override.kind,
                "level": p.override.level,
                "first_month": labels[p.first],
                "last_month": labels[p.last] if p.last is not None and p.last < len(labels) else None,
                "reason": p.override.reason,
            },
            rulebook,
            "bundled rulebook",
        )
        for p in case.overrides
    ]
    ids = add_overrides(store, requests, by="card office clerk")
    approve_overrides(store, ids, by="card office lead")
    planned = tuple(
        dataclasses.replace(p, override=dataclasses.replace(p.override, override_id=override_id))
        for p, override_id in zip(case.overrides, ids, strict=True)
    )
    return dataclasses.replace(case, overrides=planned)


def publish_and_compare(case: Case, workdir: Path, coverage: Coverage) -> None:
    settings_, first, monthly = case.settings, case.first, with_filler(case.monthly)
    extracts, store = workdir / "extracts", new_store(workdir / "store")
    start = month_index(first)
    labels = [month_label(start + offset) for offset in range(len(monthly))]
    for label, rows in zip(labels, monthly, strict=True):
        write_extract(extracts, label, rows)
    rulebook = workdir / "rulebook.toml"
    rulebook.write_text(rulebook_toml(settings_), encoding="utf-8")

    case = record_overrides(case, Store(store), labels)
    run_request(
        RunRequest(
            command="backfill",
            store=store,
            first=parse_month(first),
            extracts=extracts,
            rulebook=rulebook,
            override_guards=True,  # random histories drop many subscribers from month to month
            buckets=BUCKETS,
        )
    )
    reader = Store(store)
    reference = ReferenceModel(settings_)
    for label, rows in zip(labels, monthly, strict=True):
        month = parse_month(label)
        tables = {name: reader.read_table(name, month) for name in COMPARED}
        assert reader.manifest(month).buckets == BUCKETS
        compare_month(label, tables, reference.run(label, rows, case.in_force(labels.index(label))))
        coverage.add(tables)


@pytest.mark.slow
def test_published_months_match_reference(tmp_path_factory: pytest.TempPathFactory) -> None:
    coverage = Coverage()

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(histories(max_subscribers=12))
    @example(FIXED_CASES[0])
    @example(FIXED_CASES[1])
    def check(case: Case) -> None:
        publish_and_compare(case, tmp_path_factory.mktemp("published"), coverage)

    check()
    # The fixed histories alone reach the rare transitions; the random ones add the common ones.
    assert not coverage.missing().get("card reasons"), coverage.missing()
    assert not coverage.missing().get("reason codes"), coverage.missing()
