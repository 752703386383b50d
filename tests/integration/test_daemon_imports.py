"""`supervise start CONFIG` runs the daemon without click, and the daemon holds only what it uses.

A daemon keeps every module it imports for as long as it runs: the click command
line, the email package (notifications by email), difflib (did-you-mean hints) and
hashlib/hmac (which initialise OpenSSL's digests: signed webhooks, schedule jitter)
stay out of one that does not need them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from supervise.protocol.client import Client
from supervise.supervisor.cli.fast import parse_start
from tests.conftest import wait_for, write_config

CLICK = "import sys; from supervise.supervisor.cli.main import main; sys.exit(main())"
FAST = "import sys; from supervise.supervisor.cli.fast import main; sys.exit(main())"
NOT_IN_A_DAEMON = ("click", "email", "smtplib", "difflib", "hashlib", "_hashlib", "hmac", "secrets")


def _imported(importtime_stderr: str) -> set[str]:
    """The modules named in `-X importtime` lines."""
    return {
        line.rpartition("|")[2].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_a_plain_daemon_imports_no_click_email_difflib_or_hashlib(short_dir: Path) -> None:
    config = write_config(short_dir, {"web": {"command": ["sleep", "1000"]}})
    err_path = short_dir / "daemon.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "supervise.supervisor", "start", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    client = Client(f"ipc://{short_dir}/state/control.sock", timeout_s=5.0)
    try:

        def running() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {proc.returncode}:\n{err_path.read_text()}")
            result: Any = client.call("status", retries=0)
            return bool(result["services"][0]["state"] == "RUNNING")

        wait_for(running, timeout_s=20, what="web RUNNING")
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    imported = _imported(err_path.read_text(errors="replace"))
    assert "supervise.supervisor.daemon.supervisor" in imported  # the listing is the daemon's
    assert not {m for m in imported if m.partition(".")[0] in NOT_IN_A_DAEMON}


def _run(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def test_a_daemon_that_cannot_start_says_what_the_click_command_says(short_dir: Path) -> None:
    bad = short_dir / "bad.toml"
    bad.write_text('[services.web]\ncommand = ["sleep", "1000"]\nrestartt = "always"\n')
    no_click = "import sys; sys.modules['click'] = None; " + FAST.removeprefix("import sys; ")
    for args in (["start", str(bad)], ["start", str(short_dir / "missing.toml"), "--log-level=debug"]):
        fast, slow = _run(no_click, *args, cwd=short_dir), _run(CLICK, *args, cwd=short_dir)
        assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr), args
        assert fast.returncode == 78 and fast.stderr.startswith("Error: config error:")


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["start", "web"],  # a service of a running daemon
        ["start", "x.toml", "-c", "y.toml"],
        ["start", "--all"],
        ["start", "x.toml", "--json"],
        ["start", "--help"],
        ["start", "x.toml", "y.toml"],
        ["start", "x.toml", "--log-level", "loud"],
        ["start", "x.toml", "--log-level"],
        ["start", "x.toml", "--log-level=", "debug"],
        ["start", "x.toml", "--log-level", "info", "--log-level", "debug"],
        ["start", "--", "x.toml"],
        [],
    ],
)
def test_anything_but_the_daemon_is_left_to_click(args: list[str]) -> None:
    assert parse_start(args) is None


def test_the_daemon_options_are_read() -> None:
    assert parse_start(["start"]) == {"path": "supervise.toml", "log_level": "info", "log_format": "text"}
    assert parse_start(["start", "--log-format=json", "a.toml", "--log-level", "debug"]) == {
        "path": "a.toml",
        "log_level": "debug",
        "log_format": "json",
    }
