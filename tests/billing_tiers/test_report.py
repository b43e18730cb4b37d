"""The month report: figures that add up to the published tables, read from one month's tables and
twelve manifests only; Markdown with named columns; and the HTML page opened in headless Chromium,
where every chart must draw and the page must make no network request.

The browser is Debian's ``chromium`` driven over its DevTools pipe (``--remote-debugging-pipe``:
commands on fd 3, replies on fd 4), with nothing but the standard library. Each test starts its
own browser in a new process group and ends it by that id. Without Chromium the browser test is
skipped, unless ``CI`` or ``BT_REQUIRE_CHROMIUM`` is set (``.ci/run`` installs it): then it fails.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from billing_tiers.months import month_label
from billing_tiers.report import (
    HISTORY_MONTHS,
    NONE_LEVEL,
    month_report_figures,
    month_report_markdown,
    needed_bin_labels,
    write_month_report,
)
from billing_tiers.store import Store, extract_months
from flows.run_month import run_month
from rulebook import load_rulebook
from schemas.manifest import Manifest

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "extracts"
MONTHS = extract_months(SAMPLE)[:15]
"""2024-01 .. 2025-03: more than the 12 months the report shows, with cards and members at risk."""
LAST = MONTHS[-1]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    the_store = Store(tmp_path_factory.mktemp("report") / "store")
    the_store.initialise()
    rulebook = load_rulebook()
    build_on = None
    for month in MONTHS:
        run_month(
            store=the_store,
            extracts=SAMPLE,
            month=month,
            build_on=build_on,
            rulebook=rulebook,
            rulebook_path=None,
            override_guards=False,
        )
        build_on = month
    return the_store


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_month_report(store, LAST, tmp_path_factory.mktemp("html") / "report.html")


# ------------------------------------------------------------------------------------- the figures


def test_the_figures_add_up_to_the_published_tables(store: Store) -> None:
    figures = month_report_figures(store, LAST)
    tiers = store.read_table("tier_assignments", LAST)
    rows_per_program = dict(tiers.group_by("program").len().iter_rows())
    assert figures.programs == ["unicom_vip", "unicom_star", "cmcc_credit", "points_redemption"]

    # (1) the last 12 published months; the last one equals the tier rows' level counts
    assert figures.history_months == [month_label(m) for m in MONTHS[-HISTORY_MONTHS:]]
    last = figures.members_per_level.filter(pl.col("billing_month") == month_label(LAST))
    expected = tiers.with_columns(pl.col("level").fill_null(NONE_LEVEL)).group_by("program", "level").len()
    assert {(p, lv): n for _, p, lv, n in last.iter_rows() if n} == {(p, lv): n for p, lv, n in expected.iter_rows()}
    # every month of the window has every (program, level), zeros included
    per_month = figures.members_per_level.group_by("billing_month").len()
    assert set(per_month["len"].to_list()) == {last.height}
    assert figures.levels["unicom_vip"] == [NONE_LEVEL, "silver", "gold", "diamond", "supreme"]

    # (2) each transition matrix counts every tier row of its program once
    transitions = figures.transitions.group_by("program").agg(pl.col("members").sum())
    assert dict(transitions.iter_rows()) == rows_per_program
    vip = figures.transitions.filter(pl.col("program") == "unicom_vip")
    assert set(vip["previous_level"]) | set(vip["level"]) <= set(figures.levels["unicom_vip"])
    assert (
        vip.filter(pl.col("previous_level") == NONE_LEVEL)["members"].sum()
        == tiers.filter((pl.col("program") == "unicom_vip") & pl.col("previous_level").is_null()).height
    )

    # (3) actions: one per tier row
    actions = figures.actions.group_by("program").agg(pl.col("subscribers").sum())
    assert dict(actions.iter_rows()) == rows_per_program
    expected_actions = dict(((p, a), n) for p, a, n in tiers.group_by("program", "action").len().iter_rows())
    assert {(p, a): n for p, a, n in figures.actions.iter_rows()} == expected_actions

    # (4) card events by reason
    cards = store.read_table("card_issuance", LAST)
    assert cards.height > 0
    expected_cards = {(p, e, r): n for p, e, r, n in cards.group_by("program", "event", "reason").len().iter_rows()}
    assert {(p, e, r): n for p, e, r, n in figures.cards.iter_rows()} == expected_cards

    # (5) members at risk, and their needed_next_month in bins
    at_risk = store.read_table("at_risk", LAST)
    assert at_risk.height > 0, "the sample months must include members at risk"
    assert figures.at_risk["members"].sum() == at_risk.height
    assert figures.needed_next_month["members"].sum() == at_risk.height
    assert set(figures.needed_next_month["needed_next_month"]) == set(needed_bin_labels())
    assert (
        figures.needed_next_month.filter(pl.col("needed_next_month") == "not eligible")["members"].sum()
        == at_risk.filter(pl.col("needed_next_month").is_null()).height
    )
    under_100 = at_risk.filter(pl.col("needed_next_month") < 100).height
    assert (
        figures.needed_next_month.filter(pl.col("needed_next_month").is_in(["0–50", "50–100"]))["members"].sum()
        == under_100
    )

    # (6)-(8) the manifest's figures
    manifest = store.read_manifest(LAST)
    assert manifest is not None
    assert dict(figures.quarantine_by_rule.iter_rows()) == manifest.quarantine_by_rule
    assert figures.quarantine_by_rule["rows"].sum() == manifest.tables["quarantine"].rows
    guards = {row["guard"].split(" ")[0]: row for row in figures.guards.iter_rows(named=True)}
    assert guards["quarantined"]["count"] == manifest.guards.quarantined_rows
    assert guards["previous"]["out_of"] == manifest.guards.previous_subscribers
    assert {row["status"] for row in figures.guards.iter_rows(named=True)} == {"ok"}
    timings = {(scope, step): seconds for scope, step, seconds in figures.timings.iter_rows()}
    assert timings[("run", "total")] == manifest.timings_seconds["total"]
    assert ("buckets (summed)", "evaluate") in timings
    assert figures.run["run_id"] == manifest.run_id


def test_the_figures_read_one_month_of_tables_and_twelve_manifests(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned: list[Path] = []
    manifests: list[dt.date] = []
    real_scan, real_manifest = pl.scan_parquet, Store.read_manifest

    def scan(source: Any, *args: Any, **kwargs: Any) -> pl.LazyFrame:
        scanned.extend(Path(p) for p in (source if isinstance(source, list) else [source]))
        return real_scan(source, *args, **kwargs)

    def read_manifest(self: Store, month: dt.date) -> Manifest | None:
        manifests.append(month)
        return real_manifest(self, month)

    monkeypatch.setattr(pl, "scan_parquet", scan)
    monkeypatch.setattr(pl, "read_parquet", lambda *a, **k: pytest.fail("read_parquet reads whole files"))
    monkeypatch.setattr(Store, "read_table", lambda *a, **k: pytest.fail("read_table reads every column"))
    monkeypatch.setattr(Store, "read_manifest", read_manifest)
    month_report_figures(store, LAST)
    assert {p.parent.name for p in scanned} == {f"billing_month={month_label(LAST)}"}
    # the run counted the transitions into the manifest: the 8M-row tier table is not read again
    assert {p.parent.parent.name for p in scanned} == {"card_issuance", "at_risk"}
    assert set(manifests) == set(MONTHS[-HISTORY_MONTHS:])


def test_an_unpublished_month_is_refused(store: Store) -> None:
    from billing_tiers.errors import PipelineError

    with pytest.raises(PipelineError, match="month 2030-01: not published"):
        month_report_figures(store, dt.date(2030, 1, 1))


# -------------------------------------------------------------------------------------- markdown

_TABLE_HEADER = re.compile(r"^\| (.+) \|\n\|[-:|]+\|$", re.M)


def test_the_markdown_has_named_columns_and_the_same_figures(store: Store) -> None:
    text = month_report_markdown(store, LAST)
    headers = [[name.strip() for name in match.group(1).split(" | ")] for match in _TABLE_HEADER.finditer(text)]
    assert len(headers) >= 12  # members, 4 matrices, actions, cards, at risk, needed, quarantine, guards, timings
    for names in headers:
        assert all(names), names
        assert not {"len", "count()", "literal"} & set(names), names
    flat = [" | ".join(names) for names in headers]
    assert "program | level | " + " | ".join(month_label(m) for m in MONTHS[-HISTORY_MONTHS:]) in flat
    assert "program | action | subscribers" in flat
    assert "program | event | reason | cards" in flat
    assert "program | level | months_to_rerating | members" in flat
    assert "needed_next_month (yuan) | unicom_vip | unicom_star | total" in flat
    assert "rule | rows" in flat
    assert "guard | count | out_of | ratio | limit | status" in flat
    assert "scope | step | seconds" in flat
    assert "previous_level | (none) | silver | gold | diamond | supreme | total" in flat
    assert f"# Month report {month_label(LAST)}" in text
    figures = month_report_figures(store, LAST)
    vip_total = figures.transitions.filter(pl.col("program") == "unicom_vip")["members"].sum()
    assert f"| {vip_total:,} |" in text
    assert str(figures.run["run_id"]) in text


# ------------------------------------------------------------------------------------------ HTML


def test_the_page_is_self_contained_and_the_same_for_the_same_month(store: Store, report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    figures = month_report_figures(store, LAST)
    assert f"month report {month_label(LAST)}" in page
    assert str(figures.run["run_id"]) in page
    assert page.count('<figure class="chart"') == figures.chart_count == 8
    assert page.count("<svg") == figures.chart_count
    assert "<script" not in page.lower()
    # nothing that a browser would fetch: no remote or protocol-relative src/href, no CSS url() or @import
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", page, re.I)
    assert not re.search(r"""url\(\s*["']?(?!#)""", page) and "@import" not in page  # url(#id) is local
    assert "default-src 'none'" in page  # and the page forbids any fetch anyway
    assert len(page.encode()) < 2_000_000
    # the same figures give the same bytes (stable SVG ids, no timestamps)
    again = write_month_report(store, LAST, tmp_path / "nested" / "again.html")
    assert again.read_bytes() == report.read_bytes()


def test_a_month_without_members_at_risk_or_history_still_has_every_chart(store: Store, tmp_path: Path) -> None:
    figures = month_report_figures(store, MONTHS[0])
    assert figures.at_risk.height == 0 and figures.history_months == [month_label(MONTHS[0])]
    page = write_month_report(store, MONTHS[0], tmp_path / "first.html").read_text(encoding="utf-8")
    assert page.count('<figure class="chart"') == figures.chart_count
    assert "No member at risk this month." in month_report_markdown(store, MONTHS[0])


# --------------------------------------------------------------------------------------- Chromium

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",  # were anything fetched, it would go nowhere
    "--remote-debugging-pipe",
)
_SHIM = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if found:
        return found
    if os.environ.get("CI") or os.environ.get("BT_REQUIRE_CHROMIUM"):
        pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
    pytest.skip("chromium is not installed (set CI or BT_REQUIRE_CHROMIUM to make this a failure)")


def _ours(pgid: int, profile: Path) -> list[int]:
    """Live processes (not zombies) of the browser started in process group ``pgid``: that group, and
    the crash handler, which leaves the group but names the profile's folder (HOME) on its command line."""
    marker = str(profile).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, _, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if state != "Z" and (int(group) == pgid or marker in command):
            found.append(int(entry.name))
    return found


class DevTools:
    """One headless Chromium and its DevTools pipe: JSON messages ending in a NUL byte."""

    def __init__(self, executable: str, profile: Path, log: Path) -> None:
        self.profile = profile
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()
        # numbers above 4 so the shim's dup2 onto 3 and 4 cannot overwrite the other pipe end
        child_in = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser)
        os.close(from_browser)
        self._log = log.open("wb")
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _SHIM,
                    str(child_in),
                    str(child_out),
                    executable,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "about:blank",
                ],
                pass_fds=(child_in, child_out),
                start_new_session=True,  # its own process group: ended by its id, children included
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HOME": str(profile)},
            )
        finally:
            os.close(child_in)
            os.close(child_out)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._reader, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        request: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        os.write(self._writer, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            message = self._messages.get(timeout=max(0.1, deadline - time.monotonic()))
            if message is None:
                raise RuntimeError(f"chromium closed its DevTools pipe during {method}")
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, method: str, session: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            message = self._messages.get(timeout=max(0.1, deadline - time.monotonic()))
            if message is None:
                raise RuntimeError(f"chromium closed its DevTools pipe waiting for {method}")
            self.events.append(message)

    def requested(self, session: str) -> list[str]:
        return [
            event["params"]["request"]["url"]
            for event in self.events
            if event.get("method") == "Network.requestWillBeSent" and event.get("sessionId") == session
        ]

    def open(self, url: str, width: int = 1200, height: int = 900) -> str:
        """A new tab watching the network from its first request, at ``url`` once loaded; its session."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = str(self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
        for domain in ("Network", "Page", "Runtime"):
            self.call(f"{domain}.enable", session=session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        self.call("Page.navigate", {"url": url}, session)
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return reply["result"].get("value")

    def screenshot(self, session: str, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        return base64.b64decode(self.call("Page.captureScreenshot", params, session)["data"])

    def close(self) -> None:
        """Ask the browser to quit, then end its process group by id; nothing of it may be left."""
        pid = self.process.pid
        with contextlib.suppress(Exception):
            if self.process.poll() is None:
                self.call("Browser.close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        for fd in (self._writer, self._reader):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        deadline = time.monotonic() + 10
        while _ours(pid, self.profile) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _ours(pid, self.profile)
        for straggler in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(straggler, signal.SIGKILL)
        assert not left, f"chromium processes were left behind: {left}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    executable = _chromium()
    devtools = DevTools(executable, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        yield devtools
    finally:
        devtools.close()


_CHARTS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(figure => {
  const svg = figure.querySelector(':scope > svg');
  const box = (svg || figure).getBoundingClientRect();
  return {name: figure.dataset.chart, svg: !!svg, shapes: svg ? svg.querySelectorAll('path, use, rect').length : 0,
          x: box.left + window.scrollX, y: box.top + window.scrollY, width: box.width, height: box.height};
}))"""


def _drawn(png: bytes) -> tuple[float, int]:
    """Share of pixels that are not background white, and the number of distinct colours."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        pixels = image.convert("RGB")
        colours = pixels.getcolors(maxcolors=1 << 20) or []
        total = pixels.width * pixels.height
    white = sum(count for count, colour in colours if min(colour) >= 250)
    return (total - white) / total, len(colours)


@pytest.mark.slow
def test_every_chart_renders_in_chromium_and_the_page_fetches_nothing(
    store: Store, report: Path, browser: DevTools
) -> None:
    figures = month_report_figures(store, LAST)
    session = browser.open(report.as_uri())

    charts = json.loads(browser.evaluate(session, _CHARTS))
    assert len(charts) == figures.chart_count == 8
    assert [c["name"] for c in charts][: len(figures.programs)] == [f"members-{p}" for p in figures.programs]
    for chart in charts:
        assert chart["svg"], chart
        assert chart["width"] > 300 and chart["height"] > 80, chart
        assert chart["shapes"] > 20, chart  # bars, axes and glyphs, not an empty SVG
        clip = {key: chart[key] for key in ("x", "y", "width", "height")}
        drawn, colours = _drawn(browser.screenshot(session, clip))
        assert drawn > 0.05 and colours > 20, (chart["name"], drawn, colours)

    page_drawn, _ = _drawn(browser.screenshot(session))
    assert page_drawn > 0.03
    assert browser.evaluate(session, "document.title").startswith(f"Billing tiers: month report {month_label(LAST)}")
    assert browser.evaluate(session, "document.querySelectorAll('table').length") >= 8
    requested = browser.requested(session)
    assert requested, "the page load itself must be seen, or the network watch saw nothing"
    assert all(url.startswith(("file:", "data:")) for url in requested), requested


@pytest.mark.slow
def test_the_network_watch_sees_a_page_that_fetches(tmp_path: Path, browser: DevTools) -> None:
    """The control: the same watch reports fetches, even those the report's own policy would block."""
    fetching = '<img src="http://192.0.2.1/chart.png"><script src="https://cdn.example.invalid/chart.js"></script>'
    policy = '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
    for name, head in (("open.html", ""), ("blocked.html", policy)):
        page = tmp_path / name
        page.write_text(f"<!DOCTYPE html><html><head>{head}</head><body>{fetching}</body></html>")
        requested = browser.requested(browser.open(page.as_uri()))
        assert "http://192.0.2.1/chart.png" in requested, name
        assert "https://cdn.example.invalid/chart.js" in requested, name
