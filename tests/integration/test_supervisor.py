"""The daemon with real worker processes: spawn, restart, hang, stop, orphans, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import Daemon, alive, start_daemon, stop_daemon, wait_for, write_config

FOREVER = "tests.children.targets:forever"
FAST = {"heartbeat_interval": "200ms", "heartbeat_timeout": "1s", "stop_timeout": "1s", "backoff": "50ms"}


def test_each_service_runs_in_its_own_process_group(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "alpha": {"target": FOREVER},
            "beta": {"target": "tests.children.targets:spin"},
            "gamma": {"command": ["sleep", "1000"], "start_timeout": "100ms"},
        }
    )
    pids = {name: d.wait_running_pid(name) for name in ("alpha", "beta", "gamma")}
    assert len(set(pids.values())) == 3
    children = {p.pid for p in psutil.Process(d.pid).children()}
    for pid in pids.values():
        assert pid in children
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and group
        assert os.getpgid(pid) != os.getpgid(d.pid)


def test_sigkilled_critical_worker_is_replaced(daemon_factory) -> None:
    d: Daemon = daemon_factory({"checker": {"target": FOREVER, "critical": True, **FAST}})
    old = d.wait_running_pid("checker")
    os.kill(old, signal.SIGKILL)
    new = d.wait_running_pid("checker", not_pid=old)
    svc = d.service("checker")
    assert new != old and not alive(old)
    assert svc["restarts"] == 1
    assert svc["last_exit"]["signal"] == signal.SIGKILL and svc["last_exit"]["cause"] == "signal"


def test_crash_loop_ends_in_fatal_while_others_keep_running(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "flaky": {"target": "tests.children.targets:crash", "max_restarts": 2, "backoff": "50ms"},
            "steady": {"target": FOREVER},
        }
    )
    steady = d.wait_running_pid("steady")
    svc = d.wait_state("flaky", "FATAL", timeout_s=30)
    assert svc["restarts"] == 2
    assert "ValueError: boom: the database is on fire" in svc["last_error"]
    assert "max_restarts = 2" in svc["last_error"]
    assert d.service("steady")["pid"] == steady and d.state("steady") == "RUNNING"
    status = d.client.call("status")
    assert status["supervisor"]["healthy"] is True  # flaky is not critical
    assert "ValueError: boom" in (d.config.parent / "state" / "logs" / "flaky.log").read_text()


def test_hung_worker_is_killed_and_replaced(daemon_factory) -> None:
    d: Daemon = daemon_factory({"checker": {"target": FOREVER, "critical": True, **FAST}})
    old = d.wait_running_pid("checker")
    os.kill(old, signal.SIGSTOP)  # a stopped process sends no heartbeat and ignores SIGTERM
    new = d.wait_running_pid("checker", not_pid=old, timeout_s=20)
    assert new != old
    wait_for(lambda: not alive(old), what="the hung worker to be gone")
    svc = d.service("checker")
    assert svc["last_exit"]["cause"] == "hung"
    assert "no heartbeat for" in d.log()


def test_a_hung_worker_is_replaced_within_heartbeat_timeout_not_plus_stop_timeout(daemon_factory) -> None:
    # The defaults a new user has: stop_timeout 10 s, backoff 1 s. Hung means SIGKILL, not a polite stop.
    d: Daemon = daemon_factory(
        {"checker": {"target": FOREVER, "heartbeat_interval": "200ms", "heartbeat_timeout": "1500ms"}}
    )
    old = d.wait_running_pid("checker")
    stopped_at = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    d.wait_running_pid("checker", not_pid=old, timeout_s=15)
    took_s = time.monotonic() - stopped_at
    # heartbeat_timeout 1.5 s + the first backoff step (at most 1 s) + a spawn and hello on a
    # busy machine; not 1.5 + stop_timeout 10 s.
    assert took_s < 1.5 + 1.0 + 4.0, f"replaced after {took_s:.1f} s"
    assert not alive(old)
    svc = d.service("checker")
    assert svc["last_exit"]["cause"] == "hung" and svc["last_exit"]["signal"] == signal.SIGKILL


def test_worker_ignoring_sigterm_is_killed_after_stop_timeout_with_its_grandchildren(daemon_factory, short_dir) -> None:
    pid_file = short_dir / "grandchild.pid"
    d: Daemon = daemon_factory(
        {
            "stubborn": {
                "target": "tests.children.targets:ignore_term",
                "stop_timeout": "1s",
                "env": {"GRANDCHILD_PID_FILE": str(pid_file)},
            }
        }
    )
    worker = d.wait_running_pid("stubborn")
    grandchild = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="grandchild pid"))
    assert alive(grandchild)
    result = d.cli("stop", "stubborn")
    assert result.returncode == 0, result.stderr
    assert "stubborn: STOPPED" in result.stdout
    assert not alive(worker) and not alive(grandchild)
    assert "did not exit within stop_timeout (1s); sending SIGKILL" in d.log()
    assert d.service("stubborn")["last_exit"]["signal"] == signal.SIGKILL


def test_sigkill_of_the_supervisor_leaves_no_orphans(short_dir: Path) -> None:
    config = write_config(
        short_dir,
        {
            "py": {"target": FOREVER},
            "cmd": {"command": ["sh", "-c", "sleep 1000 & sleep 1000"], "start_timeout": "100ms"},
        },
    )
    d = start_daemon(config)
    try:
        d.wait_running_pid("py")
        d.wait_running_pid("cmd")
        workers = [
            p
            for p in psutil.Process(d.pid).children(recursive=True)
            if "supervise.supervisor.daemon.guard" not in " ".join(p.cmdline())
        ]
        assert len(workers) >= 4  # py, sh and its two sleeps
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        wait_for(lambda: not any(alive(p.pid) for p in workers), timeout_s=5, what="every worker to exit")
    finally:
        stop_daemon(d)
    # A new supervisor on the same state dir starts cleanly: the lock died with the old one.
    d2 = start_daemon(config)
    try:
        d2.wait_running_pid("py")
    finally:
        stop_daemon(d2)


def test_sigterm_stops_every_worker_gracefully_and_exits_0(short_dir: Path) -> None:
    config = write_config(
        short_dir, {"py": {"target": FOREVER}, "cmd": {"command": ["sleep", "1000"], "start_timeout": "100ms"}}
    )
    d = start_daemon(config)
    try:
        pids = [d.wait_running_pid("py"), d.wait_running_pid("cmd")]
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 0
        assert not any(alive(p) for p in pids)
        assert "forever stopping" in (short_dir / "state" / "logs" / "py.log").read_text()  # it was cooperative
        assert not (short_dir / "state" / "control.sock").exists()
    finally:
        stop_daemon(d)


def test_a_second_supervisor_on_the_same_state_dir_is_refused(daemon_factory) -> None:
    d: Daemon = daemon_factory({"py": {"target": FOREVER}})
    pid = d.wait_running_pid("py")
    second = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(d.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert f"another supervise (pid {d.pid}) holds" in second.stderr
    assert d.client.call("ping")["pid"] == d.pid  # the first still owns its endpoint
    assert d.service("py")["pid"] == pid


def test_stop_start_restart_pause_resume_through_the_cli(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"py": {"target": FOREVER}, "cmd": {"command": ["sleep", "1000"], "start_timeout": "100ms"}}
    )
    cmd_pid = d.wait_running_pid("cmd")
    assert d.cli("pause", "cmd").stdout.strip() == "cmd: PAUSED"
    wait_for(lambda: psutil.Process(cmd_pid).status() == psutil.STATUS_STOPPED, what="cmd SIGSTOPped")
    assert d.cli("resume", "cmd").stdout.strip() == "cmd: RUNNING"
    wait_for(lambda: psutil.Process(cmd_pid).status() != psutil.STATUS_STOPPED, what="cmd continued")
    assert d.cli("stop", "--all").returncode == 0
    assert {d.state("py"), d.state("cmd")} == {"STOPPED"}
    assert "py: RUNNING" in d.cli("start", "py").stdout
    py_pid = d.service("py")["pid"]
    assert "py: RUNNING" in d.cli("restart", "py").stdout
    assert d.service("py")["pid"] != py_pid
    table = d.cli("status").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "PID"]
    assert "STOPPED" in table and "RUNNING" in table
    missing = d.cli("stop", "nope")
    assert missing.returncode == 1 and 'no service named "nope"' in missing.stderr


def test_status_json_has_the_documented_fields(daemon_factory) -> None:
    import json

    d: Daemon = daemon_factory({"py": {"target": FOREVER}})
    d.wait_running_pid("py")
    out = json.loads(d.cli("status", "--json").stdout)
    (svc,) = out["services"]
    live = {
        "name", "state", "pid", "uptime", "restarts", "heartbeat_age", "last_exit", "last_error", "status_text",
        "cpu_percent", "rss_bytes", "schedule",
    }  # fmt: skip
    assert set(svc) == live
    assert svc["name"] == "py" and svc["state"] == "RUNNING" and svc["heartbeat_age"] is not None
    (detailed,) = json.loads(d.cli("status", "--json", "--detail").stdout)["services"]
    facts = {
        "service", "instance", "kind", "type", "main_pid", "notify_phase", "critical", "origin", "incarnation",
        "backoff_remaining", "max_memory_bytes",
    }  # fmt: skip
    assert set(detailed) == live | facts | {"log_dropped_bytes", "log_write_errors", "metrics"}
    assert (detailed["kind"], detailed["origin"], detailed["incarnation"]) == ("python", "config", 1)


def test_worker_output_is_captured_in_its_log_file(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "talker": {
                "command": ["sh", "-c", "echo hello-out; echo hello-err >&2; exec sleep 1000"],
                "start_timeout": "0s",
            }
        }
    )
    d.wait_running_pid("talker")
    log = d.config.parent / "state" / "logs" / "talker.log"
    wait_for(lambda: "hello-err" in log.read_text() and "hello-out" in log.read_text(), what="output in the log")


def test_a_flooding_worker_never_blocks_and_the_log_rotates(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"flood": {"command": ["sh", "-c", "yes flood | head -c 3000000; exec sleep 1000"], "start_timeout": "0s"}},
        log_max_bytes=1_000_000,
        log_backups=2,
    )
    d.wait_running_pid("flood")
    logs = d.config.parent / "state" / "logs"

    def written() -> int:
        return sum(p.stat().st_size for p in logs.glob("flood.log*"))

    # 3 MB through a 64 KiB pipe: only possible if the supervisor keeps draining it.
    wait_for(lambda: written() >= 2_000_000, what="the flood to be drained")
    assert (logs / "flood.log.1").exists()
    assert all(p.stat().st_size <= 1_000_000 for p in logs.glob("flood.log*"))
    assert d.client.call("ping")


def test_missing_executable_is_reported_not_running(daemon_factory, short_dir) -> None:
    script = short_dir / "gone.sh"
    script.write_text("#!/bin/sh\nsleep 1000\n")
    script.chmod(0o755)
    d: Daemon = daemon_factory({"gone": {"command": [str(script)], "max_restarts": 1, "backoff": "10ms"}})
    d.wait_running_pid("gone")
    script.unlink()
    d.client.call("restart", name="gone")
    svc = d.wait_state("gone", "FATAL")
    assert "ENOENT" in svc["last_error"] and str(script) in svc["last_error"]
    assert svc["pid"] is None


def test_a_worker_whose_code_stops_calling_ctx_heartbeat_is_replaced(daemon_factory, short_dir) -> None:
    stuck = short_dir / "stuck"
    d: Daemon = daemon_factory(
        {
            "watched": {
                "target": "tests.children.targets:watched",
                "watchdog": "1s",
                **FAST,
                "env": {"STUCK_FILE": str(stuck)},
            }
        }
    )
    old = d.wait_running_pid("watched")
    assert d.service("watched")["restarts"] == 0
    stuck.touch()  # the runtime keeps heartbeating; only the service's own calls stop
    new = d.wait_running_pid("watched", not_pid=old, timeout_s=20)
    assert new != old and d.service("watched")["last_exit"]["cause"] == "hung"
    assert "did not call ctx.heartbeat()" in d.log()


def test_a_missing_executable_fails_only_its_own_service(daemon_factory, short_dir) -> None:
    ghost = short_dir / "bin" / "ghost"  # not there yet: deployed after the supervisor starts
    services = {
        "ghost": {"command": [str(ghost)], "max_restarts": 2, "backoff": "50ms", "start_timeout": "0s"},
        "web": {"target": FOREVER},
        "cache": {"command": ["sleep", "1000"], "start_timeout": "0s"},
    }
    config = write_config(short_dir, services)
    check = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "check", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert f'warning: {config}:6:1: services.ghost.command: executable "{ghost}" does not exist' in check.stderr
    strict = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "check", "--strict", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert strict.returncode == 1

    d: Daemon = daemon_factory(services)
    d.wait_running_pid("web")
    d.wait_running_pid("cache")
    svc = d.wait_state("ghost", "FATAL")
    assert svc["restarts"] == 2 and svc["pid"] is None
    assert svc["last_exit"]["cause"] == "spawn_failed"
    assert f"No such file or directory: {ghost}" in svc["last_error"]
    assert "ENOENT: No such file or directory" in d.cli("status").stdout  # the table shows the OS's words
    assert "services.ghost.command" in d.log()  # the daemon's log says which key, at start

    # A reload with another such service applies; everything else runs on.
    services["ghost2"] = {"command": [str(ghost) + "2"], "max_restarts": 0, "start_timeout": "0s"}
    write_config(short_dir, services)
    reloaded = d.cli("reload", "--json")
    assert reloaded.returncode == 0, reloaded.stderr
    plan = json.loads(reloaded.stdout)
    assert plan["added"] == ["ghost2"] and any("services.ghost2.command" in w for w in plan["warnings"])
    assert d.wait_state("ghost2", "FATAL")["last_exit"]["cause"] == "spawn_failed"

    # Once deployed, starting it by hand is all it takes.
    ghost.parent.mkdir()
    ghost.write_text("#!/bin/sh\nexec sleep 1000\n")
    ghost.chmod(0o755)
    assert d.cli("start", "ghost").returncode == 0
    d.wait_running_pid("ghost")
    assert d.state("web") == "RUNNING" and d.state("cache") == "RUNNING"


def test_exit_code_rules_decide_restarts_with_real_exits(daemon_factory) -> None:
    quick = {"start_timeout": "0s", "backoff": "0s", "stable_after": "0s"}
    d: Daemon = daemon_factory(
        {
            "clean3": {"command": ["sh", "-c", "exit 3"], "success_exit_codes": [3], **quick},  # on-failure
            "prevented": {
                "command": ["sh", "-c", "exit 75"],
                "restart": "always",
                "restart_prevent_exit_codes": [75],
                **quick,
            },
            "aborts": {"command": ["sleep", "1000"], "restart": "on-abort", **quick},
            "exits1": {"command": ["sh", "-c", "sleep 0.2; exit 1"], "restart": "on-abnormal", **quick},
        }
    )
    for name, code in (("clean3", 3), ("prevented", 75), ("exits1", 1)):
        svc = d.wait_state(name, "EXITED")
        assert svc["restarts"] == 0 and svc["last_exit"]["code"] == code, svc
    assert d.service("clean3")["last_error"] is None  # a success exit code is not an error
    old = d.wait_running_pid("aborts")
    os.kill(old, signal.SIGSEGV)
    d.wait_running_pid("aborts", not_pid=old)
    assert d.service("aborts")["restarts"] == 1
