"""Listening sockets bound by the supervisor and inherited by workers (systemd socket activation)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.supervisor.config.loader import ConfigError, parse_config
from tests.conftest import REPO, Daemon, alive, wait_for

SERVER = [sys.executable, str(REPO / "tests" / "children" / "socket_http.py")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(address: str | tuple[str, int]) -> str:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(address)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200"), head
    return body


class Hammer(threading.Thread):
    """Connects and GETs in a loop, counting outcomes, until stopped."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.outcomes: Counter[str] = Counter()
        self.pids: set[str] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.pids.add(get(self.address).split()[0])
                self.outcomes["ok"] += 1
            except ConnectionRefusedError:
                self.outcomes["refused"] += 1
            except (OSError, AssertionError) as e:
                self.outcomes[type(e).__name__] += 1


def test_a_restarting_web_worker_refuses_no_connection(daemon_factory: Callable[..., Daemon]) -> None:
    port = free_port()
    d = daemon_factory(
        {"web": {"command": SERVER, "sockets": {"http": f"tcp://127.0.0.1:{port}"}, "start_timeout": "100ms"}}
    )
    pid = d.wait_running_pid("web")
    assert get(("127.0.0.1", port)) == f"{pid} http\n"
    hammer = Hammer(("127.0.0.1", port))
    hammer.start()
    wait_for(lambda: hammer.outcomes["ok"] >= 10, what="the first answers")
    pids = [pid]
    try:
        for _ in range(20):
            d.client.call("restart", name="web")
            pids.append(d.wait_running_pid("web", not_pid=pids[-1]))
            assert not alive(pids[-2])
            wait_for(lambda: str(pids[-1]) in hammer.pids, what=f"an answer from worker {len(pids) - 1}")
    finally:
        hammer.stopping.set()
        hammer.join(15)
    assert len(set(pids)) == 21
    assert hammer.outcomes["refused"] == 0, hammer.outcomes
    assert set(hammer.outcomes) == {"ok"}, hammer.outcomes  # nor reset, nor timed out
    assert hammer.pids == {str(p) for p in pids}  # the client kept going: every one of the 21 workers answered it
    print(f"20 restarts: {hammer.outcomes['ok']} requests answered by {len(hammer.pids)} workers, 0 refused")


def test_every_instance_shares_the_sockets_and_a_unix_socket_works(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    port, path = free_port(), str(short_dir / "web.sock")
    sockets = {"http": f"tcp://127.0.0.1:{port}", "admin": f"unix:{path}"}
    d = daemon_factory({"web": {"command": SERVER, "sockets": sockets, "processes": 3, "start_timeout": "100ms"}})
    pids = {d.wait_running_pid(name) for name in ("web", "web:1", "web:2")}
    answered: set[int] = set()
    deadline = time.monotonic() + 20
    while answered != pids and time.monotonic() < deadline:  # the kernel spreads accepts among the three
        answered.add(int(get(("127.0.0.1", port)).split()[0]))
    assert answered == pids
    log = (short_dir / "state" / "logs" / "web.log").read_text()
    assert "serving on 2 fds: http:admin" in log
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)  # bound and listening, held by the supervisor
    d.client.call("remove", name="web")
    wait_for(lambda: not Path(path).exists(), what="the unix socket to be removed with its service")
    with pytest.raises(ConnectionRefusedError):
        get(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"http": "http://127.0.0.1:80"}, 'http: expected "tcp://HOST:PORT" or "unix:/absolute/path"'),
        ({"a:b": "tcp://127.0.0.1:80"}, "socket names use letters, digits"),
        ({"admin": "unix:relative.sock"}, 'admin: expected "tcp://HOST:PORT" or "unix:/absolute/path"'),
        ("tcp://127.0.0.1:80", "expected a table like"),
    ],
)
def test_bad_sockets_are_refused_naming_the_key(tmp_path: Path, value: object, expected: str) -> None:
    data = {"supervisor": {"state_dir": str(tmp_path)}, "services": {"s": {"command": ["true"], "sockets": value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert "services.s.sockets" in str(caught.value) and expected in str(caught.value)


def test_a_port_in_use_is_a_failed_start_naming_the_socket(daemon_factory: Callable[..., Daemon]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        web = {"command": SERVER, "sockets": {"http": f"tcp://127.0.0.1:{port}"}, "max_restarts": 0}
        d = daemon_factory({"web": web})
        svc = d.wait_state("web", "FATAL")
    assert svc["last_exit"]["cause"] == "spawn_failed"
    assert f"cannot listen on socket http (tcp://127.0.0.1:{port}): Address already in use" in svc["last_error"]
