"""The report in a real browser: headless Chromium renders every figure, logs nothing to the console and
requests nothing from the network; a screenshot is kept as an artifact.

Chromium runs offline (every host name resolves to nothing) with a NetLog: any http(s) request the page
itself starts (its initiator is the page, not the browser's own background services) fails the test.
Console messages are read from Chromium's stderr log (``--enable-logging=stderr --v=0``), where each one
is an ``INFO:CONSOLE`` line; the report should print none at all. Screenshots go to ``$REPORT_ARTIFACTS``
when set, else to the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import reports

CHROMIUM = Path("/usr/bin/chromium")
FIXTURES = Path(__file__).parent / "fixtures"
TIMEOUT_S = 120
VIRTUAL_TIME_MS = 20000  # budget for scripts to run (virtual time: passes fast once the page is idle)
BASE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--host-resolver-rules=MAP * ~NOTFOUND", f"--virtual-time-budget={VIRTUAL_TIME_MS}"]
BROWSER_INITIATORS = {"not an origin"}  # Chromium's own requests (updates, accounts), not the page's

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]


@dataclass(frozen=True)
class Rendered:
    """One report opened in Chromium: the page, its DOM after scripts ran, console lines, requests made."""

    page: Path
    dom: str
    console: list[str]
    requests: list[str]
    screenshot: Path


def page_requests(net_log: Path) -> list[str]:
    """URLs of the network requests the page itself started, from a Chromium NetLog file."""
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = (event.get("params", {}) for event in log["events"] if event["type"] == start_job)
    return [params["url"] for params in starts
            if "url" in params and params.get("initiator") not in BROWSER_INITIATORS]


def artifacts_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("REPORT_ARTIFACTS") or tmp_path / "artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module", params=[("results_full.json", "results_reference.json"),
                                        ("results_nasty.json", None)], ids=["full", "nasty"])
def rendered(request, tmp_path_factory) -> Rendered:
    fixture, compare_with = request.param
    tmp_path = tmp_path_factory.mktemp(fixture.removesuffix(".json"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text((FIXTURES / fixture).read_text())
    page = reports.build_report(run_dir, compare_dir=FIXTURES / compare_with if compare_with else None)
    net_log = tmp_path / "netlog.json"
    shot = artifacts_dir(tmp_path) / f"report-{fixture.removesuffix('.json')}.png"
    command = [str(CHROMIUM), *BASE_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
               "--v=0", f"--log-net-log={net_log}", "--window-size=1400,6000", f"--screenshot={shot}",
               "--dump-dom", page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(page, done.stdout, console, page_requests(net_log), shot)


def test_every_figure_rendered(rendered):
    figures = rendered.page.read_text().count('class="plotly-graph-div"')
    assert figures > 0
    # Plotly.newPlot puts one .plot-container (holding the .main-svg layers) into each figure div.
    assert rendered.dom.count('class="plot-container plotly"') == figures
    assert rendered.dom.count('class="main-svg"') >= figures


def test_console_stays_silent(rendered):
    assert rendered.console == []


def test_page_requests_nothing_from_the_network(rendered):
    assert rendered.requests == []


def test_names_from_results_stay_text(rendered):
    assert "<script>alert(1)</script>" not in rendered.dom
    assert "<b>no driver</b>" not in rendered.dom


def test_screenshot_is_saved(rendered):
    shot = rendered.screenshot.read_bytes()
    assert shot[:4] == b"\x89PNG"
    assert len(shot) > 50_000  # a page of tables and charts, not a blank or error page
