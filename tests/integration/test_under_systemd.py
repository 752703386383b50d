"""`supervise start` under systemd (Type=notify): READY=1 after every service's start, WATCHDOG=1, clean env."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Daemon, wait_for

Received = list[tuple[float, dict[str, str]]]


def receive(sock: socket.socket, until: Callable[[Received], bool], timeout_s: float = 20) -> Received:
    """Datagrams as (arrival time, fields) until `until(received)` or the deadline."""
    received: Received = []
    deadline = time.monotonic() + timeout_s
    while not until(received):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; received {received}"
        sock.settimeout(left)
        data = sock.recv(4096).decode()
        received.append((time.monotonic(), dict(line.split("=", 1) for line in data.splitlines())))
    return received


def test_ready_after_every_service_started_then_watchdog(
    daemon_factory: Callable[..., Daemon], short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = short_dir / "notify.sock"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    env_probe = "echo NOTIFY_SOCKET=$(printenv NOTIFY_SOCKET || echo unset); exec sleep 1000"
    begun = time.monotonic()
    d = daemon_factory(
        {
            "web": {"command": ["sh", "-c", env_probe], "start_timeout": "1500ms"},
            "broken": {"command": ["false"], "max_restarts": 0},
            "blocked": {"command": ["sleep", "1000"], "requires": ["broken"]},  # never starts: must not hold READY
        }
    )
    try:
        got = receive(manager, lambda r: any("READY" in f for _, f in r) and sum("WATCHDOG" in f for _, f in r) >= 4)
    finally:
        manager.close()
    ready_at, ready = next((t, f) for t, f in got if "READY" in f)
    assert ready == {"READY": "1", "STATUS": "1 of 3 services running"}
    assert ready_at - begun >= 1.5  # web counts as started after its start_timeout, not before
    assert d.state("web") == "RUNNING" and d.state("broken") == "FATAL" and d.state("blocked") == "STOPPED"
    watchdogs = [t for t, f in got if f == {"WATCHDOG": "1"}]
    gaps = sorted(b - a for a, b in zip(watchdogs, watchdogs[1:], strict=False))
    assert len(watchdogs) >= 4 and 0.15 < gaps[len(gaps) // 2] < 0.3  # every half WATCHDOG_USEC
    log = short_dir / "state" / "logs" / "web.log"
    assert wait_for(lambda: log.exists() and log.read_text()) == "NOTIFY_SOCKET=unset\n"  # not passed on to workers


def test_without_notify_socket_nothing_is_sent(
    daemon_factory: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)  # the test run itself may be under systemd
    d = daemon_factory({"web": {"command": ["sleep", "1000"], "start_timeout": "100ms"}})
    d.wait_state("web", "RUNNING")
    assert "READY=1" not in d.log()
