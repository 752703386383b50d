"""The control plane's protection, against a real daemon: private ipc:// by default, CURVE on tcp://.

Each tcp:// test runs `supervise start` on tcp://127.0.0.1:<free port> with keys
made by `supervise keygen`; see docs/security.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from supervise.protocol.client import AsyncClient, Client
from supervise.protocol.codec import unpack
from supervise.protocol.curve import load_client_keys, read_key_pair, read_public_key
from supervise.protocol.errors import ClientTimeout, RemoteError
from supervise.protocol.limits import REPLY_LIMITS
from tests.conftest import Daemon, stop_daemon, wait_for, write_config

SLEEPER = {"command": ["sleep", "1000"]}


def supervise(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Keys:
    """Key pairs made with `supervise keygen`: the server's, and clients' in their own folder."""

    root: Path

    def make(self, name: str, folder: str = "mine") -> Path:
        result = supervise("keygen", "--dir", str(self.root / folder), name)
        assert result.returncode == 0, result.stderr
        return self.root / folder / f"{name}.key_secret"

    def allow(self, name: str, folder: str) -> None:
        (self.root / folder).mkdir(exist_ok=True)
        shutil.copy(self.root / "mine" / f"{name}.key", self.root / folder / f"{name}.key")

    @property
    def server_secret(self) -> Path:
        return self.root / "server" / "server.key_secret"

    @property
    def server_public(self) -> Path:
        return self.root / "server" / "server.key"

    def client(self, endpoint: str, name: str | None, *, timeout_s: float = 5.0) -> Client:
        if name is None:
            return Client(endpoint, timeout_s=timeout_s)
        return Client(
            endpoint,
            timeout_s=timeout_s,
            curve_key=self.root / "mine" / f"{name}.key_secret",
            server_key=self.server_public,
        )


@pytest.fixture
def folder(short_dir: Path) -> Path:
    return short_dir


@pytest.fixture
def keys(folder: Path) -> Keys:
    """A server key pair, full-access clients alice and bob, read-only dashboard; mallory is unknown."""
    k = Keys(folder / "keys")
    k.make("server", "server")
    for name in ("alice", "bob", "dashboard", "mallory"):
        k.make(name)
    k.allow("alice", "clients")
    k.allow("bob", "clients")
    k.allow("dashboard", "readonly")
    return k


def start_tcp_daemon(config: Path, client: Client) -> Daemon:
    """`supervise start CONFIG` whose control endpoint is tcp://, waited for through `client`."""
    log_path = config.parent / "daemon.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config), "--log-level", "debug"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    daemon = Daemon(config, proc, client, log_path)

    def answers() -> object:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        return client.call("ping")

    try:
        wait_for(answers, timeout_s=20, what="daemon ping over tcp")
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


@pytest.fixture
def curve_daemon(folder: Path, keys: Keys) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon with CURVE on tcp:// control (and any other [supervisor] keys); stopped at the end."""
    started: list[Daemon] = []

    def make(**supervisor: object) -> Daemon:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        settings: dict[str, object] = {
            "control": endpoint,
            "curve_server_key": str(keys.server_secret),
            "curve_clients": str(keys.root / "clients"),
            "curve_readonly_clients": str(keys.root / "readonly"),
        }
        config = write_config(folder, {"sleeper": SLEEPER}, **(settings | supervisor))
        daemon = start_tcp_daemon(config, keys.client(endpoint, "alice"))
        started.append(daemon)
        daemon.wait_state("sleeper", "RUNNING")
        return daemon

    try:
        yield make
    finally:
        for daemon in started:
            stop_daemon(daemon)


def control_counters(daemon: Daemon) -> dict[str, int]:
    result: dict[str, dict[str, dict[str, int]]] = daemon.client.call("metrics")  # type: ignore[assignment]
    return result["supervisor"]["control"]


# -- ipc:// by default ------------------------------------------------------------------


def test_default_endpoints_are_ipc_sockets_only_the_owner_can_reach(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory({"sleeper": SLEEPER})
    state = daemon.config.parent / "state"

    assert daemon.client.endpoint == f"ipc://{state}/control.sock"
    assert mode(state) == 0o700
    for name in ("control.sock", "workers.sock", "events.sock", "supervise.lock"):
        assert mode(state / name) == 0o600, name
    assert "INSECURE" not in daemon.log() and "CURVE" not in daemon.log()  # nothing to warn about on ipc://


# -- CURVE on tcp:// ----------------------------------------------------------------------


def test_known_keys_are_accepted_over_tcp(curve_daemon: Callable[..., Daemon], keys: Keys) -> None:
    daemon = curve_daemon()
    endpoint = daemon.client.endpoint

    with keys.client(endpoint, "bob") as bob:
        assert bob.status("sleeper")["services"][0]["state"] == "RUNNING"  # type: ignore[index]
        bob.restart("sleeper")  # full access

    async def async_ping() -> object:
        async with AsyncClient(
            endpoint, curve_key=keys.root / "mine" / "alice.key_secret", server_key=keys.server_public
        ) as client:
            return await client.ping()

    assert asyncio.run(async_ping())["pid"] == daemon.pid  # type: ignore[index]
    log = daemon.log()
    assert "CURVE on " + endpoint + ": 2 full-access and 1 read-only client keys" in log
    assert "INSECURE" not in log


def test_the_cli_takes_keys_from_options_and_the_environment(curve_daemon: Callable[..., Daemon], keys: Keys) -> None:
    daemon = curve_daemon()
    endpoint = daemon.client.endpoint
    alice = str(keys.root / "mine" / "alice.key_secret")

    by_options = supervise(
        "ping", "--endpoint", endpoint, "--curve-key", alice, "--server-key", str(keys.server_public)
    )
    by_env = supervise(
        "status",
        "sleeper",
        "--endpoint",
        endpoint,
        env={"SUPERVISE_CURVE_KEY": alice, "SUPERVISE_SERVER_KEY": str(keys.server_public)},
    )
    # Found through the config file, the server's public key is the NAME.key next to its curve_server_key.
    by_config = supervise("ping", "-c", str(daemon.config), "--curve-key", alice)
    missing = supervise("ping", "--endpoint", endpoint, "--curve-key", alice)

    assert by_options.returncode == 0, by_options.stderr
    assert f"(pid {daemon.pid})" in by_options.stdout
    assert by_env.returncode == 0 and "RUNNING" in by_env.stdout, by_env.stderr
    assert by_config.returncode == 0, by_config.stderr
    assert missing.returncode == 2
    assert "--curve-key FILE (this client's NAME.key_secret) and --server-key FILE" in missing.stderr


def test_an_unknown_key_never_reaches_the_dispatcher(curve_daemon: Callable[..., Daemon], keys: Keys) -> None:
    daemon = curve_daemon()
    endpoint = daemon.client.endpoint
    before = control_counters(daemon)

    with keys.client(endpoint, "mallory", timeout_s=1.0) as mallory, pytest.raises(ClientTimeout):
        mallory.call("stop", name="sleeper")
    with keys.client(endpoint, None, timeout_s=1.0) as anonymous, pytest.raises(ClientTimeout):
        anonymous.call("stop", name="sleeper")  # no CURVE at all: the handshake fails too
    # Raw garbage under an unknown key: had it reached the dispatcher, it would count as a bad request.
    ctx = zmq.Context.instance()
    mallory_keys = load_client_keys(keys.root / "mine" / "mallory.key_secret", keys.server_public)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (
        mallory_keys.public,
        mallory_keys.secret,
        mallory_keys.server,
    )
    sock.connect(endpoint)
    try:
        sock.send(b"\xc1 not msgpack")
        assert sock.poll(1000) == 0  # no reply: nothing answered
    finally:
        sock.close()

    assert control_counters(daemon) == before  # bad_requests did not move
    assert daemon.state("sleeper") == "RUNNING"
    assert "refused a CURVE client with unknown public key " + mallory_keys.public.decode() in daemon.log()
    # The same garbage from a known key does reach it: the counter above was able to move.
    alice = load_client_keys(keys.root / "mine" / "alice.key_secret", keys.server_public)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = alice.public, alice.secret, alice.server
    sock.connect(endpoint)
    try:
        sock.send(b"\xc1 not msgpack")
        assert sock.poll(5000), "a known key gets an error reply"
        reply = unpack(sock.recv(), REPLY_LIMITS, what="reply")
        assert isinstance(reply, dict) and reply["error"]["code"] == "malformed"
    finally:
        sock.close()
    assert control_counters(daemon)["bad_requests"] == before["bad_requests"] + 1


def test_a_read_only_key_may_look_but_not_change(curve_daemon: Callable[..., Daemon], keys: Keys) -> None:
    daemon = curve_daemon()

    with keys.client(daemon.client.endpoint, "dashboard") as dashboard:
        assert dashboard.status("sleeper")["services"][0]["state"] == "RUNNING"  # type: ignore[index]
        assert dashboard.call("metrics")
        with pytest.raises(RemoteError) as refused:
            dashboard.stop("sleeper")
        with pytest.raises(RemoteError) as shutdown:
            dashboard.shutdown()

    assert refused.value.code == "forbidden"
    assert refused.value.message == 'command "stop" needs a full-access key; key "dashboard" is read-only'
    assert shutdown.value.code == "forbidden"
    assert daemon.state("sleeper") == "RUNNING"
    assert daemon.proc.poll() is None
    assert control_counters(daemon)["forbidden"] == 2


def test_events_over_tcp_need_a_known_key_too(curve_daemon: Callable[..., Daemon], keys: Keys) -> None:
    events = f"tcp://127.0.0.1:{free_port()}"
    daemon = curve_daemon(events=events)
    assert daemon.client.call("ping")["events"] == events  # type: ignore[index]
    ctx = zmq.Context.instance()

    def subscriber(name: str) -> zmq.Socket[bytes]:
        k = load_client_keys(keys.root / "mine" / f"{name}.key_secret", keys.server_public)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.curve_publickey, sub.curve_secretkey, sub.curve_serverkey = k.public, k.secret, k.server
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(events)
        return sub

    dashboard, mallory = subscriber("dashboard"), subscriber("mallory")
    try:

        def an_event_arrives() -> object:
            daemon.client.call("restart", name="sleeper")  # until the subscription has taken effect
            return dashboard.poll(500) and dashboard.recv_multipart()

        topic, _body = wait_for(an_event_arrives, timeout_s=20, what="an event for the read-only key")
        assert topic.startswith(b"sleeper.")
        assert mallory.poll(200) == 0
    finally:
        dashboard.close()
        mallory.close()


def test_tcp_without_keys_is_refused_at_start(folder: Path) -> None:
    config = write_config(folder, {"sleeper": SLEEPER}, control=f"tcp://127.0.0.1:{free_port()}")

    result = supervise("start", str(config), timeout=30)

    assert result.returncode == 78
    assert (
        "supervisor.control: tcp:// requires CURVE: set curve_server_key and curve_clients (see supervise keygen), "
        "or insecure = true to let anyone who can reach the port run any command"
    ) in result.stderr
    assert not (folder / "state" / "supervise.lock").exists()  # refused before touching anything


def test_insecure_true_starts_and_says_so_loudly(folder: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = write_config(folder, {"sleeper": SLEEPER}, control=endpoint, insecure=True)
    daemon = start_tcp_daemon(config, Client(endpoint, timeout_s=5.0))
    try:
        assert daemon.client.call("ping")["pid"] == daemon.pid  # type: ignore[index]
    finally:
        stop_daemon(daemon)
    lines = [line for line in daemon.log().splitlines() if "INSECURE" in line]
    assert len(lines) == 1
    assert "CRITICAL" in lines[0]
    assert f"{endpoint} accept(s) any client without authentication or encryption (insecure = true)" in lines[0]
    assert daemon.proc.returncode == 0


def test_a_key_file_that_changed_since_the_config_was_read_fails_the_start(folder: Path, keys: Keys) -> None:
    config = write_config(
        folder,
        {},
        control=f"tcp://127.0.0.1:{free_port()}",
        curve_server_key=str(keys.server_secret),
        curve_clients=str(keys.root / "clients"),
    )
    keys.server_secret.chmod(0o644)

    result = supervise("start", str(config), timeout=30)

    assert result.returncode == 78
    assert (
        f"supervisor.curve_server_key: {keys.server_secret} is accessible to group or others (mode 644)"
        in result.stderr
    )


# -- keygen -----------------------------------------------------------------------------


def test_keygen_writes_a_private_key_pair_and_says_where_the_public_key_goes(folder: Path) -> None:
    result = supervise("keygen", "--dir", str(folder / "k"), "dashboard")

    public, secret = folder / "k" / "dashboard.key", folder / "k" / "dashboard.key_secret"
    assert result.returncode == 0, result.stderr
    assert mode(folder / "k") == 0o700
    assert mode(secret) == 0o600
    assert mode(public) == 0o644
    pair = read_key_pair(secret)
    assert read_public_key(public) == pair[0]
    assert b"secret-key" not in public.read_bytes()
    assert f"created {public} (public key {pair[0].decode()})" in result.stdout
    assert "copy dashboard.key into the supervisor's curve_clients directory" in result.stdout
    assert f'curve_server_key = "{secret}"' in result.stdout

    again = supervise("keygen", "--dir", str(folder / "k"), "dashboard")
    assert again.returncode == 1
    assert "exists; keys are never overwritten" in again.stderr
    assert read_key_pair(secret) == pair

    bad = supervise("keygen", "../escape")
    assert bad.returncode == 2
    assert "NAME becomes a file name" in bad.stderr


def test_sigterm_stops_a_tcp_daemon_cleanly_and_frees_its_port(curve_daemon: Callable[..., Daemon]) -> None:
    daemon = curve_daemon()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=30) == 0
    with socket.socket() as s:  # the port is free again
        host, port = daemon.client.endpoint.removeprefix("tcp://").rsplit(":", 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
