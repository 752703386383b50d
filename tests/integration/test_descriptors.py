"""Thousands of idle connections to the daemon's ports cost it no service (real daemon, real sockets).

The daemon is started with a low soft RLIMIT_NOFILE, as under systemd's default
(1024) or lower. It raises the soft limit, drops connections that do not finish
their handshake (ZeroMQ) or send no request (HTTP), and caps HTTP connections.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from supervise.protocol.client import Client
from supervise.protocol.codec import encode_request
from supervise.protocol.curve import apply_client_keys, load_client_keys
from supervise.supervisor.daemon.curve import create_key_pair
from tests.conftest import Daemon, stop_daemon, wait_for, write_config

FOREVER = "tests.children.targets:forever"
CONNECTIONS = 2000
DAEMON_SOFT_LIMIT = 256
CAP = 12  # max_tcp_connections of the cap's test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def own_limit(n: int) -> Iterator[None]:
    """This test process may hold `n` descriptors meanwhile (it opens the connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, n), hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_idle(port: int, count: int) -> list[socket.socket]:
    """`count` TCP connections that never send a byte (some may be refused or dropped: that is allowed)."""
    opened = []
    for _ in range(count):
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            continue
    return opened


class Opener(threading.Thread):
    """Opens CONNECTIONS idle connections to one port, as fast as it can."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.opened: list[socket.socket] = []

    def run(self) -> None:
        self.opened = open_idle(self.port, CONNECTIONS)


def closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def start_with_limit(config: Path, client: Client, soft: int, hard: int | None = None) -> Daemon:
    log_path = config.parent / "daemon.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard or resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config), "--log-level", "debug"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_limit,  # noqa: PLW1509 - only setrlimit runs there, which takes no lock
        )
    daemon = Daemon(config, proc, client, log_path)
    try:
        wait_for(lambda: proc.poll() is None and client.call("ping"), timeout_s=20, what="daemon ping over tcp")
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


def tcp_config(folder: Path, **supervisor: object) -> tuple[Path, Client, int]:
    keys = folder / "keys"
    create_key_pair(keys, "server")
    create_key_pair(keys / "mine", "ops")
    (keys / "clients").mkdir()
    (keys / "clients" / "ops.key").write_bytes((keys / "mine" / "ops.key").read_bytes())
    control_port = free_port()
    config = write_config(
        folder,
        {"py": {"target": FOREVER}, "sleeper": {"command": ["sleep", "1000"]}},
        control=f"tcp://127.0.0.1:{control_port}",
        curve_server_key=str(keys / "server.key_secret"),
        curve_clients=str(keys / "clients"),
        http="127.0.0.1:0",
        **supervisor,
    )
    client = Client(
        f"tcp://127.0.0.1:{control_port}",
        timeout_s=5.0,
        curve_key=keys / "mine" / "ops.key_secret",
        server_key=keys / "server.key",
    )
    return config, client, control_port


def http_port(d: Daemon) -> int:
    return int(str(d.client.call("ping")["http"]).rsplit(":", 1)[1])  # type: ignore[index]


@pytest.fixture
def tcp_daemon(short_dir: Path) -> Iterator[tuple[Daemon, int, int]]:
    config, client, control_port = tcp_config(short_dir)
    daemon = start_with_limit(config, client, DAEMON_SOFT_LIMIT)
    try:
        yield daemon, control_port, http_port(daemon)
    finally:
        stop_daemon(daemon)


def test_thousands_of_idle_connections_to_each_port_cost_nothing(tcp_daemon: tuple[Daemon, int, int]) -> None:
    d, control_port, http_port = tcp_daemon
    pids = {name: d.wait_running_pid(name) for name in ("py", "sleeper")}
    proc = psutil.Process(d.pid)
    assert proc.rlimit(psutil.RLIMIT_NOFILE)[0] > DAEMON_SOFT_LIMIT  # raised at start
    worker = psutil.Process(pids["sleeper"])
    assert worker.rlimit(psutil.RLIMIT_NOFILE)[0] == DAEMON_SOFT_LIMIT  # workers keep the limit it was given

    with own_limit(3 * CONNECTIONS + 256):
        openers = [Opener(control_port), Opener(http_port)]
        for opener in openers:
            opener.start()
        latencies = []
        try:
            while any(o.is_alive() for o in openers) or not latencies:
                t = time.monotonic()
                d.client.call("ping")
                latencies.append(time.monotonic() - t)
                time.sleep(0.1)
            idle = [s for o in openers for s in o.opened]
            # Idle connections are let go: ZeroMQ's handshake interval (3 s), HTTP's idle timeout (10 s).
            wait_for(
                lambda: sum(closed_by_peer(s) for s in idle) >= len(idle) - 10,
                timeout_s=30,
                what="idle connections closed",
            )
        finally:
            for o in openers:
                o.join()
                for s in o.opened:
                    s.close()

    print(f"{len(idle)} connections opened; ping max {max(latencies) * 1000:.0f} ms; daemon fds now {proc.num_fds()}")
    assert len(idle) >= CONNECTIONS  # the HTTP port accepts them all (and closes those past its cap)
    print(f"{len(latencies)} pings while connecting")
    assert max(latencies) < 1.0
    assert {name: d.service(name)["pid"] for name in pids} == pids
    assert d.proc.poll() is None
    assert wait_for(lambda: proc.num_fds() < 200, timeout_s=10, what="the daemon's descriptors to come back")


def test_with_a_low_hard_limit_the_daemon_degrades_and_recovers_instead_of_aborting(short_dir: Path) -> None:
    config, client, control_port = tcp_config(short_dir)
    d = start_with_limit(config, client, 300, 300)  # cannot be raised: descriptors do run out
    try:
        pids = {name: d.wait_running_pid(name) for name in ("py", "sleeper")}
        with own_limit(3 * CONNECTIONS + 256):
            openers = [Opener(control_port), Opener(http_port(d))]
            for opener in openers:
                opener.start()
            for opener in openers:
                opener.join()
            wait_for(lambda: "descriptors running out" in d.log(), timeout_s=10, what="the shortage to be logged")
            assert d.proc.poll() is None
            for opener in openers:
                for s in opener.opened:
                    s.close()
        # The pause itself is what the log said above: how many connects complete meanwhile depends on
        # the kernel's listen backlog and on how fast the handshake interval frees descriptors.
        wait_for(lambda: "accepting tcp:// connections again" in d.log(), timeout_s=20, what="the recovery")
        assert wait_for(lambda: d.client.call("ping"), timeout_s=10, what="ping after the recovery")
        assert {name: d.service(name)["pid"] for name in pids} == pids
        assert "Too many open files (src/" not in d.log()  # libzmq's abort message
    finally:
        stop_daemon(d)


def test_clients_with_a_key_cannot_hold_more_connections_than_the_cap(short_dir: Path) -> None:
    """An accepted CURVE key lets a client finish the handshake and stay; past max_tcp_connections at
    once, a new handshake is refused whatever the key, and the connected clients keep working."""
    config, client, control_port = tcp_config(short_dir, max_tcp_connections=CAP)
    d = start_with_limit(config, client, DAEMON_SOFT_LIMIT)
    keys = load_client_keys(short_dir / "keys" / "mine" / "ops.key_secret", short_dir / "keys" / "server.key")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    held: list[zmq.Socket[bytes]] = []

    def connected_client() -> zmq.Socket[bytes] | None:
        """A client that connects once (no reconnection); itself if its ping is answered, else None."""
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, -1)
        apply_client_keys(sock, keys)
        sock.connect(f"tcp://127.0.0.1:{control_port}")
        held.append(sock)
        sock.send(encode_request(1, "ping"))
        return sock if sock.poll(3000) else None

    try:
        # The test's own client holds one connection: CAP - 1 more are let in, one by one.
        assert all(connected_client() is not None for _ in range(CAP - 1))
        assert connected_client() is None  # one past the cap: refused, whatever the key
        assert "refused a CURVE client: " in d.log() and f"connections open (at most {CAP})" in d.log()
        assert d.client.call("ping")  # the connected ones keep working
        held[0].close(linger=0)
        assert wait_for(connected_client, timeout_s=10, what="a client let in once one left")
    finally:
        for sock in held:
            sock.close(linger=0)
        context.term()
        stop_daemon(d)
