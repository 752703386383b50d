"""The API's endpoints for browsers, through a real HTTP client: sessions and CSRF, samples, config, log follow."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervise.supervisor.api.store import Role
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import Answer, call, read_sse
from tests.integration.test_api import make_tokens

FOREVER = "tests.children.targets:forever"


@dataclass
class Api:
    daemon: Daemon
    base: str
    tokens: dict[str, str]

    def call(self, method: str, path: str, **kwargs: object) -> Answer:
        return call(method, f"{self.base}/api/v1{path}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    folder = Path(tempfile.mkdtemp(prefix="sv-apib-", dir="/tmp"))
    services: dict[str, dict[str, object]] = {
        "web": {"target": FOREVER, "env": {"DATABASE_PASSWORD": "hunter2"}},
        "chatty": {"command": ["sh", "-c", "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.2; done"]},
        "hourly": {"command": ["true"], "every": "1h"},
    }
    config = write_config(folder, services, http="127.0.0.1:0")
    tokens = make_tokens(
        folder / "state", {"admin": (Role.ADMIN, None), "viewer": (Role.VIEWER, None), "acme": (Role.VIEWER, "acme")}
    )
    daemon = start_daemon(config)
    try:
        yield Api(daemon, "http://" + daemon.client.call("ping")["http"], tokens)
    finally:
        stop_daemon(daemon)
        shutil.rmtree(folder, ignore_errors=True)


def set_cookies(api: Api, method: str, path: str, body: object = None) -> tuple[int, list[str]]:
    """The status and every Set-Cookie header of one request (a dict of headers would keep one)."""
    host, port = api.base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        data = json.dumps(body) if body is not None else None
        connection.request(method, "/api/v1" + path, body=data, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, [v for k, v in response.getheaders() if k.lower() == "set-cookie"]
    finally:
        connection.close()


def sign_in(api: Api, who: str) -> tuple[str, str]:
    """The Cookie header and CSRF value of a fresh session."""
    answer = api.call("POST", "/session", body={"token": api.tokens[who]})
    assert answer.status == 200, answer.text
    csrf = answer.json["csrf_token"]
    return f"supervise_session={api.tokens[who]}; supervise_csrf={csrf}", csrf


def test_signing_in_answers_who_and_sets_an_httponly_strict_cookie(api: Api) -> None:
    answer = api.call("POST", "/session", body={"token": api.tokens["viewer"]})
    assert answer.status == 200, answer.text
    body = answer.json
    assert body["name"] == "viewer" and body["role"] == "viewer" and body["via"] == "cookie"
    assert body["can"] == ["read"] and body["tenant"] is None and len(body["csrf_token"]) >= 32
    status, cookies = set_cookies(api, "POST", "/session", {"token": api.tokens["viewer"]})
    assert status == 200
    session = next(c for c in cookies if c.startswith("supervise_session="))
    csrf = next(c for c in cookies if c.startswith("supervise_csrf="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/" in session
    assert "HttpOnly" not in csrf and "SameSite=Strict" in csrf


def test_a_wrong_token_does_not_sign_in(api: Api) -> None:
    answer = api.call("POST", "/session", body={"token": "svt_000000000000_nope"})
    assert answer.status == 401 and "set-cookie" not in {k.lower() for k in answer.headers}
    assert api.call("POST", "/session", body={"token": 5}).status == 422


def test_the_cookie_authenticates_reads_and_state_changes_need_the_csrf_header(api: Api) -> None:
    cookie, csrf = sign_in(api, "admin")
    me = api.call("GET", "/session", headers={"Cookie": cookie})
    assert me.status == 200 and me.json["via"] == "cookie" and me.json["csrf_token"] == csrf
    assert me.json["can"] == ["read", "act", "manage"]
    assert api.call("GET", "/services", headers={"Cookie": cookie}).status == 200
    no_header = api.call("POST", "/jobs/hourly/pause", headers={"Cookie": cookie})
    assert no_header.status == 403 and "X-CSRF-Token" in no_header.json["detail"]
    wrong = api.call("POST", "/jobs/hourly/pause", headers={"Cookie": cookie, "X-CSRF-Token": csrf[:-1] + "x"})
    assert wrong.status == 403
    assert api.call("GET", "/jobs/hourly", token=api.tokens["admin"]).json["paused"] is False  # nothing changed
    ok = api.call("POST", "/jobs/hourly/pause", headers={"Cookie": cookie, "X-CSRF-Token": csrf})
    assert ok.status == 200 and ok.json["paused"] is True and ok.json["next_fires"] == []
    resumed = api.call("POST", "/jobs/hourly/resume", token=api.tokens["admin"])
    assert len(resumed.json["next_fires"]) == 5 and resumed.json["next_fires"][0] == resumed.json["next_fire"]


def test_a_bearer_header_wins_over_a_cookie_and_needs_no_csrf(api: Api) -> None:
    cookie, _ = sign_in(api, "admin")
    answer = api.call("POST", "/jobs/hourly/pause", token=api.tokens["viewer"], headers={"Cookie": cookie})
    assert answer.status == 403 and "operator role" in answer.json["detail"]
    me = api.call("GET", "/session", token=api.tokens["viewer"])
    assert me.json["via"] == "bearer" and me.json["csrf_token"] is None


def test_a_revoked_token_ends_its_cookie_session_and_signing_out_clears_the_cookies(api: Api) -> None:
    answer = api.call("DELETE", "/session")
    assert answer.status == 200 and answer.json == {"signed_out": True}
    status, cookies = set_cookies(api, "DELETE", "/session")
    assert status == 200 and sorted(c.split("=")[0] for c in cookies) == ["supervise_csrf", "supervise_session"]
    assert all("Max-Age=0" in c for c in cookies)
    assert api.call("GET", "/session", headers={"Cookie": "supervise_session=svt_000000000000_gone"}).status == 401


def test_samples_of_the_last_minutes_and_their_stream(api: Api) -> None:
    token = api.tokens["viewer"]

    def sampled() -> dict[str, object] | None:
        got = api.call("GET", "/samples?points=3", token=token).json
        return got if len(got["services"].get("web", {}).get("t", [])) >= 2 else None

    got = wait_for(sampled, timeout_s=20, what="two samples of web")
    assert got["interval_s"] == 0.5
    web = got["services"]["web"]
    assert len(web["t"]) <= 3 and web["rss"][-1] > 1_000_000 and web["cpu"][-1] >= 0
    assert "hourly" not in got["services"]  # no worker, no samples
    events = read_sse(f"{api.base}/api/v1/samples/stream", token=token, until=lambda e: len(e) >= 2)
    assert [e["event"] for e in events] == ["sample", "sample"]
    assert events[1]["data"]["t"] > events[0]["data"]["t"] and "web" in events[1]["data"]["services"]
    assert api.call("GET", "/samples?service=web", token=api.tokens["acme"]).status == 404
    assert api.call("GET", "/samples", token=api.tokens["acme"]).json["services"] == {}


def test_a_services_config_is_shown_with_env_values_hidden(api: Api) -> None:
    got = api.call("GET", "/services/web/config", token=api.tokens["viewer"])
    assert got.status == 200, got.text
    assert got.json["table"]["target"] == FOREVER
    assert got.json["table"]["env"] == {"DATABASE_PASSWORD": "(hidden)"}
    assert got.json["settings"]["env"] == {"DATABASE_PASSWORD": "(hidden)"}
    assert "hunter2" not in got.text
    assert got.json["settings"]["backoff_ms"] == 1000 and got.json["settings"]["restart"] == "on-failure"
    assert api.call("GET", "/services/web/config", token=api.tokens["acme"]).status == 404


def test_the_log_stream_sends_the_tail_then_new_lines(api: Api) -> None:
    events = read_sse(
        f"{api.base}/api/v1/services/chatty/logs/stream?lines=2",
        token=api.tokens["viewer"],
        until=lambda e: sum(len(x["data"]) for x in e) >= 5,
    )
    lines = [line for e in events for line in e["data"]]
    assert all(e["event"] == "lines" for e in events)
    numbers = [int(line.split()[-1]) for line in lines if line.startswith("line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), lines  # in order, none lost


def test_the_dashboard_page_is_served_with_a_strict_content_security_policy(api: Api) -> None:
    page = call("GET", api.base + "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    script = call("GET", api.base + "/ui/app.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    etag = next(v for k, v in script.headers.items() if k.lower() == "etag")
    again = call("GET", api.base + "/ui/app.js", headers={"If-None-Match": etag})
    assert again.status == 304
    assert call("GET", api.base + "/ui/..%2Fassets.py").status == 404
    assert call("GET", api.base + "/ui/nothing.js").status == 404


def test_the_cluster_endpoint_says_disabled_without_a_cluster_table_and_404_to_a_tenant(api: Api) -> None:
    answer = api.call("GET", "/cluster", token=api.tokens["viewer"])
    assert answer.status == 200, answer.text
    assert answer.json == {"enabled": False}
    assert api.call("GET", "/cluster", token=api.tokens["acme"]).status == 404
    assert api.call("GET", "/cluster").status == 401
