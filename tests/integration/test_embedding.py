"""The supervisor embedded in another program: asyncio, the sync facade, and clients against it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervise.protocol import AsyncClient, Client, ClientTimeout, RemoteError
from supervise.supervisor import AlreadyRunning, ServiceNotFound, Supervisor, SyncSupervisor
from tests.conftest import REPO, alive, wait_for

# Ignores SIGTERM (an ignored signal stays ignored across exec), so a stop takes stop_timeout.
STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 1000"]


def config(state_dir: Path, **extra: dict[str, object]) -> dict[str, Any]:
    """A Python service and a command service (plus `extra`), as a dict in the config file's shape."""
    return {
        "supervisor": {"state_dir": str(state_dir / "state")},
        "services": {
            "py": {"target": "tests.children.targets:forever", "cwd": str(REPO), "stop_timeout": "5s"},
            "cmd": {"command": ["sleep", "1000"], "start_timeout": "200ms", "stop_timeout": "5s"},
            **extra,
        },
    }


def live_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if alive(p.pid)}


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    """Fails the test if any process it started (workers, grandchildren, the guard) outlives it."""
    before = live_children()
    yield
    wait_for(lambda: not (live_children() - before), timeout_s=5, what="no process left by the test")


def running_pids(status: dict[str, Any]) -> dict[str, int] | None:
    """Each service's pid once all of them are RUNNING with a pid; None before."""
    services = status["services"]
    if all(s["state"] == "RUNNING" and s["pid"] for s in services):
        return {s["name"]: s["pid"] for s in services}
    return None


async def wait_async(predicate: Callable[[], Any], *, timeout_s: float = 30.0, what: str) -> Any:
    """`wait_for`, for a test running inside the supervisor's event loop."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


# -- asyncio ------------------------------------------------------------------


def test_asyncio_supervisor_starts_reports_and_stops_services(short_dir: Path, no_leftovers: None) -> None:
    async def main() -> dict[str, int]:
        # Taken inside the loop: asyncio.run installs its own SIGINT handler.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        async with Supervisor(config(short_dir)) as sup:
            pids: dict[str, int] = await wait_async(
                lambda: running_pids(sup.status()), what="both services RUNNING", timeout_s=30
            )
            assert {s["name"]: s["kind"] for s in sup.status(detail=True)["services"]} == {
                "py": "python",
                "cmd": "command",
            }
            assert {signal.getsignal(sig) for sig in handlers} == set(handlers.values()), "embedding took signals"
            assert all(alive(pid) for pid in pids.values())

            result = await sup.act("stop", ["py", "cmd"])
            assert result == {"services": {"py": "STOPPED", "cmd": "STOPPED"}}
            assert not any(alive(pid) for pid in pids.values())

            await sup.act("start", ["cmd"])  # left running: the context manager's exit stops it
            pids["cmd2"] = sup.status("cmd")["services"][0]["pid"]
            assert alive(pids["cmd2"])
        return pids

    pids = asyncio.run(main())
    assert not any(alive(pid) for pid in pids.values())


def test_async_client_against_a_supervisor_in_the_same_loop(short_dir: Path, no_leftovers: None) -> None:
    async def main() -> None:
        async with Supervisor(
            config(short_dir, stubborn={"command": STUBBORN, "start_timeout": "200ms", "stop_timeout": "1s"})
        ) as sup:
            async with AsyncClient(sup.config.supervisor.control_endpoint, timeout_s=5) as client:
                assert (await client.ping())["pid"] == sup.ping()["pid"]  # type: ignore[index]
                await wait_async(lambda: running_pids(sup.status()), what="every service RUNNING", timeout_s=30)
                status: Any = await client.status("py")
                assert status["services"][0]["state"] == "RUNNING"
                with pytest.raises(RemoteError) as error:
                    await client.call("restrat", name="py")
                assert error.value.code == "unknown_command"

                # The stop waits out stop_timeout (1 s); the client gives up first, then carries on.
                with pytest.raises(ClientTimeout):
                    await client.request("stop", {"name": "stubborn"}, timeout_s=0.2)
                assert (await client.ping())["pid"] == sup.ping()["pid"]  # type: ignore[index]
                await wait_async(
                    lambda: sup.status("stubborn")["services"][0]["state"] == "STOPPED", what="stubborn STOPPED"
                )
                status = await client.status("stubborn")
                assert status["services"][0]["state"] == "STOPPED"

    asyncio.run(main())


# -- the sync facade ------------------------------------------------------------


def test_sync_facade_starts_reports_and_stops_services(short_dir: Path, no_leftovers: None) -> None:
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    threads_before = set(threading.enumerate())
    with SyncSupervisor(config(short_dir)) as sup:
        assert sup.is_running
        pids: dict[str, int] = wait_for(lambda: running_pids(sup.status()), what="both services RUNNING", timeout_s=30)
        assert {signal.getsignal(sig) for sig in handlers} == set(handlers.values())
        assert all(alive(pid) for pid in pids.values())
        assert sup.ping()["pid"] == psutil.Process().pid  # in process, not a daemon

        assert sup.stop("py") == {"services": {"py": "STOPPED"}}
        assert not alive(pids["py"])
        assert sup.restart("cmd") == {"services": {"cmd": "RUNNING"}}
        new_cmd = sup.status("cmd")["services"][0]["pid"]
        assert new_cmd != pids["cmd"] and alive(new_cmd) and not alive(pids["cmd"])
        assert sup.start("py") == {"services": {"py": "RUNNING"}}
        pids["py2"] = sup.status("py")["services"][0]["pid"]
        pids["cmd2"] = new_cmd

        with pytest.raises(ServiceNotFound):
            sup.stop("nope")
    # Both services were still running: close() stopped them, then the loop and its thread.
    assert not sup.is_running
    assert not any(alive(pid) for pid in pids.values())
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(RuntimeError, match="has stopped"):
        sup.status()


def test_sync_facade_raises_startup_errors_in_the_caller(short_dir: Path, no_leftovers: None) -> None:
    threads_before = set(threading.enumerate())
    with SyncSupervisor(config(short_dir)) as first:
        second = SyncSupervisor(config(short_dir))
        with pytest.raises(AlreadyRunning, match="another supervise"):
            second.open()
        assert not second.is_running
        assert first.status()["supervisor"]["healthy"] is True
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(ValueError, match="signal handlers"):
        SyncSupervisor(config(short_dir), handle_signals=True)


def test_sync_facade_ends_when_a_client_shuts_it_down(short_dir: Path, no_leftovers: None) -> None:
    with SyncSupervisor.from_file(write_toml(short_dir)) as sup:
        pid = wait_for(lambda: running_pids(sup.status()), what="cmd RUNNING", timeout_s=30)["cmd"]
        with Client(sup.endpoint, timeout_s=5) as client:
            assert client.shutdown() == {"shutting_down": True}
        assert sup.wait(timeout_s=10)
        assert not alive(pid)


def write_toml(folder: Path) -> Path:
    path = folder / "supervise.toml"
    path.write_text(
        '[supervisor]\nstate_dir = "state"\n\n[services.cmd]\ncommand = ["sleep", "1000"]\nstart_timeout = "200ms"\n'
    )
    return path


def test_sync_client_against_the_sync_facade_survives_a_timeout(short_dir: Path, no_leftovers: None) -> None:
    stubborn = {"command": STUBBORN, "start_timeout": "200ms", "stop_timeout": "1s"}
    with SyncSupervisor(config(short_dir, stubborn=stubborn)) as sup, Client(sup.endpoint, timeout_s=5) as client:
        wait_for(lambda: running_pids(sup.status()), what="every service RUNNING", timeout_s=30)
        assert client.ping()["pid"] == psutil.Process().pid  # type: ignore[index]
        with pytest.raises(RemoteError) as error:
            client.stop("nope")
        assert error.value.code == "not_found"

        with pytest.raises(ClientTimeout, match="within 0.2 s"):
            client.request("stop", {"name": "stubborn"}, timeout_s=0.2)
        # The late reply to the stop goes to a closed socket; this call gets its own.
        status: Any = client.status("stubborn")
        assert status["services"][0]["name"] == "stubborn"
        wait_for(
            lambda: client.status("stubborn")["services"][0]["state"] == "STOPPED",
            what="stubborn STOPPED",
            timeout_s=30,
        )  # type: ignore[index]

        # AsyncClient in this thread's own event loop, while the supervisor runs in its thread.
        async def from_asyncio() -> None:
            async with AsyncClient(sup.endpoint, timeout_s=5) as aclient:
                sup.start("stubborn")
                with pytest.raises(ClientTimeout):
                    await aclient.request("restart", {"name": "stubborn"}, timeout_s=0.2)
                assert (await aclient.ping())["pid"] == psutil.Process().pid  # type: ignore[index]

        asyncio.run(from_asyncio())


def test_importing_the_cli_loads_neither_zmq_nor_the_supervisor() -> None:
    code = (
        "import sys, supervise.supervisor.cli.main\n"
        "heavy = [m for m in ('zmq', 'asyncio', 'supervise.supervisor.daemon.supervisor') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import supervise.supervisor as s\n"
        "assert all(getattr(s, n) for n in s.__all__)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_update_through_the_embedding_api_patches_the_keys_given(short_dir: Path, no_leftovers: None) -> None:
    only_cmd = {"command": ["sleep", "1000"], "start_timeout": "200ms", "stop_timeout": "5s", "max_restarts": 9}
    with SyncSupervisor({**config(short_dir), "services": {"cmd": only_cmd}}) as sup:
        pid = wait_for(lambda: running_pids(sup.status()), what="cmd RUNNING", timeout_s=30)["cmd"]
        patched = sup.call("update", name="cmd", spec={"stop_timeout": "2s"}, unset=["max_restarts"])
        assert patched["changed"] == ["max_restarts", "stop_timeout_ms"]
        assert sup.status("cmd")["services"][0]["pid"] == pid  # nothing of its process changed
        replaced = sup.call("update", name="cmd", spec={"command": ["sleep", "999"]}, replace=True)
        assert "command" in replaced["changed"] and "start_timeout_ms" in replaced["changed"]
