"""Hooks: before_start, after_start, before_stop, after_stop, on_fatal, with real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervise.supervisor.config.loader import ConfigError, parse_config
from tests.conftest import REPO, Daemon, alive, wait_for

# "$NAME" is left alone by the config ("${NAME}" would be expanded at load): the hook's shell expands it.
RECORD = (
    'echo "$SUPERVISE_HOOK service=$SUPERVISE_SERVICE pid=$SUPERVISE_PID code=$SUPERVISE_EXIT_CODE '
    'sig=$SUPERVISE_EXIT_SIGNAL mode=$MODE" >> {file}; echo "said by $SUPERVISE_HOOK"'
)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_hooks_run_around_the_workers_life_with_its_env(daemon_factory: Callable[..., Daemon], short_dir: Path) -> None:
    record = short_dir / "hooks.txt"
    hook = ["sh", "-c", RECORD.format(file=record)]
    # before_stop also reports whether the worker is still alive while it runs: the stop waits for it.
    still_alive = f'; sleep 0.3; kill -0 "$SUPERVISE_PID" && echo alive >> {record}'
    before_stop = ["sh", "-c", RECORD.format(file=record) + still_alive]
    d = daemon_factory(
        {
            "web": {
                "command": ["sleep", "1000"],
                "env": {"MODE": "prod"},
                "start_timeout": "200ms",
                "before_start": hook,
                "after_start": hook,
                "before_stop": before_stop,
                "after_stop": hook,
            }
        }
    )
    pid = d.wait_running_pid("web")
    wait_for(lambda: len(lines(record)) >= 2, what="before_start and after_start")
    assert lines(record)[:2] == [
        "before_start service=web pid= code= sig= mode=prod",
        f"after_start service=web pid={pid} code= sig= mode=prod",
    ]
    assert d.cli("stop", "web").returncode == 0
    wait_for(lambda: len(lines(record)) >= 5, what="before_stop and after_stop")
    assert lines(record)[2:] == [
        f"before_stop service=web pid={pid} code= sig= mode=prod",
        "alive",  # the worker had not been signalled yet
        f"after_stop service=web pid={pid} code= sig=15 mode=prod",
    ]
    assert not alive(pid)
    service_log = (short_dir / "state" / "logs" / "web.log").read_text()
    assert "[hook before_start] said by before_start" in service_log
    assert "[hook after_stop] said by after_stop" in service_log
    kinds = [e["hook"] for e in d.client.call("events", since=0, service="web")["events"] if e["kind"] == "hook"]
    assert kinds == ["before_start", "after_start", "before_stop", "after_stop"]


def test_a_failing_before_start_is_a_failed_start_and_on_fatal_runs(
    daemon_factory: Callable[..., Daemon], short_dir: Path
) -> None:
    started, fatal = short_dir / "started", short_dir / "fatal"
    d = daemon_factory(
        {
            "db": {
                "command": ["sh", "-c", f"touch {started}; exec sleep 1000"],
                "before_start": ["sh", "-c", "echo migrations pending; exit 3"],
                "on_fatal": ["sh", "-c", f'echo "$SUPERVISE_SERVICE gave up" > {fatal}'],
                "max_restarts": 1,
                "backoff": "50ms",
            }
        }
    )
    svc = d.wait_state("db", "FATAL")
    assert svc["last_exit"]["cause"] == "spawn_failed"
    assert svc["last_error"].startswith("before_start hook exited 3\n")
    assert svc["restarts"] == 1  # the restart policy ran, as for any failed start
    assert not started.exists()  # the command never ran
    assert wait_for(lambda: fatal.exists() and fatal.read_text(), what="on_fatal") == "db gave up\n"
    assert "[hook before_start] migrations pending" in (short_dir / "state" / "logs" / "db.log").read_text()


def test_a_slow_hook_does_not_block_the_supervisor_and_times_out(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory(
        {
            "slow": {
                "command": ["sleep", "1000"],
                "before_start": ["sleep", "30"],
                "hook_timeout": "1500ms",
                "max_restarts": 0,
            }
        }
    )
    begun = time.monotonic()
    latencies = []
    while d.state("slow") == "STARTING":
        t0 = time.monotonic()
        d.client.call("ping")
        latencies.append(time.monotonic() - t0)
        assert time.monotonic() - begun < 15, "still STARTING after 15 s"
    svc = d.wait_state("slow", "FATAL")
    assert svc["last_error"].startswith("before_start hook timed out (hook_timeout) and was killed")
    assert len(latencies) > 10 and max(latencies) < 0.5  # answered all along
    assert time.monotonic() - begun >= 1.0


def test_a_python_callable_as_hook(daemon_factory: Callable[..., Daemon], short_dir: Path) -> None:
    record = short_dir / "calls.txt"
    d = daemon_factory(
        {
            "web": {
                "command": ["sleep", "1000"],
                "cwd": str(REPO),
                "env": {"HOOK_FILE": str(record)},
                "start_timeout": "100ms",
                "after_start": {"target": "tests.children.hook_funcs:record"},
            },
            "db": {
                "command": ["sleep", "1000"],
                "cwd": str(REPO),
                "before_start": {"target": "tests.children.hook_funcs:not_ready"},
                "max_restarts": 0,
            },
        }
    )
    pid = d.wait_running_pid("web")
    assert wait_for(lambda: lines(record), what="the callable's record") == [f"after_start web pid={pid}"]
    svc = d.wait_state("db", "FATAL")
    assert svc["last_error"].startswith("before_start hook exited 1\n")
    assert "[hook before_start] dependency not reachable" in (short_dir / "state" / "logs" / "db.log").read_text()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"target": "hooks:check", "timeout": 3}, 'expected a command, or a table { target = "pkg.module:function" }'),
        ({"target": "hooks@job"}, 'expected target = "pkg.module:function", got "hooks@job"'),
        ([], "must be a non-empty list or string"),
    ],
)
def test_bad_hooks_are_refused_naming_the_key(tmp_path: Path, value: object, expected: str) -> None:
    data = {"supervisor": {"state_dir": str(tmp_path)}, "services": {"s": {"command": ["true"], "before_start": value}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    assert "services.s.before_start" in str(caught.value) and expected in str(caught.value)
