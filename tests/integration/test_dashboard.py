"""The dashboard in a real browser: the distribution's Chromium, driven by Playwright, against a real daemon.

One daemon and one browser serve the whole module; each test opens its own
browser context (its own cookies) and signs in with the token it needs. Every
wait is Playwright's auto-waiting `expect` with a deadline. Each page is
photographed at 1280x800 and 390x844 into build/screenshots/ (not committed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from supervise.supervisor.api.store import Role
from tests.conftest import REPO, Daemon, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import call
from tests.integration.test_api import make_tokens

CHROMIUM = os.environ.get("SUPERVISE_CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / "build" / "screenshots"
WIDE = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
FOREVER = "tests.children.targets:forever"
LONG_SERVICES = ("web", "worker", "ticker")
TOKENS = {
    "admin": (Role.ADMIN, None),
    "operator": (Role.OPERATOR, None),
    "viewer": (Role.VIEWER, None),
    "acme-admin": (Role.ADMIN, "acme"),
    "acme-viewer": (Role.VIEWER, "acme"),
}

expect.set_options(timeout=15_000)


@dataclass
class Site:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    browser: Browser

    def api(self, method: str, path: str, who: str = "admin") -> Any:
        """A call from outside the browser (urllib: Playwright's sync API holds an event loop of its own)."""
        request = urllib.request.Request(
            f"{self.base}/api/v1{path}", method=method, headers={"Authorization": f"Bearer {self.tokens[who]}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310: the test's own daemon
            return json.loads(response.read())


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    folder = Path(tempfile.mkdtemp(prefix="sv-dash-", dir="/tmp"))
    services: dict[str, dict[str, object]] = {
        "web": {"target": FOREVER},
        # BACKOFF lasts long enough to be seen, and a kill however late in the module is a failure, not a stable exit
        "worker": {"target": FOREVER, "backoff": "3s", "stable_after": "1h"},
        "ticker": {"command": ["sleep", "3600"]},
        "nightly": {"command": ["true"], "cron": "0 2 * * *", "timezone": "Asia/Kolkata"},
        "hourly": {"command": ["true"], "every": "1h"},
        "slow": {"command": ["sleep", "120"], "manual": True, "cancel_grace": "1s"},
        "broken": {"command": ["sh", "-c", "echo cannot open the database >&2; exit 3"], "max_restarts": 0},
        "failing": {"command": ["sh", "-c", "exit 2"], "manual": True},
    }
    config = write_config(folder, services, http="127.0.0.1:0")
    tokens = make_tokens(folder / "state", TOKENS)
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"]
        # a tenant's job: an http action, which a tenant may add (the URL is never called: 03:00 is far)
        spec = {"action": "http", "url": "https://billing.example.com/settle", "cron": "0 3 * * *"}
        answer = call(
            "POST", f"{base}/api/v1/services", token=tokens["acme-admin"], body={"name": "acme-settle", "spec": spec}
        )
        assert answer.status == 201, answer.text
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            try:
                yield Site(daemon, base, tokens, browser)
            finally:
                browser.close()
    finally:
        stop_daemon(daemon)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def context(site: Site) -> Iterator[BrowserContext]:
    ctx = site.browser.new_context(viewport=WIDE)
    errors: list[str] = []
    ctx.on("weberror", lambda e: errors.append(str(e.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    assert not errors, f"the page raised: {errors}"


def sign_in(site: Site, context: BrowserContext, who: str) -> Page:
    page = context.new_page()
    page.goto(site.base + "/")
    page.fill("#token", site.tokens[who])
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#who")).to_contain_text(who)
    return page


def shoot(page: Page, name: str) -> None:
    """The page as it is, at laptop and at phone width; the phone width must not scroll sideways."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}-1280x800.png")
    page.set_viewport_size(PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    page.screenshot(path=SHOTS / f"{name}-390x844.png")
    page.set_viewport_size(WIDE)
    assert overflow <= 1, f"{name} scrolls sideways by {overflow}px at 390px"


def row(page: Page, name: str) -> Locator:
    return page.locator(f'tr[data-service="{name}"]')


def mark_page(page: Page) -> None:
    """A marker that survives only as long as the document: a reload would lose it."""
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"


# -- sign-in and the overview -----------------------------------------------------------------------


def test_a_wrong_token_is_refused_and_a_right_one_shows_every_service_running(
    site: Site, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(site.base + "/")
    expect(page.locator("#sign-in")).to_be_visible()
    shoot(page, "sign-in")
    page.fill("#token", "svt_000000000000_wrong")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("unknown, revoked or expired")
    page.fill("#token", site.tokens["admin"])
    page.click("#sign-in button[type=submit]")
    for name in LONG_SERVICES:
        expect(row(page, name)).to_have_attribute("data-state", "RUNNING")
        expect(row(page, name).locator(".state")).to_have_text("RUNNING")
    expect(page.locator('tr[data-job="nightly"]')).to_contain_text("every day at 02:00 Asia/Kolkata")
    expect(page.locator("#health")).to_have_text("healthy")
    expect(page.locator("#version")).to_have_text(re.compile(r"^v\d+\.\d+"))
    expect(page.locator("#live")).to_have_attribute("data-state", "live")  # the events stream is open
    # the token is in an HttpOnly cookie, never where scripts or URLs can read it
    assert site.tokens["admin"] not in page.evaluate("document.cookie")
    assert site.tokens["admin"] not in page.url
    cookie = next(c for c in context.cookies() if c["name"] == "supervise_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    # sparklines are drawn from the samples the daemon keeps
    expect(row(page, "web").locator("td.cpu polyline")).to_have_count(1)
    shoot(page, "overview")


def test_the_filters_narrow_the_overview_by_name_and_state(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "admin")
    page.fill("#filter-name", "tick")
    expect(row(page, "ticker")).to_be_visible()
    expect(row(page, "web")).to_be_hidden()
    page.fill("#filter-name", "")
    page.select_option("#filter-state", "FATAL")
    expect(row(page, "web")).to_be_hidden()
    page.select_option("#filter-state", "")
    expect(row(page, "web")).to_be_visible()


# -- acting on a service ---------------------------------------------------------------------------------


def test_restart_from_the_service_page_shows_the_new_pid_without_a_reload(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "operator")
    page.goto(site.base + "/#/service/web")
    pid = page.locator('[data-fact="pid"]')
    expect(pid).to_have_text(re.compile(r"^\d+$"))
    old = pid.inner_text()
    expect(page.locator("#log")).to_contain_text(f"forever started pid={old}")
    mark_page(page)
    page.click('button[data-action="restart"]')
    expect(page.locator("#confirm")).to_be_visible()
    shoot(page, "confirm-restart")
    page.click("#confirm-ok")
    expect(page.locator("#main .result")).to_have_text("Restart web: done.")
    expect(pid).not_to_have_text(old)
    expect(pid).to_have_text(re.compile(r"^\d+$"))
    new = pid.inner_text()
    assert int(new) == site.daemon.service("web")["pid"]
    expect(page.locator("#log")).to_contain_text(f"forever started pid={new}")  # the log follows live
    expect(page.locator("#events")).to_contain_text("RUNNING")
    assert_not_reloaded(page)
    shoot(page, "service")


def test_a_stop_that_is_not_confirmed_does_nothing(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "operator")
    page.goto(site.base + "/#/service/ticker")
    page.click('button[data-action="stop"]')
    page.click("#confirm button[value=cancel]")
    expect(page.locator("#main .result")).to_have_text("Stop ticker: not done.")
    assert site.daemon.service("ticker")["state"] == "RUNNING"


def test_a_killed_worker_goes_through_backoff_to_running_live(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "viewer")
    line = row(page, "worker")
    expect(line).to_have_attribute("data-state", "RUNNING")
    mark_page(page)
    old = site.daemon.service("worker")["pid"]
    os.kill(old, signal.SIGKILL)
    expect(line).to_have_attribute("data-state", "BACKOFF")
    expect(line.locator(".state")).to_have_text("BACKOFF")
    shoot(page, "overview-backoff")
    expect(line).to_have_attribute("data-state", "RUNNING")
    new = wait_for(lambda: site.daemon.service("worker")["pid"], what="worker's new pid")
    assert new != old
    expect(line.locator(".pid")).to_have_text(str(new))
    expect(line.locator(".restarts")).to_have_text("1")
    assert_not_reloaded(page)


# -- jobs and runs --------------------------------------------------------------------------------------


def test_pausing_a_job_shows_paused_and_resuming_shows_its_next_fire_times(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "operator")
    page.goto(site.base + "/#/job/hourly")
    expect(page.locator('[data-fact="trigger"]')).to_have_text("every hour")
    expect(page.locator("#main ol.plain li")).to_have_count(5)
    page.click('button[data-action="pause"]')
    expect(page.locator("#main .head .badge")).to_have_text("paused")
    expect(page.locator('[data-fact="paused"]')).to_have_text("paused")
    assert site.api("GET", "/jobs/hourly")["paused"] is True
    shoot(page, "job-paused")
    page.click('button[data-action="resume"]')
    expect(page.locator("#main .head .badge")).to_have_text("scheduled")
    assert site.api("GET", "/jobs/hourly")["paused"] is False
    page.goto(site.base + "/#/jobs")
    expect(page.locator('tr[data-job="hourly"]')).to_contain_text("every hour")
    shoot(page, "jobs")


def test_a_run_started_from_the_page_is_cancelled_from_its_page(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "operator")
    page.goto(site.base + "/#/job/slow")
    page.click('button[data-action="run"]')
    page.click("#main .result a")
    expect(page.locator("#main .head .badge")).to_have_text("running")
    run_id = page.locator('[data-fact="run id"]').inner_text()
    shoot(page, "run-running")
    page.click('button[data-action="cancel"]')
    page.click("#confirm-ok")
    expect(page.locator("#main .head .badge")).to_have_text(re.compile("cancelled|terminated"))
    assert site.api("GET", f"/runs/{run_id}")["state"] in ("cancelled", "terminated")
    expect(page.locator('button[data-action="retry"]')).to_be_visible()
    shoot(page, "run")
    page.goto(site.base + "/#/runs?job=slow")
    expect(page.locator(f'tr[data-run="{run_id}"]')).to_contain_text(re.compile("cancelled|terminated"))
    page.select_option("#state", "succeeded")
    expect(page.locator("#main")).to_contain_text("No runs match.")
    page.select_option("#state", "")
    expect(page.locator(f'tr[data-run="{run_id}"]')).to_be_visible()
    shoot(page, "runs")


def test_failures_show_fatal_services_and_failed_runs_first(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "admin")
    expect(page.locator("#failure-count")).to_have_text("1")  # the tab counts FATAL services
    page.click('[data-nav="failures"]')
    expect(page.locator("#main h2").first).to_have_text("FATAL services (1)")
    expect(page.locator('#main tr[data-service="broken"]')).to_contain_text("FATAL")
    run_id = site.api("POST", "/jobs/failing/run")["run_id"]
    failed = page.locator(f'#failed-runs tr[data-run="{run_id}"]')  # appears live, on the run's events
    expect(failed).to_contain_text("failed")
    shoot(page, "failures")
    failed.locator("a.mono").click()
    expect(page.locator("#main .head .badge")).to_have_text("failed")
    expect(page.locator('button[data-action="retry"]')).to_be_visible()


def test_tasks_and_the_hidden_cluster_tab(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "admin")
    page.goto(site.base + "/#/tasks")
    expect(page.locator("#main")).to_contain_text("No tasks.")
    shoot(page, "tasks")
    expect(page.locator("#cluster-tab")).to_have_attribute("data-mode", "off")  # asked: no cluster mode here
    expect(page.locator("#cluster-tab")).to_be_hidden()


# -- roles, tenants, CSRF ----------------------------------------------------------------------------------


def test_a_viewer_is_offered_no_actions_and_its_forged_post_is_refused(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "viewer")
    page.goto(site.base + "/#/service/web")
    expect(page.locator('[data-fact="pid"]')).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#actions button")).to_have_count(0)
    page.goto(site.base + "/#/job/hourly")
    expect(page.locator('[data-fact="trigger"]')).to_be_visible()
    expect(page.locator("#actions button")).to_have_count(0)
    forged = page.evaluate(
        """async () => {
            const csrf = document.cookie.split('; ').find(c => c.startsWith('supervise_csrf=')).split('=')[1];
            const r = await fetch('/api/v1/services/web/restart', {method: 'POST', headers: {'X-CSRF-Token': csrf}});
            return r.status;
        }"""
    )
    assert forged == 403


def test_a_cookie_session_needs_the_csrf_header_to_change_anything(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "operator")
    statuses = page.evaluate(
        """async () => {
            const csrf = document.cookie.split('; ').find(c => c.startsWith('supervise_csrf=')).split('=')[1];
            const post = (headers) => fetch('/api/v1/jobs/hourly/skip', {method: 'POST', headers}).then(r => r.status);
            return [await post({}), await post({'X-CSRF-Token': 'wrong'}), await post({'X-CSRF-Token': csrf})];
        }"""
    )
    assert statuses == [403, 403, 200]


def test_a_tenant_sees_only_its_jobs(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "acme-viewer")
    expect(page.locator('tr[data-job="acme-settle"]')).to_contain_text("every day at 03:00")
    expect(page.locator("tr[data-job]")).to_have_count(1)
    expect(page.locator("tr[data-service]")).to_have_count(0)
    page.goto(site.base + "/#/jobs")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    page.goto(site.base + "/#/service/web")
    expect(page.locator("#main")).to_contain_text("No such service")


def test_signing_out_ends_the_session(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "admin")
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    status = page.evaluate("fetch('/api/v1/session').then(r => r.status)")
    assert status == 401
    assert not [c for c in context.cookies() if c["name"].startswith("supervise_")]


def test_the_page_is_reachable_by_keyboard_and_has_a_dark_mode(site: Site, context: BrowserContext) -> None:
    page = sign_in(site, context, "admin")
    page.reload()  # focus starts at the top of a fresh document
    expect(row(page, "web")).to_be_visible()
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator(".brand")).to_be_focused()
    page.focus('tr[data-service="web"] a')
    page.keyboard.press("Enter")
    expect(page.locator("#main h1")).to_have_text("web")
    light = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.click("#theme")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    page.goto(site.base + "/#/")
    expect(row(page, "web")).to_be_visible()
    shoot(page, "overview-dark")
