"""The application layer: every entry point runs months through here, once.

A :class:`RunRequest` says what to run (``run``, ``backfill`` or ``check``), on which store, with
which extracts, rulebook and bucket count. :func:`open_session` resolves what the request leaves
open (the store's recorded extracts folder), loads and checks the rulebook, opens, locks and
recovers the store, plans the months, refuses a rulebook that drops what members hold and checks
every extract file's footer; each of these happens once, before any month runs, so a refusal is
immediate. :func:`run_session` then evaluates the planned months in order with the caller's way of
mapping buckets (in this process, Prefect tasks, a Dask cluster) and tells a :class:`RunListener`
about each month. The CLI and the Prefect flows are thin adapters around these two calls; neither
holds module-level state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from billing_tiers.errors import PipelineError
from billing_tiers.months import month_label
from billing_tiers.store import Store, extract_files

if TYPE_CHECKING:
    from billing_tiers.overrides import MonthOverrides
from rulebook import Rulebook, load_rulebook

Command = Literal["run", "backfill", "check"]

EXTRACTS_FLAG = "--extracts"
DEFAULT_STORE = Path("data/store")
"""The store a command uses without ``--store`` (a folder made with ``billing-tiers init``)."""


@dataclass(frozen=True)
class RunRequest:
    """What an operator, a schedule or a test asks for. ``first`` is ``--month`` (run, check) or
    ``--from`` (backfill); ``last`` is ``--to`` (None: the latest month with an extract)."""

    command: Command
    store: Path
    first: dt.date
    last: dt.date | None = None
    extracts: Path | None = None
    rulebook: Path | None = None
    override_guards: bool = False
    buckets: int | None = None

    @property
    def label(self) -> str:
        """The request as the command line spells it (for the lock owner, logs and run names)."""
        if self.command == "backfill":
            end = month_label(self.last) if self.last else "latest"
            return f"backfill --from {month_label(self.first)} --to {end}"
        return f"{self.command} --month {month_label(self.first)}"


class RunListener(Protocol):
    """What an entry point hears of a session: notices (recovered publishes, guard overrides) and the
    progress of months."""

    def notice(self, message: str) -> None: ...

    def month_started(self, month: dt.date, index: int, total: int) -> None: ...

    def month_done(self, manifest: dict[str, Any], index: int, total: int) -> None: ...


class LoggingListener:
    """A listener that writes to a logger (flows started by a Prefect worker, scripts)."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None) -> None:
        self.logger = logger or logging.getLogger("billing_tiers")

    def notice(self, message: str) -> None:
        self.logger.warning("%s", message)

    def month_started(self, month: dt.date, index: int, total: int) -> None:
        self.logger.info("month %s (%s of %s) started", month_label(month), index + 1, total)

    def month_done(self, manifest: dict[str, Any], index: int, total: int) -> None:
        self.logger.info("month %s (%s of %s) done", manifest["billing_month"], index + 1, total)


@dataclass
class Session:
    """A request resolved and checked, with the store locked: ready to run its planned months."""

    request: RunRequest
    store: Store
    extracts: Path
    rulebook: Rulebook
    months: list[dt.date]
    build_on: dt.date | None
    listener: RunListener = field(default_factory=LoggingListener)
    overrides: dict[dt.date, MonthOverrides] = field(default_factory=dict)
    """The approved overrides in force for each planned month (read once from the ledger)."""

    @property
    def label(self) -> str:
        """The flow run's name: the command and its months (``backfill-2024-03-to-2024-06``)."""
        first, last = month_label(self.months[0]), month_label(self.months[-1])
        if self.request.command == "backfill":
            return f"backfill-{first}-to-{last}"
        return f"tiers-{first}" if self.request.command == "run" else f"check-{first}"


def resolve_extracts(store: Store, given: Path | None) -> Path:
    """The extracts folder: the one given, else the one the store recorded at ``init``; never a
    built-in folder. A store with neither is refused, naming the flag."""
    if given is not None:
        if not str(given).strip():
            raise PipelineError(f"{EXTRACTS_FLAG} is empty: give the extracts folder")
        return given
    recorded = store.recorded_extracts()
    if recorded is None:
        raise PipelineError(
            f"store {store.root} has no extracts folder recorded: give {EXTRACTS_FLAG} DIR, or record one with "
            f"`billing-tiers init --store {store.root} {EXTRACTS_FLAG} DIR`"
        )
    return recorded


def check_extract_footers(extracts: Path, months: list[dt.date]) -> None:
    """Every file of every month is readable Parquet with the contract columns (footers only: cheap)."""
    from billing_tiers.extract_io import check_extract_schema

    for month in months:
        for path in extract_files(extracts, month):
            check_extract_schema(path, root=extracts)


def month_overrides(store: Store, months: list[dt.date], rulebook: Rulebook) -> dict[dt.date, MonthOverrides]:
    """The approved overrides in force for each month, from one read of the ledger; an override in
    force whose program or level the rulebook lacks is refused before anything runs, naming its id."""
    from billing_tiers.overrides import overrides_for_month, read_ledger, refuse_overrides_unknown_to

    entries = read_ledger(store)
    found = {}
    for month in months:
        applied = overrides_for_month(entries, month)
        refuse_overrides_unknown_to(rulebook, applied.in_force, month)
        found[month] = applied
    return found


@contextlib.contextmanager
def open_session(request: RunRequest, listener: RunListener | None = None) -> Iterator[Session]:
    """Resolve, check, lock, recover and plan ``request``; the store stays locked until the context ends."""
    from billing_tiers.planning import plan_backfill, plan_run, refuse_rulebook_change

    listener = listener or LoggingListener()
    rulebook = load_rulebook(request.rulebook)
    store = Store(request.store).require()
    extracts = resolve_extracts(store, request.extracts)
    with store.writer_lock(request.label):
        for line in store.recover():
            listener.notice(f"store {store.root}: {line}")
        plan = (
            plan_backfill(store, extracts, request.first, request.last)
            if request.command == "backfill"
            else plan_run(store, request.first)
        )
        refuse_rulebook_change(store, plan.build_on, rulebook)
        check_extract_footers(extracts, plan.months)
        overrides = month_overrides(store, plan.months, rulebook)
        yield Session(
            request=request,
            store=store,
            extracts=extracts,
            rulebook=rulebook,
            months=plan.months,
            build_on=plan.build_on,
            listener=listener,
            overrides=overrides,
        )


def run_session(
    session: Session,
    *,
    map_buckets: Any = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    flow_run_id: str | None = None,
    after_month: Any = None,
) -> list[dict[str, Any]]:
    """Evaluate the session's months in order (``check``: the one month, publishing nothing).

    ``map_buckets`` runs the bucket function over the jobs (default: two at a time in this process);
    ``after_month(month, manifest, is_last)`` lets a flow add its report once a month is published."""
    from flows.run_month import map_in_process, run_month

    request = session.request
    manifests: list[dict[str, Any]] = []
    build_on = session.build_on
    total = len(session.months)
    for index, month in enumerate(session.months):
        session.listener.month_started(month, index, total)
        manifest = run_month(
            store=session.store,
            extracts=session.extracts,
            month=month,
            build_on=build_on,
            rulebook=session.rulebook,
            rulebook_path=request.rulebook,
            override_guards=request.override_guards,
            buckets=request.buckets,
            map_buckets=map_buckets or map_in_process,
            logger=logger,
            dry_run=request.command == "check",
            flow_run_id=flow_run_id,
            overrides=session.overrides.get(month),
        ).as_dict()  # the typed manifest as the adapters hand it on (JSON-ready for Prefect and --json)
        manifests.append(manifest)
        session.listener.month_done(manifest, index, total)
        if after_month is not None and request.command != "check":
            after_month(month, manifest, index == total - 1)
        build_on = month
    return manifests


def run_request(request: RunRequest, listener: RunListener | None = None, **options: Any) -> list[dict[str, Any]]:
    """:func:`open_session` and :func:`run_session` in one call (scripts, tests, the plain flows)."""
    with open_session(request, listener) as session:
        return run_session(session, **options)
