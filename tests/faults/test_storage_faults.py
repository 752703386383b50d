"""reliability.md §3, storage: F-21 (SQLite locked by another process), F-23 (corrupt database at start)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.conftest import Daemon, wait_for
from tests.faults.support import FOREVER, state_dir

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def succeeded_after(d: Daemon, name: str, after: datetime) -> list[dict[str, object]]:
    runs = d.client.call("runs", name=name, state="succeeded", limit=100)["runs"]
    return [r for r in runs if datetime.fromisoformat(str(r["created_at"])) > after]


def test_f21_sqlite_locked_by_another_process_supervision_and_scheduling_go_on(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "tick": {"command": ["true"], "every": "300ms"},
            "py": {"target": FOREVER, "heartbeat_interval": "500ms", "heartbeat_timeout": "3s"},
        }
    )
    py = d.wait_running_pid("py")
    wait_for(lambda: d.client.call("runs", name="tick", state="succeeded")["runs"], what="a first recorded run")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(state_dir(d) / "history.db"), "7"], stdout=subprocess.PIPE, text=True
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        worst = 0.0
        while holder.poll() is None:  # for as long as the lock is held
            t0 = time.monotonic()
            d.client.request("ping", timeout_s=10)
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)  # pacing
        assert holder.returncode == 0
    released = datetime.now().astimezone()
    assert worst < 1.0, f"a ping took {worst:.1f} s while the history database was locked"
    assert d.service("py")["pid"] == py and d.state("py") == "RUNNING"  # supervision went on
    wait_for(
        lambda: succeeded_after(d, "tick", released), timeout_s=10, what="runs recorded after the lock is released"
    )


def test_f23_corrupt_database_at_start_is_moved_aside_and_services_start(daemon_factory, short_dir: Path) -> None:
    state = short_dir / "state"
    state.mkdir(mode=0o700)
    garbage = b"this is not an SQLite database; it is what is left after a bad disk\n" * 200
    (state / "history.db").write_bytes(garbage)
    d: Daemon = daemon_factory({"tick": {"command": ["true"], "every": "300ms"}, "py": {"target": FOREVER}})
    d.wait_running_pid("py")
    wait_for(
        lambda: d.client.call("runs", name="tick", state="succeeded")["runs"], what="runs recorded in a fresh database"
    )
    (moved,) = state.glob("history.db.corrupt-*")
    assert moved.read_bytes() == garbage
    errors = [line for line in d.log().splitlines() if "is corrupt" in line]
    assert errors and "ERROR" in errors[0]
    assert str(state / "history.db") in errors[0] and str(moved) in errors[0]
    assert os.path.getsize(state / "history.db") > 0
