"""The typed manifest: what a run writes reads back the same; a file that is not JSON, misses a
required field, has a field of the wrong type, names another month or comes from a newer version is
a "damaged" result naming the file, never an exception; a manifest from before ``format_version``
still reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.manifest import (
    MANIFEST_FORMAT_VERSION,
    DamagedManifest,
    Manifest,
    parse_manifest,
    read_manifest_file,
)
from tests.stores import make_manifest

PATH = Path("/store/manifests/billing_month=2024-03/manifest.json")


def written() -> dict[str, Any]:
    manifest = make_manifest(
        "2024-03",
        "run-3",
        built_from={"month": "2024-02", "run_id": "run-2"},
        buckets=3,
        extracts="/data/extracts",
        summary=[{"program": "unicom_vip", "level": None, "action": "none", "subscribers": 7}],
        tables={"state": {"rows": 7, "parts": [{"file": "part-00000-abcd.parquet", "rows": 7, "sha256": "f" * 64}]}},
    )
    return manifest.as_dict()


def test_a_written_manifest_reads_back_equal_with_its_format_version() -> None:
    data = written()
    assert data["format_version"] == MANIFEST_FORMAT_VERSION
    parsed = parse_manifest(json.dumps(data).encode(), PATH, month="2024-03")
    assert isinstance(parsed, Manifest)
    assert parsed.as_dict() == data
    assert parsed.tables["state"].parts[0].file == "part-00000-abcd.parquet"
    assert parsed.extracts == "/data/extracts"
    assert parsed.previous_version_unreadable is None


def test_a_manifest_from_before_the_format_version_still_reads() -> None:
    old = {k: v for k, v in written().items() if k not in ("format_version", "extracts")}
    old["summary"] = [{"program": "unicom_vip", "level": "silver", "action": "new", "len": 2}]  # an older count name
    parsed = parse_manifest(json.dumps(old).encode(), PATH)
    assert isinstance(parsed, Manifest)
    assert parsed.format_version == 0 and parsed.extracts is None
    assert parsed.summary[0].subscribers == 2


def damaged(data: bytes) -> str:
    parsed = parse_manifest(data, PATH, month="2024-03")
    assert isinstance(parsed, DamagedManifest), parsed
    assert parsed.path == PATH
    assert parsed.describe().startswith(f"manifest {PATH} is damaged (")
    return parsed.reason


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: d.pop("tables"), "no field tables"),
        (lambda d: d.pop("run_id"), "no field run_id"),
        (lambda d: d["tables"]["state"].pop("parts"), "no field tables.state.parts"),
        (lambda d: d.update(buckets="three"), "field buckets: Input should be a valid integer"),
        (lambda d: d.update(billing_month="2024-04"), "it names month 2024-04, not 2024-03"),
        (lambda d: d.update(format_version=99), "format_version 99 is newer than this version reads"),
    ],
)
def test_a_manifest_missing_a_field_or_with_a_wrong_one_is_damaged_not_a_key_error(change: Any, reason: str) -> None:
    data = written()
    change(data)
    assert damaged(json.dumps(data).encode()).startswith(reason)


def test_bytes_that_are_not_a_json_object_are_damaged() -> None:
    assert damaged(b"garbage {").startswith("not JSON: ")
    assert damaged(b"\xff\xfe\x00").startswith("not JSON: ")
    assert damaged(b"[1, 2]") == "not a JSON object"


def test_reading_a_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    assert read_manifest_file(path) is None
    path.write_text("{}")
    found = read_manifest_file(path)
    assert isinstance(found, DamagedManifest) and found.reason.startswith("no field ")
