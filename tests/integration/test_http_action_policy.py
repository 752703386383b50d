"""The http action's policy against real local servers: overrides, URL shape, addresses after DNS, redirects, deadline.

The action runs here in the test process exactly as a worker runs it: the
service's config is parsed, the supervisor's `SUPERVISE_HTTP_POLICY` value is
built from it, and `call` gets the configured arguments merged with a run's.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervise.protocol.url_policy import POLICY_VARIABLE
from supervise.supervisor.config.loader import parse_config
from supervise.supervisor.core.errors import ConfigError
from supervise.supervisor.daemon.environment import http_policy_json
from supervise.workers.context import JobContext
from supervise.workers.http_action import HttpActionError, call

Seen = list[tuple[str, str, dict[str, str]]]


class Server:
    """A threaded HTTP server on `host`; `/to?URL` redirects there, anything else answers 200 with its path."""

    def __init__(self, host: str) -> None:
        seen: Seen = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.command, self.path, dict(self.headers)))
                if self.path.startswith("/to?"):
                    self.send_response(302)
                    self.send_header("Location", self.path.removeprefix("/to?"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"hello from {host}".encode()
                self.send_response(200)
                if self.path.startswith("/set-cookie"):
                    self.send_header("Set-Cookie", "session=from-an-earlier-run; Path=/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def servers() -> Iterator[Callable[[str], Server]]:
    made: list[Server] = []

    def make(host: str) -> Server:
        made.append(Server(host))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port that only counts connections (stands in for an FTP server or the metadata service)."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def was_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def run_action(
    monkeypatch: pytest.MonkeyPatch, service: dict[str, Any], run_args: dict[str, Any] | None = None, **supervisor: Any
) -> dict[str, object]:
    """Parse `service` as [services.hook], hand its policy to the action as the supervisor does, and call it."""
    cfg = parse_config({"supervisor": supervisor, "services": {"hook": {"action": "http", **service}}})
    svc = cfg.services["hook"]
    assert svc.schedule is not None
    monkeypatch.setenv(POLICY_VARIABLE, http_policy_json(svc, cfg.supervisor))
    for name, value in svc.env.items():
        monkeypatch.setenv(name, value)
    args = {**svc.schedule.args, **(run_args or {})}
    return asyncio.run(call(JobContext(service="hook", worker_id="hook/1"), **args))


# -- F3: what a run may change, and the URL's shape ----------------------------------------------


def test_a_run_cannot_change_the_url_unless_the_service_allows_it(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[[str], Server]
) -> None:
    server = servers("127.0.0.1")
    with pytest.raises(
        HttpActionError, match=r'run argument "url" may not change the configured value; .*overrides of: none'
    ):
        run_action(monkeypatch, {"url": f"{server.url}/configured"}, {"url": f"{server.url}/elsewhere"})
    with pytest.raises(HttpActionError, match=r'run argument "body" may not change'):
        run_action(monkeypatch, {"url": f"{server.url}/configured", "allow_run_overrides": ["url"]}, {"body": "x"})
    assert server.seen == []
    assert (
        run_action(monkeypatch, {"url": f"{server.url}/configured"}, {"url": f"{server.url}/configured"})["status"]
        == 200
    )


def test_an_ftp_url_with_a_secret_from_a_run_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket, servers: Callable[[str], Server]
) -> None:
    port = listener.getsockname()[1]
    service = {"url": f"{servers('127.0.0.1').url}/x", "allow_run_overrides": ["url"], "env": {"HOOK_TOKEN": "s3cret"}}
    for url in (
        f"ftp://user:${{HOOK_TOKEN}}@127.0.0.1:{port}/x",
        "file:///etc/passwd",
        f"http://user:pw@127.0.0.1:{port}/",
    ):
        with pytest.raises(HttpActionError, match="refusing"):
            run_action(monkeypatch, service, {"url": url})
    assert not was_connected(listener)


def test_variables_are_expanded_in_configured_values_only(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[[str], Server]
) -> None:
    server = servers("127.0.0.1")
    service = {
        "url": f"{server.url}/cfg?t=${{HOOK_TOKEN}}",
        "allow_run_overrides": ["url"],
        "allow_addresses": [f"127.0.0.1:{server.port}"],
        "env": {"HOOK_TOKEN": "s3cret"},
    }
    run_action(monkeypatch, service)
    run_action(monkeypatch, service, {"url": f"{server.url}/run?t=${{HOOK_TOKEN}}"})
    paths = [path for _, path, _ in server.seen]
    assert paths[0] == "/cfg?t=s3cret"
    assert "s3cret" not in paths[1] and "HOOK_TOKEN" in paths[1]


def test_credentials_in_the_configured_url_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="credentials in the URL"):
        parse_config({"services": {"hook": {"action": "http", "url": "https://user:${TOKEN}@example.com/"}}})
    with pytest.raises(ConfigError, match=r"services\.hook\.args: expected an http:// or https:// URL in args\.url"):
        parse_config(
            {"services": {"hook": {"action": "http", "url": "https://example.com/", "args": {"url": "ftp://x/"}}}}
        )
    with pytest.raises(ConfigError, match="allow_run_overrides: expected a list of"):
        parse_config(
            {
                "services": {
                    "hook": {"action": "http", "url": "https://example.com/", "allow_run_overrides": ["expect_status"]}
                }
            }
        )
    with pytest.raises(ConfigError, match="allow_addresses: 'localhost' is not an IP address"):
        parse_config(
            {"services": {"hook": {"action": "http", "url": "https://example.com/", "allow_addresses": ["localhost"]}}}
        )
    with pytest.raises(ConfigError, match="supervisor.allow_addresses"):
        parse_config({"supervisor": {"allow_addresses": ["10.0.0.1:x"]}})


# -- F9: addresses after resolution, redirects ------------------------------------------------------


def test_a_url_from_a_run_may_not_reach_loopback_unless_listed(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[[str], Server]
) -> None:
    server = servers("127.0.0.1")
    service = {"url": "https://example.invalid/", "allow_run_overrides": ["url"]}
    target = f"http://localhost:{server.port}/internal"
    with pytest.raises(HttpActionError, match=r"localhost:\d+ is refused: 127.0.0.1 is a loopback address"):
        run_action(monkeypatch, service, {"url": target})
    assert server.seen == []
    assert (
        run_action(monkeypatch, {**service, "allow_addresses": [f"127.0.0.1:{server.port}"]}, {"url": target})["status"]
        == 200
    )
    assert (
        run_action(monkeypatch, service, {"url": target}, allow_addresses=["127.0.0.0/8"])["status"] == 200
    )  # [supervisor]
    assert run_action(monkeypatch, {**service, "block_private_addresses": False}, {"url": target})["status"] == 200


def test_a_redirect_to_another_host_is_checked_and_keeps_no_credentials(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[[str], Server], listener: socket.socket
) -> None:
    trusted, internal = servers("127.0.0.1"), servers("127.0.0.2")
    service = {
        "url": f"{trusted.url}/to?{internal.url}/secret",
        "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"},
        "env": {"HOOK_TOKEN": "s3cret"},
    }
    with pytest.raises(HttpActionError, match="127.0.0.2 is a loopback address"):
        run_action(monkeypatch, service)
    assert internal.seen == []
    metadata = {**service, "url": f"{trusted.url}/to?http://169.254.169.254/latest/meta-data/"}
    with pytest.raises(HttpActionError, match="169.254.169.254 is a link-local address"):
        run_action(monkeypatch, metadata)
    same_host = {**service, "url": f"{trusted.url}/to?{trusted.url}/next"}
    assert run_action(monkeypatch, same_host)["body"] == "hello from 127.0.0.1"  # the configured host stays trusted
    assert trusted.seen[-1][2].get("Authorization") == "Bearer s3cret"

    result = run_action(monkeypatch, {**service, "allow_addresses": ["127.0.0.2"]})
    assert result["body"] == "hello from 127.0.0.2"
    assert "Authorization" not in internal.seen[-1][2]  # not carried to another host


# -- F8: one deadline for the whole request ------------------------------------------------------


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """Answers every connection one byte every 0.2 s: a valid response that takes about 20 s."""
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 60\r\n\r\n" + b"x" * 60

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            for byte in response:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/slow"
    finally:
        stop.set()
        thread.join()
        sock.close()


def test_request_timeout_bounds_the_whole_request_not_each_read(
    monkeypatch: pytest.MonkeyPatch, dripping_server: str
) -> None:
    started = time.monotonic()
    with pytest.raises(HttpActionError, match=r"no complete answer within request_timeout \(1 s\)"):
        run_action(monkeypatch, {"url": dripping_server, "request_timeout": "1s"})
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"took {elapsed:.1f} s"


def test_without_a_policy_in_the_environment_every_address_is_checked(
    monkeypatch: pytest.MonkeyPatch, servers: Callable[[str], Server]
) -> None:
    server = servers("127.0.0.1")
    monkeypatch.delenv(POLICY_VARIABLE, raising=False)
    assert POLICY_VARIABLE not in os.environ
    with pytest.raises(HttpActionError, match="loopback"):
        asyncio.run(call(JobContext(service="hook", worker_id="hook/1"), url=f"{server.url}/x"))


# -- through a real daemon: the supervisor hands the policy to the worker --------------------------


def test_a_run_through_the_daemon_may_not_redirect_the_action(
    daemon_factory: Callable[..., Any], servers: Callable[[str], Server]
) -> None:
    from tests.conftest import wait_for

    server = servers("127.0.0.1")
    d = daemon_factory({"hook": {"action": "http", "url": f"{server.url}/configured", "env": {"HOOK_TOKEN": "s3cret"}}})
    d.wait_running_pid("hook")

    def finished(run_id: str) -> dict[str, Any]:
        def look() -> dict[str, Any] | None:
            runs = d.client.call("runs", name="hook", limit=10)["runs"]
            return next((r for r in runs if r["run_id"] == run_id and r["state"] in ("succeeded", "failed")), None)

        return wait_for(look, what=f"run {run_id} to finish")

    refused = finished(d.client.call("run", name="hook", args={"url": f"{server.url}/?t=${{HOOK_TOKEN}}"})["run_id"])
    assert refused["state"] == "failed" and 'run argument "url" may not change' in str(refused["error"])
    ok = finished(d.client.call("run", name="hook")["run_id"])
    assert ok["state"] == "succeeded"
    assert [path for _, path, _ in server.seen] == ["/configured"]  # the configured call only


def test_a_cookie_one_run_received_is_not_sent_by_the_next(
    daemon_factory: Callable[..., Any], servers: Callable[[str], Server]
) -> None:
    from tests.conftest import wait_for

    server = servers("127.0.0.1")
    url = f"http://localhost:{server.port}/set-cookie"  # a host name: no jar keeps a cookie set by an IP address
    d = daemon_factory({"hook": {"action": "http", "url": url}})
    d.wait_running_pid("hook")

    def succeeded(run_id: str) -> None:
        def look() -> bool:
            runs = d.client.call("runs", name="hook", limit=10)["runs"]
            return any(r["run_id"] == run_id and r["state"] == "succeeded" for r in runs)

        wait_for(look, what=f"run {run_id} to succeed")

    succeeded(d.client.call("run", name="hook")["run_id"])
    succeeded(d.client.call("run", name="hook")["run_id"])
    assert [path for _, path, _ in server.seen] == ["/set-cookie", "/set-cookie"]
    assert "Cookie" not in server.seen[-1][2]  # the worker's pool keeps no cookie jar
