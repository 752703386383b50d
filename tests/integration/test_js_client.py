"""The JavaScript client in examples/clients/js against a live daemon (needs node and npm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Daemon

JS = REPO / "examples" / "clients" / "js"
STUBBORN = ["sh", "-c", "trap '' TERM; exec sleep 1000"]  # a stop waits out stop_timeout


def unavailable(reason: str) -> None:
    # On CI a missing toolchain is a failure, not a skip (STYLE rule 18).
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with the client's npm packages installed (once per session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("the JavaScript client test needs node and npm on PATH")
    assert node is not None and npm is not None
    install = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True, timeout=600
    )
    if install.returncode != 0:
        unavailable(f"npm install in {JS} failed (is the npm registry reachable?):\n{install.stderr[-2000:]}")
    probe = subprocess.run(
        [node, "-e", "require('zeromq'); require('@msgpack/msgpack')"],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        unavailable(
            "the zeromq npm package installed without a usable native binary for this platform "
            f"(it ships prebuilt ones for common platforms only):\n{probe.stderr[-2000:]}"
        )
    return node


@pytest.fixture
def live(daemon_factory: Any) -> Daemon:
    daemon: Daemon = daemon_factory(
        {
            "cmd": {"command": ["sleep", "1000"], "start_timeout": "200ms"},
            "stubborn": {"command": STUBBORN, "start_timeout": "200ms", "stop_timeout": "1s"},
        }
    )
    daemon.wait_running_pid("cmd")
    daemon.wait_running_pid("stubborn")
    return daemon


def endpoint(daemon: Daemon) -> str:
    return f"ipc://{daemon.config.parent / 'state'}/control.sock"


def cli(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(JS / "client.js"), *args], capture_output=True, text=True, timeout=60)


def test_ping_prints_the_daemons_pid_as_json(node: str, live: Daemon) -> None:
    done = cli(node, endpoint(live), "ping")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pid"] == live.pid


def test_status_of_one_service_matches_the_python_client(node: str, live: Daemon) -> None:
    done = cli(node, endpoint(live), "status", '{"name": "cmd"}')
    assert done.returncode == 0, done.stderr
    (service,) = json.loads(done.stdout)["services"]
    assert service["name"] == "cmd" and service["state"] == "RUNNING"
    assert service["pid"] == live.service("cmd")["pid"]


def test_unknown_command_is_an_error_reply_with_its_code(node: str, live: Daemon) -> None:
    done = cli(node, endpoint(live), "restrat", '{"name": "cmd"}')
    assert done.returncode == 1 and done.stdout == ""
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "unknown_command"
    assert 'did you mean "restart"' in error["message"]
    assert live.client.ping()  # and the daemon carries on


def test_bad_json_args_is_a_usage_error(node: str, tmp_path: Path) -> None:
    done = cli(node, "ipc:///nonexistent/control.sock", "status", "[1]")
    assert done.returncode == 2 and "JSON object" in done.stderr


def test_a_timed_out_request_leaves_the_library_client_usable(node: str, live: Daemon) -> None:
    script = """
    const { Client, ClientTimeout, RemoteError } = require(process.argv[1]);
    (async () => {
      const client = new Client(process.argv[2], { timeoutMs: 5000 });
      const out = {};
      await client.ping();  // connected: the stop below is delivered at once, however busy the machine
      try {
        await client.request("stop", { name: "stubborn" }, { timeoutMs: 200 });
      } catch (error) {
        out.timeout = error instanceof ClientTimeout;
      }
      out.pid = (await client.ping()).pid;
      try {
        await client.call("stop", { name: "web2" });
      } catch (error) {
        out.code = error instanceof RemoteError && error.code;
      }
      client.close();
      console.log(JSON.stringify(out));
    })();
    """
    done = subprocess.run(
        [node, "-e", script, str(JS / "client.js"), endpoint(live)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"timeout": True, "pid": live.pid, "code": "not_found"}
    live.wait_state("stubborn", "STOPPED")
