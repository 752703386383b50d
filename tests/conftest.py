"""Fixtures for tests with real supervisors, workers and sockets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import pytest

from supervise.protocol.client import Client

if TYPE_CHECKING:
    from tests.integration.test_notifications import Receiver

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.02
) -> T:
    """Poll `predicate` until it returns something truthy; fail with the last value at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = predicate()
        except SystemExit as e:
            raise AssertionError(f"gave up waiting for {what}: {e}") from None
        except Exception as e:  # noqa: BLE001 - keep waiting, report the last failure
            last = e
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last saw: {last!r}")
        time.sleep(interval_s)


@pytest.fixture
def hook() -> Iterator[Receiver]:
    """A local webhook receiver (tests/integration/test_notifications.py), stopped after the test."""
    from tests.integration.test_notifications import Receiver  # it imports this module

    found = Receiver()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path: ipc:// socket paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(
    folder: Path,
    services: dict[str, dict[str, object]],
    *,
    notify: dict[str, dict[str, object]] | None = None,
    **supervisor: object,
) -> Path:
    """A config file in `folder`: `[supervisor]` keys, `[notify.NAME]` channels, `[services.NAME]` tables."""
    supervisor = {"sample_interval": "500ms", **supervisor}  # metrics tests need not wait 5 s per sample
    lines = ["[supervisor]", 'state_dir = "state"']
    lines += [f"{k} = {toml_value(v)}" for k, v in supervisor.items()]
    for name, keys in (notify or {}).items():
        lines.append(f"\n[notify.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    for name, keys in services.items():
        lines.append(f"\n[services.{name}]")
        if "target" in keys:
            keys = {"cwd": str(REPO), **keys}
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    path = folder / "supervise.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Daemon:
    """A real `supervise start CONFIG` process and a client to it."""

    config: Path
    proc: subprocess.Popen[bytes]
    client: Client
    log_path: Path
    _pids_seen: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def service(self, name: str) -> dict[str, Any]:
        result: Any = self.client.call("status", name=name, detail=True)
        svc: dict[str, Any] = result["services"][0]
        return svc

    def state(self, name: str) -> str:
        return str(self.service(name)["state"])

    def wait_state(self, name: str, state: str, timeout_s: float = 15.0) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.service(name))["state"] == state and s,
            timeout_s=timeout_s,
            what=f"{name} to be {state}",
        )

    def wait_running_pid(self, name: str, *, not_pid: int | None = None, timeout_s: float = 15.0) -> int:
        def check() -> int | None:
            s = self.service(name)
            if s["state"] == "RUNNING" and s["pid"] and s["pid"] != not_pid:
                return int(s["pid"])
            return None

        return wait_for(check, timeout_s=timeout_s, what=f"{name} RUNNING with a new pid (old {not_pid})")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervise.supervisor", *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )


def start_daemon(config: Path) -> Daemon:
    log_path = config.parent / "daemon.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config), "--log-level", "debug"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    state = config.parent / "state"
    client = Client(f"ipc://{state}/control.sock", timeout_s=5.0)
    daemon = Daemon(config, proc, client, log_path)

    def answers() -> object:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}:\n{log_path.read_text()}")
        return client.call("ping", retries=0)

    try:
        wait_for(answers, timeout_s=20, what="daemon ping")
    except BaseException:
        stop_daemon(daemon)
        raise
    return daemon


def stop_daemon(daemon: Daemon) -> None:
    daemon.client.close()
    if daemon.proc.poll() is None:
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()


@pytest.fixture
def launch() -> Iterator[Callable[[Path], Daemon]]:
    """Start a daemon on a config file; each one started is stopped when the test ends
    (resumed first, should the test have left it frozen with SIGSTOP)."""
    started: list[Daemon] = []

    def make(config: Path) -> Daemon:
        daemon = start_daemon(config)
        started.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in started:
            if daemon.proc.poll() is None:
                try:
                    os.kill(daemon.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            stop_daemon(daemon)


@pytest.fixture
def daemon_factory(short_dir: Path, launch: Callable[[Path], Daemon]) -> Callable[..., Daemon]:
    def make(services: dict[str, dict[str, object]], **supervisor: object) -> Daemon:
        return launch(write_config(short_dir, services, **supervisor))

    return make


def instance_processes() -> list[psutil.Process]:
    """Every process on the machine started by a supervisor of this test session."""
    found = []
    for proc in psutil.process_iter():
        try:
            if "SUPERVISE_INSTANCE" in proc.environ():
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True, scope="session")
def no_orphans_at_the_end() -> Iterator[None]:
    yield
    me = psutil.Process()
    leftovers = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, f"processes left running by the test session: {leftovers}"
