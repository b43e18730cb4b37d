"""``billing-tiers explain``: why a subscriber has the level it has in a month, as data and as lines.

For each program row: the action and levels, effective date, validity and card, the reason and its
code, what holds a retained level, the first eligibility condition that fails, whether the member is
at risk (re-rating date, the amount needed next month, the threshold it misses) and every metric;
and, for a subscriber absent from the month, the quarantined row or the absence. Reads only the store
(verified parts) and the rulebook; prints nothing itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import polars as pl

from billing_tiers.display import ABSENT, literal
from billing_tiers.errors import PipelineError
from billing_tiers.member import failing_condition, last_seen_attributes, quarantined_rows, why_held
from billing_tiers.months import add_months, month_label
from billing_tiers.store import Store
from rulebook import AverageBillProgram, PaidSpendProgram, Rulebook
from schemas.contract import METRIC_COLUMNS
from transforms.money import yuan_text


@dataclass
class ProgramExplanation:
    row: dict[str, Any]
    at_risk: dict[str, Any] | None
    lines: list[str] = field(default_factory=list)


def _fen(amount: Decimal) -> int:
    return int(amount * 100)


def _shown(value: Any) -> str:
    return ABSENT if value is None else literal(value)


def missed_threshold(rulebook: Rulebook, row: dict[str, Any], attributes: dict[str, Any] | None) -> str | None:
    """The threshold of the level held that this month's figures miss, in words; None when the
    program has no spend threshold or the attributes it needs are not kept."""
    program = rulebook.enabled_programs().get(row["program"])
    level = row["level"]
    if program is None or level is None:
        return None
    match program:
        case AverageBillProgram():
            spec = program.thresholds[level]
            service = (attributes or {}).get("service_type")
            if service is None:
                return None
            threshold = spec.min_avg_billed[service]
            average = row["avg_billed_6m"]
            # floor(sum / divisor) >= t  <=>  sum >= t * divisor, for a whole-fen threshold t
            op = ">=" if _fen(average) >= threshold else "<"
            words = f"avg_billed_6m {average} {op} {yuan_text(threshold)} ({level}, {service})"
            if spec.customer_type is not None and (attributes or {}).get("customer_type") not in spec.customer_type:
                words += f"; customer_type must be {' or '.join(spec.customer_type)}"
            return words
        case PaidSpendProgram():
            paid = program.thresholds[level]
            parts = []
            if paid.min_cum_paid is not None:
                op = ">=" if _fen(row["cum_paid"]) >= paid.min_cum_paid else "<"
                parts.append(f"cum_paid {row['cum_paid']} {op} {yuan_text(paid.min_cum_paid)}")
            if paid.min_month_paid is not None:
                op = ">=" if _fen(row["month_paid"]) >= paid.min_month_paid else "<"
                parts.append(f"month_paid {row['month_paid']} {op} {yuan_text(paid.min_month_paid)}")
            return f"{' and '.join(parts)} ({level})" if parts else None
        case _:
            return None


def override_lines(store: Store, override_ids: set[str]) -> dict[str, str]:
    """Each override id as people read it: kind, level, months, reason, who requested and approved it."""
    if not override_ids:
        return {}
    from billing_tiers.overrides import current_overrides, read_ledger

    known = current_overrides(read_ledger(store)).filter(pl.col("override_id").is_in(sorted(override_ids)))
    lines = {}
    for o in known.iter_rows(named=True):
        level = f" {o['level']}" if o["level"] else ""
        months = f"{o['first_month']}..{o['last_month'] or 'open'}"
        lines[o["override_id"]] = (
            f"override {o['override_id']}: {o['kind']}{level} in {literal(o['program'])}, {months} ({o['status']}); "
            f"reason: {literal(o['reason'])}"
            + (f"; ticket {literal(o['ticket'])}" if o.get("ticket") else "")
            + f"; requested by {literal(o['requested_by'])}, approved by {literal(o['approved_by'] or '-')}"
        )
    return lines


def _risk_line(month: dt.date, row: dict[str, Any], risk: dict[str, Any], missed: str | None) -> str:
    next_month = month_label(add_months(month, 1))
    level = risk["level"]
    if risk["needed_next_month"] is None:
        need = f"no amount in {next_month} keeps {level} (a condition other than spend fails)"
    else:
        need = f"needs {risk['needed_next_month']} in {next_month} to keep {level}"
    line = f"at risk: re-rated on {risk['rerated_on']}; {need}"
    return line + (f"; misses {missed}" if missed else "")


def explain_member(
    store: Store, month: dt.date, subscriber: str, program: str | None, rulebook: Rulebook
) -> tuple[list[ProgramExplanation], list[str]]:
    """Each program row of the subscriber in ``month`` explained, and the lines about the month's
    extract (quarantined row or absence). A subscriber with no tier row is a refusal."""
    label = month_label(month)
    rows = store.scan_table("tier_assignments", month).filter(pl.col("subscriber_id") == subscriber).collect()
    if program:
        rows = rows.filter(pl.col("program") == program)
    if rows.height == 0:
        raise PipelineError(
            f"month {label}: no tier row for subscriber '{literal(subscriber)}'"
            + (f" in program {literal(program)}" if program else "")
        )
    risks = {
        r["program"]: r
        for r in store.scan_table("at_risk", month)
        .filter(pl.col("subscriber_id") == subscriber)
        .collect()
        .iter_rows(named=True)
    }
    attributes = last_seen_attributes(store, month, subscriber)
    overrides = override_lines(store, {r for r in rows.get_column("override_id").drop_nulls()})
    explained = []
    for row in rows.iter_rows(named=True):
        risk = risks.get(row["program"])
        item = ProgramExplanation(row=row, at_risk=risk)
        item.lines.append(f"{literal(row['program'])} {literal(subscriber)} {label} (evaluated {row['evaluated_on']})")
        item.lines.append(
            f"  action {row['action']}: {row['previous_level'] or 'none'} -> {row['level'] or 'none'}"
            f" (qualified: {row['qualified_level'] or 'none'}), effective {_shown(row['effective_on'])}"
        )
        if row["valid_until"]:
            item.lines.append(f"  valid {row['valid_from']} .. {row['valid_until']}, card {_shown(row['card_id'])}")
        reason = row["reason"] or why_held(row) or "(level unchanged)"
        code = f" [{row['reason_code']}]" if row["reason_code"] else ""
        item.lines.append(f"  reason{code}: {literal(reason)}")
        if row.get("override_id"):
            item.lines.append(f"  {overrides.get(row['override_id'], 'override ' + literal(row['override_id']))}")
        if risk is not None:
            missed = missed_threshold(rulebook, row, attributes)
            item.lines.append(f"  {_risk_line(month, row, risk, missed)}")
        if not row["eligible"]:
            failing = failing_condition(rulebook, row["program"], attributes) if attributes else None
            item.lines.append(
                f"  not eligible: {literal(failing or 'attributes not kept (the subscriber left the state)')}"
            )
        metrics = ", ".join(f"{name} {_shown(row[name])}" for name in METRIC_COLUMNS if row.get(name) is not None)
        item.lines.append(f"  {metrics}")
        explained.append(item)
    notes: list[str] = []
    if not explained[0].row["present"]:
        quarantined = quarantined_rows(store, month, subscriber)
        for q in quarantined.iter_rows(named=True):
            notes.append(
                f"  quarantined this month: rule {q['rule']} in {literal(q['source_file'])} row {q['source_row']}"
                f" ({literal(q['broken_rules'])})"
            )
        if quarantined.height == 0:
            notes.append("  absent this month: no row in the extract")
    return explained, notes
