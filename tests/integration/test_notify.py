"""type = "notify" services: sd_notify over NOTIFY_SOCKET, with real programs written for systemd."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Daemon, alive, wait_for

PROGRAM = [sys.executable, str(REPO / "tests" / "children" / "notify_service.py")]


def events(d: Daemon, name: str, kind: str) -> list[dict[str, object]]:
    found = d.client.call("events", since=0, service=name)["events"]
    return [e for e in found if e["kind"] == kind]


def test_a_notify_service_is_started_on_ready_and_shows_its_status(daemon_factory) -> None:
    d: Daemon = daemon_factory({"svc": {"command": PROGRAM, "type": "notify", "env": {"READY_AFTER_S": "1.5"}}})
    spawned = wait_for(lambda: d.service("svc")["pid"], what="the spawn")
    seen = wait_for(lambda: (s := d.service("svc"))["status_text"] == "warming up" and s, what="STATUS=warming up")
    assert seen["state"] == "STARTING"  # up, but not READY=1 yet
    svc = d.wait_state("svc", "RUNNING")
    (spawn,) = events(d, "svc", "spawned")
    running = [e for e in events(d, "svc", "state") if e["to"] == "RUNNING"]
    assert float(running[0]["ts"]) - float(spawn["ts"]) >= 1.4  # READY=1 came after 1.5 s; start_timeout is 30 s
    assert svc["pid"] == spawned and svc["status_text"] == "serving"
    assert d.service("svc")["main_pid"] == spawned
    assert d.cli("stop", "svc").returncode == 0
    wait_for(lambda: events(d, "svc", "stopping"), what="STOPPING=1 recorded as an event")
    assert d.service("svc")["last_exit"]["cause"] == "stopped"


def test_no_ready_within_start_timeout_is_a_failed_start(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "slow": {
                "command": PROGRAM,
                "type": "notify",
                "start_timeout": "500ms",
                "max_restarts": 0,
                "env": {"READY_AFTER_S": "60"},
            }
        }
    )
    svc = d.wait_state("slow", "FATAL")
    assert svc["last_exit"]["cause"] == "start_timeout"
    assert "no READY=1 (sd_notify) within start_timeout (500ms)" in svc["last_error"]


def test_a_notify_service_that_stops_sending_watchdog_is_killed_and_restarted(daemon_factory, short_dir: Path) -> None:
    stuck, beats = short_dir / "stuck", short_dir / "beats"
    env = {"STUCK_FILE": str(stuck), "BEATS_FILE": str(beats)}
    d: Daemon = daemon_factory(
        {"wd": {"command": PROGRAM, "type": "notify", "watchdog": "600ms", "backoff": "50ms", "env": env}}
    )
    old = d.wait_running_pid("wd")
    # WATCHDOG=1 every 300 ms keeps it: after 8 of them (2.4 s, four watchdog periods) it is the same worker.
    wait_for(lambda: len(beats.read_text().splitlines()) >= 8 if beats.exists() else False, what="8 WATCHDOG=1")
    assert d.service("wd")["pid"] == old
    stuck.write_text("")
    wait_for(lambda: not alive(old), what="the silent notify service to be killed")
    svc = d.service("wd")
    assert svc["last_exit"]["cause"] == "hung" and svc["last_exit"]["signal"] == signal.SIGKILL
    assert "did not send WATCHDOG=1" in d.log()
    stuck.unlink()
    d.wait_running_pid("wd", not_pid=old)


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="the distribution does not ship systemd-notify")
def test_systemd_notify_from_a_shell_script_works_unchanged(daemon_factory) -> None:
    script = "systemd-notify --status='from the shell'; sleep 0.3; systemd-notify --ready; exec sleep 1000"
    d: Daemon = daemon_factory({"sh": {"command": ["sh", "-c", script], "type": "notify"}})
    svc = d.wait_state("sh", "RUNNING")
    assert svc["status_text"] == "from the shell"
