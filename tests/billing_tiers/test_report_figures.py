"""The report's figures as pure frames: computed from inputs made by hand (two manifests and a few
rows), with no store, checked cell by cell: zeros filled in, levels and actions in rulebook order,
needed_next_month binned, guards judged, and the matrices' totals."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import polars as pl

from billing_tiers.report import (
    ReportInputs,
    markdown_report,
    members_matrix,
    needed_matrix,
    report_figures,
    transition_matrix,
)
from schemas.contract import AT_RISK
from schemas.manifest import Manifest
from tests.stores import make_manifest

JAN, FEB = dt.date(2024, 1, 1), dt.date(2024, 2, 1)
VIP = "unicom_vip"


def summary(*rows: tuple[str | None, str, int]) -> list[dict[str, Any]]:
    return [{"program": VIP, "level": level, "action": action, "subscribers": n} for level, action, n in rows]


def february(**fields: Any) -> Manifest:
    values: dict[str, Any] = {
        "summary": summary(("silver", "retain", 1), ("gold", "upgrade", 1), (None, "none", 7), (None, "lapse", 1)),
        "transitions": [
            {"program": VIP, "previous_level": None, "level": None, "members": 8},
            {"program": VIP, "previous_level": "silver", "level": "gold", "members": 1},
            {"program": VIP, "previous_level": "silver", "level": "silver", "members": 1},
        ],
        "quarantine_by_rule": {"a_rule": 1, "c_rule": 3, "b_rule": 3},
        "guards": {
            "quarantined_rows": 2,
            "rows_after_duplicates": 100,
            "quarantine_ratio": 0.02,
            "max_quarantine_ratio": "0.01",
            "previous_subscribers": 10,
            "missing_subscribers": 0,
            "missing_ratio": 0.0,
            "max_missing_ratio": "0.05",
            "breached": ["2 of 100 rows quarantined"],
            "overridden": True,
            "override_flag": True,
        },
        "timings_seconds": {"read_extract": 0.5, "total": 2.0},
        "bucket_seconds_summed": {"evaluate": 1.25},
    }
    return make_manifest("2024-02", "run-feb", **{**values, **fields})


def inputs(manifest: Manifest, tier_transitions: pl.DataFrame | None = None) -> ReportInputs:
    january = make_manifest("2024-01", "run-jan", summary=summary(("silver", "new", 2), (None, "none", 8)))
    return ReportInputs(
        month=FEB,
        manifest=manifest,
        earlier=[(JAN, january)],
        cards=pl.DataFrame(
            {"program": [VIP] * 3, "event": ["void", "issue", "issue"], "reason": ["lapsed", "new", "new"]}
        ),
        at_risk=pl.DataFrame(
            {
                "program": [VIP] * 3,
                "level": ["gold", "gold", "silver"],
                "months_to_rerating": [1, 2, 1],
                "needed_next_month": [Decimal("49.99"), None, Decimal("5000.00")],
            },
            schema={
                name: AT_RISK.schema[name] for name in ("program", "level", "months_to_rerating", "needed_next_month")
            },
        ),
        tier_transitions=tier_transitions,
    )


def test_every_figure_from_inputs_made_by_hand() -> None:
    figures = report_figures(inputs(february()))
    assert figures.programs == [VIP]
    assert figures.levels == {VIP: ["(none)", "silver", "gold"]}  # rulebook order, none first
    assert figures.history_months == ["2024-01", "2024-02"]
    assert figures.members_per_level.rows() == [  # every (month, level), zeros included
        ("2024-01", VIP, "(none)", 8),
        ("2024-02", VIP, "(none)", 8),
        ("2024-01", VIP, "silver", 2),
        ("2024-02", VIP, "silver", 1),
        ("2024-01", VIP, "gold", 0),
        ("2024-02", VIP, "gold", 1),
    ]
    assert figures.transitions.rows() == [(VIP, "(none)", "(none)", 8), (VIP, "silver", "silver", 1),
                                          (VIP, "silver", "gold", 1)]  # fmt: skip
    assert figures.actions.rows() == [(VIP, "none", 7), (VIP, "upgrade", 1), (VIP, "retain", 1), (VIP, "lapse", 1)]
    assert figures.cards.rows() == [(VIP, "issue", "new", 2), (VIP, "void", "lapsed", 1)]
    assert figures.at_risk.rows() == [(VIP, "silver", 1, 1), (VIP, "gold", 1, 1), (VIP, "gold", 2, 1)]
    needed = {bin_: n for _, bin_, n in figures.needed_next_month.rows()}
    assert needed == {"0–50": 1, "50–100": 0, "100–200": 0, "200–300": 0, "300–500": 0, "500–1000": 0,
                      "1000–2000": 0, "2000–5000": 0, "≥ 5000": 1, "not eligible": 1}  # fmt: skip
    assert figures.quarantine_by_rule.rows() == [("b_rule", 3), ("c_rule", 3), ("a_rule", 1)]
    assert [row["status"] for row in figures.guards.iter_rows(named=True)] == ["breached, overridden", "ok"]
    assert figures.guards.row(0, named=True) == {
        "guard": "quarantined rows / rows after duplicates",
        "count": 2,
        "out_of": 100,
        "ratio": 0.02,
        "limit": 0.01,
        "status": "breached, overridden",
    }
    assert figures.guard_flags == {"breached": ["2 of 100 rows quarantined"], "overridden": True, "override_flag": True}
    assert figures.timings.rows() == [("run", "read_extract", 0.5), ("run", "total", 2.0),
                                      ("buckets (summed)", "evaluate", 1.25)]  # fmt: skip
    assert figures.run["run_id"] == "run-feb" and figures.chart_count == 5


def test_the_matrices_add_up() -> None:
    figures = report_figures(inputs(february()))
    assert transition_matrix(figures, VIP).rows() == [
        ("(none)", 8, 0, 0, 8),
        ("silver", 0, 1, 1, 2),
        ("gold", 0, 0, 0, 0),
        ("total", 8, 1, 1, 10),
    ]
    assert members_matrix(figures).rows() == [(VIP, "(none)", 8, 8), (VIP, "silver", 2, 1), (VIP, "gold", 0, 1)]
    matrix = needed_matrix(figures)
    assert matrix.columns == ["needed_next_month (yuan)", VIP, "total"]
    assert matrix["total"].sum() == 3
    text = markdown_report(figures)
    assert "| b_rule | 3 |" in text and "breached, overridden" in text


def test_a_manifest_without_transitions_counts_them_from_the_tier_rows() -> None:
    rows = pl.DataFrame(
        {"program": [VIP] * 3, "previous_level": ["silver", None, None], "level": ["gold"] + [None] * 2}
    )
    figures = report_figures(inputs(february(transitions=None), tier_transitions=rows))
    assert figures.transitions.rows() == [(VIP, "(none)", "(none)", 2), (VIP, "silver", "gold", 1)]
