"""Services added, removed, updated and reloaded while the supervisor runs; dependencies; standalone mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from supervise.protocol.errors import RemoteError
from tests.conftest import REPO, Daemon, alive, start_daemon, stop_daemon, wait_for, write_config

FOREVER = "tests.children.targets:forever"
SLEEP = {"command": ["sleep", "1000"], "start_timeout": "0s"}


def test_add_and_remove_at_runtime_and_the_addition_survives_a_restart(short_dir: Path) -> None:
    config = write_config(short_dir, {"base": SLEEP})
    d = start_daemon(config)
    try:
        result = d.cli("add", "extra", "--target", FOREVER, "--set", f'cwd="{REPO}"', "--set", "stop_timeout=2")
        assert result.returncode == 0, result.stderr
        assert "extra: added" in result.stdout
        pid = d.wait_running_pid("extra")
        assert d.service("extra")["origin"] == "runtime"
        bad = d.cli("add", "broken", "--command", "nope-not-a-binary")
        assert bad.returncode == 1 and 'executable "nope-not-a-binary" not found' in bad.stderr
        duplicate = d.cli("add", "base", "--command", "sleep 5")
        assert duplicate.returncode == 1 and "exists" in duplicate.stderr
        with pytest.raises(RemoteError, match=r'services\.solo\.placement: "one" needs a \[cluster\] table'):
            d.client.call("add", name="solo", spec={"command": ["sleep", "5"], "placement": "one"})
    finally:
        stop_daemon(d)
    assert not alive(pid)
    d = start_daemon(config)
    try:
        d.wait_running_pid("extra")
        assert d.service("extra")["origin"] == "runtime"
        pid = d.service("extra")["pid"]
        assert d.cli("remove", "extra").returncode == 0
        assert not alive(pid)
        with pytest.raises(RemoteError, match='no service named "extra"'):
            d.client.call("status", name="extra")
    finally:
        stop_daemon(d)
    d = start_daemon(config)
    try:
        assert [s["name"] for s in d.client.call("status")["services"]] == ["base"]
    finally:
        stop_daemon(d)


def test_update_restarts_only_when_the_process_would_differ(daemon_factory) -> None:
    d: Daemon = daemon_factory({})
    d.client.call("add", name="svc", spec={"command": ["sleep", "1000"], "start_timeout": "0s"})
    pid = d.wait_running_pid("svc")
    same = d.client.call(
        "update", name="svc", spec={"command": ["sleep", "1000"], "start_timeout": "0s", "max_restarts": 9}
    )
    assert same["changed"] == ["max_restarts"] and d.service("svc")["pid"] == pid
    moved = d.client.call("update", name="svc", spec={"command": ["sleep", "999"], "start_timeout": "0s"})
    assert "command" in moved["changed"]
    d.wait_running_pid("svc", not_pid=pid)


def test_reload_applies_only_the_difference_and_rejects_a_broken_config(daemon_factory) -> None:
    d: Daemon = daemon_factory({"keep": SLEEP, "change": SLEEP, "drop": SLEEP})
    pids = {n: d.wait_running_pid(n) for n in ("keep", "change", "drop")}
    write_config(
        d.config.parent,
        {"keep": SLEEP, "change": {**SLEEP, "command": ["sleep", "999"]}, "new": SLEEP},
    )
    dry = d.cli("reload", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "new: would start (added)" in dry.stdout and "drop: would stop (removed)" in dry.stdout
    assert "change: would apply changed command" in dry.stdout and "keep: unchanged" in dry.stdout
    assert d.service("drop")["pid"] == pids["drop"]  # a dry run changes nothing
    assert d.cli("reload").returncode == 0
    assert d.service("keep")["pid"] == pids["keep"]
    d.wait_running_pid("change", not_pid=pids["change"])
    d.wait_running_pid("new")
    assert not alive(pids["drop"])
    # A broken file: the same errors as `check`, and nothing changes.
    d.config.write_text(d.config.read_text() + "\n[services.bad]\ncomand = 1\n")
    broken = d.cli("reload")
    assert broken.returncode == 1 and "services.bad.comand: unknown key" in broken.stderr
    assert d.service("keep")["pid"] == pids["keep"]
    with pytest.raises(RemoteError):
        d.client.call("status", name="bad")


def test_sighup_reloads_the_config(daemon_factory) -> None:
    d: Daemon = daemon_factory({"one": SLEEP})
    d.wait_running_pid("one")
    write_config(d.config.parent, {"one": SLEEP, "two": SLEEP})
    d.proc.send_signal(signal.SIGHUP)
    d.wait_running_pid("two")


def test_requires_starts_after_and_stops_before_what_it_requires(short_dir: Path) -> None:
    config = write_config(
        short_dir,
        {
            "web": {"target": FOREVER, "requires": ["db"]},
            "db": {"target": FOREVER},
        },
    )
    d = start_daemon(config)
    try:
        d.wait_running_pid("web")
    finally:
        stop_daemon(d)
    log = d.log()
    assert log.index("db: STARTING -> RUNNING") < log.index("web: STOPPED -> STARTING")
    assert log.index("web: STOPPING -> STOPPED") < log.index("db: RUNNING -> STOPPING")


def test_run_service_runs_exactly_one_service_of_a_config(short_dir: Path) -> None:
    config = write_config(short_dir, {"a": SLEEP, "b": {"target": FOREVER}})
    listed = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "list", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (
        listed.stdout.split("\n")[0].startswith("a  sleep 1000")
        and "b  tests.children.targets:forever" in listed.stdout
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervise.supervisor", "run-service", "b", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from supervise.protocol import Client

        with Client(f"ipc://{short_dir}/state/b/control.sock", timeout_s=2) as client:
            services = wait_for(lambda: client.call("status")["services"], what="the standalone supervisor")
            assert [s["name"] for s in services] == ["b"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_config_values_come_from_the_environment(short_dir: Path) -> None:
    config = write_config(
        short_dir,
        {
            "greeter": {
                "command": ["sh", "-c", 'echo "greeting=$GREETING"; exec sleep 1000'],
                "env": {"GREETING": "${SV_TEST_GREETING:-hello}"},
                "start_timeout": "0s",
            }
        },
    )
    os.environ["SV_TEST_GREETING"] = "bonjour"
    try:
        d = start_daemon(config)
    finally:
        del os.environ["SV_TEST_GREETING"]
    try:
        log = short_dir / "state" / "logs" / "greeter.log"
        wait_for(lambda: "greeting=bonjour" in log.read_text(), what="the interpolated value")
    finally:
        stop_daemon(d)


def test_processes_runs_identical_instances_and_scale_changes_their_number(daemon_factory) -> None:
    d: Daemon = daemon_factory({"pool": {**SLEEP, "processes": 3}})
    instances = wait_for(
        lambda: [s for s in d.client.call("status", name="pool")["services"] if s["state"] == "RUNNING"] or None,
        what="pool instances",
    )
    wait_for(lambda: len([s for s in d.client.call("status", name="pool")["services"] if s["pid"]]) == 3, what="3 pids")
    names = [s["name"] for s in d.client.call("status", name="pool")["services"]]
    assert names == ["pool", "pool:1", "pool:2"]
    pids = {s["name"]: s["pid"] for s in d.client.call("status", name="pool")["services"]}
    assert len(set(pids.values())) == 3 and instances
    result = d.cli("scale", "pool", "5")
    assert result.returncode == 0, result.stderr
    wait_for(
        lambda: sum(1 for s in d.client.call("status", name="pool")["services"] if s["state"] == "RUNNING") == 5,
        what="5 running",
    )
    assert d.cli("scale", "pool", "2").returncode == 0
    after = {s["name"]: s["pid"] for s in d.client.call("status", name="pool")["services"]}
    assert after == {"pool": pids["pool"], "pool:1": pids["pool:1"]}  # the highest instances went
    assert not alive(pids["pool:2"])
    # An update of another key keeps the scale.
    assert d.client.call("update", name="pool", spec={"max_restarts": 7})["changed"] == ["max_restarts"]
    assert [s["name"] for s in d.client.call("status", name="pool")["services"]] == ["pool", "pool:1"]
    # One instance can be acted on alone; the service name acts on all.
    assert "pool:1: STOPPED" in d.cli("stop", "pool:1").stdout
    assert d.service("pool")["pid"] == pids["pool"]
    assert set(d.cli("stop", "pool").stdout.split()) >= {"pool:", "STOPPED"}


def test_update_set_changes_one_key_of_a_scheduled_python_service(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"t": {"target": "tests.children.jobs:noop", "cron": "0 2 * * *", "timezone": "UTC", "max_restarts": 9}}
    )
    d.wait_running_pid("t")
    result = d.cli("update", "t", "--set", 'cron="30 2 * * *"')
    assert result.returncode == 0, result.stderr
    assert "changed: schedule" in result.stdout
    fires = d.client.call("next", name="t", count=2)["next"]
    assert all(when.endswith("T02:30:00+00:00") for when in fires), fires
    # The keys not given are kept: still a Python target, still max_restarts 9.
    status = d.service("t")
    assert status["kind"] == "python" and status["state"] == "RUNNING"
    assert d.client.call("update", name="t", spec={"max_restarts": 9})["changed"] == []


def test_update_unset_and_replace(daemon_factory) -> None:
    d: Daemon = daemon_factory({"svc": {**SLEEP, "max_restarts": 9}})
    pid = d.wait_running_pid("svc")
    unset = d.cli("update", "svc", "--unset", "max_restarts", "--json")
    assert unset.returncode == 0, unset.stderr
    assert json.loads(unset.stdout)["changed"] == ["max_restarts"] and d.service("svc")["pid"] == pid
    missing = d.cli("update", "svc", "--unset", "max_memory")
    assert missing.returncode == 1 and "cannot unset services.svc.max_memory: it is not set" in missing.stderr
    # Validated as a whole: a new key that contradicts a kept one names the key.
    bad = d.cli("update", "svc", "--set", 'heartbeat_interval="20s"', "--set", 'heartbeat_timeout="5s"')
    assert bad.returncode == 1 and "services.svc.heartbeat_timeout: must be > heartbeat_interval" in bad.stderr
    # --replace: the table given is the whole service (start_timeout back to its default).
    whole = d.cli("update", "svc", "--replace", "--set", 'command=["sleep", "999"]')
    assert whole.returncode == 0, whole.stderr
    assert "command" in whole.stdout and "start_timeout" in whole.stdout
    d.wait_running_pid("svc", not_pid=pid)
    usage = d.cli("update", "svc")
    assert usage.returncode == 2 and "--set KEY=VALUE and/or --unset KEY" in usage.stderr


def test_an_update_of_a_runtime_service_is_kept_patched_across_a_restart(short_dir: Path) -> None:
    config = write_config(short_dir, {})
    d = start_daemon(config)
    try:
        d.client.call("add", name="extra", spec={**SLEEP, "stop_timeout": "3s"})
        d.wait_running_pid("extra")
        d.client.call("update", name="extra", spec={"command": ["sleep", "999"]}, unset=["stop_timeout"])
    finally:
        stop_daemon(d)
    d = start_daemon(config)
    try:
        pid = d.wait_running_pid("extra")
        assert psutil.Process(pid).cmdline() == ["sleep", "999"]
        assert d.client.call("update", name="extra", spec={"start_timeout": "0s"})["changed"] == []  # kept
    finally:
        stop_daemon(d)
