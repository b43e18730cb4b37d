"""`billing-tiers override` (SPEC 9) through the command line: what each command prints, and every
refusal as one exact line on stderr, exit 2, with no ledger file added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from billing_tiers.cli import app
from billing_tiers.store import Store
from rulebook import default_rulebook_path
from schemas.contract import OVERRIDE_LEDGER, OVERRIDE_LIST_KEYS
from tests.stores import new_store

runner = CliRunner()
PROGRAMS = "unicom_vip, unicom_star, cmcc_credit, points_redemption"
VIP_LEVELS = "silver, gold, diamond, supreme"
HEADER = "program,subscriber_id,kind,level,first_month,last_month,reason,ticket"


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def entry_files(store: Path) -> list[str]:
    """Every file in the ledger's entries folder (temporary ones too)."""
    folder = store / "overrides" / "entries"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def refused(store: Path, *args: str) -> str:
    """Run a command that must be refused: exit 2, nothing on stdout, one line on stderr, no file added;
    returns the line."""
    before = entry_files(store)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert entry_files(store) == before
    return lines[0]


def ok(*args: str) -> list[str]:
    """Run a command that must succeed with nothing on stderr; returns its stdout lines."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout.splitlines()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return new_store(tmp_path / "store")


def add_args(store: Path, **fields: str | None) -> list[str]:
    values = {"program": "unicom_vip", "subscriber": "s1", "kind": "grant", "level": "gold", "from": "2024-03",
              "to": None, "reason": "key account", "by": "alice"}  # fmt: skip
    values.update(fields)
    args = ["override", "add", "--store", str(store)]
    for name, value in values.items():
        if value is not None:
            args += [f"--{name}", value]
    return args


def listed(store: Path, *options: str) -> list[dict[str, object]]:
    document = json.loads("\n".join(ok("override", "list", "--store", str(store), "--json", *options)))
    assert isinstance(document, list)
    return document


# ----------------------------------------------------------------------------- add


def test_add_prints_only_the_new_id_and_the_override_waits_for_approval(store: Path) -> None:
    assert ok(*add_args(store, ticket="CASE-1")) == ["OVR-000001"]
    assert ok(*add_args(store, subscriber="s2", kind="block", level=None, to="2024-06")) == ["OVR-000002"]
    assert entry_files(store) == sorted(entry_files(store)) and len(entry_files(store)) == 2
    first, second = listed(store)
    assert first == {
        "override_id": "OVR-000001", "program": "unicom_vip", "subscriber_id": "s1", "kind": "grant",
        "level": "gold", "first_month": "2024-03", "last_month": None, "reason": "key account",
        "ticket": "CASE-1", "requested_by": "alice", "approved_by": None, "status": "pending",
    }  # fmt: skip
    assert (second["kind"], second["level"], second["last_month"], second["ticket"]) == ("block", None, "2024-06", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"program": "nope"}, f"--program: 'nope' is not a program of the bundled rulebook (enabled: {PROGRAMS})"),
        ({"level": "platinum"}, f"--level: 'platinum' is not a level of unicom_vip ({VIP_LEVELS})"),
        ({"level": None}, f"--level: a grant needs a level of unicom_vip ({VIP_LEVELS})"),
        ({"level": ""}, f"--level: a grant needs a level of unicom_vip ({VIP_LEVELS})"),
        ({"kind": "block"}, "--level: a block takes no level (got 'gold')"),
        ({"kind": "gift"}, "--kind: 'gift' is not a kind of override (grant or block)"),
        ({"kind": "Grant"}, "--kind: 'Grant' is not a kind of override (grant or block)"),
        ({"from": "2024-13"}, "--from: month '2024-13': there is no month 13; months run from 01 to 12"),
        ({"from": "2024-3"}, "--from: month '2024-3' is not of the form YYYY-MM"),
        ({"from": "2024-03-01"}, "--from: month '2024-03-01' is not of the form YYYY-MM"),
        ({"to": "soon"}, "--to: month 'soon' is not of the form YYYY-MM"),
        ({"to": "2024-02"}, "--to: 2024-02 is before the first month 2024-03"),
        ({"reason": ""}, "--reason: must not be empty; say why"),
        ({"reason": " \t "}, "--reason: must not be empty; say why"),
        ({"by": ""}, "--by: must not be empty; give the name of the person deciding"),
        ({"by": "   "}, "--by: must not be empty; give the name of the person deciding"),
        ({"by": "ali\u200bce"}, "--by: 'ali\\u200bce' has a control or format character (U+200B); give a plain name"),
        ({"subscriber": ""}, "--subscriber: must not be empty; a subscriber_id has 1 to 32 characters"),
        ({"subscriber": "x" * 33}, f"--subscriber: '{'x' * 33}' has 33 characters; a subscriber_id has 1 to 32"),
        (
            {"subscriber": "a\x1b[31mb"},
            "--subscriber: 'a\\x1b[31mb' has a control or format character (U+001B); a subscriber_id may not",
        ),
        (
            {"subscriber": "a\nb"},
            "--subscriber: 'a\\nb' has a control or format character (U+000A); a subscriber_id may not",
        ),
        (
            {"subscriber": "\u202eab"},
            "--subscriber: '\\u202eab' has a control or format character (U+202E); a subscriber_id may not",
        ),
        ({"subscriber": " ab"}, "--subscriber: ' ab' starts or ends with whitespace; a subscriber_id may not"),
        (
            {"subscriber": "ab\u3000"},
            "--subscriber: 'ab\\u3000' starts or ends with whitespace; a subscriber_id may not",
        ),
    ],
)
def test_add_refuses_a_bad_value_in_one_line_naming_the_option(
    store: Path, fields: dict[str, str | None], message: str
) -> None:
    assert refused(store, *add_args(store, **fields)) == f"error: {message}"
    assert entry_files(store) == [] and not (store / "overrides").exists()


def test_a_32_character_id_with_inner_spaces_and_unicode_is_accepted(store: Path) -> None:
    subscriber = "号码 " + "x" * 29
    assert len(subscriber) == 32
    assert ok(*add_args(store, subscriber=subscriber)) == ["OVR-000001"]
    assert listed(store)[0]["subscriber_id"] == subscriber


def test_add_checks_programs_and_levels_in_the_rulebook_given(store: Path, tmp_path: Path) -> None:
    text = default_rulebook_path().read_text(encoding="utf-8")
    marker = "[programs.cmcc_credit]\nenabled = true"
    assert marker in text
    rulebook = tmp_path / "no-credit.toml"
    rulebook.write_text(text.replace(marker, "[programs.cmcc_credit]\nenabled = false"), encoding="utf-8")
    assert refused(store, *add_args(store, program="cmcc_credit", level="star_2"), "--rulebook", str(rulebook)) == (
        f"error: --program: 'cmcc_credit' is disabled in the rulebook {rulebook} "
        "(enabled: unicom_vip, unicom_star, points_redemption)"
    )
    assert ok(*add_args(store, program="cmcc_credit", level="star_2")) == ["OVR-000001"]  # bundled: enabled
    missing = tmp_path / "missing.toml"
    assert refused(store, *add_args(store), "--rulebook", str(missing)).startswith(f"error: rulebook {missing}: ")


def test_every_command_needs_an_initialised_store(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    expected = (
        f"error: store {plain} is not an initialised store (no billing-tiers-store.json); "
        "create one with `billing-tiers init --store DIR`"
    )
    for args in (
        add_args(plain),
        ["override", "approve", "OVR-000001", "--store", str(plain), "--by", "bob"],
        [
            "override",
            "revoke",
            "OVR-000001",
            "--store",
            str(plain),
            "--from",
            "2024-05",
            "--by",
            "bob",
            "--reason",
            "r",
        ],
        ["override", "list", "--store", str(plain)],
        ["override", "log", "--store", str(plain)],
    ):
        assert refused(plain, *args) == expected
    assert list(plain.iterdir()) == []
    missing = tmp_path / "missing"
    assert refused(missing, *add_args(missing)) == (
        f"error: store {missing} does not exist; create it with `billing-tiers init --store {missing}`"
    )
    assert not missing.exists()


def test_overlapping_months_of_the_same_program_and_subscriber_are_refused_naming_the_other(store: Path) -> None:
    assert ok(*add_args(store, **{"from": "2024-03", "to": "2024-06"})) == ["OVR-000001"]
    assert refused(store, *add_args(store, **{"from": "2024-06", "to": None, "kind": "block", "level": None})) == (
        "error: --from/--to: 2024-06..open overlaps OVR-000001 (pending, 2024-03..2024-06) of unicom_vip for "
        "subscriber 's1'; revoke it first, or choose months that do not overlap"
    )
    assert refused(store, *add_args(store, **{"from": "2024-01", "to": "2024-03"})).startswith(
        "error: --from/--to: 2024-01..2024-03 overlaps OVR-000001 (pending, 2024-03..2024-06)"
    )
    ok("override", "approve", "OVR-000001", "--store", str(store), "--by", "bob")
    assert refused(store, *add_args(store, **{"from": "2024-04", "to": "2024-04"})).startswith(
        "error: --from/--to: 2024-04..2024-04 overlaps OVR-000001 (approved, 2024-03..2024-06)"
    )
    # the months around it, another program and another subscriber are free
    assert ok(*add_args(store, **{"from": "2024-01", "to": "2024-02"})) == ["OVR-000002"]
    assert ok(*add_args(store, **{"from": "2024-07"})) == ["OVR-000003"]
    assert ok(*add_args(store, program="unicom_star", **{"from": "2024-03"})) == ["OVR-000004"]
    assert ok(*add_args(store, subscriber="s2")) == ["OVR-000005"]


def test_an_add_during_a_run_is_not_refused(store: Path) -> None:
    with Store(store).writer_lock("run --month 2024-03"):
        assert ok(*add_args(store)) == ["OVR-000001"]


# ----------------------------------------------------------------------------- import


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_import_prints_the_ids_in_file_order_from_one_batch_file(store: Path, tmp_path: Path) -> None:
    ok(*add_args(store, subscriber="first"))
    csv_file = write_csv(
        tmp_path / "o.csv",
        "unicom_star,13800000002,block,,2024-02,2024-06,fraud investigation,FRAUD-9",
        'unicom_vip,s9,grant,silver,2024-01,,"key account, ""strategic""",',
        "",
        "points_redemption,s9,grant,unlocked,2024-05,2024-05,goodwill,T-3",
    )
    assert ok("override", "import", "--store", str(store), "--file", str(csv_file), "--by", "alice") == [
        "OVR-000002",
        "OVR-000003",
        "OVR-000004",
    ]
    assert len(entry_files(store)) == 2
    rows = listed(store)[1:]
    fields = ("program", "subscriber_id", "kind", "level", "first_month", "last_month")
    assert [tuple(r[f] for f in fields) for r in rows] == [
        ("unicom_star", "13800000002", "block", None, "2024-02", "2024-06"),
        ("unicom_vip", "s9", "grant", "silver", "2024-01", None),
        ("points_redemption", "s9", "grant", "unlocked", "2024-05", "2024-05"),
    ]  # fmt: skip
    assert rows[1]["reason"] == 'key account, "strategic"' and rows[1]["ticket"] is None
    assert {r["status"] for r in rows} == {"pending"} and {r["requested_by"] for r in rows} == {"alice"}


def test_import_accepts_a_byte_order_mark_and_windows_line_ends(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + HEADER + "\r\nunicom_vip,s1,block,,2024-01,,fraud,\r\n").encode())
    assert ok("override", "import", "--store", str(store), "--file", str(path), "--by", "alice") == ["OVR-000001"]


GOOD = "unicom_vip,s1,grant,gold,2024-01,,key account,"


@pytest.mark.parametrize(
    ("rows", "where", "problem"),
    [
        ([GOOD, "unicom_vip,s2,grant,platinum,2024-01,,r,"], "data row 2 (line 3), column level",
         f"'platinum' is not a level of unicom_vip ({VIP_LEVELS})"),
        ([GOOD, "unicom_vip,s2,block,gold,2024-01,,r,"], "data row 2 (line 3), column level",
         "a block takes no level (got 'gold')"),
        (["nope,s2,block,,2024-01,,r,"], "data row 1 (line 2), column program",
         f"'nope' is not a program of the bundled rulebook (enabled: {PROGRAMS})"),
        ([GOOD, GOOD.replace("s1", "s3"), "unicom_vip, s4,block,,2024-01,,r,"],
         "data row 3 (line 4), column subscriber_id",
         "' s4' starts or ends with whitespace; a subscriber_id may not"),
        ([GOOD, "unicom_vip,s2,block,,2024-1,,r,"], "data row 2 (line 3), column first_month",
         "month '2024-1' is not of the form YYYY-MM"),
        ([GOOD, "unicom_vip,s2,block,,,,r,"], "data row 2 (line 3), column first_month",
         "month '' is not of the form YYYY-MM"),
        ([GOOD, "unicom_vip,s2,block,,2024-05,2024-04,r,"], "data row 2 (line 3), column last_month",
         "2024-04 is before the first month 2024-05"),
        ([GOOD, "unicom_vip,s2,block,,2024-05,,  ,T-1"], "data row 2 (line 3), column reason",
         "must not be empty; say why"),
        ([GOOD, "unicom_vip,s2,gift,,2024-05,,r,"], "data row 2 (line 3), column kind",
         "'gift' is not a kind of override (grant or block)"),
        # a quoted reason over two lines: data row 2 starts on line 4
        (['unicom_vip,s1,block,,2024-01,,"two\nlines",', "unicom_vip,s2,grant,,2024-01,,r,"],
         "data row 2 (line 4), column level", f"a grant needs a level of unicom_vip ({VIP_LEVELS})"),
        # a blank line is skipped and is not a data row
        ([GOOD, "", "unicom_vip,s2,grant,,2024-01,,r,"], "data row 2 (line 4), column level",
         f"a grant needs a level of unicom_vip ({VIP_LEVELS})"),
        ([GOOD, "unicom_vip,s2,block,,2024-05,,r"], "data row 2 (line 3)", "7 fields, the header has 8"),
        ([GOOD, "unicom_vip,s1,block,,2024-05,2024-07,r,"], "data row 2 (line 3), columns first_month,last_month",
         "2024-05..2024-07 overlaps data row 1 of this file (2024-01..open) of unicom_vip for subscriber 's1'"),
        ([GOOD.replace("s1", "taken")], "data row 1 (line 2), columns first_month,last_month",
         "2024-01..open overlaps OVR-000001 (pending, 2024-01..open) of unicom_vip for subscriber 'taken'; "
         "revoke it first, or choose months that do not overlap"),
    ],
)  # fmt: skip
def test_import_is_all_or_nothing_naming_the_data_row_its_line_and_the_column(
    store: Path, tmp_path: Path, rows: list[str], where: str, problem: str
) -> None:
    ok(*add_args(store, subscriber="taken", **{"from": "2024-01"}))
    path = write_csv(tmp_path / "o.csv", *rows)
    message = refused(store, "override", "import", "--store", str(store), "--file", str(path), "--by", "bob")
    assert message == f"error: {path}: {where}: {problem}; nothing was imported"
    assert [row["override_id"] for row in listed(store)] == ["OVR-000001"]


def test_import_refuses_a_file_that_is_not_the_expected_csv(store: Path, tmp_path: Path) -> None:
    def import_message(path: Path) -> str:
        return refused(store, "override", "import", "--store", str(store), "--file", str(path), "--by", "bob")

    wrong = write_csv(
        tmp_path / "a.csv", GOOD, header="program,subscriber,kind,level,first_month,last_month,reason,ticket"
    )
    assert import_message(wrong) == (
        f"error: {wrong}: line 1 must be the header {HEADER}, found "
        "program,subscriber,kind,level,first_month,last_month,reason,ticket; nothing was imported"
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert import_message(empty) == (
        f"error: {empty}: line 1 must be the header {HEADER}, found an empty file; nothing was imported"
    )
    header_only = write_csv(tmp_path / "h.csv")
    assert import_message(header_only) == f"error: {header_only}: no data row under the header; nothing was imported"
    latin = tmp_path / "latin.csv"
    latin.write_bytes((HEADER + "\nunicom_vip,s1,block,,2024-01,,caf\xe9,\n").encode("latin-1"))
    assert import_message(latin) == f"error: {latin}: not UTF-8 text (byte 103); nothing was imported"
    missing = tmp_path / "missing.csv"
    assert import_message(missing) == f"error: {missing}: no such file; nothing was imported"
    assert refused(store, "override", "import", "--store", str(store), "--file", str(header_only), "--by", " ") == (
        "error: --by: must not be empty; give the name of the person deciding"
    )


# ----------------------------------------------------------------------------- approve


def test_approve_several_ids_as_one_batch(store: Path) -> None:
    for subscriber in ("s1", "s2", "s3"):
        ok(*add_args(store, subscriber=subscriber))
    before = len(entry_files(store))
    assert ok(
        "override", "approve", "OVR-000001", "OVR-000003", "OVR-000001", "--store", str(store), "--by", "bob"
    ) == [
        "OVR-000001 approved",
        "OVR-000003 approved",
    ]
    assert len(entry_files(store)) == before + 1
    assert [(r["status"], r["approved_by"]) for r in listed(store)] == [
        ("approved", "bob"),
        ("pending", None),
        ("approved", "bob"),
    ]


def test_four_eyes_the_requester_may_not_approve_and_then_nothing_is_approved(store: Path) -> None:
    ok(*add_args(store, subscriber="s1", by="bob"))
    ok(*add_args(store, subscriber="s2", by="alice"))
    where = ("--store", str(store))
    for name, shown in (("alice", "alice"), ("ALICE", "alice"), ("  alice ", "alice"), ("ａｌｉｃｅ", "alice")):
        assert refused(store, "override", "approve", "OVR-000001", "OVR-000002", *where, "--by", name) == (
            f"error: four eyes: OVR-000002 was requested by {shown}, who may not approve it; nothing was approved"
        )
    assert [r["status"] for r in listed(store)] == ["pending", "pending"]
    assert ok("override", "approve", "OVR-000002", *where, "--by", "carol") == ["OVR-000002 approved"]


def test_approve_refuses_unknown_and_not_pending_ids_approving_none(store: Path) -> None:
    ok(*add_args(store, subscriber="s1"))
    ok(*add_args(store, subscriber="s2"))
    where = ("--store", str(store), "--by", "bob")
    assert refused(store, "override", "approve", "OVR-000001", "OVR-000009", *where) == (
        "error: no override 'OVR-000009' in the ledger; nothing was approved"
    )
    assert refused(store, "override", "approve", "[/]", *where) == (
        "error: no override '[/]' in the ledger; nothing was approved"
    )
    ok("override", "approve", "OVR-000001", *where)
    assert refused(store, "override", "approve", "OVR-000002", "OVR-000001", *where) == (
        "error: OVR-000001 is approved, not pending; nothing was approved"
    )
    ok("override", "revoke", "OVR-000002", "--store", str(store), "--from", "2024-03", "--by", "bob",
       "--reason", "withdrawn")  # fmt: skip
    assert refused(store, "override", "approve", "OVR-000002", *where) == (
        "error: OVR-000002 is revoked, not pending; nothing was approved"
    )
    assert refused(store, "override", "approve", *where) == "error: approve: give at least one override id"
    assert refused(store, "override", "approve", "OVR-000001", "--store", str(store), "--by", "") == (
        "error: --by: must not be empty; give the name of the person deciding"
    )
    assert [r["status"] for r in listed(store)] == ["approved", "revoked"]


def test_approve_on_a_store_with_no_ledger_creates_nothing(store: Path) -> None:
    assert refused(store, "override", "approve", "OVR-000001", "--store", str(store), "--by", "bob") == (
        "error: no override 'OVR-000001' in the ledger; nothing was approved"
    )
    assert not (store / "overrides").exists()


# ----------------------------------------------------------------------------- revoke


def revoke(store: Path, override_id: str, month: str, by: str = "carol", reason: str = "resolved") -> list[str]:
    return ok("override", "revoke", override_id, "--store", str(store), "--from", month, "--by", by, "--reason", reason)


def test_revoke_from_a_month_inside_the_range_ends_it_the_month_before(store: Path) -> None:
    ok(*add_args(store, **{"from": "2024-03", "to": "2024-12"}))
    ok("override", "approve", "OVR-000001", "--store", str(store), "--by", "bob")
    assert revoke(store, "OVR-000001", "2024-06") == [
        "OVR-000001 revoked from 2024-06; its effective months are 2024-03..2024-05"
    ]
    (row,) = listed(store)
    assert (row["status"], row["first_month"], row["last_month"], row["approved_by"]) == (
        "revoked", "2024-03", "2024-05", "bob",
    )  # fmt: skip
    assert ok("override", "list", "--store", str(store))[2].split("\t")[:7] == [
        "OVR-000001", "revoked", "unicom_vip", "s1", "grant", "gold", "2024-03..2024-05",
    ]  # fmt: skip
    # the months it kept stay taken; the months it gave back are free
    assert refused(store, *add_args(store, **{"from": "2024-05"})).startswith(
        "error: --from/--to: 2024-05..open overlaps OVR-000001 (revoked, 2024-03..2024-05)"
    )
    assert ok(*add_args(store, **{"from": "2024-06"})) == ["OVR-000002"]


def test_revoke_of_an_open_override_and_from_after_its_end(store: Path) -> None:
    ok(*add_args(store, subscriber="open"))
    ok(*add_args(store, subscriber="short", **{"from": "2024-03", "to": "2024-04"}))
    assert revoke(store, "OVR-000001", "2025-01") == [
        "OVR-000001 revoked from 2025-01; its effective months are 2024-03..2024-12"
    ]
    assert revoke(store, "OVR-000002", "2024-09") == [
        "OVR-000002 revoked from 2024-09; its effective months are 2024-03..2024-04"
    ]


@pytest.mark.parametrize("month", ["2024-03", "2023-11"])
def test_revoke_from_the_first_month_or_earlier_removes_it(store: Path, month: str) -> None:
    ok(*add_args(store, **{"from": "2024-03", "to": "2024-08"}))
    ok("override", "approve", "OVR-000001", "--store", str(store), "--by", "bob")
    assert revoke(store, "OVR-000001", month) == [f"OVR-000001 revoked from {month}; it has no effective month left"]
    (row,) = listed(store)
    assert row["status"] == "revoked" and str(row["last_month"]) < str(row["first_month"])
    assert ok("override", "list", "--store", str(store))[2].split("\t")[6] == "none"
    for covered in ("2024-03", "2024-08"):
        assert listed(store, "--month", covered) == []
    assert ok(*add_args(store, **{"from": "2024-03"})) == ["OVR-000002"]  # its months are free again


def test_a_pending_override_can_be_revoked_and_then_never_applies(store: Path) -> None:
    ok(*add_args(store))
    assert revoke(store, "OVR-000001", "2024-06", by="alice") == [
        "OVR-000001 revoked from 2024-06; its effective months are 2024-03..2024-05"
    ]
    (row,) = listed(store)
    assert (row["status"], row["approved_by"]) == ("revoked", None)
    assert ok(*add_args(store, **{"from": "2024-04"})) == ["OVR-000002"]  # never approved: takes no month


def test_revoke_refusals(store: Path) -> None:
    ok(*add_args(store))
    base = ("override", "revoke", "OVR-000001", "--store", str(store), "--by", "carol")
    unknown = ("override", "revoke", "OVR-000009", "--store", str(store), "--by", "carol")
    assert refused(store, *unknown, "--from", "2024-05", "--reason", "r") == (
        "error: no override 'OVR-000009' in the ledger; nothing was revoked"
    )
    assert refused(store, *base, "--from", "2024-05", "--reason", "") == "error: --reason: must not be empty; say why"
    assert (
        refused(store, *base, "--from", "2024-05", "--reason", "\n ") == "error: --reason: must not be empty; say why"
    )
    assert refused(store, *base, "--from", "2024-5", "--reason", "r") == (
        "error: --from: month '2024-5' is not of the form YYYY-MM"
    )
    nameless = ("override", "revoke", "OVR-000001", "--store", str(store), "--by", "", "--from", "2024-05")
    assert refused(store, *nameless, "--reason", "r") == (
        "error: --by: must not be empty; give the name of the person deciding"
    )
    revoke(store, "OVR-000001", "2024-05")
    assert refused(store, *base, "--from", "2024-04", "--reason", "again") == (
        "error: OVR-000001 is already revoked (from 2024-05, by carol); nothing was revoked"
    )


# ----------------------------------------------------------------------------- list, log, status


def test_list_month_keeps_the_overrides_whose_effective_months_hold_it(store: Path) -> None:
    ok(*add_args(store, subscriber="a", **{"from": "2024-01", "to": "2024-02"}))
    ok(*add_args(store, subscriber="b", **{"from": "2024-02"}))
    ok(*add_args(store, subscriber="c", **{"from": "2024-04"}))
    assert [r["subscriber_id"] for r in listed(store, "--month", "2024-02")] == ["a", "b"]
    assert [r["subscriber_id"] for r in listed(store, "--month", "2024-03")] == ["b"]
    assert [r["subscriber_id"] for r in listed(store, "--month", "2030-01")] == ["b", "c"]
    assert ok("override", "list", "--store", str(store), "--month", "2023-12")[2:] == ["no override covers 2023-12"]
    assert refused(store, "override", "list", "--store", str(store), "--month", "2024-1") == (
        "error: --month: month '2024-1' is not of the form YYYY-MM"
    )


def test_list_and_log_print_ids_names_and_reasons_literally(store: Path, tmp_path: Path) -> None:
    hostile = "[/]"
    reason = "[bold red]urgent[/bold red]\x1b[2J\nsecond line"
    ok(*add_args(store, subscriber=hostile, reason=reason, by="[b]ann[/b]", ticket="[link=x]T[/link]"))
    lines = ok("override", "list", "--store", str(store))
    assert lines[:2] == [f"# overrides in store {store}", "\t".join(
        ("override_id", "status", "program", "subscriber_id", "kind", "level", "months", "requested_by",
         "approved_by", "ticket", "reason"))]  # fmt: skip
    assert lines[2] == "\t".join(
        ("OVR-000001", "pending", "unicom_vip", "[/]", "grant", "gold", "2024-03..open", "[b]ann[/b]", "-",
         "[link=x]T[/link]", "[bold red]urgent[/bold red]\\x1b[2J\\nsecond line")
    )  # fmt: skip
    assert len(lines) == 3
    (row,) = listed(store)
    assert row["reason"] == "[bold red]urgent[/bold red]\x1b[2J\nsecond line"  # JSON keeps the exact text
    log = ok("override", "log", "--store", str(store))
    assert "\t[/]\t" in log[2] and log[2].endswith(
        "\t[link=x]T[/link]\t[bold red]urgent[/bold red]\\x1b[2J\\nsecond line"
    )


def test_list_json_has_exactly_the_spec_keys_and_log_json_every_entry(store: Path) -> None:
    assert listed(store) == []
    assert ok("override", "log", "--store", str(store)) == [
        f"# override ledger of store {store}",
        "sequence\trecorded_at\tentry\toverride_id\tby\tos_user\tprogram\tsubscriber_id\tkind\tlevel\t"
        "first_month\tlast_month\trevoke_from\tticket\treason",
        "no entry yet",
    ]
    ok(*add_args(store))
    ok("override", "approve", "OVR-000001", "--store", str(store), "--by", "bob")
    revoke(store, "OVR-000001", "2024-07")
    assert [tuple(row) for row in listed(store)] == [OVERRIDE_LIST_KEYS]
    entries = json.loads("\n".join(ok("override", "log", "--store", str(store), "--json")))
    assert [tuple(entry) for entry in entries] == [tuple(OVERRIDE_LEDGER.columns)] * 3
    assert [(e["sequence"], e["entry"], e["override_id"], e["by"]) for e in entries] == [
        (1, "add", "OVR-000001", "alice"),
        (2, "approve", "OVR-000001", "bob"),
        (3, "revoke", "OVR-000001", "carol"),
    ]
    assert entries[2]["revoke_from"] == "2024-07" and entries[2]["reason"] == "resolved"
    assert entries[0]["recorded_at"].endswith("+00:00") and entries[0]["os_user"]
    text = ok("override", "log", "--store", str(store))
    assert len(text) == 5 and text[3].split("\t")[2:4] == ["approve", "OVR-000001"]
    assert text[3].split("\t")[1].endswith("Z")


def test_status_lists_the_overrides_waiting_for_approval(store: Path) -> None:
    ok(*add_args(store, subscriber="s1"))
    ok(*add_args(store, subscriber="s2", kind="block", level=None, to="2024-05", reason="fraud"))
    ok("override", "approve", "OVR-000001", "--store", str(store), "--by", "bob")
    result = invoke("status", "--store", str(store), "--extracts", str(store / "none"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    at = lines.index("# overrides waiting for approval")
    assert lines[at + 1 : at + 4] == [
        "override_id\tprogram\tsubscriber_id\tkind\tlevel\tmonths\trequested_by\treason",
        "OVR-000002\tunicom_vip\ts2\tblock\t-\t2024-03..2024-05\talice\tfraud",
        "1 override(s) waiting for approval: `billing-tiers override approve ID ... --store S --by NAME` "
        "(not by the requester)",
    ]
    result = invoke("status", "--store", str(store), "--extracts", str(store / "none"), "--json")
    pending = json.loads(result.stdout)["pending_overrides"]
    assert [tuple(row) for row in pending] == [OVERRIDE_LIST_KEYS]
    assert pending[0]["override_id"] == "OVR-000002" and pending[0]["status"] == "pending"
    result = invoke("status", "--store", str(new_store(store.parent / "empty")), "--json")
    assert json.loads(result.stdout)["pending_overrides"] == []


def test_status_reports_a_damaged_ledger_and_check_fails(store: Path) -> None:
    ok(*add_args(store))
    (store / "overrides" / "entries" / "notes.parquet").write_bytes(b"")
    where = ("--store", str(store), "--extracts", str(store / "none"))
    expected = (
        f"override ledger {store}/overrides/entries: notes.parquet is not a ledger entry file "
        "(<sequence>-<hex>.parquet); the ledger is written only by `billing-tiers override`: move the file out"
    )
    result = invoke("status", *where)
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == f"override ledger: {expected}"
    assert invoke("status", *where, "--check").exit_code == 3
    report = json.loads(invoke("status", *where, "--json").stdout)
    assert report["pending_overrides"] is None and report["override_ledger_problem"] == expected
    assert refused(store, "override", "list", "--store", str(store)) == f"error: {expected}"
    assert refused(store, *add_args(store, subscriber="s2")) == f"error: {expected}"
