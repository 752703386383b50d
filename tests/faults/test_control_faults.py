"""reliability.md §3, control plane: F-26 (hostile frames), F-28 (a SUB that never reads),
F-29 (a client dying mid-request; the supervisor restarting under a client), F-30 (second daemon)."""

from __future__ import annotations

import collections
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from supervise.protocol.client import Client
from supervise.protocol.errors import ClientTimeout, ErrorCode
from tests.conftest import (
    Daemon,
    alive,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)
from tests.faults.support import FAULTY, FOREVER, events, rss, state_dir

# Every code a bad request may get; "internal" (a handler bug) is not among them.
BAD_INPUT_CODES = {
    ErrorCode.MALFORMED,
    ErrorCode.TOO_LARGE,
    ErrorCode.VERSION,
    ErrorCode.BAD_REQUEST,
    ErrorCode.UNKNOWN_COMMAND,
    ErrorCode.BAD_ARGS,
    ErrorCode.NOT_FOUND,
}


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def hostile_messages() -> Iterator[tuple[list[bytes], str]]:
    """An endless mix of the bad inputs of reliability.md F-26 and §4.1, with the expected code."""
    fixed: list[tuple[list[bytes], str]] = [
        ([pack({"v": 1, "id": 1, "cmd": "status"})[:-2]], "malformed"),  # truncated
        ([b"\xdb\x7f\xff\xff\xff" + b"x" * 16], "malformed"),  # a str claiming 2 GiB
        ([b"\x91" * 1024 + b"\x01"], "malformed"),  # 1024-deep nesting
        ([pack({"v": 1, "id": 1, "cmd": msgpack.ExtType(5, b"x")})], "malformed"),
        ([pack({"v": 1, "id": 1, "cmd": "ping", 7: 1})], "malformed"),  # non-string key
        ([b"\x84\xa1v\x01\xa2id\x01\xa3cmd\xa2\xff\xfe\xa4args\x80"], "malformed"),  # invalid UTF-8
        ([pack({"v": 1, "id": 1, "cmd": "ping"})] * 50, "malformed"),  # 50 frames
        ([pack({"v": 1, "id": 1, "cmd": "__class__"})], "unknown_command"),
        ([pack({"v": 1, "id": 1, "cmd": "_internal"})], "unknown_command"),
        ([pack({"v": 1, "id": 1, "cmd": "stop", "args": {"name": "py", "timeout": "10"}})], "bad_args"),
        ([pack({"v": 1, "id": 1, "cmd": "stop", "args": {"name": "nope"}})], "not_found"),
        ([pack({"v": 1, "id": "x" * 65, "cmd": "ping"})], "bad_request"),
        ([pack({"v": 2, "id": 1, "cmd": "ping"})], "version"),
        ([pack([1] * 5000)], "too_large"),
    ]
    for n in itertools.count():
        if n % 3 == 0:
            yield [os.urandom(1 + n % 61)], ""  # random bytes: any bad-input code
        else:
            yield fixed[n % len(fixed)]


def exchange(sock: zmq.Socket, batch: list[tuple[list[bytes], str]]) -> None:
    """Send a batch, then read one reply per message and check the codes.

    Replies may come out of order (a request that passes validation runs as a task,
    while bad ones are answered at once), so the codes are compared as a multiset.
    """
    for frames, _ in batch:
        sock.send_multipart(frames)
    codes = []
    for _ in batch:
        reply = msgpack.unpackb(sock.recv_multipart()[-1])  # RCVTIMEO: zmq.Again after 10 s
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] in BAD_INPUT_CODES, reply
        assert "Traceback" not in reply["error"]["message"]
        codes.append(reply["error"]["code"])
    expected = collections.Counter(code for _, code in batch if code)
    assert not expected - collections.Counter(codes), (expected, collections.Counter(codes))


def test_f26_hostile_control_frames_get_error_replies_and_memory_stays_flat(daemon_factory, record_property) -> None:
    d: Daemon = daemon_factory({"py": {"target": FOREVER}})
    pid = d.wait_running_pid("py")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(d.client.endpoint)
    messages = hostile_messages()
    try:
        for _ in range(10):  # warm-up: first allocations, caches, difflib
            exchange(sock, list(itertools.islice(messages, 500)))
        before = rss(d.pid)
        for _ in range(200):  # 100 000 bad messages
            exchange(sock, list(itertools.islice(messages, 500)))
        grew_mb = (rss(d.pid) - before) / 1e6
    finally:
        sock.close()
    record_property("rss_growth_mb_over_100k_bad_messages", round(grew_mb, 2))
    print(f"F-26: supervisor RSS {grew_mb:+.2f} MB over 100 000 bad messages")
    assert grew_mb < 10

    # A frame over the 1 MiB socket limit: libzmq drops the connection, no reply, nothing else.
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    try:
        big.connect(d.client.endpoint)
        big.send(b"\x00" * (2 << 20))
        assert not big.poll(1000)
    finally:
        big.close()

    assert d.client.call("ping")["pid"] == d.pid
    svc = d.service("py")
    assert svc["pid"] == pid and svc["restarts"] == 0 and svc["state"] == "RUNNING"  # nothing changed


def stalled_subscriber(d: Daemon) -> zmq.Socket[bytes]:
    """A SUB on the daemon's events with the smallest buffers, connected, that never reads."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(d.client.call("ping")["events"])

    def connected() -> bool:
        # Events only reach a SUB once its subscription has; make some until one arrives (unread).
        if sub.poll(0):
            return True
        d.client.call("pause", name="s00")
        d.client.call("resume", name="s00")
        return False

    try:
        wait_for(connected, what="the subscriber to be connected")
    except BaseException:
        sub.close()
        raise
    return sub


def test_f28_a_subscriber_that_never_reads_slows_nothing(daemon_factory) -> None:
    names = [f"s{i:02d}" for i in range(50)]
    d: Daemon = daemon_factory(
        {n: {"command": ["sleep", "1000"], "start_timeout": "0s", "backoff": "0s"} for n in names}
    )
    for n in names:
        d.wait_running_pid(n)
    sub = stalled_subscriber(d)
    try:
        first_seq = d.client.call("ping")["event_seq"]
        # 120 pause/resume rounds of 50 services: 12 000 events, beyond the PUB's 10 000 high-water mark,
        # none read by the subscriber.
        worst = 0.0
        for _ in range(120):
            for command in ("pause", "resume"):
                t0 = time.monotonic()
                d.client.call(command, all=True)
                worst = max(worst, time.monotonic() - t0)
        assert d.client.call("ping")["event_seq"] - first_seq >= 12_000
        assert worst < 2.0, f"a pause/resume of 50 services took {worst:.2f} s"  # typically a few ms
        # A restart is as quick as ever.
        old = d.service("s07")["pid"]
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        d.wait_running_pid("s07", not_pid=old)
        assert time.monotonic() - t0 < 3.0  # milliseconds normally (backoff 0s); room for a loaded machine
        # What the subscriber finally reads carries seq numbers; the next event's seq shows the gap.
        seqs = []
        while sub.poll(200):
            seqs.append(msgpack.unpackb(sub.recv_multipart()[1])["seq"])
        assert seqs == sorted(seqs) and len(seqs) < 12_000
        d.client.call("pause", name="s00")
        assert sub.poll(5000)
        latest = msgpack.unpackb(sub.recv_multipart()[1])["seq"]
        assert latest - seqs[-1] > 1000  # the PUB dropped what did not fit instead of waiting
    finally:
        sub.close()


CLIENT_THAT_DIES = """
import sys, zmq, msgpack
sock = zmq.Context().socket(zmq.DEALER)
sock.connect(sys.argv[1])
sock.send(msgpack.packb({"v": 1, "id": "dying", "cmd": "stop", "args": {"name": "deaf"}}))
print("sent", flush=True)
sys.stdin.read()
"""


def test_f29_a_client_dying_mid_request_harms_nothing(daemon_factory) -> None:
    d: Daemon = daemon_factory(
        {"deaf": {"target": f"{FAULTY}:stubborn", "stop_timeout": "1s"}, "py": {"target": FOREVER}}
    )
    deaf, py = d.wait_running_pid("deaf"), d.wait_running_pid("py")
    with subprocess.Popen(
        [sys.executable, "-c", CLIENT_THAT_DIES, d.client.endpoint],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as client:
        assert client.stdout is not None and client.stdout.readline().strip() == "sent"
        wait_for(lambda: d.state("deaf") == "STOPPING", what="the stop to begin")
        client.kill()  # gone before its reply (the stop waits stop_timeout for SIGKILL)
    d.wait_state("deaf", "STOPPED")  # the request was carried out all the same
    assert not alive(deaf)
    assert d.client.call("ping")["pid"] == d.pid  # the reply to nobody was dropped, not waited on
    assert d.service("py")["pid"] == py


def test_f29_a_client_survives_its_supervisor_restarting(short_dir: Path) -> None:
    config = write_config(short_dir, {"py": {"target": FOREVER}})
    first = start_daemon(config)
    client = Client(first.client.endpoint, timeout_s=1.0)
    try:
        assert client.call("ping")["pid"] == first.pid
        stop_daemon(first)
        t0 = time.monotonic()
        with pytest.raises(ClientTimeout):
            client.call("ping")  # nobody there: a timeout, not a hang
        assert time.monotonic() - t0 < 3.0
        second = start_daemon(config)
        try:
            # The same client object: Lazy Pirate (fresh socket per timed-out attempt, retries) finds the new one.
            assert client.call("ping", retries=5)["pid"] == second.pid
            assert client.call("status")["services"][0]["name"] == "py"
        finally:
            stop_daemon(second)
    finally:
        t0 = time.monotonic()
        client.close()
        assert time.monotonic() - t0 < 1.0  # LINGER=0: closing never waits for a peer
        stop_daemon(first)


def test_f30_a_second_daemon_is_refused_and_touches_nothing_of_the_first(daemon_factory) -> None:
    d: Daemon = daemon_factory({"py": {"target": FOREVER}, "tick": {"command": ["true"], "every": "1s"}})
    pid = d.wait_running_pid("py")
    state = state_dir(d)
    kept = ["control.sock", "workers.sock", "events.sock", "supervise.lock", "history.db"]

    def identity(name: str) -> tuple[int, int]:
        st = (state / name).stat()
        return st.st_ino, st.st_mode

    before = {name: identity(name) for name in kept}
    lock_text = (state / "supervise.lock").read_text()
    assert lock_text.strip() == str(d.pid)
    children_before = {p.pid for p in psutil.Process(d.pid).children()}

    second = subprocess.run(
        [sys.executable, "-m", "supervise.supervisor", "start", str(d.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"another supervise (pid {d.pid}) holds {state / 'supervise.lock'}" in second.stderr
    assert {name: identity(name) for name in kept} == before  # nothing unlinked, rebound or recreated
    assert (state / "supervise.lock").read_text() == lock_text
    assert d.client.call("ping")["pid"] == d.pid  # the endpoint is still the first one's
    assert d.service("py")["pid"] == pid
    assert {p.pid for p in psutil.Process(d.pid).children()} == children_before
    assert not [e for e in events(d, "py", "exited")]


def test_f28_the_events_pub_queues_up_to_its_documented_10000_high_water_mark(daemon_factory) -> None:
    names = [f"s{i:02d}" for i in range(25)]
    d: Daemon = daemon_factory({n: {"command": ["sleep", "1000"], "start_timeout": "0s"} for n in names})
    for n in names:
        d.wait_running_pid(n)
    sub = stalled_subscriber(d)
    try:
        for _ in range(120):  # 6000 unread events: within a 10 000 high-water mark, none may be dropped
            d.client.call("pause", all=True)
            d.client.call("resume", all=True)
        received = 0
        while sub.poll(200):
            sub.recv_multipart()
            received += 1
        assert received >= 6000, f"the subscriber got {received} of 6000+ events"
    finally:
        sub.close()
