"""The ``billing-tiers`` command: a thin adapter over the application layer (:mod:`billing_tiers.service`).

Failures print one line saying what is wrong and where, and exit non-zero (2 for a refusal or a
failure of the environment: disk, permissions, a server or cluster that does not answer; 1 only for
the truly unexpected); ``--debug`` adds the traceback. The session (rulebook, store lock, recovery,
plan, extract footers) is opened before Prefect starts, so a refusal is immediate. Listings print
full values when stdout is not a terminal, and take ``--json``; user data is printed literally
(:mod:`billing_tiers.display`).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from billing_tiers import __version__, display
from billing_tiers.errors import PipelineError
from billing_tiers.months import parse_month
from billing_tiers.override_cli import override_app, pending_for_status, print_pending
from billing_tiers.service import DEFAULT_STORE, RunRequest
from flows.dask_cluster import DASK_TIMEOUT_SECONDS
from rulebook import RulebookError, load_rulebook

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Monthly customer-program levels and member cards from billing extracts.",
)
app.add_typer(override_app, name="override")
ExtractsOption = Annotated[
    Path | None,
    typer.Option(
        "--extracts",
        help="Folder of billing_month=YYYY-MM extract folders (default: the one the store recorded at init).",
    ),
]
StoreOption = Annotated[Path, typer.Option("--store", help="The store folder (made with `billing-tiers init`).")]
JsonOption = Annotated[bool, typer.Option("--json", metavar=" ", help="Print one JSON document instead of text.")]
RulebookOption = Annotated[Path | None, typer.Option("--rulebook", help="Rulebook TOML (default: bundled).")]
OverrideOption = Annotated[
    bool, typer.Option("--override-guards", metavar=" ", help="Publish even if an input guard fails (recorded).")
]
DebugOption = Annotated[bool, typer.Option("--debug", metavar=" ", help="Show tracebacks.")]
BucketsOption = Annotated[
    int | None,
    typer.Option(
        "--buckets",
        min=1,
        help="Split the month into this many buckets by a stable hash of subscriber_id "
        "(default: one per 250,000 extract rows). Output is the same for any count.",
    ),
]
DaskAddressOption = Annotated[
    str | None,
    typer.Option("--dask-address", help="Run the buckets on an existing Dask cluster (tcp://HOST:PORT)."),
]
DaskWorkersOption = Annotated[
    int | None,
    typer.Option("--dask-workers", min=1, help="Start a local Dask cluster of N worker processes for the run."),
]
DaskTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--dask-timeout",
        min=1,
        metavar="SECONDS",
        help=f"On Dask: fail when the scheduler does not answer, or no worker is there, for this long "
        f"(default: {DASK_TIMEOUT_SECONDS:g} s).",
    ),
]

T = TypeVar("T")

_PREFECT_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}

_ENVIRONMENT_ADVICE = {
    errno.ENOSPC: "no space left on the device: free space there (or use another --store) and rerun",
    errno.EDQUOT: "disk quota exceeded: free space there (or use another --store) and rerun",
    errno.EROFS: "the file system is read-only: use a writable --store",
    errno.EACCES: "permission denied: give this user write access, or use another --store",
    errno.EPERM: "operation not permitted: give this user write access, or use another --store",
}


class _NoTracebacks(logging.Filter):
    """Without --debug, failures are the CLI's to report in one line: Prefect's console keeps its
    progress and warnings but drops its own error records and tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR and record.exc_info is None


def _quiet_prefect_tracebacks() -> None:
    from prefect.logging.configuration import setup_logging

    setup_logging()
    loggers = [
        logging.getLogger(),
        *[logging.getLogger(name) for name in list(logging.Logger.manager.loggerDict) if name.startswith("prefect")],
    ]
    for logger in loggers:
        for handler in logger.handlers:
            handler.addFilter(_NoTracebacks())


def _environment_failure(exc: BaseException, store: Path | None) -> str | None:
    """One line for a failure of the environment (disk full, read-only, permissions), or None.
    Polars reports a failed write without the path: the store is named then."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _ENVIRONMENT_ADVICE:
            where = current.filename or (f"the store {store}" if store else "the store")
            return f"cannot write {where}: {_ENVIRONMENT_ADVICE[current.errno]}; nothing was published"
        text = str(current)
        for code, words in (
            (errno.ENOSPC, "No space left on device"),
            (errno.EROFS, "Read-only file system"),
            (errno.EACCES, "Permission denied"),
        ):
            if words in text:
                where = f"the store {store}" if store else "the store"
                return f"cannot write {where}: {_ENVIRONMENT_ADVICE[code]}; nothing was published"
        current = current.__cause__ or current.__context__
    return None


def _guarded(debug: bool, action: Callable[[], T], store: Path | None = None) -> T:
    try:
        return action()
    except (PipelineError, RulebookError) as exc:
        if debug:
            raise
        display.error(str(exc))
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        display.error("interrupted; rerun the same command to finish")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            raise
        failure = _environment_failure(exc, store)
        if failure is not None:
            display.error(failure)
            raise typer.Exit(2) from None
        display.error(f"unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug for details)")
        raise typer.Exit(1) from None


def _start_prefect(debug: bool) -> Any:
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from billing_tiers.prefect_api import require_prefect_api

    require_prefect_api()
    from flows import monthly

    if not debug:
        _quiet_prefect_tracebacks()
    return monthly


def _print_summary(manifests: list[dict[str, Any]]) -> None:
    """The last month's levels and actions per program, and one line per month run."""
    if not manifests:
        return
    last = manifests[-1]
    import polars as pl

    from flows.run_month import summary_frame

    summary = summary_frame(last).with_columns(pl.col("level").fill_null("(none)"))
    for dimension in ("level", "action"):
        counts = summary.group_by("program", dimension).agg(pl.col("subscribers").sum()).sort("program", dimension)
        display.table(
            f"billing month {last['billing_month']}: {dimension}s per program",
            ("program", dimension, "subscribers"),
            counts.iter_rows(),
        )
    for manifest in manifests:
        tables = manifest["tables"]
        notes = []
        changes = manifest.get("changes_by_program")
        if changes is not None:
            shown = ", ".join(f"{program} {count}" for program, count in sorted(changes.items())) or "none"
            notes.append(f"tier rows changed from the version replaced: {shown}")
        if (manifest.get("rulebook") or {}).get("changed_from_previous"):
            notes.append("the rulebook differs from the one the previous month was built with")
        applied = manifest.get("overrides") or {}
        if applied.get("in_force"):
            notes.append(f"overrides in force: {', '.join(applied['in_force'])}")
        if applied.get("changed_from_replaced"):
            notes.append("the overrides in force differ from those of the version replaced")
        display.line(
            f"{manifest['billing_month']}: {tables['tier_assignments']['rows']} tier rows, "
            f"{tables['card_issuance']['rows']} card events, {tables['quarantine']['rows']} quarantined, "
            f"{manifest['duplicates_collapsed']} duplicates collapsed, {manifest['buckets']} buckets, "
            f"{manifest['timings_seconds']['total']} s" + "".join(f"; {note}" for note in notes)
        )


def _show_version(value: bool) -> None:
    if value:
        display.line(f"billing-tiers {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", metavar=" ", callback=_show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Monthly customer-program levels and member cards from billing extracts."""


@app.command()
def init(
    store: Annotated[Path, typer.Option("--store", help="The store folder to create.")],
    extracts: Annotated[
        Path | None,
        typer.Option("--extracts", help="The extracts folder every command uses when --extracts is not given."),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Create a store: the folder and its marker (recording the extracts folder). Every other command
    refuses a folder that is not a store. On an existing store, records a newly given --extracts."""
    from billing_tiers.store import Store

    def action() -> bool:
        if extracts is not None and not extracts.is_dir():
            raise PipelineError(
                f"extracts folder {extracts} does not exist; give the folder of billing_month=* folders"
            )
        return Store(store).initialise(extracts)

    created = _guarded(debug, action)
    recorded = f"; extracts folder {extracts.resolve()}" if extracts is not None else ""
    if created:
        display.line(f"store {display.literal(store)} created{display.literal(recorded)}")
    elif extracts is not None:
        display.line(f"store {display.literal(store)} is already a store; recorded{display.literal(recorded)}")
    else:
        display.line(f"store {display.literal(store)} is already a store; nothing changed")


def _run_with_prefect(
    request: RunRequest, debug: bool, dask_address: str | None, dask_workers: int | None, dask_timeout: float | None
) -> Any:
    """Open the session (every refusal before Prefect starts), then run it as the CLI's Prefect flow."""
    from billing_tiers.progress import ConsoleListener
    from billing_tiers.service import open_session

    listener = ConsoleListener(request.command)
    try:
        with open_session(request, listener) as session:
            monthly = _start_prefect(debug)
            flow = monthly.run_prepared.with_options(
                name="monthly-tiers" if request.command == "run" else "backfill-tiers",
                task_runner=monthly.task_runner(
                    dask_address=dask_address, dask_workers=dask_workers, dask_timeout=dask_timeout
                ),
            )
            return flow(session=session)
    finally:
        listener.close()


@app.command()
def check(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    extracts: ExtractsOption = None,
    store: StoreOption = DEFAULT_STORE,
    rulebook: RulebookOption = None,
    buckets: BucketsOption = None,
    debug: DebugOption = False,
) -> None:
    """Everything `run` does except publishing: exit 0 when `run` would publish, 2 when it would stop.

    Prints the summary and guard figures with quarantine counts by rule; when a guard would stop
    the month, the rejected rows are written to <store>/_rejected/ and named."""
    from billing_tiers.service import run_request

    def action() -> dict[str, Any]:
        request = RunRequest(
            command="check", store=store, first=parse_month(month), extracts=extracts, rulebook=rulebook,
            buckets=buckets,
        )  # fmt: skip
        try:
            return run_request(request)[0]
        except PipelineError as exc:
            figures = getattr(exc, "guards", None)
            if figures is not None:
                _print_guards(figures.as_dict(), getattr(exc, "quarantine_by_rule", {}))
            raise

    manifest = _guarded(debug, action, store)
    _print_summary([manifest])
    _print_guards(manifest["guards"], manifest["quarantine_by_rule"])
    display.line(f"check {month}: run would publish")


def _print_guards(guards: dict[str, Any], quarantine_by_rule: dict[str, int]) -> None:
    display.line(
        f"guards: {guards['quarantined_rows']} of {guards['rows_after_duplicates']} rows quarantined "
        f"(ratio {guards['quarantine_ratio']:.4%}, max {float(guards['max_quarantine_ratio']):.4%}); "
        f"{guards['missing_subscribers']} of {guards['previous_subscribers']} previous subscribers missing "
        f"(ratio {guards['missing_ratio']:.4%}, max {float(guards['max_missing_ratio']):.4%})"
    )
    for rule, count in quarantine_by_rule.items():
        display.line(f"  quarantined by {rule}: {count}")


@app.command()
def run(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    extracts: ExtractsOption = None,
    store: StoreOption = DEFAULT_STORE,
    rulebook: RulebookOption = None,
    override_guards: OverrideOption = False,
    buckets: BucketsOption = None,
    dask_address: DaskAddressOption = None,
    dask_workers: DaskWorkersOption = None,
    dask_timeout: DaskTimeoutOption = None,
    debug: DebugOption = False,
) -> None:
    """Evaluate one billing month (the next one, or a rerun of the latest) and publish it."""

    def action() -> list[dict[str, Any]]:
        request = RunRequest(
            command="run", store=store, first=parse_month(month), extracts=extracts, rulebook=rulebook,
            override_guards=override_guards, buckets=buckets,
        )  # fmt: skip
        result: list[dict[str, Any]] = _run_with_prefect(request, debug, dask_address, dask_workers, dask_timeout)
        return result

    _print_summary(_guarded(debug, action, store))


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="First billing month to recompute.")],
    end: Annotated[str | None, typer.Option("--to", help="Last month (default: latest with an extract).")] = None,
    extracts: ExtractsOption = None,
    store: StoreOption = DEFAULT_STORE,
    rulebook: RulebookOption = None,
    override_guards: OverrideOption = False,
    buckets: BucketsOption = None,
    dask_address: DaskAddressOption = None,
    dask_workers: DaskWorkersOption = None,
    dask_timeout: DaskTimeoutOption = None,
    debug: DebugOption = False,
) -> None:
    """Recompute months in order from --from through --to, replacing what was published."""

    def action() -> list[dict[str, Any]]:
        request = RunRequest(
            command="backfill", store=store, first=parse_month(start), last=parse_month(end) if end else None,
            extracts=extracts, rulebook=rulebook, override_guards=override_guards, buckets=buckets,
        )  # fmt: skip
        result: list[dict[str, Any]] = _run_with_prefect(request, debug, dask_address, dask_workers, dask_timeout)
        return result

    _print_summary(_guarded(debug, action, store))


@app.command()
def status(
    store: StoreOption = DEFAULT_STORE,
    extracts: ExtractsOption = None,
    as_json: JsonOption = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            metavar=" ",
            help="Exit 3 if the store is missing or not initialised, a month is stale or damaged, "
            "or the store is behind the extracts.",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """List published months, their manifests, any month that is stale or damaged (naming the file and
    the command that repairs it), a run in progress, and months not yet run."""
    from billing_tiers.health import store_health
    from billing_tiers.service import resolve_extracts
    from billing_tiers.store import Store

    try:
        the_store = Store(store).require()
    except PipelineError as exc:
        display.error(str(exc))
        raise typer.Exit(3 if check else 2) from None
    try:
        extracts_root: Path | None = resolve_extracts(the_store, extracts)
    except PipelineError:
        extracts_root = None  # no folder recorded: "behind" cannot be judged
    health = _guarded(debug, lambda: store_health(the_store, extracts_root))
    pending_overrides, ledger_problem = pending_for_status(the_store)
    if as_json:
        display.print_json(
            {
                "store": str(store),
                "extracts": str(extracts_root) if extracts_root is not None else None,
                **health.as_json(),
                "pending_overrides": pending_overrides,
                "override_ledger_problem": ledger_problem,
            }
        )
    else:
        columns = ("billing_month", "status", "built_from", "run_id", "buckets", "tier_rows", "quarantined")
        rows = [{**row, "status": row["status"].split(":")[0]} for row in health.month_rows()]  # details below
        display.table(f"store {store}", columns, ([row[c] for c in columns] for row in rows))
        if not health.months:
            display.line("no month published yet")
        if extracts_root is None:
            display.line("extracts: none recorded (give --extracts, or record one with `billing-tiers init`)")
        for text in health.notes(the_store, extracts_root):
            display.line(display.literal(text))
        print_pending(pending_overrides, ledger_problem)
    if check and (health.needs_attention or ledger_problem):
        raise typer.Exit(3)


@app.command()
def explain(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id")],
    program: Annotated[str | None, typer.Option("--program", help="Only this program.")] = None,
    store: StoreOption = DEFAULT_STORE,
    rulebook: RulebookOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Say why a subscriber has the level it has in a month: metrics, thresholds, action, what holds a
    retained level, which eligibility condition fails, whether it is at risk and what it needs, and
    for a quarantined row which rule broke."""
    from billing_tiers.explain import explain_member
    from billing_tiers.store import Store

    def action() -> Any:
        return explain_member(Store(store).require(), parse_month(month), subscriber, program, load_rulebook(rulebook))

    explained, notes = _guarded(debug, action)
    if as_json:
        display.print_json(
            [{**item.row, "billing_month": month, "at_risk": item.at_risk, "lines": item.lines} for item in explained]
        )
        return
    for item in explained:
        for text in item.lines:
            display.line(text)
    for text in notes:
        display.line(text)


@app.command()
def report(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default: <store>/manifests/billing_month=B/report.html).")
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    debug: DebugOption = False,
) -> None:
    """Write the month's report: one self-contained HTML file (charts and tables; opens offline)."""

    def action() -> Path:
        from billing_tiers.report import default_report_path, write_month_report
        from billing_tiers.store import Store

        the_store = Store(store).require()
        billing_month = parse_month(month)
        return write_month_report(the_store, billing_month, out or default_report_path(the_store, billing_month))

    display.line(f"report written to {display.literal(_guarded(debug, action))}")


@app.command()
def simulate(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    rulebook: Annotated[Path, typer.Option("--rulebook", help="The rulebook TOML to try.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the simulated tables and the row diff (Parquet).")
    ] = None,
    extracts: ExtractsOption = None,
    store: StoreOption = DEFAULT_STORE,
    buckets: BucketsOption = None,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Evaluate a month on its published history with another rulebook; writes nothing to the store.

    Prints per program the published and simulated level counts, the transition matrix and the card
    events that would differ."""
    from billing_tiers.service import check_extract_footers, resolve_extracts
    from billing_tiers.store import Store
    from flows.simulate import simulate_month

    def action() -> Any:
        target = parse_month(month)
        rules = load_rulebook(rulebook)
        the_store = Store(store).require()
        root = resolve_extracts(the_store, extracts)
        check_extract_footers(root, [target])
        return simulate_month(
            store=the_store,
            extracts=root,
            month=target,
            rulebook=rules,
            rulebook_path=rulebook,
            buckets=buckets,
            out=out,
        )

    result = _guarded(debug, action)
    sections = (
        ("level_counts", "level counts: published vs simulated", result.level_counts),
        ("transitions", "transitions: published level -> simulated level", result.transitions),
        ("card_differences", "card events that would differ", result.card_differences),
    )
    if as_json:
        display.print_json(
            {
                "billing_month": month,
                "published": result.published,
                "changed_rows": result.changed_rows,
                **{key: frame.to_dicts() for key, _, frame in sections},
                "out": str(out) if out else None,
            }
        )
        return
    if not result.published:
        display.line(f"{month} is not published: showing the simulated counts only")
    for _, title, frame in sections:
        display.table(f"{month}: {title}", frame.columns, frame.iter_rows())
    display.line(
        f"{result.changed_rows} tier rows would change; {result.card_differences.height} card events differ"
        + (f"; simulated tables and diff written to {display.literal(out)}" if out else "")
    )


HISTORY_COLUMNS = (
    "billing_month", "action", "previous_level", "level", "qualified_level", "valid_from", "valid_until",
    "effective_on", "card_id", "reason_code", "billed_6m", "avg_billed_6m", "month_paid", "cum_paid", "present",
    "override_id",
)  # fmt: skip
CARD_COLUMNS = ("billing_month", "program", "event", "reason", "level", "card_id", "effective_on")


@app.command()
def history(
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id")],
    program: Annotated[str | None, typer.Option("--program", help="Only this program.")] = None,
    store: StoreOption = DEFAULT_STORE,
    as_json: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Every published month of one member: levels, actions, validity, effective dates, metrics,
    cards and quarantine reasons. Reads only the store."""
    from billing_tiers.member import member_history
    from billing_tiers.store import Store

    found = _guarded(debug, lambda: member_history(Store(store).require(), subscriber, program))
    if found.tiers.height == 0 and found.quarantine.height == 0:
        display.error(f"store {store}: no published month has subscriber '{display.literal(subscriber)}'")
        raise typer.Exit(2)
    from billing_tiers.explain import override_lines

    used = set(found.tiers.get_column("override_id").drop_nulls()) if "override_id" in found.tiers.columns else set()
    overrides = _guarded(debug, lambda: override_lines(Store(store), used))
    if as_json:
        display.print_json(
            {
                "subscriber_id": subscriber,
                "overrides": overrides,
                "tier_assignments": found.tiers.to_dicts(),
                "card_issuance": found.cards.to_dicts(),
                "quarantine": found.quarantine.to_dicts(),
            }
        )
        return
    for (name,), rows in found.tiers.group_by("program", maintain_order=True):
        display.table(
            f"{display.literal(subscriber)} in {name}",
            HISTORY_COLUMNS,
            ([row.get(c) for c in HISTORY_COLUMNS] for row in rows.iter_rows(named=True)),
        )
    if found.cards.height:
        display.table(
            f"{display.literal(subscriber)}: card events",
            CARD_COLUMNS,
            ([row[c] for c in CARD_COLUMNS] for row in found.cards.iter_rows(named=True)),
        )
    for text in overrides.values():
        display.line(text)
    for row in found.quarantine.iter_rows(named=True):
        display.line(
            f"{row['billing_month']}: quarantined, rule {row['rule']} in {display.literal(row['source_file'])} "
            f"row {row['source_row']} ({display.literal(row['broken_rules'])})"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
