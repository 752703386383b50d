"""Helpers shared by the fault-injection tests: events, zombies, fds, instance markers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import Daemon

FOREVER = "tests.children.targets:forever"
FAULTY = "tests.children.faulty"
FAST = {"heartbeat_interval": "200ms", "heartbeat_timeout": "1s", "stop_timeout": "1s", "backoff": "50ms"}
"""Timings that make hang detection and restarts take about a second."""


def events(d: Daemon, service: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """Every event the daemon still keeps (its replay ring), oldest first, optionally filtered."""
    found: list[dict[str, Any]] = []
    since = 0
    while True:
        args: dict[str, object] = {"since": since, "limit": 1000}
        if service is not None:
            args["service"] = service
        page = d.client.call("events", **args)
        found += page["events"]
        if not page["more"] or not page["events"]:
            break
        since = page["events"][-1]["seq"]
    return [e for e in found if kind is None or e["kind"] == kind]


def zombies(pid: int) -> list[psutil.Process]:
    """Children of `pid` that have exited but were not reaped."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            continue
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def instance_marker(worker_pid: int) -> str:
    """The SUPERVISE_INSTANCE value a supervisor put in its workers' environment."""
    return str(psutil.Process(worker_pid).environ()["SUPERVISE_INSTANCE"])


def processes_with_marker(marker: str) -> list[psutil.Process]:
    """Live (non-zombie) processes anywhere on the machine carrying this instance marker."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("SUPERVISE_INSTANCE") == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def state_dir(d: Daemon) -> Path:
    return d.config.parent / "state"
