"""The ``billing-tiers`` command: run, backfill, status and explain.

Failures print one line saying what is wrong and where, and exit non-zero; ``--debug`` adds the
traceback. Cheap checks (month format, rulebook, extract folders, month ordering, the lock) run
before Prefect starts, so a refusal is immediate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from billing_tiers import __version__, progress
from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label, parse_month
from rulebook import RulebookError, load_rulebook

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Monthly customer-program levels and member cards from billing extracts.",
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

ExtractsOption = Annotated[Path, typer.Option("--extracts", help="Folder of billing_month=YYYY-MM extract folders.")]
StoreOption = Annotated[Path, typer.Option("--store", help="Output store folder.")]
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

T = TypeVar("T")

_PREFECT_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
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


def _guarded(debug: bool, action: Callable[[], T]) -> T:
    try:
        return action()
    except (PipelineError, RulebookError) as exc:
        if debug:
            raise
        errors.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        errors.print("error: interrupted; rerun the same command to finish", markup=False)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        errors.print(
            f"error: unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1) from None


def _check_prefect_server() -> None:
    """With PREFECT_API_URL set, a server that does not answer is one clear line, not a traceback."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        raise PipelineError(
            f"the Prefect server at {url} does not answer ({type(exc).__name__}); start it "
            f"(`prefect server start`) or unset PREFECT_API_URL to use a temporary one"
        ) from None


def _start_prefect(debug: bool) -> Any:
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    _check_prefect_server()
    from flows import monthly

    if not debug:
        _quiet_prefect_tracebacks()
    return monthly


def _print_summary(manifests: list[dict[str, Any]]) -> None:
    if not manifests:
        return
    last = manifests[-1]
    import polars as pl

    from flows.run_month import summary_frame

    summary = summary_frame(last).with_columns(pl.col("level").fill_null("(none)"))
    for dimension in ("level", "action"):
        counts = summary.group_by("program", dimension).agg(pl.col("subscribers").sum()).sort("program", dimension)
        table = Table(title=f"billing month {last['billing_month']}: {dimension}s per program")
        for column in ("program", dimension, "subscribers"):
            table.add_column(column, justify="right" if column == "subscribers" else "left")
        for program, value, count in counts.iter_rows():
            table.add_row(program, value, str(count))
        console.print(table)
    for manifest in manifests:
        tables = manifest["tables"]
        console.print(
            f"{manifest['billing_month']}: {tables['tier_assignments']['rows']} tier rows, "
            f"{tables['card_issuance']['rows']} card events, {tables['quarantine']['rows']} quarantined, "
            f"{manifest['duplicates_collapsed']} duplicates collapsed, {manifest['buckets']} buckets, "
            f"{manifest['timings_seconds']['total']} s"
            + (
                f"; rows changed from the version replaced: {manifest['changes_by_program']}"
                if manifest.get("changes_by_program") is not None
                else ""
            )
            + (
                "; the rulebook differs from the one the previous month was built with"
                if (manifest.get("rulebook") or {}).get("changed_from_previous")
                else ""
            ),
            highlight=False,
        )


@contextlib.contextmanager
def _writer(store: Path, rulebook: Path | None, command: str) -> Iterator[Any]:
    """The store, checked and locked for the whole command, before Prefect starts.

    The lock taken here is the one held until the last file is published (the flow's own lock is
    the same one, shared in this process), so a second writer is refused at once. Holding it also
    finishes any publish a killed run left past its commit point, so plans see the store as it is."""
    from billing_tiers.store import Store

    load_rulebook(rulebook)
    the_store = Store(store).require()
    with the_store.writer_lock(command):
        for line in the_store.recover():
            errors.print(f"store {store}: {line}", markup=False, highlight=False)
        yield the_store


def _refuse_rulebook(store: Any, build_on: dt.date | None, rulebook: Path | None) -> None:
    """A rulebook that drops a program or level members hold stops the command before anything runs."""
    from billing_tiers.planning import refuse_rulebook_change

    refuse_rulebook_change(store, build_on, load_rulebook(rulebook))


def _reading(store: Path) -> Any:
    """The store for a reading command, or a refusal naming the path and pointing to ``init``."""
    from billing_tiers.store import Store

    return Store(store).require()


def _check_extract_footers(extracts: Path, months: list[dt.date]) -> None:
    """Every file of every month is readable Parquet with the contract columns (footers only: cheap)."""
    from billing_tiers.extract_io import check_extract_schema
    from billing_tiers.store import extract_files

    for month in months:
        for path in extract_files(extracts, month):
            check_extract_schema(path, root=extracts)


def _show_version(value: bool) -> None:
    if value:
        console.print(f"billing-tiers {__version__}", highlight=False)
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
    debug: DebugOption = False,
) -> None:
    """Create a store: the folder and its marker. Every other command refuses a folder that is not one."""
    from billing_tiers.store import Store

    created = _guarded(debug, lambda: Store(store).initialise())
    console.print(f"store {store} {'created' if created else 'is already a store; nothing changed'}", highlight=False)


@app.command()
def check(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    extracts: ExtractsOption = Path("data/sample/extracts"),
    store: StoreOption = Path("data/store"),
    rulebook: RulebookOption = None,
    buckets: BucketsOption = None,
    debug: DebugOption = False,
) -> None:
    """Everything `run` does except publishing: exit 0 when `run` would publish, 2 when it would stop.

    Prints the summary and guard figures with quarantine counts by rule; when a guard would stop
    the month, the rejected rows are written to <store>/_rejected/ and named."""
    from billing_tiers.planning import plan_run

    def action() -> dict[str, Any]:
        from flows.run_month import run_month

        target = parse_month(month)
        _check_extract_footers(extracts, [target])
        with _writer(store, rulebook, f"check --month {month}") as the_store:
            plan = plan_run(the_store, target)
            _refuse_rulebook(the_store, plan.build_on, rulebook)
            try:
                return run_month(
                    store=the_store,
                    extracts=extracts,
                    month=target,
                    build_on=plan.build_on,
                    rulebook=load_rulebook(rulebook),
                    rulebook_path=rulebook,
                    override_guards=False,
                    buckets=buckets,
                    dry_run=True,
                ).as_dict()
            except PipelineError as exc:
                figures = getattr(exc, "guards", None)
                if figures is not None:
                    _print_guards(figures.as_dict(), getattr(exc, "quarantine_by_rule", {}))
                raise

    manifest = _guarded(debug, action)
    _print_summary([manifest])
    _print_guards(manifest["guards"], manifest["quarantine_by_rule"])
    console.print(f"check {month}: run would publish", highlight=False)


def _print_guards(guards: dict[str, Any], quarantine_by_rule: dict[str, int]) -> None:
    console.print(
        f"guards: {guards['quarantined_rows']} of {guards['rows_after_duplicates']} rows quarantined "
        f"(ratio {guards['quarantine_ratio']:.4%}, max {guards['max_quarantine_ratio']}); "
        f"{guards['missing_subscribers']} of {guards['previous_subscribers']} previous subscribers missing "
        f"(ratio {guards['missing_ratio']:.4%}, max {guards['max_missing_ratio']})",
        highlight=False,
    )
    for rule, count in quarantine_by_rule.items():
        console.print(f"  quarantined by {rule}: {count}", highlight=False)


@app.command()
def run(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    extracts: ExtractsOption = Path("data/sample/extracts"),
    store: StoreOption = Path("data/store"),
    rulebook: RulebookOption = None,
    override_guards: OverrideOption = False,
    buckets: BucketsOption = None,
    dask_address: DaskAddressOption = None,
    dask_workers: DaskWorkersOption = None,
    debug: DebugOption = False,
) -> None:
    """Evaluate one billing month (the next one, or a rerun of the latest) and publish it."""

    def action() -> list[dict[str, Any]]:
        from billing_tiers.planning import plan_run

        target = parse_month(month)
        _check_extract_footers(extracts, [target])
        with _writer(store, rulebook, f"run --month {month}") as the_store:
            _refuse_rulebook(the_store, plan_run(the_store, target).build_on, rulebook)
            monthly = _start_prefect(debug)
            flow = monthly.monthly_tiers.with_options(
                task_runner=monthly.task_runner(dask_address=dask_address, dask_workers=dask_workers)
            )
            result: list[dict[str, Any]] = flow(
                month=month_label(target),
                extracts=str(extracts),
                store=str(store),
                rulebook=str(rulebook) if rulebook else None,
                override_guards=override_guards,
                buckets=buckets,
            )
        return result

    _print_summary(_guarded(debug, action))


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--from", help="First billing month to recompute.")],
    end: Annotated[str | None, typer.Option("--to", help="Last month (default: latest with an extract).")] = None,
    extracts: ExtractsOption = Path("data/sample/extracts"),
    store: StoreOption = Path("data/store"),
    rulebook: RulebookOption = None,
    override_guards: OverrideOption = False,
    buckets: BucketsOption = None,
    dask_address: DaskAddressOption = None,
    dask_workers: DaskWorkersOption = None,
    debug: DebugOption = False,
) -> None:
    """Recompute months in order from --from through --to, replacing what was published."""

    def action() -> list[dict[str, Any]]:
        from billing_tiers.planning import plan_backfill

        first = parse_month(start)
        last = parse_month(end) if end else None
        with _writer(store, rulebook, f"backfill --from {start}") as the_store:
            plan = plan_backfill(the_store, extracts, first, last)
            _refuse_rulebook(the_store, plan.build_on, rulebook)
            _check_extract_footers(extracts, plan.months)
            monthly = _start_prefect(debug)
            flow = monthly.backfill_tiers.with_options(
                task_runner=monthly.task_runner(dask_address=dask_address, dask_workers=dask_workers)
            )
            with progress.months(len(plan.months)):
                result: list[dict[str, Any]] = flow(
                    start=month_label(first),
                    end=month_label(last) if last else None,
                    extracts=str(extracts),
                    store=str(store),
                    rulebook=str(rulebook) if rulebook else None,
                    override_guards=override_guards,
                    buckets=buckets,
                )
        return result

    _print_summary(_guarded(debug, action))


@app.command()
def status(
    store: StoreOption = Path("data/store"),
    extracts: ExtractsOption = Path("data/sample/extracts"),
    as_json: Annotated[bool, typer.Option("--json", metavar=" ", help="Print JSON instead of a table.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            metavar=" ",
            help="Exit 3 if the store is missing or not initialised, a month is stale or incomplete, "
            "or the store is behind the extracts.",
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """List published months, their manifests, any month that is stale or damaged (naming the file and
    the command that repairs it), a run in progress, and months not yet run."""
    from billing_tiers.health import store_health
    from billing_tiers.store import Store

    try:
        the_store = Store(store).require()
    except PipelineError as exc:
        errors.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(3 if check else 2) from None
    health = _guarded(debug, lambda: store_health(the_store, extracts))
    if as_json:
        print(json.dumps(health.as_json(), indent=2))
    else:
        columns = ("billing_month", "status", "built_from", "run_id", "buckets", "tier_rows", "quarantined")
        table = Table(title=f"store {store}")
        for column in columns:
            table.add_column(column)
        for row in health.month_rows():
            shown = {**row, "status": row["status"].split(":")[0]}  # the details follow the table
            table.add_row(*[str(shown[c]) if shown[c] is not None else "-" for c in columns])
        console.print(table)
        if not health.months:
            console.print("no month published yet")
        for line in health.notes(the_store, extracts):
            console.print(line, highlight=False, markup=False)
    if check and health.needs_attention:
        raise typer.Exit(3)


@app.command()
def explain(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id")],
    program: Annotated[str | None, typer.Option("--program", help="Only this program.")] = None,
    store: StoreOption = Path("data/store"),
    rulebook: RulebookOption = None,
    debug: DebugOption = False,
) -> None:
    """Say why a subscriber has the level it has in a month: metrics, thresholds, action, what holds a
    retained level, which eligibility condition fails, and for a quarantined row which rule broke."""

    def action() -> list[dict[str, Any]]:
        the_store = _reading(store)
        import polars as pl

        tiers = the_store.scan_table("tier_assignments", parse_month(month))
        rows = tiers.filter(pl.col("subscriber_id") == subscriber)
        if program:
            rows = rows.filter(pl.col("program") == program)
        rows = rows.collect()
        if rows.height == 0:
            raise PipelineError(
                f"month {month}: no tier row for subscriber {subscriber!r}"
                + (f" in program {program}" if program else "")
            )
        return rows.to_dicts()

    from billing_tiers.member import failing_condition, last_seen_attributes, quarantined_rows, why_held

    rows = _guarded(debug, action)
    the_store = _reading(store)
    target = parse_month(month)
    rules = _guarded(debug, lambda: load_rulebook(rulebook))
    attributes = _guarded(debug, lambda: last_seen_attributes(the_store, target, subscriber))
    absent = bool(rows) and not rows[0]["present"]
    found = _guarded(debug, lambda: quarantined_rows(the_store, target, subscriber)) if absent else None
    for row in rows:
        console.print(f"[bold]{row['program']}[/bold] {subscriber} {month} (evaluated {row['evaluated_on']})")
        console.print(
            f"  action {row['action']}: {row['previous_level'] or 'none'} -> {row['level'] or 'none'}"
            f" (qualified: {row['qualified_level'] or 'none'}), effective {row['effective_on'] or '-'}",
            highlight=False,
        )
        if row["valid_until"]:
            console.print(
                f"  valid {row['valid_from']} .. {row['valid_until']}, card {row['card_id'] or '-'}",
                highlight=False,
            )
        held = why_held(row)
        reason = row["reason"] or held or "(level unchanged)"
        code = f" [{row['reason_code']}]" if row["reason_code"] else ""
        console.print(f"  reason{code}: {reason}", highlight=False, markup=False)
        if not row["eligible"]:
            failing = failing_condition(rules, row["program"], attributes) if attributes else None
            console.print(
                f"  not eligible: {failing or 'attributes not kept (the subscriber left the state)'}",
                highlight=False,
                markup=False,
            )
        console.print(
            f"  billed_6m {row['billed_6m']}, avg_billed_6m {row['avg_billed_6m']}, month_paid {row['month_paid']},"
            f" cum_paid {row['cum_paid']}, tenure_years {row['tenure_years']}, suspensions_6m"
            f" {row['suspensions_6m']}, points {row['points_balance']}, score {row['score']},"
            f" present {row['present']}, eligible {row['eligible']}",
            highlight=False,
        )
    if found is not None:
        for q in found.iter_rows(named=True):
            console.print(
                f"  quarantined this month: rule {q['rule']} in {q['source_file']} row {q['source_row']}"
                f" ({q['broken_rules']})",
                highlight=False,
                markup=False,
            )
        if found.height == 0:
            console.print("  absent this month: no row in the extract", highlight=False)


@app.command()
def report(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="HTML file (default: <store>/manifests/billing_month=B/report.html).")
    ] = None,
    store: StoreOption = Path("data/store"),
    debug: DebugOption = False,
) -> None:
    """Write the month's report: one self-contained HTML file (charts and tables; opens offline)."""

    def action() -> Path:
        from billing_tiers.report import default_report_path, write_month_report

        the_store = _reading(store)
        billing_month = parse_month(month)
        return write_month_report(the_store, billing_month, out or default_report_path(the_store, billing_month))

    console.print(f"report written to {_guarded(debug, action)}", highlight=False, markup=False)


@app.command()
def simulate(
    month: Annotated[str, typer.Option("--month", help="Billing month YYYY-MM.")],
    rulebook: Annotated[Path, typer.Option("--rulebook", help="The rulebook TOML to try.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the simulated tables and the row diff (Parquet).")
    ] = None,
    extracts: ExtractsOption = Path("data/sample/extracts"),
    store: StoreOption = Path("data/store"),
    buckets: BucketsOption = None,
    debug: DebugOption = False,
) -> None:
    """Evaluate a month on its published history with another rulebook; writes nothing to the store.

    Prints per program the published and simulated level counts, the transition matrix and the card
    events that would differ."""
    from flows.simulate import simulate_month

    def action() -> Any:
        target = parse_month(month)
        _check_extract_footers(extracts, [target])
        return simulate_month(
            store=_reading(store),
            extracts=extracts,
            month=target,
            rulebook=load_rulebook(rulebook),
            rulebook_path=rulebook,
            buckets=buckets,
            out=out,
        )

    result = _guarded(debug, action)
    if not result.published:
        console.print(f"{month} is not published: showing the simulated counts only", highlight=False)
    for title, frame in (
        ("level counts: published vs simulated", result.level_counts),
        ("transitions: published level -> simulated level", result.transitions),
        ("card events that would differ", result.card_differences),
    ):
        table = Table(title=f"{month}: {title}")
        for column in frame.columns:
            table.add_column(column)
        for row in frame.iter_rows():
            table.add_row(*["-" if value is None else str(value) for value in row])
        console.print(table)
    console.print(
        f"{result.changed_rows} tier rows would change; {result.card_differences.height} card events differ"
        + (f"; simulated tables and diff written to {out}" if out else ""),
        highlight=False,
    )


@app.command()
def history(
    subscriber: Annotated[str, typer.Option("--subscriber", help="subscriber_id")],
    program: Annotated[str | None, typer.Option("--program", help="Only this program.")] = None,
    store: StoreOption = Path("data/store"),
    debug: DebugOption = False,
) -> None:
    """Every published month of one member: levels, actions, validity, effective dates, metrics,
    cards and quarantine reasons. Reads only the store."""
    from billing_tiers.member import member_history

    found = _guarded(debug, lambda: member_history(_reading(store), subscriber, program))
    if found.tiers.height == 0 and found.quarantine.height == 0:
        errors.print(f"error: store {store}: no published month has subscriber {subscriber!r}", markup=False)
        raise typer.Exit(2)
    columns = (
        "billing_month", "action", "previous_level", "level", "qualified_level", "valid_from", "valid_until",
        "effective_on", "card_id", "reason_code", "billed_6m", "avg_billed_6m", "month_paid", "cum_paid", "present",
    )  # fmt: skip
    for (name,), rows in found.tiers.group_by("program", maintain_order=True):
        table = Table(title=f"{subscriber} in {name}")
        for column in columns:
            table.add_column(column)
        for row in rows.iter_rows(named=True):
            table.add_row(*["-" if row[c] is None else str(row[c]) for c in columns])
        console.print(table)
    if found.cards.height:
        table = Table(title=f"{subscriber}: card events")
        for column in ("billing_month", "program", "event", "reason", "level", "card_id", "effective_on"):
            table.add_column(column)
        for row in found.cards.iter_rows(named=True):
            table.add_row(
                *[
                    str(row[c])
                    for c in ("billing_month", "program", "event", "reason", "level", "card_id", "effective_on")
                ]
            )
        console.print(table)
    for row in found.quarantine.iter_rows(named=True):
        console.print(
            f"{row['billing_month']}: quarantined, rule {row['rule']} in {row['source_file']} row {row['source_row']}"
            f" ({row['broken_rules']})",
            highlight=False,
            markup=False,
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
