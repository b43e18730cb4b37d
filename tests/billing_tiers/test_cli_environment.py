"""A failure of the environment (full disk, read-only store) is one line naming the path and what to do,
exit 2, and nothing is published."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from billing_tiers.cli import app
from tests.extract_factory import write_history

runner = CliRunner()
MONTHS = ["2024-01", "2024-02"]


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder`` (needs root; the test is skipped elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def published(store: Path) -> list[str]:
    manifests = store / "manifests"
    return sorted(p.name for p in manifests.iterdir()) if manifests.is_dir() else []


@pytest.mark.usefixtures("prefect_harness")
def test_a_full_disk_is_one_line_and_publishes_nothing(tmp_path: Path) -> None:
    extracts = tmp_path / "extracts"
    write_history(extracts, MONTHS, subscribers=20000)
    with small_disk(tmp_path / "disk", "200k") as disk:
        store = disk / "store"
        assert runner.invoke(app, ["init", "--store", str(store), "--extracts", str(extracts)]).exit_code == 0
        result = runner.invoke(app, ["run", "--month", "2024-01", "--store", str(store)])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.output
        assert errors[0].startswith("error: cannot write ")
        assert errors[0].endswith(
            "no space left on the device: free space there (or use another --store) and rerun; nothing was published"
        )
        assert str(store) in errors[0]
        assert published(store) == []
        assert not any((store / "_staging").iterdir()) if (store / "_staging").is_dir() else True


def test_a_read_only_store_is_one_line_naming_the_file(tmp_path: Path) -> None:
    extracts = tmp_path / "extracts"
    write_history(extracts, MONTHS, subscribers=10)
    with small_disk(tmp_path / "disk", "1m") as disk:
        store = disk / "store"
        assert runner.invoke(app, ["init", "--store", str(store), "--extracts", str(extracts)]).exit_code == 0
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = runner.invoke(app, ["check", "--month", "2024-01", "--store", str(store)])
        assert result.exit_code == 2
        assert result.output == (
            f"error: cannot write {store / '.lock'}: the file system is read-only: use a writable --store; "
            "nothing was published\n"
        )


def test_permission_errors_name_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root ignores file modes, so the refusal is injected where the run first writes: the lock."""
    from billing_tiers import store as store_module

    extracts = tmp_path / "extracts"
    write_history(extracts, MONTHS, subscribers=10)
    store = tmp_path / "store"
    assert runner.invoke(app, ["init", "--store", str(store), "--extracts", str(extracts)]).exit_code == 0

    class Refused(store_module.FileLock):  # type: ignore[misc, name-defined]
        def acquire(self, *args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(store / ".lock"))

    monkeypatch.setattr(store_module, "FileLock", Refused)
    result = runner.invoke(app, ["check", "--month", "2024-01", "--store", str(store)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: cannot write {store / '.lock'}: permission denied: give this user write access, or use another "
        "--store; nothing was published\n"
    )
