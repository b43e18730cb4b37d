"""The Prefect API check (``billing_tiers/prefect_api.py``), through the real command line.

The URL is set the way the README's set-up sets it, with ``prefect config set`` in the active
profile of a private ``PREFECT_HOME``, and not in the environment; it points at a free port where
nothing listens. Every command that would start a flow must then stop in one line naming the URL,
exit 2 and publish nothing, instead of Prefect's ``RuntimeError: Failed to reach API``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.extract_factory import write_history
from tests.processes import free_port

BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 180  # only stops a hang


def _tool(name: str) -> list[str]:
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"billing-tiers": "billing_tiers.cli", "prefect": "prefect.cli"}[name]
    return [sys.executable, "-m", module]


@pytest.fixture
def profile_only(tmp_path: Path) -> tuple[dict[str, str], str]:
    """An environment whose Prefect profile (not the environment) names a dead API URL."""
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "DO_NOT_TRACK": "1"})
    subprocess.run(
        [*_tool("prefect"), "config", "set", f"PREFECT_API_URL={url}"],
        env=env, check=True, capture_output=True, timeout=COMMAND_TIMEOUT,
    )  # fmt: skip
    assert url in (tmp_path / "prefect-home" / "profiles.toml").read_text()
    assert "PREFECT_API_URL" not in env
    return env, url


def _billing_tiers(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_tool("billing-tiers"), *args], env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )


def _published(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file() and not p.name.startswith((".lock", "billing-tiers")))


@pytest.mark.slow
def test_a_dead_server_named_only_in_the_profile_stops_run_and_backfill_in_one_line(
    profile_only: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, url = profile_only
    extracts, store = tmp_path / "extracts", tmp_path / "store"
    write_history(extracts, ["2024-01", "2024-02"])
    assert _billing_tiers(env, "init", "--store", str(store)).returncode == 0

    for command in (
        ["run", "--month", "2024-01"],
        ["backfill", "--from", "2024-01", "--to", "2024-02"],
    ):
        done = _billing_tiers(env, *command, "--extracts", str(extracts), "--store", str(store))
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        (line,) = lines
        assert line.startswith(f"error: the Prefect server at {url} does not answer"), line
        assert "Prefect profile" in line and "prefect config unset PREFECT_API_URL" in line, line
        assert "Failed to reach API" not in done.stderr and "Traceback" not in done.stderr
        assert _published(store) == [], command

    # The store's lock was released: a command that takes it runs.
    done = _billing_tiers(env, "check", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store))
    assert done.returncode == 0, done.stderr

    # --debug shows where it came from.
    done = _billing_tiers(
        env, "run", "--month", "2024-01", "--extracts", str(extracts), "--store", str(store), "--debug"
    )
    assert done.returncode != 0 and "Traceback" in done.stderr and url in done.stderr


def test_no_url_anywhere_means_a_temporary_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from billing_tiers.prefect_api import require_prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert require_prefect_api() is None


def test_a_url_in_the_environment_is_checked_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from billing_tiers.errors import PipelineError
    from billing_tiers.prefect_api import require_prefect_api

    url = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.raises(PipelineError) as error:
        require_prefect_api()
    message = str(error.value)
    assert message.startswith(f"the Prefect server at {url} does not answer (ConnectError)")
    assert "set in the environment" in message and "unset PREFECT_API_URL" in message
    assert "\n" not in message
