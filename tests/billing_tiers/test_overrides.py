"""The override ledger (billing_tiers/overrides.py, SPEC 9): what the engine reads, the ledger read by
every analyst reader, revoke semantics, integrity checks, ids under concurrent writers, a kill in
the middle of an append, and a property against a plain model of the rules."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as pads
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import billing_tiers.overrides as ledger
from billing_tiers.errors import PipelineError
from billing_tiers.overrides import FieldError, OverrideRequest
from billing_tiers.store import Store
from rulebook import default_rulebook_path, load_rulebook, parse_rulebook
from schemas.contract import OVERRIDE_LEDGER, OVERRIDES, OVERRIDES_IN_FORCE
from tests.stores import new_store

RULES = load_rulebook()
REPO = Path(__file__).resolve().parents[2]


def request(
    subscriber: str = "s1",
    *,
    program: str = "unicom_vip",
    kind: str = "grant",
    level: str | None = "gold",
    first: str = "2024-03",
    last: str | None = None,
    reason: str = "key account",
    ticket: str | None = None,
) -> OverrideRequest:
    fields = {"program": program, "subscriber_id": subscriber, "kind": kind, "level": level,
              "first_month": first, "last_month": last, "reason": reason, "ticket": ticket}  # fmt: skip
    return ledger.parse_request(fields, RULES, "bundled rulebook")


def add(store: Store, *requests: OverrideRequest, by: str = "alice") -> list[str]:
    return ledger.add_overrides(store, list(requests), by)


def entry_names(store: Store) -> list[str]:
    folder = ledger.entries_dir(store)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(new_store(tmp_path / "store"))


@pytest.fixture
def history(store: Store) -> Store:
    """A: grant gold 2024-03..2024-12, approved, revoked from 2024-06. B: open block, approved.
    C: pending grant. D: approved, revoked from its first month (removed). E: pending, revoked."""
    add(store, request("a", first="2024-03", last="2024-12", ticket="CASE-1"))
    add(
        store,
        request("b", kind="block", level=None, first="2024-01", reason="fraud investigation"),
        request("c", program="unicom_star", level="platinum", first="2024-02"),
        request("d", program="points_redemption", level="unlocked", first="2024-04", last="2024-09"),
    )
    add(store, request("e", kind="block", level=None, first="2024-05"), by="bob")
    ledger.approve_overrides(store, ["OVR-000001", "OVR-000002", "OVR-000004"], "bob")
    ledger.revoke_override(store, "OVR-000001", "2024-06", "carol", "contract signed")
    ledger.revoke_override(store, "OVR-000004", "2024-04", "carol", "entered by mistake")
    ledger.revoke_override(store, "OVR-000005", "2024-07", "bob", "withdrawn")
    return store


# ----------------------------------------------------------------------------- the read API


def test_current_overrides_give_each_override_its_state_and_effective_months(history: Store) -> None:
    current = ledger.current_overrides(history)
    assert current.schema == OVERRIDES.schema
    shown = current.select(
        "override_id", "subscriber_id", "status", "first_month", "last_month", "requested_last_month", "removed",
        "requested_by", "approved_by", "revoked_by", "revoke_from",
    ).rows()  # fmt: skip
    assert shown == [
        ("OVR-000001", "a", "revoked", "2024-03", "2024-05", "2024-12", False, "alice", "bob", "carol", "2024-06"),
        ("OVR-000002", "b", "approved", "2024-01", None, None, False, "alice", "bob", None, None),
        ("OVR-000003", "c", "pending", "2024-02", None, None, False, "alice", None, None, None),
        ("OVR-000004", "d", "revoked", "2024-04", "2024-03", "2024-09", True, "alice", "bob", "carol", "2024-04"),
        ("OVR-000005", "e", "revoked", "2024-05", "2024-06", None, False, "bob", None, "bob", "2024-07"),
    ]
    first = current.row(0, named=True)
    assert first["requested_at"] < first["approved_at"] < first["revoked_at"]
    assert first["requested_at"].tzinfo is not None
    assert ledger.pending_overrides(history).get_column("override_id").to_list() == ["OVR-000003"]


@pytest.mark.parametrize(
    ("month", "ids"),
    [
        ("2023-12", []),
        ("2024-01", ["OVR-000002"]),
        ("2024-03", ["OVR-000001", "OVR-000002"]),
        ("2024-05", ["OVR-000001", "OVR-000002"]),  # A's last month after its revoke from 2024-06
        ("2024-06", ["OVR-000002"]),  # D was removed, C and E were never approved
        (dt.date(2024, 6, 1), ["OVR-000002"]),
        ("2031-01", ["OVR-000002"]),
    ],
)
def test_overrides_in_force_are_the_approved_ones_whose_effective_months_hold_the_month(
    history: Store, month: str | dt.date, ids: list[str]
) -> None:
    in_force = ledger.overrides_in_force(history, month)
    assert in_force.schema == OVERRIDES_IN_FORCE.schema
    assert in_force.get_column("override_id").to_list() == ids


def test_an_override_in_force_carries_what_the_engine_and_explain_need(history: Store) -> None:
    rows = ledger.overrides_in_force(history, "2024-04").to_dicts()
    assert rows == [
        {"override_id": "OVR-000001", "program": "unicom_vip", "subscriber_id": "a", "kind": "grant", "level": "gold",
         "reason": "key account", "requested_by": "alice", "approved_by": "bob", "first_month": "2024-03",
         "last_month": "2024-05"},
        {"override_id": "OVR-000002", "program": "unicom_vip", "subscriber_id": "b", "kind": "block", "level": None,
         "reason": "fraud investigation", "requested_by": "alice", "approved_by": "bob", "first_month": "2024-01",
         "last_month": None},
    ]  # fmt: skip


def test_the_month_checksum_covers_the_entries_that_decide_what_is_in_force(store: Store) -> None:
    add(store, request("a", first="2024-01"))
    ledger.approve_overrides(store, ["OVR-000001"], "bob")
    first = ledger.overrides_for_month(store, "2024-04")
    assert first.override_ids == ["OVR-000001"]
    assert first.entries.get_column("entry").to_list() == ["add", "approve"]
    assert ledger.overrides_for_month(store, dt.date(2024, 4, 1)).checksum == first.checksum  # read again
    add(store, request("other", first="2024-01"))  # another override, pending: not used
    ledger.approve_overrides(store, ["OVR-000002"], "bob")  # in force, but for another subscriber
    assert ledger.overrides_for_month(store, "2024-04").checksum != first.checksum
    assert ledger.overrides_for_month(store, "2024-04").override_ids == ["OVR-000001", "OVR-000002"]
    before_revoke = ledger.overrides_for_month(store, "2024-04").checksum
    ledger.revoke_override(store, "OVR-000002", "2024-06", "carol", "ended")  # still in force in 2024-04
    after = ledger.overrides_for_month(store, "2024-04")
    assert after.checksum != before_revoke and after.entries.height == 5
    empty = ledger.overrides_for_month(store, "2023-01")
    assert empty.override_ids == [] and empty.checksum == hashlib.sha256(b"override-ledger v1").hexdigest()


def test_the_checksum_is_of_the_entries_not_of_their_files_or_order(history: Store) -> None:
    entries = ledger.read_ledger(history)
    assert ledger.ledger_checksum(entries.reverse()) == ledger.ledger_checksum(entries)
    assert ledger.ledger_checksum(entries.head(3)) != ledger.ledger_checksum(entries)
    changed = entries.with_columns(
        pl.when(pl.col("sequence") == 2).then(pl.lit("x")).otherwise("reason").alias("reason")
    )
    assert ledger.ledger_checksum(changed) != ledger.ledger_checksum(entries)


def test_a_run_refuses_an_override_its_rulebook_does_not_have(history: Store) -> None:
    in_force = ledger.overrides_in_force(history, "2024-04")
    ledger.refuse_overrides_unknown_to(RULES, in_force, "2024-04")  # the bundled rulebook has them all
    text = default_rulebook_path().read_text(encoding="utf-8")
    without_vip = parse_rulebook(
        text.replace("[programs.unicom_vip]\nenabled = true", "[programs.unicom_vip]\nenabled = false")
    )
    with pytest.raises(PipelineError) as refused:
        ledger.refuse_overrides_unknown_to(without_vip, in_force, "2024-04")
    assert str(refused.value) == (
        "override OVR-000001 (in force in 2024-04) is for program 'unicom_vip', which the rulebook does not have "
        "enabled; revoke the override or run with a rulebook that has the program"
    )
    strange = in_force.with_columns(level=pl.lit("platinum"))
    with pytest.raises(
        PipelineError, match=r"^override OVR-000001 \(in force in 2024-04\) grants unicom_vip level 'platinum'"
    ):
        ledger.refuse_overrides_unknown_to(RULES, strange, "2024-04")


# ----------------------------------------------------------------------------- the files


def same_entries(frame: pl.DataFrame, entries: pl.DataFrame) -> None:
    """``frame`` (from another reader) holds exactly ``entries``, value for value."""
    got = frame.with_columns(pl.col("recorded_at").dt.convert_time_zone("UTC").dt.cast_time_unit("us"))
    assert got.select(entries.columns).sort("sequence").equals(entries), got


def test_polars_duckdb_pyarrow_and_pandas_read_the_ledger_folder(history: Store) -> None:
    entries = ledger.read_ledger(history)
    assert entries.height == 11 and entries.get_column("sequence").to_list() == list(range(1, 12))
    folder = ledger.entries_dir(history)
    (folder / ".00000012-0badf00d.parquet.tmp").write_bytes(b"half a batch")  # a writer killed mid-write
    glob = f"{folder}/*.parquet"
    same_entries(pl.read_parquet(glob), entries)
    same_entries(pl.scan_parquet(glob).collect(), entries)
    with duckdb.connect() as db:
        same_entries(db.sql(f"select * from read_parquet('{glob}')").pl(), entries)
        approvals = db.sql(f"""select override_id, "by" from read_parquet('{glob}') where entry = 'approve'
                               order by sequence""").fetchall()  # `by` is an SQL keyword: quote it
    assert approvals == [("OVR-000001", "bob"), ("OVR-000002", "bob"), ("OVR-000004", "bob")]
    same_entries(pl.DataFrame(pl.from_arrow(pads.dataset(folder, format="parquet").to_table())), entries)
    frame = pd.read_parquet(folder, dtype_backend="pyarrow")
    same_entries(pl.from_pandas(frame), entries)
    assert str(frame["recorded_at"].dtype) == "timestamp[us, tz=UTC][pyarrow]"


def test_each_batch_is_one_file_named_by_its_first_sequence(history: Store) -> None:
    names = entry_names(history)
    assert [name[:8] for name in names] == ["00000001", "00000002", "00000005", "00000006", "00000009",
                                            "00000010", "00000011"]  # fmt: skip
    batch = pl.read_parquet(ledger.entries_dir(history) / names[1])
    assert batch.get_column("override_id").to_list() == ["OVR-000002", "OVR-000003", "OVR-000004"]
    assert batch.get_column("recorded_at").n_unique() == 1 and batch.schema == OVERRIDE_LEDGER.schema


def damaged_copy(store: Store, tmp_path: Path) -> tuple[Store, Path]:
    copy = Store(tmp_path / "copy")
    shutil.copytree(store.root, copy.root)
    return copy, ledger.entries_dir(copy)


def test_a_damaged_ledger_is_refused_naming_the_file(history: Store, tmp_path: Path) -> None:
    copy, folder = damaged_copy(history, tmp_path)
    (folder / "notes.parquet").write_bytes(b"")
    with pytest.raises(PipelineError, match=r"notes\.parquet is not a ledger entry file"):
        ledger.read_ledger(copy)
    shutil.rmtree(copy.root)
    copy, folder = damaged_copy(history, tmp_path)
    names = entry_names(copy)
    (folder / names[2]).unlink()  # entries 5 to 8 gone
    with pytest.raises(PipelineError, match=rf"file {folder / names[3]}: holds entries 6 to 8 where entry 5 is next"):
        ledger.read_ledger(copy)
    shutil.rmtree(copy.root)
    copy, folder = damaged_copy(history, tmp_path)
    edited = pl.read_parquet(folder / names[0]).with_columns(entry=pl.lit("gift"))
    edited.write_parquet(folder / names[0])
    with pytest.raises(PipelineError, match=rf"file {folder / names[0]}: entry: isin"):
        ledger.read_ledger(copy)
    shutil.rmtree(copy.root)
    copy, folder = damaged_copy(history, tmp_path)
    edited = pl.read_parquet(folder / names[3]).with_columns(by=pl.lit("ALICE"))  # an approval by the requester
    edited.write_parquet(folder / names[3])
    with pytest.raises(PipelineError, match=r"entry 6 \(approve OVR-000001\): approved by its requester"):
        ledger.read_ledger(copy)
    with pytest.raises(PipelineError):
        ledger.overrides_in_force(copy, "2024-04")


def test_a_store_with_no_override_has_an_empty_ledger(store: Store) -> None:
    assert ledger.read_ledger(store).height == 0 and ledger.read_ledger(store).schema == OVERRIDE_LEDGER.schema
    assert ledger.current_overrides(store).height == 0
    assert ledger.overrides_in_force(store, "2024-01").height == 0


# ----------------------------------------------------------------------------- real processes


def runner(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.ledger_runner", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_concurrent_writers_get_distinct_ids_and_only_one_of_overlapping_overrides(
    store: Store, tmp_path: Path
) -> None:
    barrier = tmp_path / "go"
    processes = [
        runner("adds", str(store.root), str(barrier), f"writer{n}", *[f"p{n}-{i}" for i in range(5)], "shared")
        for n in range(4)
    ]
    try:
        time.sleep(1)
        barrier.touch()
        outputs = [process.communicate(timeout=240) for process in processes]
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    assert [process.returncode for process in processes] == [0] * 4, outputs
    printed = [out.splitlines() for out, _ in outputs]
    ids = [line for lines in printed for line in lines if line.startswith("OVR-")]
    assert sorted(ids) == [f"OVR-{n:06d}" for n in range(1, 22)]
    for lines in printed:  # each process saw its own ids rise
        own = [line for line in lines if line.startswith("OVR-")]
        assert own == sorted(own)
    refusals = [line for lines in printed for line in lines if line.startswith("refused")]
    assert len(refusals) == 3
    entries = ledger.read_ledger(store)
    (winner,) = entries.filter(pl.col("subscriber_id") == "shared").get_column("override_id")
    assert set(refusals) == {
        f"refused: first_month,last_month: 2024-01..open overlaps {winner} (pending, 2024-01..open) of unicom_vip "
        "for subscriber 'shared'; revoke it first, or choose months that do not overlap"
    }
    assert entries.get_column("sequence").to_list() == list(range(1, 22)) and len(entry_names(store)) == 21


def pause_add(store: Store, step: str, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    marker = tmp_path / f"paused-{step}"
    process = runner("pause", step, str(marker), "override", "add", "--store", str(store.root), "--program",
                     "unicom_vip", "--subscriber", "killed", "--kind", "block", "--from", "2024-02",
                     "--reason", "fraud", "--by", "alice")  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the writer never reached its pause"
        time.sleep(0.05)
    return process, marker


def kill(process: subprocess.Popen[str]) -> str:
    os.killpg(process.pid, signal.SIGKILL)
    out, _ = process.communicate(timeout=30)
    return out


@pytest.mark.slow
def test_a_kill_between_the_temporary_file_and_its_rename_loses_nothing_and_leaves_no_half_entry(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(store, request("before"))
    process, _ = pause_add(store, "written", tmp_path)
    try:
        (temporary,) = [name for name in entry_names(store) if name.endswith(".tmp")]
        assert temporary.startswith(".00000002-")
        monkeypatch.setattr(ledger, "LOCK_TIMEOUT_SECONDS", 0.5)
        with pytest.raises(
            PipelineError,
            match=r"^the override ledger of store .* is busy \(pid \d+ since .*\) after 0.5 s; try again$",
        ):
            add(store, request("waiting"))
    finally:
        printed = kill(process)
    assert printed == ""  # nothing was acknowledged
    glob = f"{ledger.entries_dir(store)}/*.parquet"
    assert ledger.read_ledger(store).get_column("subscriber_id").to_list() == ["before"]
    assert pl.read_parquet(glob).height == 1
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall() == [(1,)]
    assert pd.read_parquet(ledger.entries_dir(store), dtype_backend="pyarrow").shape[0] == 1
    assert add(store, request("after")) == ["OVR-000002"]  # the dead writer's lock is free, its id unused
    assert not [name for name in entry_names(store) if name.endswith(".tmp")]  # its debris is gone
    assert ledger.read_ledger(store).get_column("sequence").to_list() == [1, 2]


@pytest.mark.slow
def test_a_kill_after_the_rename_leaves_the_whole_entry(store: Store, tmp_path: Path) -> None:
    add(store, request("before"))
    process, _ = pause_add(store, "renamed", tmp_path)
    kill(process)
    entries = ledger.read_ledger(store)
    assert entries.select("override_id", "subscriber_id", "kind", "first_month", "reason").rows()[-1] == (
        "OVR-000002", "killed", "block", "2024-02", "fraud",
    )  # fmt: skip
    assert add(store, request("after")) == ["OVR-000003"]


# ----------------------------------------------------------------------------- a property against a model


MONTHS = [f"2024-{m:02d}" for m in range(1, 10)]
NAMES = ("ann", "Ann", "bob", "cy")
GRANTED = {"unicom_vip": "gold", "points_redemption": "unlocked"}


@dataclass
class Modelled:
    """An override as the plain model of SPEC 9 holds it."""

    override_id: str
    program: str
    subscriber_id: str
    kind: str
    first: str
    last: str | None
    requested_by: str
    approved_by: str | None = None
    revoke_from: str | None = None

    @property
    def status(self) -> str:
        return "revoked" if self.revoke_from else "approved" if self.approved_by else "pending"

    @property
    def effective_last(self) -> str | None:
        if self.revoke_from is None:
            return self.last
        cut = MONTHS[MONTHS.index(self.revoke_from) - 1] if self.revoke_from != MONTHS[0] else "2023-12"
        return cut if self.last is None or cut < self.last else self.last

    def holds(self, month: str) -> bool:
        last = self.effective_last
        return self.first <= month and (last is None or month <= last)

    def takes_months(self) -> bool:
        """Whether its months are taken for overlap: pending or approved, or approved and revoked with
        months left."""
        return self.status != "revoked" or (self.approved_by is not None and not self.removed)

    @property
    def removed(self) -> bool:
        return self.revoke_from is not None and self.revoke_from <= self.first


adds = st.tuples(
    st.just("add"), st.sampled_from(sorted(GRANTED)), st.sampled_from(["a", "b"]), st.sampled_from(["grant", "block"]),
    st.integers(0, 5), st.one_of(st.none(), st.integers(0, 3)), st.sampled_from(NAMES),
)  # fmt: skip
approves = st.tuples(st.just("approve"), st.lists(st.integers(0, 99), min_size=1, max_size=2), st.sampled_from(NAMES))
revokes = st.tuples(st.just("revoke"), st.integers(0, 99), st.integers(0, 8), st.sampled_from(NAMES))
"""Approve and revoke pick an existing override by ``choice % overrides`` for a choice below 90, and an
id that does not exist for the others (or when there is none yet)."""


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adds, min_size=1, max_size=4), st.lists(st.one_of(adds, approves, approves, revokes), max_size=8))
def test_any_sequence_of_operations_gives_the_state_a_plain_model_gives(
    first: list[tuple[object, ...]], then: list[tuple[object, ...]]
) -> None:
    """Some adds, then adds, approves and revokes in any order: every operation is accepted or refused as
    the model says (a refusal writes nothing), and the overrides, their state and what is in force in
    each month are the model's."""
    operations = first + then
    with tempfile.TemporaryDirectory() as folder:
        store = Store(new_store(Path(folder) / "store"))
        model: list[Modelled] = []
        entries = 0
        for operation in operations:
            files = len(entry_names(store))
            accepted = apply(store, model, operation)
            entries += accepted
            assert len(entry_names(store)) == files + (accepted > 0)  # a refusal writes nothing
        current = ledger.current_overrides(store)
        assert current.select(
            "override_id", "program", "subscriber_id", "kind", "first_month", "last_month", "requested_by",
            "approved_by", "status", "removed",
        ).rows() == [
            (m.override_id, m.program, m.subscriber_id, m.kind, m.first, m.effective_last, m.requested_by,
             m.approved_by, m.status, m.removed)
            for m in model
        ]  # fmt: skip
        for month in MONTHS:
            in_force = ledger.overrides_in_force(store, month)
            expected = [m.override_id for m in model if m.approved_by and m.holds(month)]
            assert in_force.get_column("override_id").to_list() == expected
            assert not in_force.select(pl.struct("program", "subscriber_id").is_duplicated().any()).item()
        assert ledger.read_ledger(store).get_column("sequence").to_list() == list(range(1, entries + 1))


def apply(store: Store, model: list[Modelled], operation: tuple[object, ...]) -> int:
    """Apply one operation to the store and the model alike; returns how many entries it wrote."""
    by_id = {m.override_id: m for m in model}

    def pick(choice: int) -> str:
        return model[choice % len(model)].override_id if model and choice < 90 else f"OVR-{len(model) + 1:06d}"

    match operation:
        case ("add", program, subscriber, kind, first, span, by):
            first_month = MONTHS[first]
            last_month = None if span is None else MONTHS[first + span]
            level = GRANTED[program] if kind == "grant" else None
            wanted = request(subscriber, program=program, kind=kind, level=level, first=first_month, last=last_month)
            other = next(
                (m for m in model if (m.program, m.subscriber_id) == (program, subscriber) and m.takes_months()
                 and (m.effective_last is None or first_month <= m.effective_last)
                 and (last_month is None or m.first <= last_month)),
                None,
            )  # fmt: skip
            if other is not None:
                with pytest.raises(FieldError, match=f"overlaps {other.override_id} "):
                    add(store, wanted, by=by)
                return 0
            new_id = f"OVR-{len(model) + 1:06d}"
            assert add(store, wanted, by=by) == [new_id]
            model.append(Modelled(new_id, program, subscriber, kind, first_month, last_month, by))
            return 1
        case ("approve", numbers, by):
            ids = list(dict.fromkeys(pick(n) for n in numbers))
            targets = [by_id.get(i) for i in ids]
            if any(t is None or t.status != "pending" or t.requested_by.casefold() == by.casefold() for t in targets):
                with pytest.raises(PipelineError):
                    ledger.approve_overrides(store, ids, by)
                return 0
            assert ledger.approve_overrides(store, ids, by) == ids
            for target in targets:
                assert target is not None
                target.approved_by = by
            return len(ids)
        case ("revoke", number, month, by):
            target = by_id.get(pick(number))
            if target is None or target.status == "revoked":
                with pytest.raises(PipelineError):
                    ledger.revoke_override(store, pick(number), MONTHS[month], by, "because")
                return 0
            ledger.revoke_override(store, target.override_id, MONTHS[month], by, "because")
            target.revoke_from = MONTHS[month]
            return 1
    raise AssertionError(operation)
