"""The further checks at the end of reliability.md §3: a double SIGTERM, 200 services, a worker
that closes stdout without exiting, and heartbeats sent under another service's identity or token."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import zmq

from supervise.protocol.codec import encode_worker_message
from tests.conftest import (
    Daemon,
    alive,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)
from tests.faults.support import FAST, FAULTY, FOREVER, events, zombies


def test_double_sigterm_skips_the_grace_and_kills_every_worker(short_dir: Path) -> None:
    config = write_config(
        short_dir,
        {"deaf": {"target": f"{FAULTY}:stubborn", "stop_timeout": "60s"}, "py": {"target": FOREVER}},
        shutdown_timeout="120s",
    )
    d = start_daemon(config)
    try:
        deaf, py = d.wait_running_pid("deaf"), d.wait_running_pid("py")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: d.state("deaf") == "STOPPING" and not alive(py), what="the graceful stop to be under way")
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)  # the fast path: SIGKILL now, not after 60 s
        code = d.proc.wait(timeout=15)
        assert code == 1  # a forced stop is a failure to the outer supervisor (reliability.md §5)
        assert time.monotonic() - t0 < 10
        assert not alive(deaf)
        assert "second SIGTERM: killing every worker now" in d.log()
    finally:
        stop_daemon(d)


def test_200_services_run_restart_and_stop(short_dir: Path) -> None:
    names = [f"svc{i:03d}" for i in range(200)]
    config = write_config(
        short_dir, {n: {"command": ["sleep", "1000"], "start_timeout": "0s", "backoff": "0s"} for n in names}
    )
    d = start_daemon(config)
    try:
        status = wait_for(
            lambda: (s := d.client.call("status")) and all(x["state"] == "RUNNING" for x in s["services"]) and s,
            timeout_s=60,
            what="200 services RUNNING",
        )
        pids = {x["name"]: x["pid"] for x in status["services"]}
        assert sorted(pids) == names and len(set(pids.values())) == 200
        os.kill(pids["svc123"], signal.SIGKILL)
        d.wait_running_pid("svc123", not_pid=pids["svc123"])
        assert d.service("svc199")["pid"] == pids["svc199"]
        assert not zombies(d.pid)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=60) == 0
        assert not any(alive(p) for p in pids.values())
    finally:
        stop_daemon(d)


def test_a_worker_closing_stdout_without_exiting_is_not_taken_for_an_exit(daemon_factory, short_dir: Path) -> None:
    sh_mark, py_mark = short_dir / "sh.mark", short_dir / "py.mark"
    d: Daemon = daemon_factory(
        {
            "sh": {
                "command": ["sh", "-c", f"echo hello; exec >&- 2>&-; touch {sh_mark}; exec sleep 1000"],
                "start_timeout": "0s",
                "backoff": "0s",
            },
            "py": {"target": f"{FAULTY}:close_stdio", **FAST, "env": {"FAULTY_MARK": str(py_mark)}},
        }
    )
    pids = {"sh": d.wait_running_pid("sh"), "py": d.wait_running_pid("py")}
    wait_for(lambda: sh_mark.exists() and py_mark.exists(), what="both workers to close their stdout and stderr")
    d.client.call("ping")  # the loop has seen both EOFs by the time it answers
    # The Python worker still heartbeats (over ZeroMQ, not stdout): fresh heartbeats after the EOF.
    wait_for(lambda: d.service("py")["heartbeat_age"] < 0.3, what="a heartbeat after the EOF")
    for name, pid in pids.items():
        svc = d.service(name)
        assert svc["state"] == "RUNNING" and svc["pid"] == pid and svc["restarts"] == 0, svc
        assert alive(pid)
    assert not events(d, kind="exited")
    # The real exit is still noticed (through the pidfd, not the pipe).
    os.kill(pids["sh"], signal.SIGKILL)
    d.wait_running_pid("sh", not_pid=pids["sh"])


def test_heartbeats_under_another_identity_or_token_are_ignored(daemon_factory) -> None:
    d: Daemon = daemon_factory({"victim": {"target": FOREVER, **FAST}, "bystander": {"target": FOREVER, **FAST}})
    victim, bystander = d.wait_running_pid("victim"), d.wait_running_pid("bystander")
    stolen = {name: psutil.Process(pid).environ() for name, pid in (("victim", victim), ("bystander", bystander))}
    endpoint = stolen["victim"]["SUPERVISE_WORKER_ENDPOINT"]
    victim_id, victim_token = stolen["victim"]["SUPERVISE_WORKER_ID"], stolen["victim"]["SUPERVISE_TOKEN"]
    bystander_token = stolen["bystander"]["SUPERVISE_TOKEN"]
    bad_before = d.client.call("metrics")["supervisor"]["bad_worker_messages"]
    forgeries = [
        (b"victim/99", victim_token),  # the right token from another incarnation's identity
        (b"bystander/99", victim_token),  # another service's identity
        (victim_id.encode() + b"x", victim_token),  # a near miss of the identity
        (b"victim/0", bystander_token),  # another service's token
    ]
    ctx = zmq.Context.instance()
    socks = []
    for identity, _ in forgeries:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(endpoint)
        socks.append(sock)
    os.kill(victim, signal.SIGSTOP)  # silent from now on; only forgeries speak for it
    try:
        deadline = time.monotonic() + 20
        while d.service("victim")["pid"] == victim:
            assert time.monotonic() < deadline, "the silent victim was never declared hung"
            for sock, (_, token) in zip(socks, forgeries, strict=True):
                sock.send(encode_worker_message("heartbeat", token=token), zmq.NOBLOCK)
            time.sleep(0.1)  # pacing the forged heartbeats
    finally:
        for sock in socks:
            sock.close()
        if alive(victim):
            os.kill(victim, signal.SIGCONT)
    assert d.service("victim")["last_exit"]["cause"] == "hung"
    assert d.service("bystander")["pid"] == bystander and d.service("bystander")["restarts"] == 0
    assert d.client.call("metrics")["supervisor"]["bad_worker_messages"] > bad_before  # dropped and counted
