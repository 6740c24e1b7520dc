"""The console end to end in a real headless browser: `realtime-core up` (server and console), Debian's
chromium driven by the `playwright` package (executable_path: Playwright's own browser download is
never used), every page visited for its key element, the RLS tester and the inspector used (a test
broadcast appears in the live tail). A screenshot of each page is saved under artifacts/console/
(ignored by git); docs/console-overview.png and docs/console-rls-tester.png come from this test.

scripts/test installs chromium (`apt-get install chromium`) when it is missing and it runs as root;
without a browser this test is skipped, saying why."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from conftest import ADMIN_SECRET, JWT_SECRET, MS, ROOT, messages_policy, scratch_database
from console_traffic import Traffic, until
from psycopg.conninfo import conninfo_to_dict

pytestmark = [pytest.mark.pg, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts" / "console"
TOPIC = "browser:room"
WAIT_MS = 30_000 * MS * 1000  # Playwright counts milliseconds


@dataclass
class Up:
    """A running `realtime-core up`: the server's URL (ws_url for the clients) and the console's."""

    http_url: str
    console_url: str

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://") + "/socket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def up(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    console_port = _free_port()
    with scratch_database(pg_dsn) as database_url:
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REALTIME_DATA_DIR": str(tmp_path_factory.mktemp("up")),
            "REALTIME_JWT_SECRET": JWT_SECRET,
            "API_JWT_SECRET": ADMIN_SECRET,
            "SLOT_NAME_SUFFIX": conninfo_to_dict(database_url)["dbname"],
            "PYTHONUNBUFFERED": "1",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "realtime_core", "up", "--port", "0", "--console-port", str(console_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 60_000 * MS
            while not any("admin token:" in line for line in lines) and time.monotonic() < deadline:
                line = process.stdout.readline()
                assert line, "".join(lines)  # up ended early
                lines.append(line)
            text = "".join(lines)
            port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", text)[1])  # type: ignore[index]
            assert f"console:   http://127.0.0.1:{console_port}" in text, text
            server = Up(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{console_port}")
            _wait_for_console(server.console_url)
            with psycopg.connect(database_url, autocommit=True) as db:
                messages_policy(db, "select", f"realtime.topic() = '{TOPIC}'")
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            if process.stdout is not None:
                process.stdout.close()


def _wait_for_console(url: str) -> None:
    deadline = time.monotonic() + 60_000 * MS
    while True:
        try:
            if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the console did not answer /_stcore/health"
        time.sleep(50 * MS)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            "no chromium: the console's browser test needs Debian's chromium (`apt-get install chromium`, which "
            "scripts/test runs when it is root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, up):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    context.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # The picture once everything is drawn: no placeholder left, every chart rendered.
    page.wait_for_function(DRAWN)
    page.wait_for_timeout(300)  # charts' entry animation
    page.screenshot(path=str(path), full_page=True)
    return path


def visit(page, up: Up, path: str, heading: str) -> None:
    page.goto(f"{up.console_url}/{path}")
    page.get_by_role("heading", name=heading).wait_for()


# Not "no run in progress": live fragments rerun every few seconds, and on a loaded machine a page may
# never be idle between them.
DRAWN = """() => !document.querySelector('[data-testid="stSkeleton"]')
    && [...document.querySelectorAll('[data-testid="stPlotlyChart"]')].every(c => c.querySelector('.main-svg'))"""

# (url path, heading, a key element's text)
PAGES = [
    ("", "Overview", "Connections now"),
    ("channels", "Channels", TOPIC),
    ("presence", "Presence", f"{TOPIC} — 1 keys"),
    ("nodes", "Nodes", "a cluster of one"),
    ("replication", "Replication", "Publication supabase_realtime"),
    ("usage", "Usage & pricing", "What-if estimator"),
    ("settings", "Settings", "Audit log"),
]


def test_the_channel_picker_follows_channels_that_appear(up, page):
    # First of the module: the list shows recently used channels too, and this server has had none yet.
    visit(page, up, "channels", "Channels")
    page.get_by_text("No active channels").wait_for()
    with Traffic(up) as traffic:
        traffic.join("browser:late")
        # The table refreshes on its own; the picker and the channel's details below it follow.
        page.get_by_role("heading", name="Channel", exact=True).wait_for()
        page.get_by_text("browser:late").filter(visible=True).first.wait_for()
        page.get_by_text("Subscribers", exact=True).first.wait_for()


def test_every_page_shows_its_key_element(up, page):
    with Traffic(up) as traffic:
        traffic.join(TOPIC, key="alice", meta={"status": "online"})
        traffic.join(TOPIC)
        for i in range(5):
            traffic.broadcast(TOPIC, "tick", {"i": i})
        until(lambda: len(traffic.received) == 5, "the ticks")
        for path, heading, key in PAGES:
            visit(page, up, path, heading)
            # Visible text only: a table's cells are also in the page as a hidden grid for screen readers.
            page.get_by_text(key, exact=False).filter(visible=True).first.wait_for()
            assert page.get_by_text("Traceback").count() == 0
            shot(page, path or "overview")


def test_the_rls_tester_answers_allow_and_deny(up, page):
    visit(page, up, "rls_tester", "RLS tester")
    for topic, verdict in ((TOPIC, "allow"), ("browser:closed", "deny")):
        page.get_by_label("Topic").fill(topic)
        page.get_by_role("button", name="Check read and write").click()
        row = page.locator("table tr", has_text="broadcast").filter(has_text="read").first
        row.get_by_text(verdict, exact=True).wait_for()
    page.get_by_text("History of this session").wait_for()
    shot(page, "rls_tester")


def test_the_inspector_tails_a_test_broadcast(up, page):
    with Traffic(up) as traffic:
        traffic.join(TOPIC)  # the tail shows what reached a subscriber
        visit(page, up, "inspector", "Inspector")
        page.get_by_label("Topic").first.fill(TOPIC)
        page.get_by_role("button", name="Listen").click()
        page.get_by_text(f"listening on {TOPIC}").wait_for()

        page.get_by_role("tab", name="Test broadcast").click()
        panel = page.get_by_role("tabpanel", name="Test broadcast")
        panel.get_by_label("Topic").fill(TOPIC)
        panel.get_by_label("Event").fill("from-the-browser")
        panel.get_by_role("button", name="Broadcast to all clients").click()
        page.get_by_text(f"Broadcast 'from-the-browser' on {TOPIC}: delivered to 1 socket(s).").wait_for()

        page.get_by_role("tab", name="Live tail").click()
        page.locator("table").get_by_text("from-the-browser").wait_for()
        shot(page, "inspector")
        until(lambda: (TOPIC, "from-the-browser", {"message": "hello"}) in traffic.received, "the client's copy")
