"""`supervise status` is answered before click loads, and says exactly what the click command says."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.supervisor.cli.fast import parse_status
from tests.conftest import Daemon

CLICK = "import sys; from supervise.supervisor.cli.main import main; sys.exit(main())"
FAST = "import sys; from supervise.supervisor.cli.fast import main; sys.exit(main())"


def _run(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


def _no_click(*args: str) -> subprocess.CompletedProcess[str]:
    """The fast entry point with a `click` that cannot be imported: proof that it was not needed."""
    code = "import sys; sys.modules['click'] = None; " + FAST.removeprefix("import sys; ")
    return _run(code, *args)


def test_status_prints_what_the_click_command_prints(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory({"web": {"command": ["sleep", "1000"]}, "db": {"command": ["sleep", "1000"]}})
    d.wait_state("web", "RUNNING")
    d.wait_state("db", "RUNNING")
    config = str(d.config)
    for args in (
        ["status", "-c", config],
        ["status", "web", "--config", config],
        [f"--config={config}", "status"][::-1],
        ["status", "--json", "--endpoint", d.client.endpoint],
        ["status", "db", "--json", "--detail", "-c", config, "--timeout", "5"],
    ):
        fast, slow = _no_click(*args), _run(CLICK, *args)
        assert fast.returncode == slow.returncode == 0, (args, fast.stderr, slow.stderr)
        if "--json" in args:  # uptimes and ages move between the two calls
            assert fast.stdout.count('"name"') == slow.stdout.count('"name"')
            assert fast.stdout.splitlines()[0] == slow.stdout.splitlines()[0]
        else:
            assert [line.split()[:3] for line in fast.stdout.splitlines()] == [
                line.split()[:3] for line in slow.stdout.splitlines()
            ]


def test_errors_have_the_click_commands_words_and_exit_codes(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    d = daemon_factory({"web": {"command": ["sleep", "1000"]}})
    d.wait_state("web", "RUNNING")
    missing = ["status", "nope", "-c", str(d.config)]
    fast, slow = _no_click(*missing), _run(CLICK, *missing)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr) == (1, slow.stderr)
    assert 'no service named "nope"' in fast.stderr
    nobody = ["status", "--endpoint", f"ipc://{short_dir}/nobody.sock", "--timeout", "0.2"]
    fast, slow = _no_click(*nobody), _run(CLICK, *nobody)
    assert (fast.returncode, fast.stderr) == (slow.returncode, slow.stderr)
    assert fast.returncode == 3 and "no reply from supervisor" in fast.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["start", "x.toml"],
        ["status", "--help"],
        ["status", "a", "b"],
        ["status", "-cfile"],
        ["status", "--timeout", "soon"],
        ["status", "--timeout", "0"],
        ["status", "-c"],
        ["status", "-c", "a.toml", "-c", "b.toml"],
        ["status", "--curve-key", "k"],
        ["status", "--unknown"],
        [],
    ],
)
def test_anything_unusual_is_left_to_click(args: list[str]) -> None:
    assert parse_status(args) is None


def test_the_status_options_are_read() -> None:
    assert parse_status(["status", "web", "--json", "--timeout=2.5", "-c", "x.toml"]) == {
        "config": "x.toml",
        "endpoint": None,
        "timeout": 2.5,
        "as_json": True,
        "detail": False,
        "name": "web",
    }
