"""The HTTP API's exposure rules and its behaviour under a flood of bad tokens, against real daemons."""

from __future__ import annotations

import asyncio
import collections
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from supervise.supervisor.api.store import ApiStore, Role
from tests.conftest import start_daemon, stop_daemon, wait_for, write_config
from tests.integration.api_helpers import call, read_sse, start_receiver
from tests.integration.test_api import make_tokens

FOREVER = "tests.children.targets:forever"
BAD_REQUESTS = 10_000


@pytest.mark.timeout(300)
def test_ten_thousand_bad_tokens_are_refused_rate_limited_and_change_nothing(short_dir: Path) -> None:
    config = write_config(short_dir, {"web": {"target": FOREVER}}, http="127.0.0.1:0")
    tokens = make_tokens(short_dir / "state", {"admin": (Role.ADMIN, None)})
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"]
        before = call("GET", f"{base}/api/v1/services", token=tokens["admin"]).json

        async def flood() -> collections.Counter[int]:
            statuses: collections.Counter[int] = collections.Counter()
            retry_after: set[str] = set()
            queue = iter(range(BAD_REQUESTS))

            async def worker(session: aiohttp.ClientSession) -> None:
                for i in queue:
                    headers = {"Authorization": f"Bearer svt_{i:012x}_{'A' * 43}"}
                    method, path = ("POST", "/services/web/stop") if i % 2 else ("GET", "/services/web")
                    async with session.request(method, f"{base}/api/v1{path}", headers=headers) as r:
                        statuses[r.status] += 1
                        if r.status == 429:
                            retry_after.add(r.headers["Retry-After"])

            async with aiohttp.ClientSession() as session:
                await asyncio.gather(*(worker(session) for _ in range(32)))
            assert all(int(s) > 0 for s in retry_after)
            return statuses

        started = time.monotonic()
        statuses = asyncio.run(flood())
        elapsed = time.monotonic() - started
        print(f"{BAD_REQUESTS} bad-token requests in {elapsed:.1f} s: {dict(statuses)}")
        assert set(statuses) <= {401, 429} and sum(statuses.values()) == BAD_REQUESTS
        assert 0 < statuses[401] <= 50 + 32  # the limit, plus what was in flight when it was reached
        assert daemon.proc.poll() is None
        assert call("GET", f"{base}/health/live").status == 200
        assert daemon.state("web") == "RUNNING"  # nothing was stopped
        blocked = call("GET", f"{base}/api/v1/services", token=tokens["admin"])
        assert blocked.status == 429 and int(blocked.headers["Retry-After"]) > 0  # while the address is blocked
        store = ApiStore(short_dir / "state")
        try:
            assert [t.name for t in store.tokens()] == ["admin"]
            assert store.audit_entries(1000) == []  # unauthenticated calls change nothing and write nothing
        finally:
            store.close()
        assert before["services"][0]["name"] == "web"
    finally:
        stop_daemon(daemon)


def _start(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(config)], capture_output=True, text=True, timeout=60
    )


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, made by the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def https_get(url: str, *, token: str, cafile: Path) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(cafile))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=context) as r:
                return r.status, await r.text()

    return asyncio.run(go())


def test_a_non_loopback_address_without_tls_or_without_a_token_refuses_to_start(short_dir: Path) -> None:
    config = write_config(short_dir, {}, http="0.0.0.0:0")
    result = _start(config)
    assert result.returncode == 78, result.stderr
    assert "supervisor.http" in result.stderr and "supervise token create" in result.stderr
    assert "without TLS" in result.stderr
    make_tokens(short_dir / "state", {"ops": (Role.VIEWER, None)})
    result = _start(config)
    assert result.returncode == 78 and "without TLS" in result.stderr and "token create" not in result.stderr
    cert, key = self_signed(short_dir)
    other = short_dir / "other"
    other.mkdir()
    tls = {"http_tls_cert": str(cert), "http_tls_key": str(key)}
    result = _start(write_config(other, {}, http="0.0.0.0:0", **tls))
    assert result.returncode == 78 and "no API token" in result.stderr and "TLS" not in result.stderr


def test_bad_tls_files_are_config_errors_naming_the_key(short_dir: Path) -> None:
    cert, key = self_signed(short_dir)
    result = _start(write_config(short_dir, {}, http="127.0.0.1:0", http_tls_cert=str(cert)))
    assert result.returncode == 78 and "supervisor.http_tls_cert" in result.stderr and "http_tls_key" in result.stderr
    result = _start(write_config(short_dir, {}, http="127.0.0.1:0", http_tls_cert=str(cert), http_tls_key="nope.pem"))
    assert result.returncode == 78 and "supervisor.http_tls_key" in result.stderr and "does not exist" in result.stderr
    garbage = short_dir / "garbage.pem"
    garbage.write_text("not a key\n")
    result = _start(write_config(short_dir, {}, http="127.0.0.1:0", http_tls_cert=str(cert), http_tls_key=str(garbage)))
    assert result.returncode == 78 and "supervisor.http_tls_cert" in result.stderr and "cannot load" in result.stderr


def test_with_tls_and_a_token_a_non_loopback_address_serves_https_only(short_dir: Path) -> None:
    cert, key = self_signed(short_dir)
    config = write_config(short_dir, {}, http="0.0.0.0:0", http_tls_cert=str(cert), http_tls_key=str(key))
    tokens = make_tokens(short_dir / "state", {"ops": (Role.VIEWER, None)})
    daemon = start_daemon(config)
    try:
        ping = daemon.client.call("ping")
        port = ping["http"].rpartition(":")[2]
        assert ping["http_tls"] is True
        status, text = https_get(f"https://127.0.0.1:{port}/api/v1/services", token=tokens["ops"], cafile=cert)
        assert status == 200 and "services" in text
        assert https_get(f"https://localhost:{port}/health/live", token=tokens["ops"], cafile=cert)[0] == 200
        with pytest.raises(aiohttp.ClientError):
            call("GET", f"http://127.0.0.1:{port}/api/v1/services", token=tokens["ops"])
        assert "CRITICAL" not in daemon.log()
        assert daemon.proc.poll() is None
    finally:
        stop_daemon(daemon)


def test_insecure_http_starts_without_tls_or_token_and_says_so_at_critical(short_dir: Path) -> None:
    config = write_config(short_dir, {}, http="0.0.0.0:0", insecure_http=True)
    daemon = start_daemon(config)
    try:
        wait_for(lambda: "insecure_http = true" in daemon.log(), what="the CRITICAL line")
        line = next(line for line in daemon.log().splitlines() if "insecure_http = true" in line)
        assert "CRITICAL" in line and "without TLS" in line and "no API token" in line
        port = daemon.client.call("ping")["http"].rpartition(":")[2]
        assert call("GET", f"http://127.0.0.1:{port}/api/v1/services", token="svt_x").status == 401
    finally:
        stop_daemon(daemon)


def test_an_open_event_stream_ends_when_the_daemon_stops(short_dir: Path) -> None:
    config = write_config(short_dir, {"web": {"target": FOREVER}}, http="127.0.0.1:0")
    tokens = make_tokens(short_dir / "state", {"watcher": (Role.VIEWER, None)})
    daemon = start_daemon(config)
    url = "http://" + daemon.client.call("ping")["http"] + "/api/v1/events?since=0"
    connected = threading.Event()
    seen: list[list[dict[str, object]]] = []

    def follow() -> None:
        seen.append(
            read_sse(url, token=tokens["watcher"], until=lambda events: connected.set() and False, timeout_s=60)
        )

    reader = threading.Thread(target=follow)
    reader.start()
    try:
        assert connected.wait(20)
        started = time.monotonic()
        stop_daemon(daemon)
        reader.join(30)
        assert not reader.is_alive() and seen and seen[0]
        assert time.monotonic() - started < 10  # not held open until a keep-alive or a server timeout
    finally:
        stop_daemon(daemon)
        reader.join(5)


def test_a_pending_task_is_called_after_a_daemon_restart(short_dir: Path) -> None:
    config = write_config(
        short_dir, {}, http="127.0.0.1:0", allow_addresses=["127.0.0.1"]
    )  # the receiver is on loopback
    tokens = make_tokens(short_dir / "state", {"ops": (Role.OPERATOR, None)})
    receiver = start_receiver()
    daemon = start_daemon(config)
    try:
        base = "http://" + daemon.client.call("ping")["http"] + "/api/v1"
        at = datetime.now(UTC) + timedelta(seconds=6)
        created = call("POST", f"{base}/tasks", token=tokens["ops"], body={"url": receiver.url, "at": at.isoformat()})
        assert created.status == 201, created.text
        cancelled = call("POST", f"{base}/tasks", token=tokens["ops"], body={"url": receiver.url, "at": at.isoformat()})
        stop_daemon(daemon)
        assert receiver.requests == []
        daemon = start_daemon(config)
        base = "http://" + daemon.client.call("ping")["http"] + "/api/v1"
        assert call("DELETE", f"{base}/tasks/{cancelled.json['id']}", token=tokens["ops"]).json["state"] == "cancelled"
        task = created.json["id"]
        done = wait_for(
            lambda: (t := call("GET", f"{base}/tasks/{task}", token=tokens["ops"]).json)["state"] == "succeeded" and t,
            timeout_s=30,
            what="the task to run after the restart",
            interval_s=0.1,
        )
        assert datetime.fromisoformat(done["run"]["started_at"]) >= at - timedelta(milliseconds=5)
        assert [r["headers"]["X-Supervise-Task"] for r in receiver.requests] == [task]
    finally:
        stop_daemon(daemon)
        receiver.close()
