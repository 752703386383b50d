"""GET /api/v1/cluster and the dashboard's Cluster tab, against a real cluster-mode daemon (docs/dashboard.md).

One node on its own schema of the shared PostgreSQL, with a singleton service;
the API is read with a real HTTP client and the tab in the distribution's
Chromium (Playwright, `expect` waits with deadlines).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from supervise.supervisor.api.store import Role
from tests.cluster.conftest import ClusterDb, OwnPostgres, write_cluster_config
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for
from tests.contract.conftest import drop_schema, postgres_dsn
from tests.integration.api_helpers import Answer, call
from tests.integration.test_api import make_tokens
from tests.integration.test_dashboard import CHROMIUM

NODE = "alpha"


@dataclass
class Node:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    db: ClusterDb
    folder: Path

    def get(self, who: str) -> Answer:
        return call("GET", f"{self.base}/api/v1/cluster", token=self.tokens[who])


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    dsn = postgres_dsn()
    db = ClusterDb(dsn, f"supervise_cv_{uuid.uuid4().hex[:12]}")
    folder = Path(tempfile.mkdtemp(prefix="sv-cv-", dir="/tmp"))
    services: dict[str, dict[str, object]] = {"single": {"command": ["sleep", "3600"], "placement": "one"}}
    config = write_cluster_config(folder, db, services, node=NODE, http="127.0.0.1:0")
    tokens = make_tokens(folder / "state", {"viewer": (Role.VIEWER, None), "acme": (Role.ADMIN, "acme")})
    daemon = start_daemon(config)
    try:
        yield Node(daemon, "http://" + daemon.client.call("ping")["http"], tokens, db, folder)
    finally:
        stop_daemon(daemon)
        shutil.rmtree(folder, ignore_errors=True)
        drop_schema(dsn, db.schema)


def test_the_api_lists_this_node_alive_as_leader_with_the_singleton_it_holds(node: Node) -> None:
    def settled() -> dict[str, object] | None:
        body = node.get("viewer").json
        nodes = body["nodes"]
        held = nodes and nodes[0]["singletons_held"] == ["single#0"]
        return body if body["leader"] is not None and held else None

    body = wait_for(settled, timeout_s=15, what="the node to lead and hold single#0")
    assert body["enabled"] is True and body["node"] == NODE
    assert body["leader"]["node"] == NODE and body["leader"]["epoch"] >= 1
    [me] = body["nodes"]
    assert me["name"] == NODE and me["alive"] is True and me["state"] == "live"
    assert 0 <= me["heartbeat_age_s"] < 5
    assert me["runs_held"] == 0
    [placement] = body["placements"]
    assert placement["name"] == "single" and placement["slot"] == 0
    assert placement["holder"] == NODE and placement["live"] is True


def test_a_tenant_token_gets_404(node: Node) -> None:
    answer = node.get("acme")
    assert answer.status == 404, answer.text
    assert answer.json["title"] == "Not Found"


def test_the_cluster_tab_shows_the_node_alive_and_leader_and_follows_a_node_joining_and_leaving(node: Node) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(node.base + "/")
            page.fill("#token", node.tokens["viewer"])
            page.click("#sign-in button[type=submit]")
            tab = page.locator("#cluster-tab")
            expect(tab).to_be_visible(timeout=15_000)
            tab.click()
            row = page.locator(f'#cluster-nodes tr[data-node="{NODE}"]')
            expect(row.locator('[data-state="alive"]')).to_have_text("alive", timeout=15_000)
            expect(row.locator(".leader")).to_have_text("leader", timeout=15_000)
            expect(row).to_contain_text("single#0", timeout=15_000)
            expect(page.locator("#cluster-summary")).to_contain_text(f"leader: {NODE}")
            expect(page.locator('#cluster-placements tr[data-placement="single#0"]')).to_contain_text(NODE)
            # live: a second node joins and leaves while the tab is open (node_joined, node_lost events)
            page.evaluate("window.__notReloaded = true")
            other = start_daemon(write_cluster_config(node.folder / "beta", node.db, {}, node="beta"))
            try:
                beta = page.locator('#cluster-nodes tr[data-node="beta"]')
                expect(beta.locator('[data-state="alive"]')).to_have_text("alive", timeout=15_000)
                expect(beta.locator(".leader")).to_have_count(0)
            finally:
                stop_daemon(other)
            expect(beta.locator('[data-state="lost"]')).to_have_text("left", timeout=15_000)
            assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"
            assert not errors, f"the page raised: {errors}"
        finally:
            browser.close()


def test_the_database_away_answers_503_and_the_answer_returns_with_it(own_postgres: OwnPostgres) -> None:
    db = ClusterDb(own_postgres.dsn, f"supervise_cv_{uuid.uuid4().hex[:12]}")
    folder = Path(tempfile.mkdtemp(prefix="sv-cv-", dir="/tmp"))
    config = write_cluster_config(folder, db, {}, node=NODE, http="127.0.0.1:0")
    tokens = make_tokens(folder / "state", {"viewer": (Role.VIEWER, None)})
    daemon = start_daemon(config)
    try:
        site = Node(daemon, "http://" + daemon.client.call("ping")["http"], tokens, db, folder)
        assert site.get("viewer").json["nodes"][0]["name"] == NODE
        # A daemon running, not one still starting (a database lost during start-up fails the start).
        wait_for(lambda: "start-up complete" in daemon.log(), timeout_s=20, what="the start-up to complete")
        own_postgres.stop()
        answer = site.get("viewer")
        assert answer.status == 503, answer.text
        assert "cannot read the cluster store" in answer.json["detail"]
        # A token the node's copy of the cluster's tokens does not know needs a read: 503, not 401
        unknown = "svt_000000000000_" + "A" * 43
        ask = lambda: call("GET", f"{site.base}/api/v1/cluster", token=unknown)  # noqa: E731
        wait_for(
            lambda: ask().status == 503 and "to check the token" in ask().json["detail"],
            timeout_s=10,
            what="a token check answered 503 while the database is away",
        )
        own_postgres.start()
        wait_for(lambda: site.get("viewer").status == 200, timeout_s=15, what="the answer once the database is back")
        assert ask().status == 401, "with the database back, an unknown token is refused as usual"
    finally:
        stop_daemon(daemon)
        shutil.rmtree(folder, ignore_errors=True)
