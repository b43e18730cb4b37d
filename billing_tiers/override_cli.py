"""``billing-tiers override``: manual grants and blocks with an audit trail (SPEC 9).

A thin adapter over :mod:`billing_tiers.overrides`, in the style of :mod:`billing_tiers.cli`: every
refusal is one line on stderr and exit 2, and writes nothing; ``add`` and ``import`` print only the
new ids, one a line; ``list`` and ``log`` print a table (tab-separated lines in a pipe) or, with
``--json``, one JSON array; ids, names and reasons are printed literally, never as markup.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import polars as pl
import typer

from billing_tiers import display
from billing_tiers.errors import PipelineError
from billing_tiers.overrides import MONTHS_FIELD, FieldError
from schemas.contract import OVERRIDE_IMPORT_HEADER, OVERRIDE_LEDGER, OVERRIDE_LIST_KEYS

if TYPE_CHECKING:
    from billing_tiers.store import Store
    from rulebook import Rulebook

override_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Manual decisions: grant a level or block a program for a subscriber, with four-eyes approval "
    "and an append-only ledger.",
)

StoreOption = Annotated[Path, typer.Option("--store", help="The store folder (made with `billing-tiers init`).")]
ByOption = Annotated[
    str, typer.Option("--by", help="Your name, recorded in the ledger (with the operating-system user).")
]
RulebookOption = Annotated[
    Path | None, typer.Option("--rulebook", help="Rulebook TOML: the allowed programs and levels (default: bundled).")
]
JsonOption = Annotated[bool, typer.Option("--json", metavar=" ", help="Print one JSON array instead of text.")]
DebugOption = Annotated[bool, typer.Option("--debug", metavar=" ", help="Show tracebacks.")]

FLAGS = {
    "program": "--program",
    "subscriber_id": "--subscriber",
    "kind": "--kind",
    "level": "--level",
    "first_month": "--from",
    "last_month": "--to",
    MONTHS_FIELD: "--from/--to",
    "reason": "--reason",
    "ticket": "--ticket",
    "by": "--by",
    "revoke_from": "--from",
    "month": "--month",
}
"""The option an operator typed for each field a refusal names."""

LIST_COLUMNS = ("override_id", "status", "program", "subscriber_id", "kind", "level", "months", "requested_by",
                "approved_by", "ticket", "reason")  # fmt: skip
LOG_COLUMNS = ("sequence", "recorded_at", "entry", "override_id", "by", "os_user", "program", "subscriber_id",
               "kind", "level", "first_month", "last_month", "revoke_from", "ticket", "reason")  # fmt: skip
PENDING_COLUMNS = ("override_id", "program", "subscriber_id", "kind", "level", "months", "requested_by", "reason")

T = TypeVar("T")


def _run(debug: bool, store: Path, action: Callable[[], T]) -> T:
    """Run ``action`` as every command does (:func:`billing_tiers.cli._guarded`), a field an operator
    gave named by its option."""
    from billing_tiers.cli import _guarded

    def flagged() -> T:
        try:
            return action()
        except FieldError as exc:
            raise PipelineError(f"{FLAGS.get(exc.field, exc.field)}: {exc.problem}") from None

    return _guarded(debug, flagged, store)


def _rulebook(path: Path | None) -> tuple[Rulebook, str]:
    from rulebook import load_rulebook

    return load_rulebook(path), (f"rulebook {path}" if path is not None else "bundled rulebook")


def _store(path: Path) -> Store:
    from billing_tiers.store import Store

    return Store(path).require()


def effective_months(row: Mapping[str, Any]) -> str:
    """An override's effective months as ``list`` shows them: ``2024-03..2024-08``, ``2024-03..open``,
    or ``none`` once a revoke from a month at or before its first month removed it."""
    if row["removed"]:
        return "none"
    return f"{row['first_month']}..{row['last_month'] or 'open'}"


def _print_ids(ids: Iterable[str]) -> None:
    for override_id in ids:
        display.line(display.literal(override_id))


@override_app.command("add")
def add(
    store: StoreOption,
    program: Annotated[str, typer.Option("--program", help="The program (enabled in the rulebook).")],
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id")],
    kind: Annotated[str, typer.Option("--kind", help="grant or block.")],
    start: Annotated[str, typer.Option("--from", help="First billing month YYYY-MM.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (required).")],
    by: ByOption,
    level: Annotated[str | None, typer.Option("--level", help="The level a grant gives (none for a block).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last billing month YYYY-MM (default: open).")] = None,
    ticket: Annotated[str | None, typer.Option("--ticket", help="A reference, e.g. the case number.")] = None,
    rulebook: RulebookOption = None,
    debug: DebugOption = False,
) -> None:
    """Request an override (pending until someone else approves it); prints its id."""
    from billing_tiers.overrides import add_overrides, parse_request

    def action() -> list[str]:
        the_store = _store(store)
        rules, label = _rulebook(rulebook)
        fields = {"program": program, "subscriber_id": subscriber, "kind": kind, "level": level,
                  "first_month": start, "last_month": end, "reason": reason, "ticket": ticket}  # fmt: skip
        return add_overrides(the_store, [parse_request(fields, rules, label)], by)

    _print_ids(_run(debug, store, action))


@override_app.command("import")
def import_(
    store: StoreOption,
    file: Annotated[Path, typer.Option("--file", help=f"CSV with the header {','.join(OVERRIDE_IMPORT_HEADER)}.")],
    by: ByOption,
    rulebook: RulebookOption = None,
    debug: DebugOption = False,
) -> None:
    """Request every override of a CSV file, all or nothing; prints their ids in file order."""
    from billing_tiers.overrides import import_overrides

    def action() -> list[str]:
        the_store = _store(store)
        rules, label = _rulebook(rulebook)
        return import_overrides(the_store, file, by, rules, label)

    _print_ids(_run(debug, store, action))


@override_app.command("approve")
def approve(
    store: StoreOption,
    by: ByOption,
    ids: Annotated[list[str] | None, typer.Argument(metavar="ID", help="Override ids.", show_default=False)] = None,
    debug: DebugOption = False,
) -> None:
    """Approve pending overrides, all or none; the name that requested one may not approve it."""
    from billing_tiers.overrides import approve_overrides

    approved = _run(debug, store, lambda: approve_overrides(_store(store), ids or [], by))
    for override_id in approved:
        display.line(f"{display.literal(override_id)} approved")


@override_app.command("revoke")
def revoke(
    override_id: Annotated[str, typer.Argument(metavar="ID", help="The override id.")],
    store: StoreOption,
    start: Annotated[str, typer.Option("--from", help="First billing month YYYY-MM it no longer applies to.")],
    by: ByOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (required).")],
    debug: DebugOption = False,
) -> None:
    """Stop an override from a month on (no approval needed); from its first month or earlier it never applies."""
    from billing_tiers.overrides import revoke_override

    row = _run(debug, store, lambda: revoke_override(_store(store), override_id, start, by, reason))
    left = "it has no effective month left" if row["removed"] else f"its effective months are {effective_months(row)}"
    display.line(f"{display.literal(override_id)} revoked from {row['revoke_from']}; {left}")


@override_app.command("list")
def list_(
    store: StoreOption,
    month: Annotated[
        str | None, typer.Option("--month", help="Only the overrides whose effective months hold this month.")
    ] = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Every override with its current state (pending, approved, revoked) and effective months.

    An override applies in a month when it was approved and the month is within its effective months."""
    from billing_tiers.overrides import check_month, current_overrides

    def action() -> pl.DataFrame:
        found = current_overrides(_store(store))
        if month is None:
            return found
        label = check_month(month, "month")
        return found.filter(
            pl.col("first_month") <= label, pl.col("last_month").is_null() | (pl.col("last_month") >= label)
        )

    found = _run(debug, store, action)
    if as_json:
        display.print_json([{key: row[key] for key in OVERRIDE_LIST_KEYS} for row in found.iter_rows(named=True)])
        return
    title = f"overrides in store {store}" + (f" covering {month}" if month else "")
    rows = ({**row, "months": effective_months(row)} for row in found.iter_rows(named=True))
    display.table(title, LIST_COLUMNS, ([row[c] for c in LIST_COLUMNS] for row in rows))
    if found.height == 0:
        display.line("no override" + (f" covers {month}" if month else " yet"))


def _timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"


@override_app.command("log")
def log(store: StoreOption, as_json: JsonOption = False, debug: DebugOption = False) -> None:
    """Every entry of the ledger (add, approve, revoke) in the order it was recorded, with who and when."""
    from billing_tiers.overrides import read_ledger

    entries = _run(debug, store, lambda: read_ledger(_store(store)))
    if as_json:
        display.print_json([dict(row) for row in entries.select(list(OVERRIDE_LEDGER.columns)).iter_rows(named=True)])
        return
    rows = ({**row, "recorded_at": _timestamp(row["recorded_at"])} for row in entries.iter_rows(named=True))
    display.table(f"override ledger of store {store}", LOG_COLUMNS, ([row[c] for c in LOG_COLUMNS] for row in rows))
    if entries.height == 0:
        display.line("no entry yet")


# ----------------------------------------------------------------------------- for `billing-tiers status`


def pending_for_status(store: Store) -> tuple[list[dict[str, Any]] | None, str | None]:
    """For ``status``: the overrides waiting for approval, one object each with the keys of
    ``override list --json``, and None; or None and what is wrong with a ledger that cannot be read
    (``status`` reports it and ``status --check`` fails, as for a damaged month)."""
    from billing_tiers.overrides import pending_overrides

    try:
        found = pending_overrides(store)
    except PipelineError as exc:
        return None, str(exc)
    return [{key: row[key] for key in OVERRIDE_LIST_KEYS} for row in found.iter_rows(named=True)], None


def print_pending(pending: list[dict[str, Any]] | None, problem: str | None) -> None:
    """``status``'s text: the pending overrides as a table and how to approve them, or the ledger's problem."""
    if problem is not None:
        display.line(f"override ledger: {display.literal(problem)}")
    if not pending:
        return
    rows = ({**row, "months": f"{row['first_month']}..{row['last_month'] or 'open'}"} for row in pending)
    title = "overrides waiting for approval"
    display.table(title, PENDING_COLUMNS, ([row[c] for c in PENDING_COLUMNS] for row in rows))
    display.line(
        f"{len(pending)} override(s) waiting for approval: "
        "`billing-tiers override approve ID ... --store S --by NAME` (not by the requester)"
    )
