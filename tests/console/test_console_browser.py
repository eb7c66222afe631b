"""The console in a real browser: Playwright driving Debian's Chromium against `webinar-flows
serve` started as users start it (a subprocess on a free 127.0.0.1 port, stopped by PID).

Never `playwright install`: the browser is Debian's `chromium` package (.ci/run installs it),
its path given to Playwright ($WF_CHROMIUM, default /usr/bin/chromium). Without it these tests
skip with a message locally and fail when $CI is set.

Each page is opened with no console error and no request to any host but 127.0.0.1; a
screenshot of each lands in the test's tmp directory (and in docs/console/ with
WF_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from consolekit import PASSWORD, USER, configs, seed, write_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from serverkit import Server, free_port  # noqa: E402

CHROMIUM = os.environ.get("WF_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
TIMEOUT_MS = 20_000


def _unavailable(reason: str) -> None:
    message = f"browser tests need Debian's chromium ({reason}); install it: apt-get install -y chromium"
    if os.environ.get("CI"):
        pytest.fail(message + " ($CI is set: not skipping)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed: pip install playwright")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                               "--disable-dev-shm-usage"])
        except Exception as exc:  # noqa: BLE001 - reported as the reason to skip or fail
            _unavailable(f"it did not start: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """serve on a database seeded under the strict config, run with the approving one: the
    stored unauthorized_emitter rejection is accepted when re-processed."""
    tmp = tmp_path_factory.mktemp("console-browser")
    strict, approving = configs(tmp)
    db = tmp / "console.db"
    seed(strict, db)
    keys = write_keys(tmp / "keys.toml")
    server = None
    for attempt in range(3):
        server = Server(tmp, free_port(), db, keys, {}, ("--config", str(approving)))
        try:
            server.start()
            break
        except AssertionError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    assert server is not None
    try:
        yield server
    finally:
        server.stop()


class Watch:
    """A page's console errors, uncaught errors and every URL it requested."""

    def __init__(self, page: Any):
        self.errors: list[str] = []
        self.urls: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("request", lambda r: self.urls.append(r.url))

    def check(self) -> None:
        assert self.errors == []
        foreign = [u for u in self.urls if urlsplit(u).hostname != "127.0.0.1" and not u.startswith(("data:", "blob:"))]
        assert foreign == []


@pytest.fixture
def page(browser: Any, server: Server, tmp_path: Path) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch = Watch(page)
    page.goto("/console/login")
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/console$"))
    yield page, watch
    context.close()
    watch.check()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("WF_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS / path.name)


def _diagrams_drawn(page: Any) -> None:
    page.wait_for_selector("body[data-diagrams]", state="attached")
    assert page.get_attribute("body", "data-diagrams") == "rendered"
    assert page.locator("pre.mermaid svg").count() >= 1


def test_a_wrong_password_shows_the_message(browser: Any, server: Server) -> None:
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    watch = Watch(page)
    page.goto("/console")
    assert page.url.endswith("/console/login")
    page.get_by_label("Username").fill(USER)
    page.get_by_label("Password").fill("not it")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Invalid username or password").wait_for()
    context.close()
    watch.check()


def test_every_page_opens_cleanly(page: tuple[Any, Watch], tmp_path: Path) -> None:
    p, _ = page
    _shot(p, tmp_path, "overview")
    assert p.locator("svg.chart").count() == 1
    p.goto("/console/contract")
    _diagrams_drawn(p)
    _shot(p, tmp_path, "contract")
    p.goto("/console/routes?webinar_id=W1")
    assert p.locator("table.routes tbody tr").count() == 2
    _shot(p, tmp_path, "routes")
    p.goto("/console/quarantine")
    _shot(p, tmp_path, "quarantine")
    first = p.locator("table.quarantine tbody tr a").first.get_attribute("href")
    p.goto(first)
    _shot(p, tmp_path, "rejection")
    p.goto("/console/deliveries")
    p.locator("#consumer-reminder-sender").get_by_role("button", name="Retry").wait_for()
    _shot(p, tmp_path, "deliveries")
    p.goto("/console/login")
    _shot(p, tmp_path, "login")


def test_the_route_diagram_marks_the_current_state(page: tuple[Any, Watch], tmp_path: Path) -> None:
    p, _ = page
    p.goto("/console/routes/L1/W1")
    _diagrams_drawn(p)
    current = p.locator("pre.mermaid svg g.current")
    assert current.count() >= 1
    assert "completed" in (current.first.text_content() or "")
    assert "completed" in (current.first.get_attribute("id") or "")
    _shot(p, tmp_path, "route")


def test_preview_shows_a_yaml_error_with_line_and_column(page: tuple[Any, Watch], tmp_path: Path) -> None:
    p, _ = page
    p.goto("/console/contract/preview")
    p.get_by_label("File").select_option("emitters.yaml")
    p.get_by_label("New text").fill("emitters:\n  tracker: [unclosed\n")
    p.get_by_role("button", name="Preview").click()
    location = p.locator("table.problems code.location").first
    location.wait_for()
    assert re.fullmatch(r"\S*emitters\.yaml:\d+:\d+", location.inner_text())
    _shot(p, tmp_path, "preview")


def test_reprocess_turns_a_fixed_rejection_accepted_in_place(page: tuple[Any, Watch], tmp_path: Path) -> None:
    p, _ = page
    p.goto("/console/quarantine?reason=unauthorized_emitter")
    row = p.locator("table.quarantine tbody tr").first
    row_id = row.get_attribute("id")
    row.get_by_role("button", name="Re-process").click()
    outcome = p.locator(f"#{row_id} td.outcome")
    outcome.get_by_text("accepted").wait_for()
    assert p.url.endswith("?reason=unauthorized_emitter")  # swapped in place, no navigation
    _shot(p, tmp_path, "quarantine-reprocessed")


def test_reprocess_the_checked_rows(page: tuple[Any, Watch]) -> None:
    p, _ = page
    p.goto("/console/quarantine?reason=malformed_json")
    rows = p.locator("table.quarantine tbody tr")
    ids = [rows.nth(i).get_attribute("id") for i in range(rows.count())]
    assert len(ids) == 2
    for row_id in ids:
        p.locator(f"#{row_id} input[type=checkbox]").check()
    p.get_by_role("button", name="Re-process checked").click()
    for row_id in ids:  # still malformed: rejected again, each row says so in place
        p.locator(f"#{row_id} td.outcome").get_by_text("rejected").wait_for()


def test_a_refused_action_says_why_on_the_page(page: tuple[Any, Watch]) -> None:
    p, watch = page
    p.goto("/console/quarantine?reason=malformed_json")
    message = p.locator("#console-message")
    assert message.is_hidden()
    p.get_by_role("button", name="Re-process checked").click()  # nothing checked: a 400
    message.get_by_text("check at least one rejection").wait_for()
    assert message.get_attribute("role") == "alert"
    # the refusal itself is what the browser and htmx log as errors, and nothing else
    assert watch.errors and all("400" in e or "htmx" in e.lower() or "responseError" in e for e in watch.errors), \
        watch.errors
    watch.errors.clear()


def test_purge_asks_for_confirmation(page: tuple[Any, Watch]) -> None:
    p, _ = page
    p.goto("/console/quarantine?reason=malformed_json")
    rows = p.locator("table.quarantine tbody tr")
    before = rows.count()
    victim = rows.first.get_attribute("id")
    p.locator(f"#{victim} input[type=checkbox]").check()
    p.once("dialog", lambda dialog: dialog.dismiss())
    p.get_by_role("button", name="Purge").click()
    p.wait_for_timeout(300)
    assert rows.count() == before  # declined: nothing purged
    p.once("dialog", lambda dialog: dialog.accept())
    p.get_by_role("button", name="Purge").click()
    p.locator(f"#{victim}").wait_for(state="detached")
    assert rows.count() == before - 1


def test_log_out(page: tuple[Any, Watch]) -> None:
    p, _ = page
    p.get_by_role("button", name="Log out").click()
    p.wait_for_url(re.compile(r"/console/login$"))
    p.goto("/console")
    assert p.url.endswith("/console/login")
