"""Metrics, events, logs and HTTP with a real daemon and real workers."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from supervise.protocol.client import Client
from tests.conftest import Daemon, start_daemon, stop_daemon, wait_for, write_config

FOREVER = "tests.children.targets:forever"
FAST = {"heartbeat_interval": "200ms", "heartbeat_timeout": "2s", "stop_timeout": "1s", "backoff": "50ms"}
HTTP = {"http": "127.0.0.1:0"}


def http_get(d: Daemon, path: str) -> tuple[int, bytes]:
    address = d.client.call("ping")["http"]
    assert address, "the daemon reports no HTTP address"
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http_get(d, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def svc_label(name: str) -> tuple[tuple[str, str], ...]:
    return (("service", name),)


def health(d: Daemon) -> tuple[int, dict[str, Any]]:
    status, body = http_get(d, "/health")
    return status, json.loads(body)


def spawn_cli(d: Daemon, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervise.supervisor", *args, "-c", str(d.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def read_until(proc: subprocess.Popen[bytes], predicate: Any, *, timeout_s: float = 20.0, what: str) -> list[str]:
    """Lines a running CLI printed, until `predicate(lines)` holds; fails at the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()  # raw reads: a buffered readline would hide lines from select
    lines: list[str] = []
    partial = b""
    deadline = time.monotonic() + timeout_s
    while not predicate(lines):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}; got {lines[-20:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                raise AssertionError(f"the CLI exited ({proc.wait()}) before {what}; got {lines[-20:]!r}")
            *complete, partial = (partial + data).split(b"\n")
            lines += [line.decode(errors="replace") for line in complete]
    return lines


def end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# -- HTTP ------------------------------------------------------------------------


def test_prometheus_metrics_show_per_service_cpu_memory_and_restarts(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "spin": {"target": "tests.children.targets:spin"},
            "steady": {"target": FOREVER, **FAST},
            "counter": {"target": "tests.children.observed:counting", **FAST},
        },
        **HTTP,
    )
    old = d.wait_running_pid("steady")
    d.wait_running_pid("spin")
    os.kill(old, signal.SIGKILL)
    d.wait_running_pid("steady", not_pid=old)

    def figures() -> dict[Any, float] | None:
        m = scrape(d)
        ready = (
            m.get(("supervise_service_cpu_seconds_total", svc_label("spin")), 0) > 0
            and m.get(("supervise_service_memory_rss_bytes", svc_label("spin")), 0) > 0
            and m.get(("supervise_service_memory_rss_bytes", svc_label("steady")), 0) > 0
            and m.get(("supervise_service_custom_counter_total", (("name", "processed"), ("service", "counter"))), 0)
            > 0
        )
        return m if ready else None

    m = wait_for(figures, timeout_s=20, what="sampled CPU and memory in /metrics")
    assert ("supervise_service_cpu_percent", svc_label("spin")) in m
    assert m[("supervise_service_restarts_total", svc_label("steady"))] == 1
    assert m[("supervise_service_exits_total", (("cause", "signal"), ("service", "steady")))] == 1
    assert m[("supervise_service_exit_signals_total", (("service", "steady"), ("signal", "SIGKILL")))] == 1
    assert m[("supervise_service_state", (("service", "spin"), ("state", "RUNNING")))] == 1
    assert m[("supervise_service_custom_gauge", (("name", "queue"), ("service", "counter")))] == 7
    assert m[("supervise_memory_rss_bytes", ())] > 0  # the supervisor itself
    assert m[("supervise_healthy", ())] == 1


def test_health_is_503_while_a_critical_service_is_fatal_and_200_after_a_manual_start(
    daemon_factory, short_dir
) -> None:
    flag = short_dir / "flag"
    d: Daemon = daemon_factory(
        {
            "core": {
                "target": "tests.children.observed:needs_flag",
                "critical": True,
                "max_restarts": 1,
                "env": {"FLAG_FILE": str(flag)},
                **FAST,
            },
            "side": {"target": FOREVER},
        },
        **HTTP,
    )
    d.wait_state("core", "FATAL", timeout_s=30)
    status, body = health(d)
    assert status == 503
    assert body["healthy"] is False and body["status"] == "unhealthy"
    assert body["services"]["total"] == 2 and body["services"]["errors"] >= 1
    assert body["details"]["core"]["healthy"] is False and body["details"]["core"]["status"] == "FATAL"
    # The unauthenticated endpoint carries no errors or tracebacks; the control socket does.
    assert set(body["details"]["core"]) == {"healthy", "status", "critical", "restarts"}
    assert "flag file is missing" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert "flag file is missing" in d.service("core")["last_error"]
    assert http_get(d, "/health/ready")[0] == 503
    assert http_get(d, "/health/live")[0] == 200  # the supervisor itself is fine: don't restart it

    flag.write_text("ok")
    result = d.cli("start", "core")
    assert result.returncode == 0, result.stderr
    d.wait_state("core", "RUNNING")
    d.wait_state("side", "RUNNING")
    status, body = wait_for(lambda: (h := health(d))[0] == 200 and h, what="/health back to 200")
    assert body["healthy"] is True and body["services"]["running"] == 2 and body["services"]["errors"] == 0


# -- memory limit ------------------------------------------------------------------


def test_worker_over_max_memory_is_restarted_with_cause_memory(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"hog": {"target": "tests.children.observed:hog", "max_memory": "64MiB", "max_restarts": 100, **FAST}}
    )
    first = d.wait_running_pid("hog")
    svc = wait_for(
        lambda: (s := d.service("hog"))["last_exit"] and s["last_exit"]["cause"] == "memory" and s,
        timeout_s=30,
        what="hog restarted for memory",
    )
    assert svc["restarts"] >= 1
    assert "over max_memory" in (svc["last_error"] or "")
    assert d.wait_running_pid("hog", not_pid=first) != first
    kinds = [e["kind"] for e in d.client.call("events", service="hog")["events"]]
    assert "memory_exceeded" in kinds
    exits = d.client.call("metrics", name="hog")["services"][0]["exits"]
    assert exits.get("memory", 0) >= 1


# -- logs --------------------------------------------------------------------------


def test_logs_shows_what_a_worker_printed(daemon_factory) -> None:
    d: Daemon = daemon_factory({"steady": {"target": FOREVER}})
    pid = d.wait_running_pid("steady")
    result = wait_for(
        lambda: (
            (r := d.cli("logs", "steady", "-n", "10")).returncode == 0
            and f"forever started pid={pid}" in r.stdout
            and r
        ),
        what="the worker's first line in `supervise logs`",
    )
    assert result.stdout.strip().splitlines()[-1] == f"forever started pid={pid}"
    missing = d.cli("logs", "nosuch")
    assert missing.returncode == 1 and 'no service named "nosuch"' in missing.stderr


def test_logs_follow_carries_on_across_rotation(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"chatty": {"target": "tests.children.observed:chatty"}}, log_max_bytes="4KB", log_backups=2
    )
    d.wait_running_pid("chatty")
    follower = spawn_cli(d, "logs", "chatty", "-n", "1", "-f")
    try:
        # 4 KB hold ~200 lines: 1000 new lines mean the follower went through several rotations.
        lines = read_until(
            follower,
            lambda ls: len([x for x in ls if x.startswith("chatty line")]) > 1000,
            timeout_s=60,
            what="1000 followed lines",
        )
        numbers = [int(x.split()[-1]) for x in lines if x.startswith("chatty line")]
        assert numbers == sorted(numbers)
        assert (d.config.parent / "state" / "logs" / "chatty.log.1").exists()
    finally:
        end(follower)


# -- events ------------------------------------------------------------------------


def test_events_json_shows_a_restart_after_sigkill(daemon_factory) -> None:
    d: Daemon = daemon_factory({"steady": {"target": FOREVER, "critical": True, **FAST}})
    old = d.wait_running_pid("steady")
    seq = d.client.call("ping")["event_seq"]
    follower = spawn_cli(d, "events", "--json", "--since", str(seq))
    try:
        os.kill(old, signal.SIGKILL)

        def restarted(lines: list[str]) -> bool:
            events = [json.loads(x) for x in lines if x.startswith("{")]
            return any(e["kind"] == "state" and e.get("to") == "RUNNING" and e.get("pid") != old for e in events)

        events = [json.loads(x) for x in read_until(follower, restarted, what="the restart in `events --json`") if x]
    finally:
        end(follower)
    kinds = [e["kind"] for e in events]
    assert kinds.index("exited") < kinds.index("restarting") < kinds.index("spawned")
    exited = next(e for e in events if e["kind"] == "exited")
    assert exited["signal"] == signal.SIGKILL and exited["cause"] == "signal" and exited["pid"] == old
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seq + 1, seq + 1 + len(seqs)))  # no gaps, no duplicates
    assert all(e["v"] == 1 and e["service"] == "steady" and isinstance(e["ts"], float) for e in events)


def test_events_replay_since_a_sequence_number(daemon_factory) -> None:
    d: Daemon = daemon_factory({"a": {"target": FOREVER}, "b": {"target": FOREVER}})
    d.wait_running_pid("a")
    d.wait_running_pid("b")
    everything = d.client.call("events", since=0)
    seqs = [e["seq"] for e in everything["events"]]
    assert seqs == list(range(1, len(seqs) + 1)) and everything["last_seq"] == seqs[-1]
    assert everything["missed"] == 0
    later = d.client.call("events", since=3)["events"]
    assert [e["seq"] for e in later] == seqs[3:]
    only_b = d.client.call("events", since=0, service="b")["events"]
    assert only_b and {e["service"] for e in only_b} == {"b"}
    printed = d.cli("events", "--since", "0", "--no-follow", "--json", "--service", "a")
    assert printed.returncode == 0, printed.stderr
    assert [json.loads(x)["seq"] for x in printed.stdout.splitlines()] == [
        e["seq"] for e in everything["events"] if e["service"] == "a"
    ]
    text = d.cli("events", "--since", "0", "--no-follow")
    assert "a state from=STOPPED to=STARTING" in text.stdout


@pytest.mark.timeout(240)
def test_a_stalled_events_subscriber_does_not_delay_a_restart(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {
            "steady": {"target": FOREVER, "critical": True, **FAST},
            "toggled": {"command": ["sleep", "1000"], "start_timeout": "0s"},
        }
    )
    d.wait_running_pid("toggled")
    zctx = zmq.Context()
    stalled = zctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.RCVBUF, 1024)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(f"ipc://{d.config.parent / 'state' / 'events.sock'}")
    try:
        # Each pause/resume is one `state` event. Past the PUB socket's SNDHWM (10 000)
        # plus the socket buffers, the stalled subscriber's queue is full and the
        # supervisor drops for it instead of waiting.
        deadline = time.monotonic() + 150
        while (seq := d.client.call("ping")["event_seq"]) < 12_000:
            assert time.monotonic() < deadline, f"only {seq} events after 150 s"
            for _ in range(500):
                d.client.call("pause", name="toggled", wait=False)
                d.client.call("resume", name="toggled", wait=False)
        old = d.wait_running_pid("steady")
        os.kill(old, signal.SIGKILL)
        new = d.wait_running_pid("steady", not_pid=old)
        assert new != old
        assert d.service("steady")["restarts"] == 1
    finally:
        stalled.close(linger=0)
        zctx.term()


# -- the CLI views and JSON logs ----------------------------------------------------


def test_status_metrics_and_top_show_cpu_and_memory(daemon_factory) -> None:
    d: Daemon = daemon_factory({"spin": {"target": "tests.children.targets:spin", "max_memory": "1GiB"}})
    d.wait_running_pid("spin")
    svc = wait_for(lambda: (s := d.service("spin"))["rss_bytes"] and s, what="sampled status")
    assert svc["cpu_percent"] is not None and svc["max_memory_bytes"] == 1 << 30
    result = d.cli("metrics", "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["supervisor"]["process"]["rss_bytes"] > 0
    assert metrics["services"][0]["process"]["threads"] >= 1
    table = d.cli("metrics", "spin")
    assert table.stdout.startswith("NAME") and "spin" in table.stdout and "/1GiB" in table.stdout
    frame = d.cli("top", "--once")
    assert frame.returncode == 0, frame.stderr
    assert "RUNNING" in frame.stdout and "CPU%" in frame.stdout and "healthy" in frame.stdout


def test_json_log_format_tags_lines_with_service_and_event(short_dir: Path) -> None:
    config = write_config(short_dir, {"steady": {"target": FOREVER}})
    log_path = short_dir / "daemon.json.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config), "--log-format", "json"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    d = Daemon(config, proc, Client(f"ipc://{short_dir / 'state'}/control.sock", timeout_s=5.0), log_path)
    try:
        wait_for(lambda: d.client.call("ping", retries=0), timeout_s=30, what="daemon ping")
        d.wait_running_pid("steady")
    finally:
        stop_daemon(d)
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert all({"timestamp", "level", "service", "event", "message"} <= r.keys() for r in records)
    running = [r for r in records if r["service"] == "steady" and r["event"] == "state" and "RUNNING" in r["message"]]
    assert running and running[0]["level"] == "info"


def test_http_port_in_use_is_reported_as_a_config_error(short_dir: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(short_dir, {"steady": {"target": FOREVER}}, http=f"127.0.0.1:{port}")
        result = subprocess.run(
            [sys.executable, "-m", "supervise.supervisor", "start", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 78, result.stderr
    assert f"supervisor.http: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (short_dir / "state" / "control.sock").exists()


def test_start_daemon_helper_still_works_without_http(short_dir: Path) -> None:
    d = start_daemon(write_config(short_dir, {"steady": {"target": FOREVER}}))
    try:
        assert d.client.call("ping")["http"] is None
    finally:
        stop_daemon(d)
