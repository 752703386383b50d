"""The control socket of a live daemon under bad and hostile input: error replies, nothing changes."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from tests.conftest import Daemon

FOREVER = "tests.children.targets:forever"


def raw_request(endpoint: str, frames: list[bytes], timeout_ms: int = 5000) -> dict[str, object] | None:
    """Send raw frames on a fresh DEALER; the decoded reply, or None if none came."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(timeout_ms):
            return None
        reply: dict[str, object] = msgpack.unpackb(sock.recv_multipart()[-1])
        return reply
    finally:
        sock.close()


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [
    pytest.param([b"\xc1\xff garbage"], "malformed", id="not-msgpack"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "ping"})[:-3]], "malformed", id="truncated"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "ping"}) + b"xyz"], "malformed", id="trailing-bytes"),
    pytest.param([pack([1, 2, 3])], "malformed", id="not-a-map"),
    pytest.param(
        [pack({"v": 1, "id": 1, "cmd": "status", "args": {"name": nested(100)}})], "malformed", id="deep-nesting"
    ),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "ping", 5: 1})], "malformed", id="int-map-key"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": msgpack.ExtType(5, b"x")})], "malformed", id="ext-type"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "ping"})] * 3, "malformed", id="multipart"),
    pytest.param([pack({"v": 2, "id": 1, "cmd": "ping"})], "version", id="wrong-version"),
    pytest.param([pack({"v": 1, "id": True, "cmd": "ping"})], "bad_request", id="bool-id"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "ping", "agrs": {}})], "bad_request", id="unknown-field"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "__class__"})], "unknown_command", id="dunder-command"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "_supervisor.stop"})], "unknown_command", id="dotted-command"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "restrat", "args": {"name": "py"}})], "unknown_command", id="typo"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "stop", "args": {"nmae": "py"}})], "bad_args", id="unknown-arg"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "stop", "args": {"name": 5}})], "bad_args", id="wrong-arg-type"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "stop", "args": {}})], "bad_args", id="missing-arg"),
    pytest.param([pack({"v": 1, "id": 1, "cmd": "stop", "args": {"name": "web2"}})], "not_found", id="unknown-service"),
    pytest.param(
        [pack({"v": 1, "id": 1, "cmd": "stop", "args": {"name": "py", "all": True}})], "bad_args", id="name-and-all"
    ),
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> object:
    import shutil
    import tempfile
    from pathlib import Path

    from tests.conftest import start_daemon, stop_daemon, write_config

    folder = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    daemon = start_daemon(write_config(folder, {"py": {"target": FOREVER}}))
    try:
        daemon.wait_running_pid("py")
        yield daemon
    finally:
        stop_daemon(daemon)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(("frames", "code"), HOSTILE)
def test_hostile_request_gets_the_exact_error_code_and_changes_nothing(
    live: Daemon, frames: list[bytes], code: str
) -> None:
    before = live.service("py")
    reply = raw_request(live.client.endpoint, frames)
    assert reply is not None, "no reply"
    assert reply["ok"] is False
    error = reply["error"]
    assert isinstance(error, dict) and error["code"] == code, error
    assert error["message"]
    after = live.service("py")
    assert (after["pid"], after["state"], after["restarts"]) == (before["pid"], before["state"], before["restarts"])


def test_request_id_is_echoed_in_error_replies(live: Daemon) -> None:
    reply = raw_request(live.client.endpoint, [pack({"v": 1, "id": "abc", "cmd": "nope"})])
    assert reply is not None and reply["id"] == "abc"
    assert 'unknown command "nope"' in str(reply["error"])


def test_oversize_frame_is_dropped_and_the_supervisor_keeps_serving(live: Daemon) -> None:
    assert raw_request(live.client.endpoint, [b"\x00" * (2 << 20)], timeout_ms=500) is None
    assert live.client.call("ping")


def test_a_req_socket_works_too(live: Daemon) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(live.client.endpoint)
        sock.send(pack({"v": 1, "id": 7, "cmd": "ping"}))
        assert sock.poll(5000)
        reply = msgpack.unpackb(sock.recv())
        assert reply["ok"] is True and reply["id"] == 7 and reply["result"]["pid"] == live.pid
    finally:
        sock.close()


def test_a_thousand_garbage_frames_later_workers_keep_their_pids(live: Daemon) -> None:
    pid = live.service("py")["pid"]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(live.client.endpoint)
        for i in range(1000):
            sock.send(bytes([i % 256]) * (i % 50 + 1))
        replies = 0
        while replies < 1000 and sock.poll(5000):
            sock.recv()
            replies += 1
        assert replies == 1000  # every frame got its error reply
    finally:
        sock.close()
    assert live.service("py")["pid"] == pid
    assert live.client.call("help")["stop"]["doc"]
